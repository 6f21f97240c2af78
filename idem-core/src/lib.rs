//! The runtime of [idem](https://docs.rs/idem): keys, fingerprints, codecs, the [`Store`]
//! trait, the exactly-once protocol ([`protocol`]) and the in-memory store.
//!
//! Applications use it through the `idem` crate and its `#[idempotent]` attribute.

// On docs.rs, feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod codec;
mod default_store;
mod error;
mod error_policy;
mod fingerprint;
mod key;
#[cfg(feature = "moka")]
mod memory;
mod observe;
mod options;
pub mod protocol;
mod purge;
pub mod shape;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod tracked;
mod tx_store;
mod value_codec;

// What an application uses.
pub use default_store::set_default_store;
pub use error::{CodecError, Error, StoreError};
pub use fingerprint::{Fingerprint, FingerprintBuilder};
pub use key::{IntoKey, Key, KeyWriter};
#[cfg(feature = "moka")]
pub use memory::MemoryStore;
pub use options::{OnConflict, Options};
pub use protocol::tx::run_in_tx;
pub use purge::purge_periodically;
pub use store::Store;
pub use tracked::Tracked;
pub use tx_store::TxStore;

/// What the `#[idempotent]` expansion names (through `idem::__private`). Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::codec::ShapeCell;
    pub use crate::default_store::DefaultStore;
    pub use crate::protocol::expansion::{execute, execute_in_tx};
}
