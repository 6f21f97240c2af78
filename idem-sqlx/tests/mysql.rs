//! `MySqlStore` against a real MySQL or MariaDB (`IDEM_TEST_MYSQL_URL`).
#![cfg(feature = "mysql")]

mod support;

use bytes::Bytes;
use idem_core::store::Claim;
use idem_core::{Error, Fingerprint, Key, Store, StoreError, testing};
use idem_sqlx::{ClaimOrder, MySqlStore};
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::claimed;

const LONG: Duration = Duration::from_secs(600);

fn url() -> Option<String> {
    support::server_url("IDEM_TEST_MYSQL_URL", "MySQL/MariaDB")
}

async fn connect(url: &str, options: MySqlPoolOptions, session: MySqlConnectOptions) -> MySqlPool {
    options
        .connect_with(session)
        .await
        .unwrap_or_else(|e| panic!("cannot reach MySQL/MariaDB at {url}: {e}"))
}

async fn pool() -> Option<MySqlPool> {
    let url = url()?;
    let session = MySqlConnectOptions::from_str(&url).unwrap();
    Some(connect(&url, MySqlPoolOptions::new().max_connections(20), session).await)
}

/// Runs `sql` (built from a validated test table name) on `conn`: the rows it changed, or
/// the error.
async fn run<'c>(
    conn: impl sqlx::Executor<'c, Database = MySql>,
    sql: String,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(AssertSqlSafe(sql)).execute(conn).await?;
    Ok(done.rows_affected())
}

/// Runs `sql` (built from a validated test table name) on `pool`.
async fn exec(pool: &MySqlPool, sql: String) -> u64 {
    run(pool, sql).await.unwrap()
}

/// A store in a fresh table, dropped when the test is done.
async fn with_store<F, Fut>(test: F)
where
    F: FnOnce(Arc<MySqlStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(pool) = pool().await else { return };
    let table = support::unique_table("idem_my");
    let store = MySqlStore::new(pool.clone()).with_table(&table).unwrap();
    store.migrate().await.unwrap();
    test(Arc::new(store)).await;
    exec(&pool, format!("DROP TABLE {table}")).await;
}

support::conformance!(store);
support::tx_conformance!(store);

/// Transactions for the transactional checks.
fn transactions(store: &MySqlStore) -> Arc<support::Transactions<sqlx::MySql>> {
    support::Transactions::new(store.pool())
}

