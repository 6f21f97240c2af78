//! PostgreSQL: the baseline's statements, and the one-statement claim `PgStore` used up to
//! 7eec192 (`claim_cte`).

use crate::baseline::{
    ALL, Baseline, Dialect, LEASE, Prepared, REPLAYS, Statements, Variant, WRITES, sql,
};
use crate::support::measure::Mode;
use sqlx::Row;
use sqlx::postgres::{PgQueryResult, PgRow, Postgres};
use std::time::Duration;

pub(crate) struct PgSql;

impl Dialect for PgSql {
    type Db = Postgres;
    /// An `INTERVAL`.
    type Duration = Duration;

    const NUMBERED: bool = true;
    const VARIANTS: &[(&str, Variant, &[Mode])] = &[
        ("claim_cte", Variant::ClaimCte, ALL),
        ("read_first_1conn", Variant::ReadFirstOneConn, WRITES),
        ("insert_first", Variant::InsertFirst, REPLAYS),
    ];

    fn statements(t: &str) -> Statements {
        Statements {
            insert: sql(
                t,
                "INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, token, \
                                  lease_until, expires_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, now() + $6, now() + $6) \
                 ON CONFLICT (key_digest) DO NOTHING",
            ),
            complete: sql(
                t,
                "UPDATE {t} SET state = 1, outcome = 0, output = $3, lease_until = NULL, \
                   expires_at = now() + $4 \
                 WHERE key_digest = $1 AND token = $2 AND state = 0",
            ),
            select: sql(
                t,
                "SELECT fingerprint, output FROM {t} \
                 WHERE key_digest = $1 AND state = 1 AND expires_at > now()",
            ),
            store_read: None,
            // `PgStore`'s claim statement up to 7eec192, verbatim.
            claim_cte: Some(sql(
                t,
                "WITH ins AS ( \
                   INSERT INTO {t} (key_digest, namespace, key_preview, fingerprint, state, token, \
                                    lease_until, expires_at) \
                   VALUES ($1, $2, $3, $4, 0, $5, now() + $6, now() + $6) \
                   ON CONFLICT (key_digest) DO NOTHING \
                   RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM ins) AS claimed, \
                        r.state::int8 AS state, r.fingerprint, r.outcome::int8 AS outcome, r.output, \
                        r.expires_at > now() AS live, \
                        (extract(epoch FROM r.expires_at - now()) * 1000)::int8 AS remaining_ms \
                 FROM (SELECT 1) AS one LEFT JOIN {t} AS r ON r.key_digest = $1",
            )),
        }
    }

    fn duration(d: Duration) -> Duration {
        d
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn live(row: &PgRow) -> bool {
        row.get("live")
    }

    async fn batches_by_hand(
        pool: &sqlx::Pool<Postgres>,
        table: &str,
        rounds_batch: (usize, usize),
    ) -> bool {
        crate::batched::run(pool, table, rounds_batch).await;
        true
    }

    async fn claim_cte(base: &Baseline<Self>, p: &Prepared) -> Option<(Vec<u8>, Vec<u8>)> {
        let claim = base.sql.claim_cte.clone().expect("the claim CTE");
        let row = sqlx::query(claim)
            .bind(&p.digest[..])
            .bind(crate::baseline::NAMESPACE)
            .bind(&p.preview)
            .bind(&p.fingerprint[..])
            .bind(p.token)
            .bind(LEASE)
            .fetch_one(&base.pool)
            .await
            .unwrap();
        if row.get::<bool, _>("claimed") {
            return None;
        }
        assert_eq!(row.get::<Option<i64>, _>("state"), Some(1), "completed");
        assert!(row.get::<bool, _>("live"));
        assert_eq!(row.get::<Option<i64>, _>("outcome"), Some(0));
        Some((row.get("fingerprint"), row.get("output")))
    }
}
