//! [`RedisStore`]: construction, keys, and the [`Store`] operations.

use async_trait::async_trait;
use idem_core::codec::MAX_ENCODED_LEN;
use idem_core::store::{Claim, Output, Token};
use idem_core::{Error, Fingerprint, Key, Store, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::{ClaimGuard, release_in_background};
use crate::conn::Conn;
use crate::error::backend;
use crate::prefix::{self, DEFAULT_PREFIX};
use crate::record;
use crate::scripts::{SCRIPTS, fenced};

/// How long [`RedisStore::connect`] waits for a reply: above the client's 500 ms default,
/// because the largest output idem records (64 MiB) takes longer than that to send.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a call retries connecting to a server that went away before it fails,
/// and the longest pause between tries: fail fast, because a caller that gets
/// `Error::Store` retries the whole call later (HTTP 503), and with the client's defaults
/// (6 tries, backoff from 100 ms) each call blocked about 9 s while the server was down.
const CONNECT_RETRIES: usize = 2;
const CONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// How many times a cluster request is retried (after `MOVED`, `TRYAGAIN`, a lost node)
/// before it fails: the client's default is 16, which blocks a call for seconds while a
/// node is down; a slot migration or failover needs a few.
const CLUSTER_RETRIES: u32 = 4;

/// The longest expiry set, in milliseconds (about 1,100 years): Redis refuses an expiry
/// whose deadline overflows, and `Duration::MAX` would.
const MAX_EXPIRY_MS: u64 = 1 << 45;

/// Idempotency records in Redis (or Valkey): exactly-once across every process that shares
/// the server.
///
/// Each record is one packed string at `{prefix}{hex key digest}`; its expiry is the lease
/// while the call runs and the TTL once completed, on the server's clock, so Redis removes
/// expired records itself. Every operation is one atomic round trip on that one key, so it
/// stays in one slot of a Redis Cluster: the claim is one plain `SET … NX PX … GET` (it
/// creates the record, or returns the live one without writing: a replay writes nothing),
/// and `complete`, `renew` and `release` are Lua scripts (by `EVALSHA`, reloaded after
/// `NOSCRIPT`) fenced by the claim's token. Needs Redis 7.0 or later (or Valkey).
///
/// A claim that finds a call in progress reports that call's whole lease as
/// `lease_remaining`, an upper bound of what remains of it.
///
/// Cloning is cheap and shares the connection (a multiplexed [`ConnectionManager`], or a
/// [`ClusterConnection`] on a cluster; both reconnect by themselves after a server went
/// away).
///
/// Durability is Redis': with its default persistence a restart or a failover can lose the
/// most recent records, and a retry of such a call runs its body again. See README's
/// "Redis" section.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    /// The longest output `complete` can send: idem's own limit, or less where the server
    /// accepts shorter arguments (`proto-max-bulk-len`).
    max_output: usize,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://host:port/db`, `rediss://` for TLS
    /// where the `redis` crate is built with it) and loads the scripts. Keys get the prefix
    /// [`DEFAULT_PREFIX`] (`idem:`).
    ///
    /// An invalid URL is [`Error::Config`]; a server that cannot be reached is
    /// [`Error::Store`].
    pub async fn connect(url: &str) -> Result<RedisStore, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_max_delay(CONNECT_MAX_DELAY);
        let mut conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(backend("connect"))?;
        load_scripts(&mut conn).await?;
        let max_output = max_output_len(&mut conn).await;
        Ok(RedisStore {
            max_output,
            ..RedisStore::from_manager(conn)
        })
    }

    /// Connects to the Redis Cluster that the nodes at `nodes` (some or all of its
    /// primaries, `redis://host:port`) belong to, and loads the scripts on every node. Keys
    /// get the prefix [`DEFAULT_PREFIX`].
    ///
    /// Invalid URLs are [`Error::Config`]; a cluster that cannot be reached is
    /// [`Error::Store`].
    pub async fn connect_cluster<I, S>(nodes: I) -> Result<RedisStore, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        if nodes.is_empty() {
            return Err(Error::Config("no Redis Cluster node given".into()));
        }
        let client = redis::cluster::ClusterClient::builder(nodes)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(CLUSTER_RETRIES)
            .build()
            .map_err(|e| Error::Config(format!("invalid Redis Cluster nodes: {e}")))?;
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(backend("connect"))?;
        load_scripts(&mut conn).await?;
        let max_output = max_output_len(&mut conn).await;
        Ok(RedisStore {
            max_output,
            ..RedisStore::from_cluster(conn)
        })
    }

    /// A store on a connection you made (with your own timeouts, TLS or credentials), with
    /// the prefix [`DEFAULT_PREFIX`]. The scripts are loaded on first use. The longest output
    /// is idem's own limit (64 MiB): the server's `proto-max-bulk-len` is not asked.
    pub fn from_manager(conn: ConnectionManager) -> RedisStore {
        RedisStore {
            conn: Conn::Single(conn),
            prefix: Arc::from(DEFAULT_PREFIX),
            max_output: MAX_ENCODED_LEN,
        }
    }

    /// A store on a Redis Cluster connection you made, with the prefix [`DEFAULT_PREFIX`].
    /// The scripts are loaded on first use.
    pub fn from_cluster(conn: ClusterConnection) -> RedisStore {
        RedisStore {
            conn: Conn::Cluster(conn),
            prefix: Arc::from(DEFAULT_PREFIX),
            max_output: MAX_ENCODED_LEN,
        }
    }

    /// The same store with record keys under `prefix` (default [`DEFAULT_PREFIX`]), so
    /// that applications sharing a server keep apart.
    ///
    /// The prefix must be 1 to 128 bytes of printable ASCII without spaces, and without
    /// `{` or `}` (which would change the Redis Cluster slot a key hashes to); anything else
    /// is [`Error::Config`].
    pub fn with_prefix(self, prefix: &str) -> Result<RedisStore, Error> {
        prefix::validate(prefix)?;
        Ok(RedisStore {
            prefix: Arc::from(prefix),
            ..self
        })
    }

    /// The prefix of every record's key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of `key`'s record: the prefix, then the digest in lowercase hex.
    fn record_key(&self, key: &Key) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = key.digest().as_bytes();
        let mut out = String::with_capacity(self.prefix.len() + 2 * digest.len());
        out.push_str(&self.prefix);
        for byte in digest {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }
}

