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

/// A test module per transactional conformance check, each running the check twice, as
/// [`conformance!`] does. The test file provides `with_store` and a function
/// `transactions(&store) -> Arc<Transactions<_>>`; the argument names `with_store`'s
/// closure parameters, as for [`conformance!`].
macro_rules! tx_conformance {
    (@each $params:tt $($check:ident),* $(,)?) => {
        $($crate::support::tx_conformance!(@one $params $check);)*
    };
    (@one [$store:ident $($rest:tt)*] $check:ident) => {
        mod $check {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn learned() {
                with_store(|$store $($rest)*| async move {
                    let transactions = transactions(&$store);
                    testing::$check(&$store, &transactions).await
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn insert_first() {
                with_store(|$store $($rest)*| async move {
                    let transactions = transactions(&$store);
                    let $store = Arc::unwrap_or_clone($store).with_claim_order(ClaimOrder::InsertFirst);
                    testing::$check(&Arc::new($store), &transactions).await
                })
                .await;
            }
        }
    };
    ($($params:tt)*) => {
        idem_core::__tx_conformance_checks!(($crate::support::tx_conformance) (@each [$($params)*]));
    };
}
pub(crate) use tx_conformance;

/// Transactions on a pool, for the transactional conformance checks.
pub struct Transactions<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    /// The statement that begins one, if not the database's default `BEGIN`.
    begin: Option<&'static str>,
}

impl<DB: sqlx::Database> Transactions<DB> {
    /// Transactions begun with `BEGIN`.
    pub fn new(pool: &sqlx::Pool<DB>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Transactions {
            pool: pool.clone(),
            begin: None,
        })
    }

    /// Transactions begun with `BEGIN IMMEDIATE`, as SQLite's transactional mode needs.
    pub fn immediate(pool: &sqlx::Pool<DB>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Transactions {
            pool: pool.clone(),
            begin: Some("BEGIN IMMEDIATE"),
        })
    }
}

impl<DB: sqlx::Database> idem_core::testing::TxHarness for Transactions<DB> {
    type Tx = sqlx::Transaction<'static, DB>;

    async fn begin(&self) -> Self::Tx {
        let tx = match self.begin {
            Some(statement) => self.pool.begin_with(statement).await,
            None => self.pool.begin().await,
        };
        tx.unwrap_or_else(|e| panic!("cannot begin a transaction: {e}"))
    }

    async fn commit(&self, tx: Self::Tx) {
        tx.commit()
            .await
            .unwrap_or_else(|e| panic!("cannot commit: {e}"));
    }

