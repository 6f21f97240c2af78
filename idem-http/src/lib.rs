//! The HTTP edges of [idem](https://docs.rs/idem), used through `idem::http`: the server side
//! (feature `axum`) makes routes idempotent by the `Idempotency-Key` header; the client
//! side (feature `reqwest`) retries requests with the same key.

// On docs.rs, feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "client")]
pub mod client;
