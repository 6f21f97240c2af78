//! Connecting the SQL stores' tests to their databases.
//!
//! Server-backed suites read their URL from the environment (`IDEM_TEST_POSTGRES_URL`,
//! `IDEM_TEST_MYSQL_URL`). Without it they are skipped and say so on the terminal — unless
//! `IDEM_REQUIRE_SERVERS=1` (as CI sets), where a missing URL fails the test.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

/// A table name no other test, process or run uses.
pub fn unique_table(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{:x}_{}",
        std::process::id(),
        nanos & 0xffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The URL in `var`, or `None` after telling the terminal (once) that the suite is skipped.
pub fn server_url(var: &str, suite: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("IDEM_REQUIRE_SERVERS").is_ok_and(|v| v == "1") {
                panic!("IDEM_REQUIRE_SERVERS=1 but {var} is not set: the {suite} suite cannot run");
            }
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                // Straight to the terminal: libtest captures print!/eprint! of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "note: SKIPPED the {suite} suite: set {var} to run it"
                );
            });
            None
        }
    }
}

/// A test module per conformance check, each running the check twice through the test
/// file's `with_store`: as a new store runs it (its learned order starts by reading), and
/// with every claim inserting first. The argument names `with_store`'s closure parameters,
/// the store first: `conformance!(store)`, `conformance!(store, _db)`.
macro_rules! conformance {
    (@each $params:tt $($check:ident),* $(,)?) => {
        $($crate::support::conformance!(@one $params $check);)*
    };
    (@one [$store:ident $($rest:tt)*] $check:ident) => {
        mod $check {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn learned() {
                with_store(|$store $($rest)*| async move { testing::$check(&$store).await }).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn insert_first() {
                with_store(|$store $($rest)*| async move {
                    let $store = Arc::unwrap_or_clone($store).with_claim_order(ClaimOrder::InsertFirst);
                    testing::$check(&Arc::new($store)).await
                })
                .await;
            }
        }
    };
    ($($params:tt)*) => {
        idem_core::__conformance_checks!(($crate::support::conformance) (@each [$($params)*]));
    };
}
pub(crate) use conformance;
