//! A live record's cluster changes under it while 16 tasks keep claiming its key
//! (`support::cluster::Claimers`): its slot migrates to another primary (`CLUSTER SETSLOT
//! … IMPORTING/MIGRATING`, `MIGRATE`, `SETSLOT … NODE`), or its primary fails over to its
//! replica (`CLUSTER FAILOVER`). Each on a test-owned cluster. Nobody else ever claims the
//! key (no double execution), every reply is the record or a clean error, and its owner
//! renews and completes it across the change, after which every claim replays it.

mod support;

use idem::redis::RedisStore;
use idem::store::{Claim, Outcome, Output, Token};
use idem::{Fingerprint, Key, Store};
use std::sync::Arc;
use std::time::Duration;
use support::cluster::{Claimers, Cluster, Seen, cli, have_binaries, wait_until, within};

const LEASE: Duration = Duration::from_secs(20);
const OUTPUT: &[u8] = b"moved";

/// Runs `redis-cli` on `port` and checks that it answered `OK`.
fn ok(port: u16, args: &[&str]) {
    let out = cli(port, args).unwrap_or_default();
    assert_eq!(out.trim(), "OK", "{args:?} on {port}");
}

fn pause() -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(150))
}

/// A store on `cluster`, a key claimed in it (with its Redis key and the owner's token),
/// and claimers hammering it.
async fn live_record(
    cluster: &Cluster,
    what: &str,
) -> (Arc<RedisStore>, Key, String, Token, Claimers) {
    let store = RedisStore::connect_cluster(cluster.urls())
        .await
        .expect("connect to the cluster")
        .with_prefix(&support::unique_prefix(what))
        .expect("prefix");
    let store = Arc::new(store);
    let key = Key::new("migration", "live").unwrap();
    let record = support::record_key(store.prefix(), &key);
    let fp = Fingerprint::from_bytes([9; 32]);
    let Ok(Claim::Claimed(token)) = store.claim(&key, &fp, LEASE).await else {
        panic!("the first claim owns the key");
    };
    let claimers = Claimers::start(&store, &key, fp, OUTPUT);
    (store, key, record, token, claimers)
}

/// The owner completes; the claimers stop; what they saw is checked.
async fn complete_and_check(
    store: &RedisStore,
    key: &Key,
    token: Token,
    claimers: Claimers,
    what: &str,
) {
    let out = Output {
        outcome: Outcome::Ok,
        bytes: OUTPUT.to_vec().into(),
    };
    store
        .complete(key, token, out, LEASE)
        .await
        .expect("complete after the change");
    pause().await;
    let seen: Seen = claimers.finish().await;
    eprintln!("{what}: {seen:?}");
    assert_eq!(
        seen.claimed, 0,
        "another call claimed the live record ({what})"
    );
    assert!(
        seen.in_progress > 0 && seen.replayed > 0,
        "the claimers saw both sides"
    );
    let fp = Fingerprint::from_bytes([9; 32]);
    assert!(matches!(
        store.claim(key, &fp, LEASE).await,
        Ok(Claim::Completed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_records_slot_migrates_without_double_claims() {
    if !have_binaries() {
        return;
    }
    let cluster = Cluster::start();
    let (store, key, record, token, claimers) = live_record(&cluster, "migration").await;
    let slot = cluster.slot(&record);
    let (from_id, from) = cluster.owner(slot);
    let to = *cluster.ports.iter().find(|&&p| p != from).unwrap();
    let to_id = cli(to, &["cluster", "myid"]).unwrap().trim().to_owned();

    pause().await;
    let slot_text = slot.to_string();
    ok(
        to,
        &["cluster", "setslot", &slot_text, "importing", &from_id],
    );
    ok(
        from,
        &["cluster", "setslot", &slot_text, "migrating", &to_id],
    );
    pause().await;
    let to_text = to.to_string();
    ok(
        from,
        &[
            "migrate",
            "127.0.0.1",
            &to_text,
            "",
            "0",
            "5000",
            "keys",
            &record,
        ],
    );
    pause().await;
    // Mid-move: the key is on the importing node, the slot still on the old one (ASK).
    store
        .renew(&key, token, LEASE)
        .await
        .expect("renew during the move");
    pause().await;
    // The importing node first, then the one it leaves, then the rest (as Redis' own
    // resharding does): the other way round, each sends the client to the other (`MOVED`)
    // until the client's retries run out.
    let mut order = vec![to, from];
    order.extend(cluster.ports.iter().filter(|&&p| p != to && p != from));
    for port in order {
        ok(port, &["cluster", "setslot", &slot_text, "node", &to_id]);
    }
    pause().await;
    complete_and_check(&store, &key, token, claimers, "migration").await;

    let keys_in_slot = |port| cli(port, &["cluster", "countkeysinslot", &slot_text]);
    assert_eq!(keys_in_slot(to).as_deref().map(str::trim), Some("1"));
    assert_eq!(keys_in_slot(from).as_deref().map(str::trim), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_records_primary_fails_over_without_double_claims() {
    if !have_binaries() {
        return;
    }
    let cluster = Cluster::start_with_replicas(1);
    let (store, key, record, token, claimers) = live_record(&cluster, "failover").await;
    let slot = cluster.slot(&record);
    let (primary_id, primary) = cluster.owner(slot);
    let replica = cluster.replica_of(&primary_id);

    wait_until("the replica is in sync", || {
        cli(replica, &["info", "replication"]).is_some_and(|r| r.contains("master_link_status:up"))
    });
    pause().await;
    // A manual failover: the replica catches up with its primary, then takes over (no
    // acknowledged write is lost, unlike `FORCE`/`TAKEOVER` or a crash). Redis gives one up
    // after 5 s if the replica has not caught up and won the vote by then, which a loaded
    // machine can make it miss: then ask again.
    let promoted = || {
        cli(replica, &["role"]).is_some_and(|r| r.starts_with("master"))
            && cli(primary, &["role"]).is_some_and(|r| r.starts_with("slave"))
    };
    let mut asked = 0;
    while asked == 0 || !within(Duration::from_secs(8), promoted) {
        assert!(
            asked < 3,
            "the replica is not the primary after {asked} failovers"
        );
        ok(replica, &["cluster", "failover"]);
        asked += 1;
    }
    pause().await;
    store
        .renew(&key, token, LEASE)
        .await
        .expect("renew after the failover");
    pause().await;
    complete_and_check(&store, &key, token, claimers, "failover").await;
    assert_eq!(
        cluster.owner(slot).1,
        replica,
        "the replica serves the slot"
    );
}
