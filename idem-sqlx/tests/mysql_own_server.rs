//! `MySqlStore` on a MariaDB server of the test's own, started with settings the shared
//! server must keep. A test binary of its own: starting a server takes a core for a second,
//! which would starve the timing checks of `mysql.rs` (a 300 ms lease renewed every 100 ms)
//! running beside it.
#![cfg(feature = "mysql")]

mod support;

use idem_core::{Fingerprint, Key, Store};
use idem_sqlx::MySqlStore;
use sqlx::mysql::MySqlPoolOptions;
use std::sync::Arc;
use std::time::Duration;
use support::claimed;

const LONG: Duration = Duration::from_secs(600);

fn new_key(what: &str) -> Key {
    Key::new(
        "idem_sqlx::tests::mysql_own",
        support::unique_table(what).as_str(),
    )
    .unwrap()
}

/// A batch of coalesced completes is cut into statements that fit the server's
/// `max_allowed_packet` (each output up to 16 KiB is batched, so a batch of 200 carries
/// 3.2 MiB): on a server of the test's own with a 1 MiB packet, 200 callers completing at
/// once all record their outputs, and each replays its own. Before the cut, the one
/// statement was refused and every caller in it got a store error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_completes_fit_a_small_packet() {
    const CALLERS: usize = 200;
    let Some(server) = support::mariadb::OwnMariaDb::start(&["--max-allowed-packet=1M"]).await
    else {
        return;
    };
    let pool = MySqlPoolOptions::new()
        .max_connections(8)
        .connect(&server.url())
        .await
        .unwrap();
    let store = Arc::new(MySqlStore::new(pool.clone()).with_coalescing(true));
    store.migrate().await.unwrap();
    assert_eq!(store.max_output_len(), (1 << 20) - 1024);
    let fp = Fingerprint::from_bytes([3; 32]);
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let key = new_key(&format!("packet_{i}"));
                let token = claimed(&*store, &key, &fp, LONG).await;
                let output = support::output(vec![i as u8; 16 * 1024]);
                barrier.wait().await;
                store
                    .complete(&key, token, output.clone(), LONG)
                    .await
                    .unwrap();
                (key, output)
            })
        })
        .collect();
    for task in tasks {
        let (key, output) = task.await.unwrap();
        assert_eq!(support::replayed(&*store, &key, &fp).await, output);
    }
    pool.close().await;
    drop(server);
}
