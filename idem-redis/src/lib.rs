//! A Redis store for idem: [`RedisStore`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), idem_core::Error> {
//! let store = idem_redis::RedisStore::connect("redis://127.0.0.1:6379")
//!     .await?
//!     .with_prefix("billing:idem:")?;
//! # let _ = store; Ok(()) }
//! ```
//!
//! On a Redis Cluster, [`RedisStore::connect_cluster`] takes the addresses of some of its
//! nodes; records spread over the slots by their digest.
//!
//! Each record is one packed binary string, `{prefix}{hex key digest}`, whose expiry is the
//! lease while the call runs and the TTL once it completed: the server's clock decides, and
//! Redis itself removes what expired (so [`purge_expired`](idem_core::Store::purge_expired)
//! has nothing to do and returns 0). Every operation is one atomic round trip touching that
//! one key: the claim is the plain command `SET key value NX PX lease GET` (Redis ≥ 7.0),
//! and the fenced operations (complete, renew, release) are Lua scripts run by `EVALSHA`
//! that compare the claim's token inside the value.

mod cancel;
mod conn;
mod error;
mod prefix;
mod record;
mod scripts;
mod store;

pub use prefix::DEFAULT_PREFIX;
pub use store::RedisStore;

/// The `redis` client crate this store is built on, for [`RedisStore::from_manager`]: use
/// this path so that your connection comes from the same version.
pub use redis;