/// A key no other test or run uses.
fn new_key(what: &str) -> Key {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let text = support::unique_table(&format!("{what}_{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    Key::new("idem_sqlx::tests::mysql", text.as_str()).unwrap()
}

fn fingerprint(byte: u8) -> Fingerprint {
    Fingerprint::from_bytes([byte; 32])
}

fn hex(key: &Key) -> String {
    support::hex(key.digest().as_bytes())
}

/// Writes to `store`'s records behind its back.
fn tamper(
    store: &MySqlStore,
) -> support::Tamper<impl AsyncFnMut(String) -> Result<u64, sqlx::Error> + '_> {
    support::Tamper::new(store.table(), support::x_literal, async |sql| {
        run(store.pool(), sql).await
    })
}

#[tokio::test]
async fn migrate_twice_and_concurrently() {
    with_store(|store| async move {
        store.migrate().await.unwrap();
        let (a, b) = tokio::join!(store.migrate(), store.migrate());
        a.unwrap();
        b.unwrap();
    })
    .await;
}

/// Several first migrations of a table that does not exist yet, at once, from separate
/// pools (as separate processes would): all succeed, and the table works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_migrations_race() {
    let Some(url) = url() else { return };
    let table = support::unique_table("idem_my_mig");
    let mut stores = Vec::new();
    for _ in 0..4 {
        let session = MySqlConnectOptions::from_str(&url).unwrap();
        let pool = connect(&url, MySqlPoolOptions::new().max_connections(2), session).await;
        stores.push(MySqlStore::new(pool).with_table(&table).unwrap());
    }
    let (a, b, c, d) = tokio::join!(
        stores[0].migrate(),
        stores[1].migrate(),
        stores[2].migrate(),
        stores[3].migrate()
    );
    for result in [a, b, c, d] {
        result.unwrap();
    }
    let key = new_key("first_migrations_race");
    claimed(&stores[0], &key, &fingerprint(1), LONG).await;
    assert!(matches!(
        stores[1].claim(&key, &fingerprint(2), LONG).await,
        Ok(Claim::InProgress(_))
    ));
    // The lock was released: another migration does not wait for it.
    let started = Instant::now();
    stores[2].migrate().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    exec(stores[0].pool(), format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn invalid_table_names_are_refused() {
    // No database needed: `connect_lazy` opens nothing until used.
    let pool = MySqlPoolOptions::new()
        .connect_lazy("mysql://unused.invalid/none")
        .unwrap();
    for bad in ["", "1x", "a-b", "a;DROP TABLE t", "a`b", "key words"] {
        assert!(
            matches!(
                MySqlStore::new(pool.clone()).with_table(bad),
                Err(Error::Config(_))
            ),
            "{bad:?}"
        );
    }
    let store = MySqlStore::new(pool).with_table("my_records").unwrap();
    assert_eq!(store.table(), "my_records");
    assert_eq!(
        MySqlStore::new(store.pool().clone()).table(),
        "idem_records"
    );
}

/// A corrupt output column is replayed as the bytes it holds, and decoding them is a clean
/// `Error::Codec`, never a panic or a wrong value.
#[tokio::test]
async fn corrupt_output_is_a_codec_error() {
    with_store(|store| async move {
        support::corrupt_outputs_are_codec_errors(&*store, &mut tamper(&store)).await;
    })
    .await;
}

/// Rows no store wrote (a foreign schema, manual edits) are a `StoreError::Backend` naming
/// the claim, never a panic.
#[tokio::test]
async fn corrupt_rows_are_backend_errors() {
    use support::Then::Corrupt;
    with_store(|store| async move {
        let t = store.table().to_owned();
        // BINARY(32) pads and refuses other lengths; a foreign schema might not.
        exec(
            store.pool(),
            format!("ALTER TABLE {t} MODIFY fingerprint VARBINARY(64) NOT NULL"),
        )
        .await;
        let cases = [
            ("fingerprint = x'0102'", Corrupt("")),
            ("fingerprint = REPEAT(x'01', 33)", Corrupt("")),
            ("state = 7", Corrupt("")),
            ("state = 1, outcome = 9, output = x'00'", Corrupt("")),
            ("state = 1, outcome = 0, output = NULL", Corrupt("")),
        ];
        support::damaged_records(&*store, &mut tamper(&store), &[false], &cases).await;
    })
    .await;
}

/// A replay never writes. A new store reads first, and while its claims mostly find
/// records a replay sends no INSERT, UPDATE or DELETE at all; after a run of first calls
/// it inserts first, and a replay's `INSERT IGNORE` finds the key and changes nothing (no
/// UPDATE or DELETE, the row as it was). (The session's statement counters, on a
/// one-connection pool; a fresh claim's INSERT shows that they count the store's prepared
/// statements.)
#[tokio::test]
async fn replay_writes_nothing() {
    let Some(url) = url() else { return };
    let session = MySqlConnectOptions::from_str(&url).unwrap();
    let pool = connect(&url, MySqlPoolOptions::new().max_connections(1), session).await;
    let table = support::unique_table("idem_my_ro");
    let store = MySqlStore::new(pool.clone()).with_table(&table).unwrap();
    store.migrate().await.unwrap();

    async fn writes(pool: &MySqlPool) -> [i64; 5] {
        let mut out = [0; 5];
        let names = [
            "COM_INSERT",
            "COM_UPDATE",
            "COM_DELETE",
            "HANDLER_UPDATE",
            "HANDLER_DELETE",
        ];
        for row in sqlx::query(
            "SELECT UPPER(VARIABLE_NAME), VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
             WHERE UPPER(VARIABLE_NAME) IN \
               ('COM_INSERT', 'COM_UPDATE', 'COM_DELETE', 'HANDLER_UPDATE', 'HANDLER_DELETE')",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        {
            let name: String = row.get(0);
            let value: String = row.get(1);
            let i = names.iter().position(|n| *n == name).unwrap();
            out[i] = value.parse().unwrap();
        }
        out
    }

    let key = new_key("replay_writes_nothing");
    let fp = fingerprint(9);
    let before = writes(&pool).await;
    let token = claimed(&store, &key, &fp, LONG).await;
    let after_claim = writes(&pool).await;
    assert_eq!(after_claim[0] - before[0], 1, "a fresh claim is one INSERT");
    assert_eq!(
        after_claim[1] - before[1],
        0,
        "a fresh claim updates nothing"
    );
    store
        .complete(&key, token, support::output(&b"\x01done"[..]), LONG)
        .await
        .unwrap();
    let row = |pool: MySqlPool| {
        let q = format!(
            "SELECT CAST(token AS CHAR), CAST(expires_at AS CHAR) FROM {table} \
             WHERE key_digest = x'{}'",
            hex(&key)
        );
        async move {
            let row = sqlx::query(AssertSqlSafe(q))
                .fetch_one(&pool)
                .await
                .unwrap();
            (row.get::<String, _>(0), row.get::<String, _>(1))
        }
    };
    let replay = async || {
        assert!(matches!(
            store.claim(&key, &fp, LONG).await,
            Ok(Claim::Completed(_))
        ));
        assert!(matches!(
            store.claim(&key, &fingerprint(10), LONG).await,
            Ok(Claim::Completed(_))
        ));
    };
    // Reading first: no write statement at all.
    let before = writes(&pool).await;
    for _ in 0..10 {
        replay().await;
    }
    assert_eq!(writes(&pool).await, before, "replays must not write");
    // Inserting first, after a run of first calls: the inserts change nothing.
    for i in 0..12 {
        let other = new_key(&format!("replay_writes_nothing {i}"));
        claimed(&store, &other, &fp, LONG).await;
    }
    let (before, recorded) = (writes(&pool).await, row(pool.clone()).await);
    replay().await;
    let after = writes(&pool).await;
    assert_eq!(after[0] - before[0], 2, "the store inserted first");
    assert_eq!(after[1..], before[1..], "replays must not update or delete");
    assert_eq!(row(pool.clone()).await, recorded, "the record is untouched");
    exec(&pool, format!("DROP TABLE {table}")).await;
}

/// Deadlines come from `UTC_TIMESTAMP(6)`, not `NOW()`: stores whose sessions use time
/// zones 25 hours apart agree on leases and TTLs.
#[tokio::test]
async fn session_time_zones_do_not_matter() {
    let Some(url) = url() else { return };
    let table = support::unique_table("idem_my_tz");
    let mut stores = Vec::new();
    for zone in ["+13:00", "-12:00"] {
        let session = MySqlConnectOptions::from_str(&url)
            .unwrap()
            .timezone(Some(zone.to_owned()));
        let pool = connect(&url, MySqlPoolOptions::new().max_connections(2), session).await;
        stores.push(MySqlStore::new(pool).with_table(&table).unwrap());
    }
    let (east, west) = (&stores[0], &stores[1]);
    east.migrate().await.unwrap();
    let lease = Duration::from_secs(10);
    let check_remaining = |claim: Result<Claim, StoreError>, who: &str| match claim {
        Ok(Claim::InProgress(busy)) => {
            let remaining = busy.lease_remaining.unwrap();
            assert!(
                remaining <= lease && remaining > lease / 2,
                "{who}: {remaining:?}"
            );
        }
        other => panic!("{who}: expected InProgress, got {other:?}"),
    };
    // Claimed in the east, seen live in the west, and the other way round.
    let key = new_key("tz");
    let token = claimed(east, &key, &fingerprint(1), lease).await;
    check_remaining(west.claim(&key, &fingerprint(2), lease).await, "west");
    west.renew(&key, token, lease).await.unwrap();
    check_remaining(east.claim(&key, &fingerprint(2), lease).await, "east");
    // Completed in the west with a short TTL: replayed in the east, then gone for both.
    west.complete(
        &key,
        token,
        support::output(&b"\x01x"[..]),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert!(matches!(
        east.claim(&key, &fingerprint(1), lease).await,
        Ok(Claim::Completed(_))
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    claimed(east, &key, &fingerprint(1), lease).await;
    // The stored deadline is UTC: seconds from UTC_TIMESTAMP(6), whatever the session's zone.
    for store in [east, west] {
        let ahead: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), expires_at) FROM {table} \
             WHERE key_digest = ?"
        )))
        .bind(&key.digest().as_bytes()[..])
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert!((0..=10).contains(&ahead), "{ahead}");
    }
    exec(east.pool(), format!("DROP TABLE {table}")).await;
}