/// Loads every script (on a cluster, `SCRIPT LOAD` goes to every node), so that the first
/// calls run by `EVALSHA`; a server that forgets them (a restart) gets them again on
/// `NOSCRIPT`.
async fn load_scripts(conn: &mut impl redis::aio::ConnectionLike) -> Result<(), Error> {
    for script in SCRIPTS.all() {
        script
            .prepare_invoke()
            .load_async(conn)
            .await
            .map_err(backend("connect"))?;
    }
    Ok(())
}

/// The longest output this server lets `complete` send: its `proto-max-bulk-len` (the
/// longest argument it accepts; a longer one makes it drop the connection), capped at idem's
/// own [`MAX_ENCODED_LEN`]. Where `CONFIG GET` is refused (managed services may rename or
/// forbid it), idem's limit stands: the server's default (512 MB) is above it.
async fn max_output_len(conn: &mut impl redis::aio::ConnectionLike) -> usize {
    let config: Option<HashMap<String, String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("proto-max-bulk-len")
        .query_async(conn)
        .await
        .ok();
    config
        .and_then(|c| c.get("proto-max-bulk-len")?.parse::<usize>().ok())
        .map_or(MAX_ENCODED_LEN, |limit| limit.min(MAX_ENCODED_LEN))
}

/// A fresh fencing token: 64 random bits. Made on the client rather than by a counter in
/// Redis, because (a) a counter would be a second key, in another Cluster slot than the
/// record, and (b) the client knows the token before the claim is sent, so a cancelled
/// claim can be released by its token even when its reply never arrived. Two claims of
/// one key share a token with probability 2^-64.
fn new_token() -> Result<Token, StoreError> {
    getrandom::u64()
        .map(Token::new)
        .map_err(|e| StoreError::backend("claim", format!("no random token: {e}")))
}

