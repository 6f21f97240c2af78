//! A Redis restart mid-stream, on an instance this test owns (never the shared server):
//! while it is down every call is a clean `Error::Store`, no panic; once it is back (empty,
//! its scripts forgotten) the same store works again without being rebuilt.

mod support;

use idem::idempotent;
use idem::redis::RedisStore;
use idem::redis::redis;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Server, connect_retrying, free_port};

#[idempotent(key = key, store = store, skip(runs))]
async fn work(store: &RedisStore, runs: &AtomicUsize, key: &str) -> Result<u64, idem::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(key.len() as u64)
}

async fn shutdown_nosave(url: &str) {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    // The server closes the connection instead of replying.
    let _ = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async::<()>(&mut conn)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_is_a_clean_store_error_then_recovers() {
    if !support::have_redis_server() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut server = Server::start(port).expect("start redis-server");
    let store = Arc::new(
        connect_retrying(&url)
            .await
            .with_prefix("restart:")
            .unwrap(),
    );
    let runs = Arc::new(AtomicUsize::new(0));

    // A stream of calls, each with a new key, that runs across the shutdown.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (store, runs, stop) = (store.clone(), runs.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut store_errors, mut n) = (0, 0, 0);
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match work(&store, &runs, &format!("stream-{n}")).await {
                    Ok(_) => ok += 1,
                    Err(idem::Error::Store(_)) => store_errors += 1,
                    Err(e) => panic!("call {n}: expected Ok or Error::Store, got {e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, store_errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    shutdown_nosave(&url).await;
    server.wait_exit();

    // Down: clean errors, no panic, and soon (the caller retries later, say with a 503).
    for i in 0..3 {
        let call = Instant::now();
        match work(&store, &runs, &format!("down-{i}")).await {
            Err(e @ idem::Error::Store(_)) => assert!(e.is_retryable(), "{e}"),
            other => panic!("while down: expected Error::Store, got {other:?}"),
        }
        assert!(
            call.elapsed() < Duration::from_secs(3),
            "a call while down took {:?}",
            call.elapsed()
        );
    }

    // Back (empty, scripts forgotten): the same store works again.
    let _server = Server::start(port).expect("restart redis-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let after_runs = AtomicUsize::new(0);
    eprintln!("down phase done after {:?}", started.elapsed());
    loop {
        match work(&store, &after_runs, "after").await {
            Ok(v) => {
                assert_eq!(v, 5);
                break;
            }
            Err(idem::Error::Store(e)) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after the restart: {e:?}"),
        }
    }
    // And it replays from the new server.
    eprintln!("recovered after {:?}", started.elapsed());
    assert_eq!(work(&store, &after_runs, "after").await.unwrap(), 5);
    assert_eq!(after_runs.load(Ordering::SeqCst), 1, "one run of `after`");

    stop.store(true, Ordering::SeqCst);
    let (ok, store_errors) = stream.await.expect("the stream panicked");
    assert!(ok > 0, "calls succeeded before the shutdown");
    let _ = writeln!(
        std::io::stderr(),
        "restart stream: {ok} ok, {store_errors} store errors"
    );
}
