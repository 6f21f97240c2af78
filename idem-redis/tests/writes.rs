//! A replay must not write: on a server this test owns, Redis' count of changes since the
//! last save (`rdb_changes_since_last_save`, which every write command increments, inside
//! scripts too) does not move while completed records are replayed and in-progress ones
//! reported — and does move for a fresh claim, so the measure is live.

mod support;

use idem::redis::redis;
use idem::store::{Claim, Outcome, Output};
use idem::{Fingerprint, Key, Store};
use std::time::Duration;

async fn changes(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("rdb_changes_since_last_save in INFO")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_busy_reports_do_not_write() {
    let Some(support::Owned {
        store,
        mut admin,
        server: _server,
    }) = support::own_server(&[]).await
    else {
        return;
    };
    let long = Duration::from_secs(600);
    let fp = Fingerprint::from_bytes([1; 32]);

    let done = Key::new("writes", "done").unwrap();
    let Ok(Claim::Claimed(token)) = store.claim(&done, &fp, long).await else {
        panic!("fresh claim");
    };
    let out = Output {
        outcome: Outcome::Ok,
        bytes: b"recorded".to_vec().into(),
    };
    store.complete(&done, token, out, long).await.unwrap();
    let busy = Key::new("writes", "busy").unwrap();
    let Ok(Claim::Claimed(_)) = store.claim(&busy, &fp, long).await else {
        panic!("fresh claim");
    };

    let before = changes(&mut admin).await;
    for _ in 0..50 {
        assert!(matches!(
            store.claim(&done, &fp, long).await,
            Ok(Claim::Completed(_))
        ));
        assert!(matches!(
            store.claim(&busy, &fp, long).await,
            Ok(Claim::InProgress(_))
        ));
    }
    assert_eq!(changes(&mut admin).await, before, "replays wrote");

    let fresh = Key::new("writes", "fresh").unwrap();
    let Ok(Claim::Claimed(_)) = store.claim(&fresh, &fp, long).await else {
        panic!("fresh claim");
    };
    assert!(
        changes(&mut admin).await > before,
        "a fresh claim must count as a write"
    );
}