    async fn rollback(&self, tx: Self::Tx) {
        tx.rollback()
            .await
            .unwrap_or_else(|e| panic!("cannot roll back: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// Checks every SQL store runs the same way (the store-specific setup is in each file).

use idem_core::{Claim, Fingerprint, Key, Outcome, Output, Store, StoreError, Token};
use std::time::Duration;

pub const LONG_LEASE: Duration = Duration::from_secs(600);

/// Table names that are reserved words in PostgreSQL, SQLite or MySQL/MariaDB (most in all
/// three), in several cases: each must work as a table name (statements quote it).
pub const RESERVED_WORDS: &[&str] = &[
    "select",
    "from",
    "where",
    "order",
    "group",
    "by",
    "having",
    "limit",
    "offset",
    "table",
    "index",
    "key",
    "keys",
    "primary",
    "check",
    "constraint",
    "references",
    "foreign",
    "unique",
    "default",
    "user",
    "current_user",
    "all",
    "and",
    "or",
    "not",
    "null",
    "true",
    "in",
    "is",
    "like",
    "between",
    "case",
    "when",
    "then",
    "else",
    "end",
    "as",
    "on",
    "join",
    "left",
    "cross",
    "natural",
    "using",
    "union",
    "except",
    "distinct",
    "insert",
    "update",
    "delete",
    "create",
    "drop",
    "alter",
    "into",
    "values",
    "set",
    "grant",
    "to",
    "with",
    "desc",
    "do",
    "for",
    "both",
    "analyse",
    "window",
    "returning",
    "column",
    "collate",
    "fetch",
    "lateral",
    "interval",
    "int",
    "varchar",
    "release",
    "read",
    "lock",
    "match",
    "range",
    "rows",
    "schema",
    "database",
    "describe",
    "explain",
    "show",
    "if",
    "exists",
    "replace",
    "rename",
    "option",
    "condition",
    "cursor",
    "div",
    "mod",
    "usage",
    "trigger",
    "procedure",
    "function",
    "return",
    "begin",
    "commit",
    "rollback",
    "transaction",
    "rowid",
];

/// Reserved words in other cases: the same table as the lower-case word on PostgreSQL
/// (which folds) and SQLite (case-insensitive), so run after those, not beside them.
pub const RESERVED_WORDS_CASED: &[&str] = &["SELECT", "Order", "GROUP", "Key"];

/// Runs `check` for every reserved word: the lower-case ones on 8 tasks at once (DDL is
/// slow on MariaDB), then the others one by one.
pub async fn for_each_reserved_word<F, Fut>(check: F)
where
    F: Fn(&'static str) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in RESERVED_WORDS.chunks(RESERVED_WORDS.len().div_ceil(8)) {
        let check = check.clone();
        tasks.spawn(async move {
            for word in chunk {
                check(word).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for word in RESERVED_WORDS_CASED {
        check(word).await;
    }
}

pub fn output(bytes: impl Into<bytes::Bytes>) -> Output {
    Output {
        outcome: Outcome::Ok,
        bytes: bytes.into(),
    }
}

pub async fn claimed<S: Store + ?Sized>(
    store: &S,
    key: &Key,
    fp: &Fingerprint,
    lease: Duration,
) -> Token {
    match store.claim(key, fp, lease).await {
        Ok(Claim::Claimed(token)) => token,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

pub async fn replayed<S: Store + ?Sized>(store: &S, key: &Key, fp: &Fingerprint) -> Output {
    match store.claim(key, fp, LONG_LEASE).await {
        Ok(Claim::Completed(record)) => {
            assert_eq!(record.fingerprint, *fp);
            record.output
        }
        other => panic!("expected Completed, got {other:?}"),
    }
}

/// Claim, renew, complete, replay, release and purge on `store` (a table with an unusual
/// name): every statement the store sends.
pub async fn exercise<S: Store + ?Sized>(store: &S) {
    let fp = Fingerprint::from_bytes([7; 32]);
    let done = Key::new("exercise", "done").unwrap();
    let token = claimed(store, &done, &fp, LONG_LEASE).await;
    store.renew(&done, token, LONG_LEASE).await.unwrap();
    store
        .complete(&done, token, output(&b"\x01out"[..]), LONG_LEASE)
        .await
        .unwrap();
    assert_eq!(replayed(store, &done, &fp).await, output(&b"\x01out"[..]));
    let released = Key::new("exercise", "released").unwrap();
    let token = claimed(store, &released, &fp, LONG_LEASE).await;
    store.release(&released, token).await.unwrap();
    claimed(store, &released, &fp, LONG_LEASE).await;
    let gone = Key::new("exercise", "gone").unwrap();
    claimed(store, &gone, &fp, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    // The expired claim was taken over or purged: a new claim either way.
    claimed(store, &gone, &fp, LONG_LEASE).await;
}

/// `complete` is idempotent for its owner: again with the token that completed the record
/// (a retry after a lost reply) it is `Ok` and the record stays as first written; another
/// token, and `release`/`renew` after completion, are refused.
pub async fn complete_is_idempotent_for_its_owner<S: Store + ?Sized>(store: &S) {
    let fp = Fingerprint::from_bytes([3; 32]);
    let key = Key::new("complete_twice", "k").unwrap();
    let first = output(&b"\x01first"[..]);
    let token = claimed(store, &key, &fp, LONG_LEASE).await;
    store
        .complete(&key, token, first.clone(), LONG_LEASE)
        .await
        .unwrap();
    store
        .complete(&key, token, first.clone(), LONG_LEASE)
        .await
        .expect("completing again with the owner's token is Ok");
    store
        .complete(
            &key,
            token,
            output(&b"\x01second"[..]),
            Duration::from_millis(1),
        )
        .await
        .expect("completing again with the owner's token is Ok, whatever it carries");
    assert_eq!(replayed(store, &key, &fp).await, first, "as first written");
    let other = Token::new(token.get() ^ 1);
    for (what, result) in [
        (
            "complete, another token",
            store.complete(&key, other, first.clone(), LONG_LEASE).await,
        ),
        ("release after completion", store.release(&key, token).await),
        (
            "renew after completion",
            store.renew(&key, token, LONG_LEASE).await,
        ),
    ] {
        assert!(
            matches!(result, Err(StoreError::LeaseLost)),
            "{what}: {result:?}"
        );
    }
    assert_eq!(
        replayed(store, &key, &fp).await,
        first,
        "still as first written"
    );

    // Once the record expired and another call took the key over, the first owner's retry
    // is refused: the record is no longer the one it completed.
    let key = Key::new("complete_twice", "taken over").unwrap();
    let old = claimed(store, &key, &fp, LONG_LEASE).await;
    store
        .complete(&key, old, first.clone(), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new = claimed(store, &key, &fp, LONG_LEASE).await;
    let retried = store.complete(&key, old, first.clone(), LONG_LEASE).await;
    assert!(matches!(retried, Err(StoreError::LeaseLost)), "{retried:?}");
    store
        .complete(&key, new, first.clone(), LONG_LEASE)
        .await
        .unwrap();
}

/// An output of exactly `max_output_len()` bytes (as the store states it after a claim)
/// is recorded and replayed byte for byte; returns that length.
pub async fn largest_output_round_trips<S: Store + ?Sized>(store: &S) -> usize {
    let fp = Fingerprint::from_bytes([5; 32]);
    let key = Key::new("largest_output", "k").unwrap();
    let token = claimed(store, &key, &fp, LONG_LEASE).await;
    let max = store.max_output_len();
    let bytes: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    let started = std::time::Instant::now();
    store
        .complete(&key, token, output(bytes.clone()), LONG_LEASE)
        .await
        .unwrap_or_else(|e| panic!("complete of {max} bytes (max_output_len): {e}"));
    let replayed = replayed(store, &key, &fp).await;
    assert!(replayed.bytes == bytes, "the {max} bytes came back changed");
    let _ = writeln!(
        std::io::stderr(),
        "note: {max} bytes recorded and replayed in {:?}",
        started.elapsed()
    );
    max
}
