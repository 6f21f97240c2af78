//! Edges of the packed record: odd values under the prefix, outputs at the layout's
//! boundaries, what a replay and a refused fenced operation leave behind (value and expiry
//! unchanged), stale tokens, a lease that ran out with nobody taking over, the scripts
//! forgotten by the server mid-use, hostile prefixes, and the payload-mismatch guard on
//! both the completed and the in-progress path.

mod support;

use idem::idempotent;
use idem::redis::{RedisStore, redis};
use idem::store::{Claim, Outcome, Output, Token};
use idem::{Fingerprint, Key, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use support::{Server, free_port};

const LONG: Duration = Duration::from_secs(600);

async fn admin() -> redis::aio::MultiplexedConnection {
    redis::Client::open(support::url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn raw(conn: &mut redis::aio::MultiplexedConnection, at: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(at).query_async(conn).await.unwrap()
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, at: &str) -> i64 {
    redis::cmd("PTTL").arg(at).query_async(conn).await.unwrap()
}

fn out(bytes: &[u8]) -> Output {
    Output {
        outcome: Outcome::Ok,
        bytes: bytes.to_vec().into(),
    }
}

async fn claimed(store: &RedisStore, key: &Key, fp: &Fingerprint, lease: Duration) -> Token {
    match store.claim(key, fp, lease).await {
        Ok(Claim::Claimed(token)) => token,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

/// Values that are not idem records (too short, a wrong kind byte, an in-progress kind of
/// the wrong length, other Redis types) make every operation a clean error and are left
/// exactly as they were; a completed record of exactly the header (empty output) and one
/// whose total length equals an in-progress record's are read as what they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_values_are_clean_errors_or_exact_reads() {
    let Some(store) = support::store("edges-odd").await else {
        return;
    };
    let mut admin = admin().await;
    let fp = Fingerprint::from_bytes([7; 32]);
    let header = |kind: u8| {
        let mut v = vec![kind];
        v.extend_from_slice(&42u64.to_le_bytes());
        v.extend_from_slice(&[7; 32]);
        v
    };
    let with = |kind: u8, tail: &[u8]| {
        let mut v = header(kind);
        v.extend_from_slice(tail);
        v
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one byte", vec![0xC2]),
        ("header minus one", header(0xC2)[..40].to_vec()),
        ("in progress without lease", header(0xC1)),
        ("in progress, lease cut", with(0xC1, &[1, 2, 3])),
        ("in progress, lease plus one", with(0xC1, &[0; 9])),
        ("kind 0xC0", with(0xC0, b"out")),
        ("kind 0xC4", with(0xC4, &[0; 8])),
        ("kind 0x00", with(0x00, b"out")),
        (
            "text",
            b"{\"json\": \"someone else's, quite long enough for a header\"}".to_vec(),
        ),
    ];
    for (what, value) in bad {
        let key = Key::new("edges", what).unwrap();
        let at = support::record_key(store.prefix(), &key);
        let _: () = redis::cmd("SET")
            .arg(&at)
            .arg(&value)
            .arg("PX")
            .arg(60_000)
            .query_async(&mut admin)
            .await
            .unwrap();
        let got = store.claim(&key, &fp, LONG).await;
        assert!(
            matches!(got, Err(StoreError::Backend { op: "claim", .. })),
            "{what}: {got:?}"
        );
        // The fenced operations with a token that is not the value's bytes 1..9.
        let token = Token::new(43);
        assert!(
            store.complete(&key, token, out(b"x"), LONG).await.is_err(),
            "{what}"
        );
        assert!(store.renew(&key, token, LONG).await.is_err(), "{what}");
        assert!(store.release(&key, token).await.is_err(), "{what}");
        assert_eq!(
            raw(&mut admin, &at).await.as_deref(),
            Some(&value[..]),
            "{what}: left as it was"
        );
    }

    // Other Redis types under the prefix: WRONGTYPE, a clean error, left alone.
    for (what, cmd) in [
        ("list", vec!["RPUSH", "a", "b"]),
        ("set", vec!["SADD", "a", "b"]),
        ("zset", vec!["ZADD", "1", "a"]),
        ("stream", vec!["XADD", "*", "f", "v"]),
    ] {
        let key = Key::new("edges-type", what).unwrap();
        let at = support::record_key(store.prefix(), &key);
        let mut c = redis::cmd(cmd[0]);
        c.arg(&at);
        for a in &cmd[1..] {
            c.arg(*a);
        }
        let _: redis::Value = c.query_async(&mut admin).await.unwrap();
        let got = store.claim(&key, &fp, LONG).await;
        assert!(
            matches!(got, Err(StoreError::Backend { op: "claim", .. })),
            "{what}: {got:?}"
        );
        let token = Token::new(42);
        assert!(store.complete(&key, token, out(b"x"), LONG).await.is_err());
        assert!(store.renew(&key, token, LONG).await.is_err());
        assert!(store.release(&key, token).await.is_err());
        let kind: String = redis::cmd("TYPE")
            .arg(&at)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(kind, what, "{what}: left as it was");
        let _: () = redis::cmd("DEL")
            .arg(&at)
            .query_async(&mut admin)
            .await
            .unwrap();
    }

    // Exactly the header: a completed record with an empty output.
    let key = Key::new("edges", "header only").unwrap();
    let at = support::record_key(store.prefix(), &key);
    let _: () = redis::cmd("SET")
        .arg(&at)
        .arg(header(0xC3))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    match store.claim(&key, &fp, LONG).await {
        Ok(Claim::Completed(record)) => {
            assert_eq!(record.fingerprint, fp);
            assert_eq!(record.output.outcome, Outcome::Err);
            assert!(record.output.bytes.is_empty());
        }
        other => panic!("header only: {other:?}"),
    }
}

/// Outputs at the layout's boundaries round-trip byte for byte through a real complete and
/// replay: empty, one byte, 8 bytes (a completed record exactly as long as an in-progress
/// one), outputs that start with the kind bytes or look like a whole record, and 8 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundary_outputs_round_trip() {
    let Some(store) = support::store("edges-sizes").await else {
        return;
    };
    let fp = Fingerprint::from_bytes([9; 32]);
    let mut lookalike = vec![0xC1];
    lookalike.extend_from_slice(&[0xAB; 48]);
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let outputs: Vec<(Outcome, Vec<u8>)> = vec![
        (Outcome::Ok, Vec::new()),
        (Outcome::Err, Vec::new()),
        (Outcome::Ok, vec![0]),
        (Outcome::Ok, vec![0xC1; 8]),
        (Outcome::Err, 1500u64.to_le_bytes().to_vec()),
        (Outcome::Ok, lookalike),
        (Outcome::Ok, vec![0; 41]),
        (Outcome::Ok, big),
    ];
    for (i, (outcome, bytes)) in outputs.into_iter().enumerate() {
        let key = Key::new("edges-sizes", &(i as u64)).unwrap();
        let token = claimed(&store, &key, &fp, LONG).await;
        let output = Output {
            outcome,
            bytes: bytes.clone().into(),
        };
        store.complete(&key, token, output, LONG).await.unwrap();
        match store.claim(&key, &fp, LONG).await {
            Ok(Claim::Completed(record)) => {
                assert_eq!(record.fingerprint, fp, "output {i}");
                assert_eq!(record.output.outcome, outcome, "output {i}");
                assert!(record.output.bytes[..] == bytes[..], "output {i} differs");
            }
            other => panic!("output {i}: {other:?}"),
        }
    }
}

/// A replay leaves the record as it was: the same bytes, and an expiry that only counts
/// down (a claim that rewrote it would reset the TTL to the lease). A busy report leaves
/// the claim's expiry alone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_keep_value_and_expiry() {
    let Some(store) = support::store("edges-replay").await else {
        return;
    };
    let mut admin = admin().await;
    let fp = Fingerprint::from_bytes([1; 32]);
    let ttl = Duration::from_secs(3600);

    let key = Key::new("edges", "done").unwrap();
    let at = support::record_key(store.prefix(), &key);
    let token = claimed(&store, &key, &fp, Duration::from_secs(5)).await;
    store
        .complete(&key, token, out(b"recorded"), ttl)
        .await
        .unwrap();
    let value = raw(&mut admin, &at).await;
    let before = pttl(&mut admin, &at).await;
    assert!(before > 3_500_000, "the TTL, not the lease: {before}");
    tokio::time::sleep(Duration::from_millis(30)).await;
    for _ in 0..5 {
        assert!(matches!(
            store.claim(&key, &fp, Duration::from_secs(5)).await,
            Ok(Claim::Completed(_))
        ));
        // Also with a lease longer than what remains of the TTL.
        assert!(matches!(
            store.claim(&key, &fp, Duration::from_secs(7200)).await,
            Ok(Claim::Completed(_))
        ));
    }
    let after = pttl(&mut admin, &at).await;
    assert!(after < before && after > 3_500_000, "{before} then {after}");
    assert_eq!(
        raw(&mut admin, &at).await,
        value,
        "replay changed the value"
    );

    let busy = Key::new("edges", "busy").unwrap();
    let busy_at = support::record_key(store.prefix(), &busy);
    claimed(&store, &busy, &fp, Duration::from_secs(60)).await;
    let value = raw(&mut admin, &busy_at).await;
    let before = pttl(&mut admin, &busy_at).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    match store.claim(&busy, &fp, Duration::from_secs(3600)).await {
        Ok(Claim::InProgress(b)) => {
            assert_eq!(b.lease_remaining, Some(Duration::from_secs(60)));
        }
        other => panic!("{other:?}"),
    }
    let after = pttl(&mut admin, &busy_at).await;
    assert!(after < before && after > 50_000, "{before} then {after}");
    assert_eq!(raw(&mut admin, &busy_at).await, value);
}

/// After a takeover the old owner's complete, renew and release are `LeaseLost` and leave
/// the new owner's record byte for byte and its expiry as they were; after the new owner
/// completed, the old token still cannot touch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tokens_write_nothing() {
    let Some(store) = support::store("edges-stale").await else {
        return;
    };
    let mut admin = admin().await;
    let key = Key::new("edges", "stale").unwrap();
    let at = support::record_key(store.prefix(), &key);
    let old_fp = Fingerprint::from_bytes([1; 32]);
    let new_fp = Fingerprint::from_bytes([2; 32]);
    let old = claimed(&store, &key, &old_fp, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let new = claimed(&store, &key, &new_fp, Duration::from_secs(60)).await;
    assert_ne!(old, new);

    let check = |what: &'static str, r: Result<(), StoreError>| {
        assert!(matches!(r, Err(StoreError::LeaseLost)), "{what}: {r:?}");
    };
    for round in 0..2 {
        let value = raw(&mut admin, &at).await;
        let before = pttl(&mut admin, &at).await;
        check(
            "complete",
            store.complete(&key, old, out(b"late"), LONG).await,
        );
        check("renew", store.renew(&key, old, LONG).await);
        check("release", store.release(&key, old).await);
        assert_eq!(raw(&mut admin, &at).await, value, "round {round}");
        let after = pttl(&mut admin, &at).await;
        assert!(after <= before, "round {round}: {before} then {after}");
        if round == 0 {
            store
                .complete(&key, new, out(b"new"), Duration::from_secs(3600))
                .await
                .unwrap();
        }
    }
    match store.claim(&key, &new_fp, LONG).await {
        Ok(Claim::Completed(r)) => assert_eq!(&r.output.bytes[..], b"new"),
        other => panic!("{other:?}"),
    }
}

/// A lease that ran out with nobody taking over: the record is gone (Redis expired it), so
/// the late owner's complete, renew and release are `LeaseLost` and none of them brings a
/// record back; the next claim is a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_owner_cannot_resurrect() {
    let Some(store) = support::store("edges-late").await else {
        return;
    };
    let mut admin = admin().await;
    let fp = Fingerprint::from_bytes([3; 32]);
    let key = Key::new("edges", "late").unwrap();
    let at = support::record_key(store.prefix(), &key);
    let token = claimed(&store, &key, &fp, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        store.renew(&key, token, LONG).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.complete(&key, token, out(b"late"), LONG).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.release(&key, token).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(raw(&mut admin, &at).await, None);
    claimed(&store, &key, &fp, LONG).await;

    // A completed record whose TTL ran out is absent too, and its owner cannot renew it
    // back into a claim, nor complete it again.
    let key = Key::new("edges", "late-done").unwrap();
    let at = support::record_key(store.prefix(), &key);
    let token = claimed(&store, &key, &fp, LONG).await;
    store
        .complete(&key, token, out(b"x"), Duration::from_millis(100))
        .await
        .unwrap();
    assert!(matches!(
        store.renew(&key, token, LONG).await,
        Err(StoreError::LeaseLost)
    ));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        store.complete(&key, token, out(b"y"), LONG).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.renew(&key, token, LONG).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(raw(&mut admin, &at).await, None);
    claimed(&store, &key, &fp, LONG).await;
}

/// The owner's renew on its completed record is refused and changes neither the value nor
/// the TTL (it must not turn the record back into a claim or shorten it to a lease); a
/// second complete with another output is `Ok` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_record_is_not_renewed_or_rewritten() {
    let Some(store) = support::store("edges-final").await else {
        return;
    };
    let mut admin = admin().await;
    let fp = Fingerprint::from_bytes([4; 32]);
    let key = Key::new("edges", "final").unwrap();
    let at = support::record_key(store.prefix(), &key);
    let token = claimed(&store, &key, &fp, LONG).await;
    store
        .complete(&key, token, out(b"first"), Duration::from_secs(3600))
        .await
        .unwrap();
    let value = raw(&mut admin, &at).await;
    let before = pttl(&mut admin, &at).await;
    assert!(matches!(
        store.renew(&key, token, Duration::from_secs(1)).await,
        Err(StoreError::LeaseLost)
    ));
    store
        .complete(&key, token, out(b"second"), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        store.release(&key, token).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(raw(&mut admin, &at).await, value);
    let after = pttl(&mut admin, &at).await;
    assert!(
        after <= before && after > 3_500_000,
        "{before} then {after}"
    );
}

/// `lease_remaining` of a busy claim is the owner's lease (after a renew, the renewed one):
/// never zero, never more than the lease asked for (down to whole milliseconds), and a
/// huge lease is clamped rather than overflowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_remaining_is_the_owners_lease() {
    let Some(store) = support::store("edges-lease").await else {
        return;
    };
    let mut admin = admin().await;
    let fp = Fingerprint::from_bytes([5; 32]);
    for (i, lease) in [
        Duration::from_millis(1),
        Duration::from_millis(1234),
        Duration::from_secs(30),
        Duration::from_secs(86_400 * 365 * 100),
        Duration::MAX,
    ]
    .into_iter()
    .enumerate()
    {
        let key = Key::new("edges-lease", &(i as u64)).unwrap();
        let at = support::record_key(store.prefix(), &key);
        let token = claimed(&store, &key, &fp, lease).await;
        if lease > Duration::from_millis(1) {
            let busy = match store.claim(&key, &fp, Duration::from_secs(1)).await {
                Ok(Claim::InProgress(b)) => b,
                other => panic!("lease {lease:?}: {other:?}"),
            };
            let remaining = busy.lease_remaining.expect("Redis reports it");
            assert!(
                remaining > Duration::ZERO && remaining <= lease,
                "lease {lease:?}: {remaining:?}"
            );
            let ms = pttl(&mut admin, &at).await;
            assert!(
                ms > 0 && Duration::from_millis(ms as u64) <= remaining,
                "lease {lease:?}: PTTL {ms} > reported {remaining:?}"
            );
            store
                .renew(&key, token, Duration::from_millis(4321))
                .await
                .unwrap();
            match store.claim(&key, &fp, Duration::from_secs(1)).await {
                Ok(Claim::InProgress(b)) => {
                    assert_eq!(b.lease_remaining, Some(Duration::from_millis(4321)));
                }
                other => panic!("lease {lease:?} renewed: {other:?}"),
            }
        }
        let _ = store.release(&key, token).await;
    }
}

