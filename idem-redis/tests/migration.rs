//! A live record's slot migrates between primaries of a test-owned Redis Cluster
//! (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE`, `SETSLOT … NODE`) while 16 tasks
//! keep claiming its key: nobody else ever claims it (no double execution), every reply is
//! the record or a clean error, and its owner renews and completes it across the move, after
//! which every claim replays it from its new primary.

mod support;

use idem::redis::RedisStore;
use idem::store::{Claim, Outcome, Output};
use idem::{Fingerprint, Key, Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::cluster::{Cluster, cli, have_binaries};

/// What the claimers saw.
#[derive(Default)]
struct Seen {
    claimed: AtomicUsize,
    in_progress: AtomicUsize,
    replayed: AtomicUsize,
    errors: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
}

/// The node id and port of the primary that owns `slot`, from `CLUSTER NODES` on `port`.
fn owner(port: u16, slot: u16) -> (String, u16) {
    let nodes = cli(port, &["cluster", "nodes"]).expect("cluster nodes");
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let owns = fields.iter().skip(8).any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
        });
        if owns {
            let addr = fields[1].split('@').next().unwrap_or_default();
            let node_port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            return (fields[0].to_owned(), node_port.expect("a node port"));
        }
    }
    panic!("no primary owns slot {slot}:\n{nodes}");
}

/// Runs `redis-cli` on `port` and checks that it answered `OK`.
fn ok(port: u16, args: &[&str]) {
    let out = cli(port, args).unwrap_or_default();
    assert_eq!(out.trim(), "OK", "{args:?} on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_records_slot_migrates_without_double_claims() {
    if !have_binaries() {
        return;
    }
    let cluster = Cluster::start();
    let store = RedisStore::connect_cluster(cluster.urls())
        .await
        .expect("connect to the cluster")
        .with_prefix(&support::unique_prefix("migration"))
        .expect("prefix");
    let store = Arc::new(store);

    let key = Key::new("migration", "live").unwrap();
    let hex: String = key
        .digest()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let record = format!("{}{hex}", store.prefix());
    let any = cluster.ports[0];
    let slot: u16 = cli(any, &["cluster", "keyslot", &record])
        .and_then(|s| s.trim().parse().ok())
        .expect("the record's slot");
    let (from_id, from) = owner(any, slot);
    let to = *cluster.ports.iter().find(|&&p| p != from).unwrap();
    let to_id = cli(to, &["cluster", "myid"]).unwrap().trim().to_owned();

    let fp = Fingerprint::from_bytes([9; 32]);
    let lease = Duration::from_secs(20);
    let Ok(Claim::Claimed(token)) = store.claim(&key, &fp, lease).await else {
        panic!("the first claim owns the key");
    };

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let claimers: Vec<_> = (0..16)
        .map(|_| {
            let (store, key, seen, stop) = (store.clone(), key.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match store.claim(&key, &fp, lease).await {
                        Ok(Claim::Claimed(_)) => &seen.claimed,
                        Ok(Claim::InProgress(busy)) => {
                            assert_eq!(busy.fingerprint, fp);
                            &seen.in_progress
                        }
                        Ok(Claim::Completed(record)) => {
                            assert_eq!(&record.output.bytes[..], b"moved");
                            &seen.replayed
                        }
                        Err(e @ (StoreError::Backend { .. } | StoreError::Timeout { .. })) => {
                            let mut first = seen.first_error.lock().unwrap();
                            first.get_or_insert_with(|| e.to_string());
                            &seen.errors
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                    .fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let pause = || tokio::time::sleep(Duration::from_millis(150));

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
    let migrate = [
        "migrate",
        "127.0.0.1",
        &to.to_string(),
        "",
        "0",
        "5000",
        "keys",
        &record,
    ];
    ok(from, &migrate);
    pause().await;
    // Mid-move: the key is on the importing node, the slot still on the old one (ASK).
    store
        .renew(&key, token, lease)
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
    let out = Output {
        outcome: Outcome::Ok,
        bytes: b"moved".to_vec().into(),
    };
    store
        .complete(&key, token, out, lease)
        .await
        .expect("complete after the move");
    pause().await;
    stop.store(true, Ordering::SeqCst);
    for claimer in claimers {
        claimer.await.expect("a claimer panicked");
    }

    let (claimed, in_progress, replayed, errors) = (
        seen.claimed.load(Ordering::SeqCst),
        seen.in_progress.load(Ordering::SeqCst),
        seen.replayed.load(Ordering::SeqCst),
        seen.errors.load(Ordering::SeqCst),
    );
    eprintln!(
        "migration: {in_progress} in progress, {replayed} replayed, {errors} clean errors \
         (first: {:?}), {claimed} claimed",
        seen.first_error.lock().unwrap()
    );
    assert_eq!(
        claimed, 0,
        "another call claimed the live record during its move"
    );
    assert!(
        in_progress > 0 && replayed > 0,
        "the claimers saw both sides"
    );
    assert!(matches!(
        store.claim(&key, &fp, lease).await,
        Ok(Claim::Completed(_))
    ));
    let keys_in_slot = |port| cli(port, &["cluster", "countkeysinslot", &slot_text]);
    assert_eq!(keys_in_slot(to).as_deref().map(str::trim), Some("1"));
    assert_eq!(keys_in_slot(from).as_deref().map(str::trim), Some("0"));
}
