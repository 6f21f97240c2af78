//! Coalescing's ceiling on PostgreSQL: the two multi-row statements a coalesced `PgStore`
//! sends for fresh keys — the claims inserted through `unnest` (`RETURNING` the keys it
//! inserted), then the fenced `UPDATE … FROM unnest` that completes them — written by hand,
//! in full batches, with no callers to queue, wake or answer: what the database takes for
//! this work when the client costs next to nothing.

use crate::baseline::{LEASE, NAMESPACE, TTL, encode, prepare};
use crate::support::payload::{fresh_requests, settle};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, SqlSafeStr};

/// `rounds` batches of `batch` fresh keys, claimed then completed, on one connection.
pub(crate) async fn run(pool: &PgPool, table: &str, (rounds, batch): (usize, usize)) {
    let insert = AssertSqlSafe(format!(
        "INSERT INTO {table} (key_digest, namespace, key_preview, fingerprint, state, token, \
                              lease_until, expires_at) \
         SELECT d, n, p, f, 0, tk, now() + l * interval '1 microsecond', \
                now() + l * interval '1 microsecond' \
         FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bytea[], $5::int8[], $6::int8[]) \
           AS u(d, n, p, f, tk, l) \
         ORDER BY d \
         ON CONFLICT (key_digest) DO NOTHING RETURNING key_digest"
    ))
    .into_sql_str();
    let complete = AssertSqlSafe(format!(
        "UPDATE {table} AS r SET state = 1, outcome = u.o, output = u.b, lease_until = NULL, \
           expires_at = now() + u.ttl * interval '1 microsecond' \
         FROM unnest($1::bytea[], $2::int8[], $3::int2[], $4::bytea[], $5::int8[]) \
           AS u(d, tk, o, b, ttl) \
         WHERE r.key_digest = u.d AND r.token = u.tk AND r.state = 0"
    ))
    .into_sql_str();
    let mut conn = pool.acquire().await.unwrap();
    for _ in 0..rounds {
        let requests = fresh_requests(batch as u64);
        let prepared: Vec<_> = requests.iter().map(prepare).collect();
        let digests: Vec<&[u8]> = prepared.iter().map(|p| &p.digest[..]).collect();
        let tokens: Vec<i64> = prepared.iter().map(|p| p.token).collect();
        let inserted: Vec<Vec<u8>> = sqlx::query_scalar(insert.clone())
            .bind(&digests)
            .bind(vec![NAMESPACE; batch])
            .bind(prepared.iter().map(|p| &*p.preview).collect::<Vec<_>>())
            .bind(
                prepared
                    .iter()
                    .map(|p| &p.fingerprint[..])
                    .collect::<Vec<_>>(),
            )
            .bind(&tokens)
            .bind(vec![LEASE.as_micros() as i64; batch])
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        assert_eq!(inserted.len(), batch, "every key is fresh");
        let outputs: Vec<Vec<u8>> = requests.iter().map(|r| encode(&settle(r))).collect();
        let done = sqlx::query(complete.clone())
            .bind(&digests)
            .bind(&tokens)
            .bind(vec![0_i16; batch])
            .bind(outputs.iter().map(|o| &o[..]).collect::<Vec<_>>())
            .bind(vec![TTL.as_micros() as i64; batch])
            .execute(&mut *conn)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), batch as u64, "every claim completed");
    }
}
