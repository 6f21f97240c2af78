//! Connecting the SQL stores' tests to their databases.
//!
//! Server-backed suites read their URL from the environment (`IDEM_TEST_POSTGRES_URL`,
//! `IDEM_TEST_MYSQL_URL`). Without it they are skipped and say so on the terminal — unless
//! `IDEM_REQUIRE_SERVERS=1` (as CI sets), where a missing URL fails the test.
// Each test binary uses part of it: what one does not use is not dead.
#![allow(dead_code, unreachable_pub, unused_imports, unused_macros)]

pub mod coalesce;
#[cfg(feature = "mysql")]
pub mod mariadb;

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

/// A test module per conformance check, each running the check three times through the
/// test file's `with_store`: as a new store runs it (its learned order starts by reading),
/// with every claim inserting first, and with claims and completes coalesced. The argument names `with_store`'s closure parameters,
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

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn coalesced() {
                with_store(|$store $($rest)*| async move {
                    let $store = Arc::unwrap_or_clone($store).with_coalescing(true);
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

use idem_core::codec::{self, Bincode, Codec};
use idem_core::store::{Claim, Outcome, Output, Token};
use idem_core::{Error, Fingerprint, Key, Store, StoreError};
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

/// Every call's future stays small: a store call's future is boxed, so it is copied whole
/// when made, and sqlx's `acquire` future (~8.6 KB) held inline made them 4–26 KB each — a
/// quarter of a coalesced call's CPU time went to copying them. Neither polled nor run.
pub fn calls_stay_small<S: Store + ?Sized>(store: &S) {
    const MOST: usize = 3 * 1024;
    let key = Key::new("idem_sqlx::tests::sizes", "key").unwrap();
    let (fp, lease, token) = (Fingerprint::from_bytes([1; 32]), LONG_LEASE, Token::new(1));
    let sizes = [
        (
            "claim",
            std::mem::size_of_val(&*store.claim(&key, &fp, lease)),
        ),
        (
            "complete",
            std::mem::size_of_val(&*store.complete(&key, token, output(b"x".to_vec()), lease)),
        ),
        (
            "renew",
            std::mem::size_of_val(&*store.renew(&key, token, lease)),
        ),
        (
            "release",
            std::mem::size_of_val(&*store.release(&key, token)),
        ),
    ];
    for (call, size) in sizes {
        assert!(
            size <= MOST,
            "{call}'s future is {size} bytes (at most {MOST})"
        );
    }
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

/// The key is claimable again within 1 s: `claim` returns `Claimed` (polling every 20 ms).
pub async fn claimable_within_a_second<S: Store + ?Sized>(store: &S, key: &Key, what: &str) {
    let fp = Fingerprint::from_bytes([9; 32]);
    let started = std::time::Instant::now();
    loop {
        match store.claim(key, &fp, LONG_LEASE).await {
            Ok(Claim::Claimed(_)) => return,
            Ok(Claim::InProgress(busy)) if started.elapsed() > Duration::from_secs(1) => panic!(
                "{what}: the key is still in progress 1 s later (an orphan claim, lease \
                 remaining {:?})",
                busy.lease_remaining
            ),
            Ok(Claim::InProgress(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("{what}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Records damaged behind the store's back: the checks are the same on every backend; what
// differs is the SQL that damages a row, which each backend's tests give.

/// `bytes` in hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` as an SQLite or MySQL literal: `x'…'`.
pub fn x_literal(bytes: &[u8]) -> String {
    format!("x'{}'", hex(bytes))
}

/// Writes to a record behind the store's back: `UPDATE <table> SET <set> WHERE key_digest =
/// <the key's digest>`, with the backend's literal for bytes and its `exec`, which returns
/// the rows the statement changed or the database's refusal.
pub struct Tamper<F> {
    table: String,
    literal: fn(&[u8]) -> String,
    exec: F,
}

impl<F> Tamper<F>
where
    F: AsyncFnMut(String) -> Result<u64, sqlx::Error>,
{
    pub fn new(table: &str, literal: fn(&[u8]) -> String, exec: F) -> Self {
        Tamper {
            table: table.to_owned(),
            literal,
            exec,
        }
    }

    /// `bytes` as the backend's literal.
    pub fn literal(&self, bytes: &[u8]) -> String {
        (self.literal)(bytes)
    }

    /// Runs `SET <set>` on `key`'s record.
    pub async fn set(&mut self, key: &Key, set: &str) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "UPDATE {} SET {set} WHERE key_digest = {}",
            self.table,
            self.literal(key.digest().as_bytes())
        );
        (self.exec)(sql).await
    }
}

/// Garbage written over the output of a completed record: the replay returns it byte for
/// byte, and decoding it is a clean `Error::Codec` — never a panic or another value.
pub async fn corrupt_outputs_are_codec_errors<S, F>(store: &S, tamper: &mut Tamper<F>)
where
    S: Store + ?Sized,
    F: AsyncFnMut(String) -> Result<u64, sqlx::Error>,
{
    let good = codec::encode::<Bincode, u64>(&42).unwrap();
    let tag = Bincode::TAG;
    let cases: [(&str, Vec<u8>); _] = [
        ("empty", Vec::new()),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("garbage with the bincode tag", vec![tag, 0xfd, 0xff]),
        ("garbage after the tag", vec![tag, 0xff, 0xff]),
        ("trailing bytes", vec![tag, 1, 2, 3]),
        ("a foreign tag", vec![0xde, 0xad, 0xbe, 0xef]),
        ("another foreign tag", vec![tag.wrapping_add(100), 1, 2, 3]),
        ("a foreign tag alone", vec![0x02]),
        ("bytes around a NUL", vec![0xff, 0x00, 0xff]),
    ];
    let fp = Fingerprint::from_bytes([7; 32]);
    for (what, garbage) in cases {
        let key = Key::new("corrupt output", &unique_table("k")).unwrap();
        let token = claimed(store, &key, &fp, LONG_LEASE).await;
        store
            .complete(&key, token, output(good.clone()), LONG_LEASE)
            .await
            .unwrap();
        let set = format!("output = {}", tamper.literal(&garbage));
        let changed = tamper.set(&key, &set).await;
        assert_eq!(
            changed.unwrap_or_else(|e| panic!("{what}: {e}")),
            1,
            "{what}"
        );
        let record = match store.claim(&key, &fp, LONG_LEASE).await {
            Ok(Claim::Completed(record)) => record,
            other => panic!("{what}: expected Completed, got {other:?}"),
        };
        assert_eq!(&record.output.bytes[..], &garbage[..], "{what}");
        let decoded = codec::decode::<Bincode, u64>(&record.output.bytes).map_err(Error::from);
        assert!(
            matches!(decoded, Err(Error::Codec(_))),
            "{what}: decoded to {decoded:?}"
        );
    }
}

/// What the next claim of a damaged record must be.
#[derive(Clone, Copy, Debug)]
pub enum Then {
    /// Claimed: the damage made the record count as expired.
    Expired,
    /// A backend error of the claim whose message contains this text (`""`: any).
    Corrupt(&'static str),
    /// The database may refuse the damage (a constraint); if it takes it, `Corrupt("")`.
    MaybeRefused,
}

/// For each `(set, then)` and each of `completed`: a record of a new key — in progress, or
/// completed with an output when `completed` — damaged with `SET <set>`; the next claim of
/// the key is `then`.
pub async fn damaged_records<S, F>(
    store: &S,
    tamper: &mut Tamper<F>,
    completed: &[bool],
    cases: &[(&str, Then)],
) where
    S: Store + ?Sized,
    F: AsyncFnMut(String) -> Result<u64, sqlx::Error>,
{
    let fp = Fingerprint::from_bytes([3; 32]);
    for &completed in completed {
        for &(set, then) in cases {
            let key = Key::new("damaged", &unique_table("k")).unwrap();
            let token = claimed(store, &key, &fp, LONG_LEASE).await;
            if completed {
                store
                    .complete(&key, token, output(&b"\x01v"[..]), LONG_LEASE)
                    .await
                    .unwrap();
            }
            match (tamper.set(&key, set).await, then) {
                // A constraint refused this damage: nothing to read back.
                (Err(_), Then::MaybeRefused) => continue,
                (Err(e), _) => panic!("{set} (completed: {completed}): {e}"),
                (Ok(changed), _) => assert_eq!(changed, 1, "{set} (completed: {completed})"),
            }
            let claim = store.claim(&key, &fp, LONG_LEASE).await;
            match (then, &claim) {
                (Then::Expired, Ok(Claim::Claimed(_))) => {}
                (Then::MaybeRefused, Err(StoreError::Backend { op: "claim", .. })) => {}
                (
                    Then::Corrupt(message),
                    Err(StoreError::Backend {
                        op: "claim",
                        source,
                    }),
                ) if source.to_string().contains(message) => {}
                _ => panic!("{set} (completed: {completed}): expected {then:?}, got {claim:?}"),
            }
        }
    }
}