/// The fences count rows their `WHERE` matched (sqlx sets `CLIENT_FOUND_ROWS`), so an update
/// that writes the values already there still counts as the owner's.
#[tokio::test]
async fn fences_count_matched_rows() {
    with_store(|store| async move {
        let key = new_key("found_rows");
        let token = claimed(&store, &key, &fingerprint(1), LONG).await;
        let same = exec(
            store.pool(),
            format!(
                "UPDATE {} SET state = state WHERE key_digest = x'{}'",
                store.table(),
                hex(&key)
            ),
        )
        .await;
        assert_eq!(
            same, 1,
            "the pool must report matched rows (CLIENT_FOUND_ROWS)"
        );
        for _ in 0..50 {
            store.renew(&key, token, LONG).await.unwrap();
        }
        store.renew(&key, token, Duration::ZERO).await.unwrap();
        store.renew(&key, token, Duration::ZERO).await.unwrap();
        store
            .complete(&key, token, support::output(Bytes::new()), LONG)
            .await
            .unwrap();
    })
    .await;
}

/// A namespace longer than the column is cut on a character boundary, on insert and on
/// takeover (strict SQL mode would refuse it otherwise).
#[tokio::test]
async fn long_namespaces_are_cut() {
    with_store(|store| async move {
        let namespace: &'static str = Box::leak("é".repeat(300).into_boxed_str());
        let key = Key::new(namespace, "k").unwrap();
        let short = Duration::from_millis(200);
        claimed(&store, &key, &fingerprint(1), short).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let token = claimed(&store, &key, &fingerprint(2), LONG).await;
        let (chars, prefix): (i64, String) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT CHAR_LENGTH(namespace), namespace FROM {} WHERE key_digest = ?",
            store.table()
        )))
        .bind(&key.digest().as_bytes()[..])
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(chars, 255);
        assert_eq!(prefix, "é".repeat(255));
        store
            .complete(&key, token, support::output(&b"\x01v"[..]), LONG)
            .await
            .unwrap();
        assert!(matches!(
            store.claim(&key, &fingerprint(2), LONG).await,
            Ok(Claim::Completed(_))
        ));
    })
    .await;
}