async fn flush(admin: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(admin)
        .await
        .unwrap();
}

/// The server forgets its scripts (`SCRIPT FLUSH`, as after a restart or failover) between
/// every operation: each fenced operation still works, reloading its script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_scripts_are_reloaded() {
    let Some(support::Owned {
        store,
        mut admin,
        server: _server,
    }) = support::own_server(&[]).await
    else {
        return;
    };
    let fp = Fingerprint::from_bytes([6; 32]);
    for round in 0..3u64 {
        let key = Key::new("edges-noscript", &round).unwrap();
        flush(&mut admin).await;
        let token = claimed(&store, &key, &fp, LONG).await;
        flush(&mut admin).await;
        store.renew(&key, token, LONG).await.unwrap();
        flush(&mut admin).await;
        if round == 1 {
            store.release(&key, token).await.unwrap();
            continue;
        }
        store.complete(&key, token, out(b"ok"), LONG).await.unwrap();
        flush(&mut admin).await;
        assert!(matches!(
            store.release(&key, token).await,
            Err(StoreError::LeaseLost)
        ));
        match store.claim(&key, &fp, LONG).await {
            Ok(Claim::Completed(r)) => assert_eq!(&r.output.bytes[..], b"ok"),
            other => panic!("{other:?}"),
        }
    }
}

