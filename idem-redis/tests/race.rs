//! 64 tasks call one `#[idempotent]` function with one key through the Redis store at
//! once: the body runs exactly once, and every caller gets its value.

mod support;

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_racers_run_the_body_once() {
    let Some(store) = support::store("race").await else {
        return;
    };
    let store = Arc::new(store);
    support::race::racers_run_the_body_once(&store, "race", 3).await;
}