/// More expired records than one purge batch: all are deleted and counted, live ones stay.
#[tokio::test]
async fn purge_runs_batches_until_done() {
    with_store(|store| async move {
        let t = store.table().to_owned();
        let expired = exec(
            store.pool(),
            format!(
                "INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, token, \
                   outcome, output, expires_at, created_at) \
                 SELECT UNHEX(SHA2(seq, 256)), 'ns', CONCAT('k', seq), UNHEX(SHA2(seq, 256)), 1, \
                   0, 0, x'00', UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, UTC_TIMESTAMP(6) \
                 FROM seq_1_to_2500"
            ),
        )
        .await;
        assert_eq!(expired, 2500);
        let live = new_key("purge_batches");
        claimed(&store, &live, &fingerprint(4), LONG).await;
        assert_eq!(store.purge_expired().await.unwrap(), 2500);
        let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(left, 1);
        assert_eq!(store.purge_expired().await.unwrap(), 0);
        assert!(matches!(
            store.claim(&live, &fingerprint(5), LONG).await,
            Ok(Claim::InProgress(_))
        ));
    })
    .await;
}

/// Not a check: measures whether `INSERT IGNORE` of an existing key costs what a write
/// does (a commit and a redo-log fsync) or what a read does. Run with
/// `cargo test -p idem-sqlx --features mysql --test mysql -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement; prints timings"]
async fn measure_insert_ignore_vs_select() {
    let Some(url) = url() else { return };
    let session = MySqlConnectOptions::from_str(&url).unwrap();
    let pool = connect(&url, MySqlPoolOptions::new().max_connections(1), session).await;
    let table = support::unique_table("idem_my_bench");
    let store = MySqlStore::new(pool.clone()).with_table(&table).unwrap();
    store.migrate().await.unwrap();
    const N: usize = 2000;
    let key = new_key("bench");
    let fp = fingerprint(1);
    let token = claimed(&store, &key, &fp, LONG).await;
    store
        .complete(&key, token, support::output(&b"\x01v"[..]), LONG)
        .await
        .unwrap();
    let digest = key.digest().as_bytes().to_vec();
    let select = AssertSqlSafe(format!(
        "SELECT state, fingerprint, outcome, output FROM {table} WHERE key_digest = ?"
    ))
    .into_sql_str();
    let insert_ignore = AssertSqlSafe(format!(
        "INSERT IGNORE INTO {table} (key_digest, namespace, key_preview, fingerprint, state, \
           token, lease_until, expires_at, created_at) \
         VALUES (?, 'ns', 'k', ?, 0, 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, \
           UTC_TIMESTAMP(6))"
    ))
    .into_sql_str();
    let fsyncs = || async {
        let rows = sqlx::query(
            "SELECT UPPER(VARIABLE_NAME), CAST(VARIABLE_VALUE AS SIGNED) \
             FROM information_schema.GLOBAL_STATUS WHERE UPPER(VARIABLE_NAME) IN \
             ('INNODB_DATA_FSYNCS', 'INNODB_LOG_WRITES', 'INNODB_LSN_CURRENT')",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect::<Vec<_>>()
    };
    let report =
        |what: &str, started: Instant, before: &[(String, i64)], after: &[(String, i64)]| {
            let per = started.elapsed() / N as u32;
            let deltas: Vec<String> = before
                .iter()
                .zip(after)
                .map(|((name, a), (_, b))| format!("{name} +{}", b - a))
                .collect();
            println!("{what:<40} {per:>10?} per call   [{}]", deltas.join(", "));
        };
    for round in 0..3 {
        println!("-- round {round} ({N} sequential calls each, one connection)");
        let before = fsyncs().await;
        let started = Instant::now();
        for _ in 0..N {
            sqlx::query(select.clone())
                .bind(&digest)
                .fetch_optional(&pool)
                .await
                .unwrap();
        }
        report("SELECT by key", started, &before, &fsyncs().await);

        let before = fsyncs().await;
        let started = Instant::now();
        for _ in 0..N {
            let done = sqlx::query(insert_ignore.clone())
                .bind(&digest)
                .bind(&[1u8; 32][..])
                .execute(&pool)
                .await
                .unwrap();
            assert_eq!(done.rows_affected(), 0);
        }
        report(
            "INSERT IGNORE, existing key",
            started,
            &before,
            &fsyncs().await,
        );

        let before = fsyncs().await;
        let started = Instant::now();
        for _ in 0..N {
            assert!(matches!(
                store.claim(&key, &fp, LONG).await,
                Ok(Claim::Completed(_))
            ));
        }
        report(
            "MySqlStore::claim, replay",
            started,
            &before,
            &fsyncs().await,
        );

        let keys: Vec<Key> = (0..N).map(|_| new_key("bench_fresh")).collect();
        let before = fsyncs().await;
        let started = Instant::now();
        for key in &keys {
            sqlx::query(insert_ignore.clone())
                .bind(&key.digest().as_bytes()[..])
                .bind(&[1u8; 32][..])
                .execute(&pool)
                .await
                .unwrap();
        }
        report("INSERT IGNORE, new key", started, &before, &fsyncs().await);

        let keys: Vec<Key> = (0..N).map(|_| new_key("bench_claim")).collect();
        let before = fsyncs().await;
        let started = Instant::now();
        for key in &keys {
            claimed(&store, key, &fp, LONG).await;
        }
        report(
            "MySqlStore::claim, fresh key",
            started,
            &before,
            &fsyncs().await,
        );
    }
    exec(&pool, format!("DROP TABLE {table}")).await;
}

/// Item 5 of issue 8: a retry of `complete` after a lost reply is `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_is_idempotent_for_its_owner() {
    with_store(|store| async move {
        support::complete_is_idempotent_for_its_owner(&*store).await;
    })
    .await;
}

