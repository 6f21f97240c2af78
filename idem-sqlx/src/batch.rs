//! A batch of coalesced claims or completes on one connection: what the dialects' multi-row
//! statements take and return, and how every caller's answer is made from them — the same
//! answer its own call would have had.

use idem_core::store::{Claim, Output, Token};
use idem_core::{Key, StoreError};
use sqlx::{ColumnIndex, Database, Decode, Row, Type};
use std::collections::HashMap;
use std::time::Duration;

use crate::claim::{CLAIM_ATTEMPTS, NewClaim};
use crate::columns::{COMPLETED, outcome_code};
use crate::dialect::{Conn, Dialect};
use crate::error::backend;
use crate::found::Found;
use crate::store::{Common, SqlStore};
use crate::token;

/// One row of a batch read: the key's digest, its token, and the record.
pub struct BatchRow {
    pub(crate) digest: Vec<u8>,
    /// `None` where the column is not an integer (SQLite stores what it is given): a
    /// corrupt row that no caller's token owns, as a single call's fenced statements
    /// (which compare the token in SQL, never read it) find — not an error for the batch.
    pub(crate) token: Option<i64>,
    /// Its `state`, read on its own: whether a token completed the record must not depend
    /// on the record's other columns (a single `complete` asks only `token = ? AND state =
    /// 1`); `None` where it is not an integer.
    pub(crate) state: Option<i64>,
    /// The record; a corrupt row is an error for its key only.
    pub(crate) found: Result<Found, StoreError>,
}

impl BatchRow {
    /// The rows a dialect's batch read returned (`key_digest`, `token`, `state` and the
    /// record's columns).
    pub(crate) fn all<D: Dialect>(
        rows: &[<D::Database as Database>::Row],
    ) -> Result<Vec<BatchRow>, sqlx::Error>
    where
        for<'r> Vec<u8>: Decode<'r, D::Database> + Type<D::Database>,
        for<'r> i64: Decode<'r, D::Database> + Type<D::Database>,
        for<'s> &'s str: ColumnIndex<<D::Database as Database>::Row>,
    {
        rows.iter()
            .map(|row| {
                Ok(BatchRow {
                    digest: row.try_get("key_digest")?,
                    token: row.try_get("token").ok(),
                    state: row.try_get("state").ok(),
                    found: D::found(row),
                })
            })
            .collect()
    }
}

/// One completion of a batch, as its statement binds it.
pub struct Completion<'a> {
    pub(crate) digest: &'a [u8],
    pub(crate) token: i64,
    pub(crate) outcome: i16,
    pub(crate) bytes: &'a [u8],
    pub(crate) ttl: Duration,
}

impl<'a> Completion<'a> {
    pub(crate) fn new(key: &'a Key, token: Token, output: &'a Output, ttl: Duration) -> Self {
        Completion {
            digest: &key.digest().as_bytes()[..],
            token: token::value(token),
            outcome: outcome_code(output.outcome),
            bytes: &output.bytes[..],
            ttl,
        }
    }
}

/// What a row of a batch of completes costs a statement besides its output: its digest,
/// token, outcome and TTL, and their framing.
const COMPLETION_OVERHEAD: usize = 128;

/// `items` in runs (of one item at least) whose rows add up to at most `budget` bytes, each
/// run one statement: a batch of completes carries every caller's output, and MySQL refuses
/// a statement larger than its `max_allowed_packet`.
pub(crate) fn runs<'i, 'a>(
    items: &'i [Completion<'a>],
    budget: usize,
) -> impl Iterator<Item = &'i [Completion<'a>]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut size = 0;
        let n = rest
            .iter()
            .take_while(|c| {
                size += c.bytes.len() + COMPLETION_OVERHEAD;
                size <= budget
            })
            .count()
            .max(1);
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}

/// How many rows a multi-row statement for `n` items has: the next power of two, so that
/// a connection prepares (and its statement cache keeps) a few statements, not one per
/// batch size.
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(crate) fn rows_for(n: usize) -> usize {
    n.next_power_of_two()
}

