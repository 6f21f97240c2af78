//! `SqliteStore` on SQLite files (WAL mode) in the temp directory: no server needed, so
//! these always run.
#![cfg(feature = "sqlite")]

mod support;

use idem_core::codec::{self, Bincode};
use idem_core::store::{Claim, Outcome, Output, Token};
use idem_core::testing;
use idem_core::{Error, Fingerprint, Key, Store, StoreError, TxStore};
use idem_sqlx::{ClaimOrder, SqliteStore};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Transaction};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::claimed;

/// An SQLite file in the temp directory, removed (with its `-wal` and `-shm` files) when
/// dropped — also when the test panics.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        let name = format!("{}.db", support::unique_table("idem_sqlite"));
        TempDb(std::env::temp_dir().join(name))
    }

    fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.0)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // The race check sends 64 claims at once: writers queue for the write lock.
            .busy_timeout(Duration::from_secs(30))
    }

    async fn pool(&self) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(self.options())
            .await
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.0.display()))
    }

    /// A second pool on the same file that cannot write.
    async fn read_only_pool(&self) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(self.options().read_only(true))
            .await
            .unwrap_or_else(|e| panic!("cannot open {} read-only: {e}", self.0.display()))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(Path::new(&path));
        }
    }
}

/// A migrated store on a fresh database file, removed when the test is done.
async fn with_store<F, Fut>(test: F)
where
    F: FnOnce(Arc<SqliteStore>, Arc<TempDb>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = Arc::new(TempDb::new());
    let pool = db.pool().await;
    let store = SqliteStore::new(pool.clone());
    store.migrate().await.unwrap();
    test(Arc::new(store), db.clone()).await;
    pool.close().await;
}

support::conformance!(store, _);
support::tx_conformance!(store, _);

/// Transactions for the transactional checks: `BEGIN IMMEDIATE`, as transactional mode
/// needs on SQLite.
fn transactions(store: &SqliteStore) -> Arc<support::Transactions<sqlx::Sqlite>> {
    support::Transactions::immediate(store.pool())
}

const NS: &str = "idem_sqlx::tests::sqlite";
const LONG: Duration = Duration::from_secs(600);

fn key(text: &str) -> Key {
    Key::new(NS, text).unwrap()
}

fn fingerprint(byte: u8) -> Fingerprint {
    Fingerprint::from_bytes([byte; 32])
}

/// Runs `sql` (built from a test table name) on `pool`: the rows it changed, or the error.
async fn run(pool: &SqlitePool, sql: String) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(AssertSqlSafe(sql)).execute(pool).await?;
    Ok(done.rows_affected())
}

async fn exec(pool: &SqlitePool, sql: String) -> u64 {
    run(pool, sql.clone())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Writes to `store`'s records behind its back.
fn tamper(
    store: &SqliteStore,
) -> support::Tamper<impl AsyncFnMut(String) -> Result<u64, sqlx::Error> + '_> {
    support::Tamper::new(store.table(), support::x_literal, async |sql| {
        run(store.pool(), sql).await
    })
}