/// Hostile prefixes are refused as configuration errors; prefixes that are merely odd
/// (glob characters, the longest allowed) work and keep records apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_prefixes_are_refused() {
    let Ok(store) = RedisStore::connect(&support::url()).await else {
        return;
    };
    let long = "p".repeat(129);
    for bad in [
        "", "{", "}", "a{b}", "{}", "a b", " ", "a\nb", "a\rb", "a\tb", "\0", "ü", &long,
    ] {
        assert!(
            matches!(store.clone().with_prefix(bad), Err(idem::Error::Config(_))),
            "{bad:?}"
        );
    }
    let base = support::unique_prefix("edges-glob");
    let fp = Fingerprint::from_bytes([8; 32]);
    let key = Key::new("edges", "glob").unwrap();
    let mut tokens = Vec::new();
    for odd in ["*", "?", "[a]", "\\"] {
        let prefix = format!("{base}{odd}");
        let s = store.clone().with_prefix(&prefix).unwrap();
        tokens.push((s.clone(), claimed(&s, &key, &fp, LONG).await));
    }
    let longest = store
        .clone()
        .with_prefix(&format!("{base}{}", "q".repeat(128 - base.len())))
        .unwrap();
    tokens.push((longest.clone(), claimed(&longest, &key, &fp, LONG).await));
    for (s, token) in tokens {
        s.release(&key, token).await.unwrap();
    }
}