/// `items` padded to [`rows_for`] their count by repeating the last one: a repeated
/// claim's insert finds its own row and does nothing, a repeated key's read matches the
/// row once.
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(crate) fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let last = items.len().saturating_sub(1);
    (0..rows_for(items.len())).filter_map(move |i| items.get(i.min(last)))
}

/// A completion that matches no row (no key has an empty digest, no token is negative),
/// to pad a multi-row `UPDATE` to [`rows_for`] its items.
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(crate) const NO_COMPLETION: Completion<'static> = Completion {
    digest: &[],
    token: -1,
    outcome: 0,
    bytes: &[],
    ttl: Duration::ZERO,
};

/// `items` padded to [`rows_for`] their count with [`NO_COMPLETION`].
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(crate) fn padded_completions<'a>(
    items: &'a [Completion<'a>],
) -> impl Iterator<Item = &'a Completion<'a>> {
    let rows = rows_for(items.len());
    items
        .iter()
        .chain(std::iter::repeat_n(&NO_COMPLETION, rows - items.len()))
}

/// `row` (one row of placeholders) `n` times, separated by `separator`: the rows of a
/// multi-row statement whose size is the batch's.
#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(crate) fn repeat(row: &str, n: usize, separator: &str) -> String {
    let mut out = String::with_capacity((row.len() + separator.len()) * n);
    for i in 0..n {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(row);
    }
    out
}

