//! The runtime of [idem](https://docs.rs/idem): keys, fingerprints, codecs, the [`Store`]
//! trait, the exactly-once protocol ([`execute`]) and the in-memory store.
//!
//! Applications use it through the `idem` crate and its `#[idempotent]` attribute.

// On docs.rs, feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod codec;
mod default_store;
mod error;
mod executor;
mod fingerprint;
mod key;
#[cfg(feature = "moka")]
mod memory;
mod observe;
mod policy;
mod purge;
pub mod shape;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod tx;

pub use codec::Codec;
pub use default_store::{DefaultStore, set_default_store};
pub use error::{CodecError, Error, StoreError};
pub use executor::execute;
pub use fingerprint::{Fingerprint, FingerprintBuilder};
pub use key::{IntoKey, Key, KeyDigest, KeyWriter};
#[cfg(feature = "moka")]
pub use memory::MemoryStore;
pub use policy::{CacheErrors, CacheIf, ErrorPolicy, OnConflict, Options, Release, ValueCodec};
pub use purge::purge_periodically;
pub use store::{Busy, Claim, Outcome, Output, Record, Store, Token, Waiter};
pub use tx::{TxCall, TxStart, TxStore, run_in_tx, tx_finish, tx_start};