#[idempotent(key = key, store = store, skip(started, gate), lease = "60s")]
async fn slow_echo(
    store: &RedisStore,
    started: &tokio::sync::Semaphore,
    gate: &tokio::sync::Semaphore,
    key: &str,
    payload: u32,
) -> Result<u32, idem::Error> {
    started.add_permits(1);
    let _permit = gate.acquire().await.expect("gate open");
    Ok(payload)
}

/// The same key with another payload is `PayloadMismatch` while the first call is still in
/// progress (not `InProgress`) and after it completed (not a replay); the same payload gets
/// `InProgress`, then the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_on_both_paths() {
    let Some(store) = support::store("edges-mismatch").await else {
        return;
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let first = {
        let (store, started, gate) = (store.clone(), started.clone(), gate.clone());
        tokio::spawn(async move { slow_echo(&store, &started, &gate, "k", 1).await })
    };
    started.acquire().await.unwrap().forget();
    let open = Arc::new(tokio::sync::Semaphore::new(100));
    let side = tokio::sync::Semaphore::new(0);
    assert!(matches!(
        slow_echo(&store, &side, &open, "k", 1).await,
        Err(idem::Error::InProgress)
    ));
    assert!(matches!(
        slow_echo(&store, &side, &open, "k", 2).await,
        Err(idem::Error::PayloadMismatch)
    ));
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(slow_echo(&store, &side, &open, "k", 1).await.unwrap(), 1);
    assert!(matches!(
        slow_echo(&store, &side, &open, "k", 2).await,
        Err(idem::Error::PayloadMismatch)
    ));
    assert_eq!(side.available_permits(), 0, "a duplicate ran the body");
}