/// The answers to `claims` (distinct keys), each `None` where the batch could not settle
/// it — the key's record expired (a takeover), or changed between the statements — and
/// the claim's own statements must.
///
/// The same statements a single claim sends, each once for the whole batch and in the
/// order the store's recent claims call for: reading first, the live records are answered
/// by that one read (a replay writes nothing); the rest are inserted where absent. The
/// insert's `RETURNING` says which it inserted; the others (all of them on MySQL, which has
/// no `RETURNING`) are read back, and a row that carries the claim's own token (made on the
/// client, random) is the claim's.
pub(crate) async fn claims<D: Common>(
    store: &SqlStore<D>,
    conn: &mut Conn<D>,
    claims: &[NewClaim<'_>],
    read_first: bool,
) -> Result<Vec<Option<Result<Claim, StoreError>>>, sqlx::Error> {
    let index: HashMap<&[u8], usize> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| (c.digest(), i))
        .collect();
    let mut answers: Vec<Option<Result<Claim, StoreError>>> = claims.iter().map(|_| None).collect();
    let mut open: Vec<usize> = (0..claims.len()).collect();
    if read_first {
        let digests: Vec<&[u8]> = claims.iter().map(NewClaim::digest).collect();
        for row in D::read_batch(store, conn, &digests).await? {
            let Some(&i) = index.get(&row.digest[..]) else {
                continue;
            };
            answers[i] = match row.found {
                Ok(found) if found.live() => Some(D::live_claim(found)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            };
        }
        open.retain(|&i| answers[i].is_none());
    }
    if open.is_empty() {
        return Ok(answers);
    }
    // In key order: two batches (of two processes) inserting the same keys lock them in
    // the same order, so neither waits for the other while holding what it needs.
    open.sort_by_key(|&i| claims[i].digest());
    let insert: Vec<NewClaim<'_>> = open.iter().map(|&i| claims[i]).collect();
    let mut deadlocks = 0;
    let inserted = loop {
        match D::insert_batch(store, conn, &insert).await {
            Ok(inserted) => break inserted,
            // MySQL: the statement alone was rolled back; running it again is safe.
            Err(e) if D::is_deadlock(&e) && deadlocks < CLAIM_ATTEMPTS => deadlocks += 1,
            Err(e) => return Err(e),
        }
    };
    for digest in inserted.iter().flatten() {
        if let Some(&i) = index.get(&digest[..]) {
            answers[i] = Some(Ok(claims[i].claimed()));
        }
    }
    let digests: Vec<&[u8]> = insert
        .iter()
        .map(NewClaim::digest)
        .filter(|digest| answers[index[digest]].is_none())
        .collect();
    if digests.is_empty() {
        return Ok(answers);
    }
    for row in D::read_batch(store, conn, &digests).await? {
        let Some(&i) = index.get(&row.digest[..]) else {
            continue;
        };
        answers[i] = match row.found {
            _ if row.token == Some(claims[i].token) => Some(Ok(claims[i].claimed())),
            Ok(found) if found.live() => Some(D::live_claim(found)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        };
    }
    Ok(answers)
}

/// The answers to `items` (distinct keys): one fenced multi-row `UPDATE`; if it matched
/// fewer rows than items, one read tells each item's fate as a single `complete` would —
/// `Ok` if its token completed the record (now or before: a retry after a lost reply),
/// else [`StoreError::LeaseLost`].
pub(crate) async fn completes<D: Common>(
    store: &SqlStore<D>,
    conn: &mut Conn<D>,
    items: &[Completion<'_>],
) -> Result<Vec<Result<(), StoreError>>, sqlx::Error> {
    let mut deadlocks = 0;
    let matched = loop {
        match D::complete_batch(store, conn, items).await {
            Ok(matched) => break matched,
            Err(e) if D::is_deadlock(&e) && deadlocks < CLAIM_ATTEMPTS => deadlocks += 1,
            Err(e) => return Err(e),
        }
    };
    // Distinct keys, each matched by its own token only: all matched, all done.
    if matched == items.len() as u64 {
        return Ok(items.iter().map(|_| Ok(())).collect());
    }
    let digests: Vec<&[u8]> = items.iter().map(|c| c.digest).collect();
    let mut rows: HashMap<Vec<u8>, BatchRow> = HashMap::new();
    for row in D::read_batch(store, conn, &digests).await? {
        rows.insert(row.digest.clone(), row);
    }
    Ok(items
        .iter()
        .map(|item| match rows.remove(item.digest) {
            Some(row) if row.token == Some(item.token) && row.state == Some(COMPLETED) => Ok(()),
            _ => Err(StoreError::LeaseLost),
        })
        .collect())
}

/// The error of a batch's statement, for each of its callers (a `StoreError` is not
/// `Clone`; the message is kept).
pub(crate) fn shared_error(op: &'static str, error: &sqlx::Error) -> StoreError {
    backend(op)(sqlx::Error::Protocol(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completions(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes.iter().map(|&n| vec![0; n]).collect()
    }

    fn run_lengths(outputs: &[Vec<u8>], budget: usize) -> Vec<usize> {
        let items: Vec<Completion<'_>> = outputs
            .iter()
            .map(|bytes| Completion {
                bytes,
                ..NO_COMPLETION
            })
            .collect();
        let runs: Vec<usize> = runs(&items, budget).map(<[_]>::len).collect();
        assert_eq!(runs.iter().sum::<usize>(), items.len(), "every item, once");
        runs
    }

    #[test]
    fn runs_stay_within_the_budget() {
        let row = |n: usize| n + COMPLETION_OVERHEAD;
        // 16 KiB outputs in a 1 MiB packet's budget: 31 per run.
        let outputs = completions(&[16 * 1024; 100]);
        let budget = 512 * 1024;
        assert_eq!(run_lengths(&outputs, budget), [31, 31, 31, 7]);
        assert!(31 * row(16 * 1024) <= budget && 32 * row(16 * 1024) > budget);
        // Small outputs: one run.
        assert_eq!(run_lengths(&completions(&[42; 512]), budget), [512]);
    }

    #[test]
    fn an_item_over_the_budget_runs_alone() {
        let outputs = completions(&[10, 5_000, 10, 10]);
        assert_eq!(run_lengths(&outputs, 1_000), [1, 1, 2]);
        assert!(run_lengths(&[], 1_000).is_empty());
    }
}
