//! MySQL/MariaDB: the baseline's statements.

use crate::baseline::{Dialect, REPLAYS, Statements, Variant, WRITES, sql};
use crate::support::measure::Mode;
use sqlx::Row;
use sqlx::mysql::{MySql, MySqlQueryResult, MySqlRow};
use std::time::Duration;

pub(crate) struct MySqlSql;

impl Dialect for MySqlSql {
    type Db = MySql;
    /// Microseconds.
    type Duration = i64;

    const NUMBERED: bool = false;
    const VARIANTS: &[(&str, Variant, &[Mode])] = &[
        ("read_first_1conn", Variant::ReadFirstOneConn, WRITES),
        ("insert_first", Variant::InsertFirst, REPLAYS),
        ("store_read", Variant::StoreRead, REPLAYS),
    ];

    fn statements(t: &str) -> Statements {
        Statements {
            insert: sql(
                t,
                "INSERT IGNORE INTO {t} (key_digest, namespace, key_preview, fingerprint, state, \
                   token, lease_until, expires_at, created_at) \
                 VALUES (?, ?, ?, ?, 0, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                   UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, UTC_TIMESTAMP(6))",
            ),
            complete: sql(
                t,
                "UPDATE {t} SET state = 1, outcome = 0, output = ?, lease_until = NULL, \
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE key_digest = ? AND token = ? AND state = 0",
            ),
            select: sql(
                t,
                "SELECT fingerprint, output FROM {t} \
                 WHERE key_digest = ? AND state = 1 AND expires_at > UTC_TIMESTAMP(6)",
            ),
            // `MySqlStore`'s read, verbatim.
            store_read: Some(sql(
                t,
                "SELECT state, fingerprint, outcome, output, \
                   expires_at > UTC_TIMESTAMP(6) AS live, \
                   TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) DIV 1000 AS remaining_ms \
                 FROM {t} WHERE key_digest = ?",
            )),
            claim_cte: None,
        }
    }

    fn duration(d: Duration) -> i64 {
        d.as_micros() as i64
    }

    fn rows_affected(done: &MySqlQueryResult) -> u64 {
        done.rows_affected()
    }

    fn live(row: &MySqlRow) -> bool {
        row.get::<i64, _>("live") != 0
    }
}