/// A server whose `proto-max-bulk-len` is below idem's 64 MiB: the store's
/// `max_output_len` must be what that server accepts (the contract: "stores with a
/// server-side limit learn it from the server"), so the conformance check of the largest
/// output holds — and an output the server would refuse never reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_output_len_follows_the_server() {
    let Some(support::Owned {
        store,
        server: _server,
        ..
    }) = support::own_server(&["--proto-max-bulk-len", "1mb"]).await
    else {
        return;
    };
    assert_eq!(
        store.max_output_len(),
        1 << 20,
        "the server accepts arguments of at most 1 MiB"
    );
    idem::testing::largest_output_round_trips(&Arc::new(store)).await;
}

/// A loopback proxy in front of `upstream` that, once `armed`, forwards the next claim
/// (`SET … NX … GET`) to the server and then drops the connection before the reply gets
/// back: the server applied the claim, the client never heard.
fn reply_dropping_proxy(upstream: u16, armed: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let cut = Arc::new(AtomicBool::new(false));
            let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
            let (mut s_in, mut s_out) = (server.try_clone().unwrap(), server);
            let (armed, cut2) = (armed.clone(), cut.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0; 1 << 16];
                while let Ok(n @ 1..) = c_in.read(&mut buf) {
                    let chunk = &buf[..n];
                    let has = |w: &[u8]| chunk.windows(w.len()).any(|x| x == w);
                    let claim = has(b"SET") && has(b"NX") && has(b"GET");
                    if claim && armed.swap(false, Ordering::SeqCst) {
                        cut2.store(true, Ordering::SeqCst);
                        let _ = s_out.write_all(chunk);
                        std::thread::sleep(Duration::from_millis(100));
                        let _ = c_in.shutdown(Shutdown::Both);
                        let _ = s_out.shutdown(Shutdown::Both);
                        return;
                    }
                    if s_out.write_all(chunk).is_err() {
                        return;
                    }
                }
                let _ = s_out.shutdown(Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0; 1 << 16];
                while let Ok(n @ 1..) = s_in.read(&mut buf) {
                    if cut.load(Ordering::SeqCst) || c_out.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = c_out.shutdown(Shutdown::Both);
            });
        }
    });
    port
}