/// A lease or TTL in whole milliseconds for `PEXPIRE`: at least 1 (0 would delete the key
/// at once), at most [`MAX_EXPIRY_MS`].
fn expiry_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).map_or(MAX_EXPIRY_MS, |ms| ms.clamp(1, MAX_EXPIRY_MS))
}

#[async_trait]
impl Store for RedisStore {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let token = new_token()?;
        let lease_ms = expiry_ms(lease);
        let mut conn = self.conn.clone();
        let guard = ClaimGuard::new(self, key, token);
        // One plain command, no script: creates the record if the key is absent (reply
        // nil), else returns the live record and leaves it as it is (a replay writes
        // nothing). Redis allows NX with GET since 7.0.
        let reply: Result<Option<Vec<u8>>, _> = redis::cmd("SET")
            .arg(self.record_key(key))
            .arg(record::in_progress(token, fingerprint, lease_ms))
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .arg("GET")
            .query_async(&mut conn)
            .await;
        // The reply, or an error, arrived: nothing is in flight any more. On an error the
        // claim may still have been applied (a timeout after Redis ran it): release it.
        match reply {
            Ok(previous) => {
                guard.disarm();
                record::claim(previous, token)
            }
            Err(e) => {
                drop(guard);
                Err(record::claim_error(e))
            }
        }
    }

    async fn renew(&self, key: &Key, token: Token, lease: Duration) -> Result<(), StoreError> {
        let reply = SCRIPTS
            .renew
            .key(self.record_key(key))
            .arg(&record::token_bytes(token)[..])
            .arg(&expiry_ms(lease).to_le_bytes()[..])
            .arg(expiry_ms(lease))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend("renew"))?;
        fenced("renew", reply)
    }

    async fn complete(
        &self,
        key: &Key,
        token: Token,
        output: Output,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let reply = SCRIPTS
            .complete
            .key(self.record_key(key))
            .arg(&record::token_bytes(token)[..])
            .arg(&[record::done_kind(output.outcome)][..])
            .arg(&output.bytes[..])
            .arg(expiry_ms(ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend("complete"))?;
        fenced("complete", reply)
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let reply = SCRIPTS
            .release
            .key(self.record_key(key))
            .arg(&record::token_bytes(token)[..])
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend("release"))?;
        fenced("release", reply)
    }

    fn release_on_drop(&self, key: &Key, token: Token) {
        release_in_background(self, key, token);
    }

    /// Returns 0 at once: every record has a server-side expiry (its lease, then its TTL),
    /// and Redis deletes expired keys itself, so there is nothing to scan and growth is
    /// bounded without it. (`idem::purge_periodically` on this store is harmless and idle.)
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// What the server accepts as one argument (learned by [`RedisStore::connect`] and
    /// [`RedisStore::connect_cluster`]), at most idem's own limit; on a connection made by
    /// the caller, idem's limit.
    fn max_output_len(&self) -> usize {
        self.max_output
    }

    /// Yes: every record has a server-side expiry, and Redis deletes it then.
    fn expires_records_itself(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_positive_and_bounded() {
        assert_eq!(expiry_ms(Duration::ZERO), 1);
        assert_eq!(expiry_ms(Duration::from_micros(10)), 1);
        assert_eq!(expiry_ms(Duration::from_millis(300)), 300);
        assert_eq!(expiry_ms(Duration::MAX), MAX_EXPIRY_MS);
    }

    #[test]
    fn tokens_differ() {
        let a = new_token().map(Token::get).ok();
        let b = new_token().map(Token::get).ok();
        assert!(a.is_some() && a != b);
    }
}
