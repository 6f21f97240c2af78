//! Make async functions idempotent by declaration.
//!
//! ```
//! use idem::{idempotent, MemoryStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize)]
//! struct Charge { payment_id: String, user_id: u64, cents: u64 }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Receipt { charged: u64 }
//!
//! #[idempotent(key = req.payment_id, scope = req.user_id, store = store)]
//! async fn charge(store: &MemoryStore, req: Charge) -> Result<Receipt, idem::Error> {
//!     Ok(Receipt { charged: req.cents }) // runs once per (user, payment id)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let req = || Charge { payment_id: "p-1".into(), user_id: 7, cents: 500 };
//! let first = charge(&store, req()).await.unwrap();
//! let retry = charge(&store, req()).await.unwrap(); // replayed, the body did not run
//! assert_eq!(first, retry);
//! # }
//! ```
//!
//! The first call with a key runs the body and records its result; later calls with the key
//! get the recorded result back. A later call with the same key but another payload gets
//! [`Error::PayloadMismatch`]. [`idempotent`] documents every option.
//!
//! # Where things are
//!
//! - **Applications** use the root: [`idempotent`], the stores ([`MemoryStore`], and
//!   `idem::sqlx`'s SQL stores), [`Error`], [`Options`], [`run_in_tx`] and
//!   [`set_default_store`]; [`codec`] picks how outputs are stored.
//! - **Adapters** that run the protocol without the macro (an HTTP layer, a consumer loop)
//!   use [`protocol`]: [`protocol::Idempotent`] runs one call on any [`Store`] and says what
//!   it did.
//! - **Store implementors** use [`store`] (the [`Store`] trait and the values it exchanges)
//!   and `idem::testing` (feature `testing`: the conformance suite every store passes).

// On docs.rs, feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "moka")]
pub use idem_core::MemoryStore;
pub use idem_core::{
    CodecError, Error, Fingerprint, FingerprintBuilder, IntoKey, Key, KeyWriter, OnConflict,
    Options, Store, StoreError, Tracked, TxStore, purge_periodically, run_in_tx, set_default_store,
};
#[doc = include_str!("docs/idempotent.md")]
pub use idem_macros::idempotent;

/// Codecs for recorded outputs; pick one with `#[idempotent(codec = ...)]`.
pub mod codec {
    #[cfg(feature = "json")]
    pub use idem_core::codec::Json;
    #[cfg(feature = "postcard")]
    pub use idem_core::codec::Postcard;
    pub use idem_core::codec::{Bincode, Codec, CodecFailure, decode, encode};
}

pub use idem_core::{protocol, store};

// Paths of earlier releases, for code written against them; new code names the module.
#[doc(hidden)]
pub use idem_core::codec::Codec;
#[doc(hidden)]
pub use idem_core::store::{Claim, KeyDigest, Outcome, Output, Record, Token};

/// The store conformance suite: every [`Store`] implementation should pass it.
#[cfg(feature = "testing")]
pub use idem_core::{store_conformance_tests, testing, tx_conformance_tests};

/// SQL stores (features `sqlite`, `postgres`, `mysql`), built from your sqlx pool.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod sqlx {
    #[cfg(feature = "mysql")]
    pub use idem_sqlx::MySqlDialect;
    #[cfg(feature = "mysql")]
    pub use idem_sqlx::MySqlStore;
    #[cfg(feature = "postgres")]
    pub use idem_sqlx::PgDialect;
    #[cfg(feature = "postgres")]
    pub use idem_sqlx::PgStore;
    #[cfg(feature = "sqlite")]
    pub use idem_sqlx::SqliteDialect;
    #[cfg(feature = "sqlite")]
    pub use idem_sqlx::SqliteStore;
    pub use idem_sqlx::{ClaimOrder, SqlStore};
}

/// The Redis store (feature `redis`): `idem::redis::RedisStore::connect(url)` (or
/// `connect_cluster(nodes)`), one round trip per operation, fenced, records expired by the
/// server.
#[cfg(feature = "redis")]
pub mod redis {
    pub use idem_redis::*;
}

/// HTTP: the `Idempotency-Key` header on axum/tower (feature `axum`) and a client that
/// retries with the same key (feature `reqwest`).
#[cfg(any(feature = "axum", feature = "reqwest"))]
pub mod http {
    pub use idem_http::*;
}

/// What `#[idempotent]` expands to. Not public API.
#[doc(hidden)]
pub mod __private;