/// On a Redis Cluster the client resends a request whose connection dropped, even when the
/// server had applied it. A claim applied, its reply lost, and sent again finds the record
/// its own first send wrote: the caller owns the key (not `InProgress` of its own claim,
/// which would refuse every call of the key — its own included — until the lease ran out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_resent_after_its_reply_was_lost_owns_the_key() {
    if !support::have_redis_server() {
        return;
    }
    let port = free_port();
    let bus = free_port();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = reply_dropping_proxy(port, armed.clone());
    let dir = std::env::temp_dir().join(support::unique_prefix("resend").replace(':', "_"));
    std::fs::create_dir_all(&dir).unwrap();
    let _server = Server::start_with(
        port,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
            "--cluster-announce-ip",
            "127.0.0.1",
            "--cluster-announce-port",
            &proxy.to_string(),
            "--dir",
            dir.to_str().unwrap(),
        ],
    )
    .expect("start redis-server");
    let url = format!("redis://127.0.0.1:{port}");
    let mut admin = loop {
        if let Ok(c) = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut admin)
        .await
        .unwrap();
    for _ in 0..200 {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut admin)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = RedisStore::connect_cluster([format!("redis://127.0.0.1:{proxy}")])
        .await
        .expect("cluster through the proxy");
    let fp = Fingerprint::from_bytes([11; 32]);
    let key = Key::new("edges-resend", "k").unwrap();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let got = store.claim(&key, &fp, LONG).await;
    assert!(
        !armed.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy saw the claim"
    );
    let token = match got {
        Ok(Claim::Claimed(token)) => token,
        other => panic!("the resent claim got {other:?}"),
    };
    store
        .complete(&key, token, out(b"once"), LONG)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
