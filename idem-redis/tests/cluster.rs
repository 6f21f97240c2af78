//! The conformance suite and a 64-task race on a real Redis Cluster of three primaries,
//! started by this test (`support/cluster.rs`), never the shared server.

mod support;

use idem::redis::RedisStore;
use std::sync::Arc;
use std::time::Instant;
use support::cluster::{Cluster, cli, have_binaries};

/// Every conformance check, one after another.
macro_rules! run_checks {
    ($store:ident $($check:ident),* $(,)?) => {$(
        let started = Instant::now();
        idem::testing::$check(&$store).await;
        eprintln!(
            "cluster: {} ok in {:?}",
            stringify!($check),
            started.elapsed()
        );
    )*};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_race_on_a_three_primary_cluster() {
    if !have_binaries() {
        return;
    }
    let cluster = Cluster::start();
    let store = RedisStore::connect_cluster(cluster.urls())
        .await
        .expect("connect to the cluster")
        .with_prefix(&support::unique_prefix("cluster"))
        .expect("prefix");
    let store = Arc::new(store);
    idem_core::__conformance_checks!((run_checks)(store));
    idem::testing::cancelled_batches_leave_nothing_behind(&store).await;

    // 64 racers on each of several keys (so on several slots and primaries).
    support::race::racers_run_the_body_once(&store, "cluster-race", 6).await;

    // The records really spread over the primaries.
    let holding = cluster
        .ports
        .iter()
        .filter(|&&port| cli(port, &["dbsize"]).is_some_and(|n| n.trim() != "0"))
        .count();
    assert_eq!(holding, 3, "every primary holds records");
}