/// Item 4: the store states the server's `max_allowed_packet` less its margin (a lower
/// bound before it has asked); an output of exactly that size is recorded and replayed,
/// and one of the packet's size cannot be written at all — the limit is the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_output_round_trips() {
    with_store(|store| async move {
        let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(store.pool())
            .await
            .unwrap();
        let packet = packet as usize;
        let unasked = MySqlStore::new(store.pool().clone());
        assert!(
            unasked.max_output_len() <= 1 << 20,
            "before asking: {}",
            unasked.max_output_len()
        );
        let max = support::largest_output_round_trips(&*store).await;
        assert!(
            max < idem_core::codec::MAX_ENCODED_LEN.min(packet),
            "{max} of {packet}"
        );
        assert!(max >= packet - 1024, "{max} of {packet}");
        // One byte more is what the executor refuses before `complete`; a whole packet is
        // refused by the server.
        let key = new_key("over_the_packet");
        let token = claimed(&store, &key, &fingerprint(2), LONG).await;
        let over = store
            .complete(&key, token, support::output(vec![1u8; packet]), LONG)
            .await;
        assert!(
            matches!(over, Err(StoreError::Backend { op: "complete", .. })),
            "{} bytes: {over:?}",
            packet
        );
    })
    .await;
}

/// Item 8: reserved words work as table names (every statement quotes the name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_words_as_table_names() {
    let Some(pool) = pool().await else { return };
    support::for_each_reserved_word(move |word| {
        let pool = pool.clone();
        async move {
            exec(&pool, format!("DROP TABLE IF EXISTS `{word}`")).await;
            let store = MySqlStore::new(pool.clone()).with_table(word).unwrap();
            store
                .migrate()
                .await
                .unwrap_or_else(|e| panic!("migrate of table {word:?}: {e}"));
            store.migrate().await.unwrap();
            support::exercise(&store).await;
            exec(&pool, format!("DROP TABLE `{word}`")).await;
        }
    })
    .await;
}