fn digest_hex(key: &Key) -> String {
    support::hex(key.digest().as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_twice_and_concurrently() {
    with_store(|store, db| async move {
        store.migrate().await.unwrap();
        let (a, b) = tokio::join!(store.migrate(), store.migrate());
        a.unwrap();
        b.unwrap();
        // And from several pools (as several processes would) on a fresh table at once.
        let pools = [db.pool().await, db.pool().await, db.pool().await];
        let stores: Vec<_> = pools
            .iter()
            .map(|p| {
                SqliteStore::new(p.clone())
                    .with_table("idem_other")
                    .unwrap()
            })
            .collect();
        let mut migrations = Vec::new();
        for store in stores.iter().chain(stores.iter()) {
            let store = store.clone();
            migrations.push(tokio::spawn(async move { store.migrate().await }));
        }
        for migration in migrations {
            migration.await.unwrap().unwrap();
        }
        let fp = fingerprint(1);
        claimed(&stores[0], &key("after concurrent migrate"), &fp, LONG).await;
        for pool in pools {
            pool.close().await;
        }
    })
    .await;
}

#[tokio::test]
async fn bad_table_names_are_refused() {
    let db = TempDb::new();
    let pool = SqlitePool::connect_lazy_with(db.options());
    for bad in [
        "",
        "1abc",
        "a-b",
        "a b",
        "t; DROP TABLE idem_records",
        "a.b",
        "\"a\"",
        "é",
    ] {
        match SqliteStore::new(pool.clone()).with_table(bad) {
            Err(Error::Config(_)) => {}
            Err(e) => panic!("{bad:?}: wrong error {e:?}"),
            Ok(_) => panic!("{bad:?} was accepted as a table name"),
        }
    }
    let store = SqliteStore::new(pool).with_table("good_name_1").unwrap();
    assert_eq!(store.table(), "good_name_1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_output_is_a_codec_error() {
    with_store(|store, _| async move {
        support::corrupt_outputs_are_codec_errors(&*store, &mut tamper(&store)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_columns_are_store_errors() {
    use support::Then::{Corrupt, MaybeRefused};
    with_store(|store, _| async move {
        let mut tamper = tamper(&store);
        let completed = [
            ("fingerprint = x'0102'", Corrupt("")),
            ("fingerprint = zeroblob(33)", Corrupt("")),
            ("fingerprint = NULL", MaybeRefused),
            ("state = 7", Corrupt("")),
            ("outcome = 9", Corrupt("")),
            ("output = NULL", Corrupt("")),
            ("state = 'completed'", Corrupt("")),
        ];
        support::damaged_records(&*store, &mut tamper, &[true], &completed).await;
        // A wrong-length fingerprint on an in-progress record, too.
        let in_progress = [("fingerprint = x'00'", Corrupt(""))];
        support::damaged_records(&*store, &mut tamper, &[false], &in_progress).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_does_not_write() {
    with_store(|store, db| async move {
        let done = key("replay on a read-only connection");
        let busy = key("in progress on a read-only connection");
        let fp = fingerprint(5);
        let token = claimed(&store, &done, &fp, LONG).await;
        let out = Output {
            outcome: Outcome::Ok,
            bytes: codec::encode::<Bincode, u64>(&5).unwrap(),
        };
        store
            .complete(&done, token, out.clone(), LONG)
            .await
            .unwrap();
        claimed(&store, &busy, &fp, LONG).await;

        // A store whose connections cannot write still replays and reports InProgress:
        // neither path writes.
        let ro_pool = db.read_only_pool().await;
        let ro = SqliteStore::new(ro_pool.clone());
        for _ in 0..3 {
            match ro.claim(&done, &fp, LONG).await {
                Ok(Claim::Completed(record)) => assert_eq!(record.output, out),
                other => panic!("replay: {other:?}"),
            }
            match ro.claim(&busy, &fingerprint(6), LONG).await {
                Ok(Claim::InProgress(b)) => assert_eq!(b.fingerprint, fp),
                other => panic!("in progress: {other:?}"),
            }
        }
        // Whereas a fresh key needs a write, which that pool cannot do.
        match ro
            .claim(&key("fresh on a read-only connection"), &fp, LONG)
            .await
        {
            Err(StoreError::Backend { op: "claim", .. }) => {}
            other => panic!("fresh claim on a read-only pool: {other:?}"),
        }
        ro_pool.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_uses_the_database_clock_in_milliseconds() {
    with_store(|store, _| async move {
        let pool = store.pool();
        let key = key("schema");
        let token = claimed(&store, &key, &fingerprint(1), Duration::from_micros(1_500_001)).await;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT lease_until - created_at AS lease, expires_at - created_at AS expiry, \
                    typeof(expires_at) AS kind, state, length(key_digest) AS digest_len, \
                    namespace, \
                    CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) - created_at AS age \
             FROM {} WHERE key_digest = x'{}'",
            store.table(),
            digest_hex(&key)
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        // 1.500001 s rounds up to 1501 ms.
        assert_eq!(row.get::<i64, _>("lease"), 1501);
        assert_eq!(row.get::<i64, _>("expiry"), 1501);
        assert_eq!(row.get::<String, _>("kind"), "integer");
        assert_eq!(row.get::<i64, _>("state"), 0);
        assert_eq!(row.get::<i64, _>("digest_len"), 32);
        assert_eq!(row.get::<String, _>("namespace"), NS);
        let age = row.get::<i64, _>("age");
        assert!((0..5_000).contains(&age), "created_at is {age} ms in the past");

        let out = Output { outcome: Outcome::Err, bytes: codec::encode::<Bincode, u64>(&0).unwrap() };
        store.complete(&key, token, out, Duration::from_secs(2)).await.unwrap();
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT state, outcome, lease_until IS NULL AS no_lease, \
                    expires_at - CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) AS left \
             FROM {} WHERE key_digest = x'{}'",
            store.table(),
            digest_hex(&key)
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(row.get::<i64, _>("state"), 1);
        assert_eq!(row.get::<i64, _>("outcome"), 1);
        assert!(row.get::<bool, _>("no_lease"));
        let left = row.get::<i64, _>("left");
        assert!((0..=2000).contains(&left), "{left} ms left of a 2 s TTL");

        // Purge is a range scan of the expiry index, not a table scan.
        let plan: Vec<String> = sqlx::query(AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN DELETE FROM {t} WHERE rowid IN ( \
               SELECT rowid FROM {t} WHERE expires_at <= 0 LIMIT 1000)",
            t = store.table()
        )))
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect();
        assert!(
            plan.iter().any(|d| d.contains("idem_records_expires_at")),
            "purge plan: {plan:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_in_batches() {
    with_store(|store, _| async move {
        let pool = store.pool();
        // 2500 expired records (more than two batches) and 10 live ones, written directly.
        let fill = |n: u32, expires_at: &str| {
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
                 INSERT INTO {} (key_digest, namespace, key_preview, fingerprint, state, token, \
                                 outcome, output, lease_until, expires_at, created_at) \
                 SELECT randomblob(32), 'ns', 'k' || i, zeroblob(32), 1, i, 0, x'01', NULL, {expires_at}, 0 \
                 FROM n",
                store.table()
            )
        };
        assert_eq!(exec(pool, fill(2500, "0")).await, 2500);
        assert_eq!(exec(pool, fill(10, "9223372036854775807")).await, 10);
        assert_eq!(store.purge_expired().await.unwrap(), 2500);
        assert_eq!(store.purge_expired().await.unwrap(), 0);
        let left: i64 = sqlx::query(AssertSqlSafe(format!("SELECT count(*) FROM {}", store.table())))
            .fetch_one(pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_on_drop_frees_the_key() {
    with_store(|store, _| async move {
        let key = key("release on drop");
        let token = claimed(&store, &key, &fingerprint(1), LONG).await;
        store.release_on_drop(&key, token);
        for _ in 0..100 {
            if let Ok(Claim::Claimed(_)) = store.claim(&key, &fingerprint(2), LONG).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("release_on_drop did not free the key within 2 s");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_on_separate_pools_share_records() {
    with_store(|store, db| async move {
        // Two pools on one file behave like two processes: one winner, and a replay for
        // the other.
        let other_pool = db.pool().await;
        let other = SqliteStore::new(other_pool.clone());
        let key = key("two pools");
        let fp = fingerprint(8);
        let (a, b) = tokio::join!(store.claim(&key, &fp, LONG), other.claim(&key, &fp, LONG));
        let (winner, loser) = match (a.unwrap(), b.unwrap()) {
            (Claim::Claimed(t), Claim::InProgress(_)) => (t, &other),
            (Claim::InProgress(_), Claim::Claimed(t)) => (t, &*store),
            other => panic!("expected one winner, got {other:?}"),
        };
        let out = Output {
            outcome: Outcome::Ok,
            bytes: codec::encode::<Bincode, u64>(&8).unwrap(),
        };
        // Whichever won, either store can complete with the winning token.
        store
            .complete(&key, winner, out.clone(), LONG)
            .await
            .unwrap();
        match loser.claim(&key, &fp, LONG).await {
            Ok(Claim::Completed(record)) => assert_eq!(record.output, out),
            other => panic!("replay through the other pool: {other:?}"),
        }
        other_pool.close().await;
    })
    .await;
}

/// Item 5 of issue 8: a retry of `complete` after a lost reply is `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_is_idempotent_for_its_owner() {
    with_store(|store, _| async move {
        support::complete_is_idempotent_for_its_owner(&*store).await;
    })
    .await;
}

/// Item 4: SQLite's limit (1,000,000,000 bytes) is above the codec's 64 MiB, which the
/// store states, and an output of that size is recorded and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_output_round_trips() {
    with_store(|store, _| async move {
        let max = support::largest_output_round_trips(&*store).await;
        assert_eq!(max, idem_core::codec::MAX_ENCODED_LEN);
    })
    .await;
}

/// Item 8: reserved words work as table names (every statement quotes the name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_words_as_table_names() {
    with_store(|store, _| async move {
        let pool = store.pool().clone();
        support::for_each_reserved_word(move |word| {
            let pool = pool.clone();
            async move {
                let named = SqliteStore::new(pool.clone()).with_table(word).unwrap();
                named
                    .migrate()
                    .await
                    .unwrap_or_else(|e| panic!("migrate of table {word:?}: {e}"));
                named.migrate().await.unwrap();
                support::exercise(&named).await;
                exec(&pool, format!("DROP TABLE \"{word}\"")).await;
            }
        })
        .await;
    })
    .await;
}

/// How a test's transactions begin: deferred (`pool.begin()`) or `BEGIN IMMEDIATE`.
#[derive(Clone, Copy, Debug)]
enum Begin {
    Deferred,
    Immediate,
}

impl Begin {
    async fn on(self, pool: &SqlitePool) -> Transaction<'static, Sqlite> {
        match self {
            Begin::Deferred => pool.begin().await.unwrap(),
            Begin::Immediate => pool.begin_with("BEGIN IMMEDIATE").await.unwrap(),
        }
    }
}

/// A claim of `key` in `tx` that must be `Claimed`.
async fn claimed_in(
    store: &SqliteStore,
    tx: &mut Transaction<'static, Sqlite>,
    (key, fp): (&Key, Fingerprint),
) -> idem_core::store::Token {
    match store
        .claim_in(tx, key, &fp, LONG, Duration::from_secs(5))
        .await
    {
        Ok(Claim::Claimed(token)) => token,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

/// `first` claimed `key` with `token` (and holds SQLite's write lock): a second transaction
/// begun as `begin` that claims the key waits for it, and once `first` completed and
/// committed, replays what it recorded.
async fn second_claim_waits_then_replays(
    store: &Arc<SqliteStore>,
    (mut first, token): (Transaction<'static, Sqlite>, idem_core::store::Token),
    (key, fp): (&Key, Fingerprint),
    begin: Begin,
) {
    let recorded = support::output(&b"\x01first"[..]);
    let second = tokio::spawn({
        let (store, key) = (store.clone(), key.clone());
        async move {
            let mut tx = begin.on(store.pool()).await;
            let claim = store
                .claim_in(&mut tx, &key, &fp, LONG, Duration::from_secs(5))
                .await;
            tx.rollback().await.unwrap();
            claim
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "the second claim ({begin:?}) should wait for the first"
    );
    store
        .complete_in(&mut first, key, token, recorded.clone(), LONG)
        .await
        .unwrap();
    first.commit().await.unwrap();
    match second.await.unwrap() {
        Ok(Claim::Completed(record)) => assert_eq!(record.output, recorded),
        other => panic!("the second transaction ({begin:?}), after the first committed: {other:?}"),
    }
}

/// Item 9: two deferred transactions (`pool.begin()`) that claim the same key first thing:
/// the second waits for the first (its claim writes first, so it becomes a writer at the
/// claim), then replays what the first committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_transactions_that_claim_first_serialize() {
    with_store(|store, _| async move {
        let key = (&key("deferred race"), fingerprint(2));
        let mut first = Begin::Deferred.on(store.pool()).await;
        let token = claimed_in(&store, &mut first, key).await;
        second_claim_waits_then_replays(&store, (first, token), key, Begin::Deferred).await;
    })
    .await;
}

/// Item 9: a deferred transaction whose first statement is the claim waits for the write
/// lock like `BEGIN IMMEDIATE` does, and when the pool's busy timeout runs out that is a
/// wait timeout (`Error::WaitTimeout`), not the `BEGIN IMMEDIATE` advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_transaction_that_claims_first_waits_the_busy_timeout() {
    with_store(|store, db| async move {
        let busy_timeout = Duration::from_millis(300);
        let short = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(db.options().busy_timeout(busy_timeout))
            .await
            .unwrap();
        let impatient = SqliteStore::new(short.clone());
        let holder = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
        let mut tx = short.begin().await.unwrap();
        let started = std::time::Instant::now();
        let claim = impatient
            .claim_in(
                &mut tx,
                &key("deferred waits"),
                &fingerprint(5),
                LONG,
                busy_timeout,
            )
            .await;
        assert!(
            matches!(claim, Err(StoreError::Timeout { op: "claim", .. })),
            "{claim:?}"
        );
        assert!(started.elapsed() >= busy_timeout, "{:?}", started.elapsed());
        tx.rollback().await.unwrap();
        holder.rollback().await.unwrap();
        short.close().await;
    })
    .await;
}

/// Item 9: a deferred transaction that read before its claim cannot become a writer while
/// another holds the lock: the error says so and names `BEGIN IMMEDIATE` — not a wait
/// timeout. (With `BEGIN IMMEDIATE` the same race waits at `BEGIN` and replays: the
/// conformance check `tx_duplicate_waits_for_the_first_transaction`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_transaction_that_read_first_is_told_to_begin_immediate() {
    with_store(|store, _| async move {
        let key = (&key("deferred read first"), fingerprint(3));
        let mut first = Begin::Immediate.on(store.pool()).await;
        claimed_in(&store, &mut first, key).await;
        let mut deferred = Begin::Deferred.on(store.pool()).await;
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            store.table()
        )))
        .fetch_one(&mut *deferred)
        .await
        .unwrap();
        assert_eq!(count, 0, "the first claim is not committed");
        let claim = store
            .claim_in(&mut deferred, key.0, &key.1, LONG, Duration::from_secs(5))
            .await;
        match &claim {
            Err(StoreError::Backend {
                op: "claim",
                source,
            }) if source.to_string().contains("BEGIN IMMEDIATE") => {}
            other => panic!("a deferred transaction that read first: {other:?}"),
        }
        deferred.rollback().await.unwrap();
        first.rollback().await.unwrap();
    })
    .await;
}

/// Item 10: an `expires_at` that is not a number, a future one that is not an integer, or
/// one further ahead than any lease or TTL (`i64::MAX`) is a corrupt record naming the
/// column; a past one of any numeric type (`i64::MIN`, `1.5`) counts as expired, as the
/// claim's upsert and the purge see it — in either claim order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_expires_at_values() {
    use support::Then::{Corrupt, Expired};
    let corrupt = Corrupt("corrupt record: expires_at");
    with_store(|store, _| async move {
        let cases = [
            ("expires_at = 'soon'", corrupt),
            ("expires_at = x'00'", corrupt),
            ("expires_at = 1.5", Expired),
            ("expires_at = 1e300", corrupt),
            ("expires_at = 9223372036854775807", corrupt),
            ("expires_at = -9223372036854775808", Expired),
        ];
        support::damaged_records(&*store, &mut tamper(&store), &[false, true], &cases).await;
    })
    .await;
}

/// Coalesced claims and completes (`with_coalescing(true)`).
mod coalescing {
    use super::*;

    support::coalesce::coalescing_tests!(, _);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_send_fewer_statements() {
        with_store(|store, _| async move {
            // A table name no other test's statements contain (each file's default table
            // is `idem_records`), as the count goes by the table's name.
            let table = support::unique_table("idem_coalesce");
            let store = Arc::unwrap_or_clone(store).with_table(&table).unwrap();
            store.migrate().await.unwrap();
            let coalesced = Arc::new(store.clone().with_coalescing(true));
            let store = Arc::new(store);
            support::coalesce::batches_send_fewer_statements(store, coalesced, &table).await;
        })
        .await;
    }

    /// SQLite stores what it is given: a `token` that is not an integer is a corrupt
    /// record. A single call never reads the token (its fence compares it in SQL), so the
    /// key is in progress for a claim and lost for a complete, and every other key is
    /// untouched. In a batch the same row must not fail the batch's other keys.

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_token_fails_only_its_own_key() {
        with_store(|store, _| async move {
            let store = Arc::new(
                Arc::unwrap_or_clone(store)
                    .with_claim_order(ClaimOrder::ReadFirst)
                    .with_coalescing(true),
            );
            let (bad, good, lead) = (key("corrupt token"), key("fresh"), key("leader"));
            let fp = fingerprint(5);
            let bad_token = claimed(&*store, &bad, &fp, LONG).await;
            exec(
                store.pool(),
                format!(
                    "UPDATE {} SET token = 'x' WHERE key_digest = x'{}'",
                    store.table(),
                    digest_hex(&bad)
                ),
            )
            .await;
            // Single calls, for reference: in progress, and a lost lease.
            assert!(matches!(
                store.claim(&bad, &fp, LONG).await,
                Ok(Claim::InProgress(_))
            ));
            let (done_key, done_token) = (key("completed in the batch"), {
                let k = key("completed in the batch");
                claimed(&*store, &k, &fp, LONG).await
            });
            let output = || Output {
                outcome: Outcome::Ok,
                bytes: vec![1, 2, 3].into(),
            };

            // Claims: a leader blocked on SQLite's write lock, and two claims queued behind
            // it, which go as one batch when the lock is let go.
            let writer = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
            let leader = tokio::spawn({
                let (store, lead) = (store.clone(), lead.clone());
                async move { store.claim(&lead, &fp, LONG).await }
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let queued: Vec<_> = [bad.clone(), good.clone()]
                .into_iter()
                .map(|k| {
                    let store = store.clone();
                    tokio::spawn(async move { store.claim(&k, &fp, LONG).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.commit().await.unwrap();
            assert!(matches!(leader.await.unwrap(), Ok(Claim::Claimed(_))));
            let mut answers = Vec::new();
            for task in queued {
                answers.push(task.await.unwrap());
            }
            assert!(
                matches!(
                    answers[..],
                    [Ok(Claim::InProgress(_)), Ok(Claim::Claimed(_))]
                ),
                "the corrupt key, and a fresh key in the same batch: {answers:?}"
            );

            // Completes: the same, a leader blocked and two queued as one batch.
            let Ok(Claim::Claimed(lead_token)) = store.claim(&key("leader 2"), &fp, LONG).await
            else {
                panic!("a fresh key")
            };
            let writer = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
            let leader = tokio::spawn({
                let store = store.clone();
                async move {
                    store
                        .complete(&key("leader 2"), lead_token, output(), LONG)
                        .await
                }
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let queued: Vec<_> = [(bad.clone(), bad_token), (done_key.clone(), done_token)]
                .into_iter()
                .map(|(k, token)| {
                    let store = store.clone();
                    tokio::spawn(async move { store.complete(&k, token, output(), LONG).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.commit().await.unwrap();
            leader.await.unwrap().unwrap();
            let mut answers = Vec::new();
            for task in queued {
                answers.push(task.await.unwrap());
            }
            assert!(
                matches!(answers[..], [Err(StoreError::LeaseLost), Ok(())]),
                "the corrupt key, and a good complete in the same batch: {answers:?}"
            );
        })
        .await;
    }

    /// A `complete` whose fenced `UPDATE` matched its claim is done, whatever other column
    /// of the record is odd (here a `fingerprint` that is not a blob, which the completion
    /// does not write): a single call answers `Ok`. So must a batch that also holds a
    /// complete with a lost lease (which makes it read the rows back).

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_done_complete_is_done_whatever_else_the_row_holds() {
        with_store(|store, _| async move {
            let store = Arc::new(Arc::unwrap_or_clone(store).with_coalescing(true));
            let fp = fingerprint(6);
            let output = || Output {
                outcome: Outcome::Ok,
                bytes: vec![4, 5, 6].into(),
            };
            let odd = async |text: &str| {
                let odd = key(text);
                let token = claimed(&*store, &odd, &fp, LONG).await;
                exec(
                    store.pool(),
                    format!(
                        "UPDATE {} SET fingerprint = 7 WHERE key_digest = x'{}'",
                        store.table(),
                        digest_hex(&odd)
                    ),
                )
                .await;
                let taken = key(&format!("{text}, taken"));
                claimed(&*store, &taken, &fp, LONG).await;
                (odd, token, taken)
            };
            let stale = Token::new(12345);
            // One call at a time (each alone, as without coalescing), for reference.
            let (alone, token, taken) = odd("alone").await;
            let single = [
                store.complete(&alone, token, output(), LONG).await,
                store.complete(&taken, stale, output(), LONG).await,
            ];
            assert!(
                matches!(single[..], [Ok(()), Err(StoreError::LeaseLost)]),
                "{single:?}"
            );

            // The same two as one batch, queued behind a leader blocked on the write lock.
            let (odd, token, taken) = odd("in a batch").await;
            let lead = key("leader");
            let lead_token = claimed(&*store, &lead, &fp, LONG).await;
            let writer = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
            let leader = tokio::spawn({
                let store = store.clone();
                async move { store.complete(&lead, lead_token, output(), LONG).await }
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let queued: Vec<_> = [(odd, token), (taken, stale)]
                .into_iter()
                .map(|(k, token)| {
                    let store = store.clone();
                    tokio::spawn(async move { store.complete(&k, token, output(), LONG).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.commit().await.unwrap();
            leader.await.unwrap().unwrap();
            let mut batched = Vec::new();
            for task in queued {
                batched.push(task.await.unwrap());
            }
            assert!(
                matches!(batched[..], [Ok(()), Err(StoreError::LeaseLost)]),
                "a batch of the same completes: {batched:?}"
            );
        })
        .await;
    }
}
