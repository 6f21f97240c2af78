//! SQLite: the baseline's statements, and the database (a file in the temp dir).

use crate::baseline::{Dialect, REPLAYS, Statements, Variant, WRITES, sql};
use crate::support::measure::Mode;
use sqlx::Row;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqliteQueryResult, SqliteRow,
    SqliteSynchronous,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) struct SqliteSql;

/// The database clock as integer milliseconds, as `SqliteStore` computes it.
const NOW: &str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

impl Dialect for SqliteSql {
    type Db = Sqlite;
    /// Milliseconds.
    type Duration = i64;

    const NUMBERED: bool = true;
    const VARIANTS: &[(&str, Variant, &[Mode])] = &[
        ("read_first_1conn", Variant::ReadFirstOneConn, WRITES),
        ("insert_first", Variant::InsertFirst, REPLAYS),
        ("store_read", Variant::StoreRead, REPLAYS),
    ];

    fn statements(t: &str) -> Statements {
        let s = |template: &str| sql(t, &template.replace("{now}", NOW));
        Statements {
            insert: s(
                "INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, \
                   token, lease_until, expires_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, {now} + ?6, {now} + ?6, {now}) \
                 ON CONFLICT (key_digest) DO NOTHING",
            ),
            complete: s(
                "UPDATE {t} SET state = 1, outcome = 0, output = ?3, lease_until = NULL, \
                   expires_at = {now} + ?4 \
                 WHERE key_digest = ?1 AND token = ?2 AND state = 0",
            ),
            select: s("SELECT fingerprint, output FROM {t} \
                 WHERE key_digest = ?1 AND state = 1 AND expires_at > {now}"),
            // `SqliteStore`'s read, verbatim.
            store_read: Some(s("SELECT state, fingerprint, outcome, output, \
                        expires_at > {now} AS live, expires_at - {now} AS remaining_ms \
                 FROM {t} WHERE key_digest = ?1")),
            claim_cte: None,
        }
    }

    fn duration(d: Duration) -> i64 {
        d.as_millis() as i64
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn live(row: &SqliteRow) -> bool {
        row.get("live")
    }
}

/// A new database file in the temp dir (WAL, `synchronous = NORMAL`).
pub(crate) fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(60))
}

/// Removes the database file and its `-wal` and `-shm` files.
pub(crate) fn remove(path: PathBuf) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}