/// Item 10: a zero date counts as expired (as the takeover and the purge see it); a date
/// further ahead than any lease or TTL, and a fingerprint shorter than 32 bytes that
/// `BINARY(32)` padded with zeros, are corrupt records naming the column — not a key in
/// progress for 8000 years, nor a payload mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_dates_far_dates_and_padded_fingerprints() {
    use support::Then::{Corrupt, Expired};
    with_store(|store| async move {
        // A session that lets zero dates in, as an old server or a lax `sql_mode` would.
        let mut lax = store.pool().acquire().await.unwrap();
        sqlx::query("SET SESSION sql_mode = ''")
            .execute(&mut *lax)
            .await
            .unwrap();
        let mut tamper = support::Tamper::new(store.table(), support::x_literal, async |sql| {
            run(&mut *lax, sql).await
        });
        let cases = [
            ("expires_at = '0000-00-00 00:00:00'", Expired),
            (
                "expires_at = '9999-12-31 23:59:59'",
                Corrupt("corrupt record: expires_at"),
            ),
            (
                "fingerprint = x'0303'",
                Corrupt("corrupt record: fingerprint"),
            ),
        ];
        support::damaged_records(&*store, &mut tamper, &[false, true], &cases).await;
    })
    .await;
}

/// Coalesced claims and completes (`with_coalescing(true)`).
mod coalescing {
    use super::*;

    support::coalesce::coalescing_tests!();

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_send_fewer_statements() {
        with_store(|store| async move {
            let coalesced = Arc::new((*store).clone().with_coalescing(true));
            let table = store.table().to_owned();
            support::coalesce::batches_send_fewer_statements(store, coalesced, &table).await;
        })
        .await;
    }
}
