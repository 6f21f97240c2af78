//! The HTTP edges of [idem](https://docs.rs/idem), used through `idem::http`: the server side
//! (feature `axum`) makes routes idempotent by the `Idempotency-Key` header; the client
//! side (feature `reqwest`) retries requests with the same key.
//!
//! The server side, as draft-ietf-httpapi-idempotency-key-header describes it:
//!
//! - [`IdempotencyLayer`]: a tower layer that records a route's first response per key and
//!   replays it to retries (`Idempotent-Replayed: true`).
//! - [`IdempotencyKey`]: the key header as an axum extractor, for handlers that call
//!   `#[idempotent]` functions themselves.
//! - [`problem`]: idem's errors as HTTP responses.
//!
//! # Problems
//!
//! Error responses are `application/problem+json` (RFC 9457) with `type`, `title`,
//! `status` and `detail`, titled as in the draft's examples: "Idempotency-Key is missing"
//! or "Idempotency-Key is invalid" (400), "A request is outstanding for this
//! Idempotency-Key" (409, with `Retry-After`), "Idempotency-Key is already used" (422),
//! "Request body is too large" (413), "Idempotency store unavailable" (503).

// On docs.rs, feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "server")]
mod extract;
#[cfg(feature = "server")]
mod header;
#[cfg(feature = "server")]
pub mod layer;
#[cfg(feature = "server")]
mod problem;

#[cfg(feature = "server")]
pub use extract::{IdempotencyKey, KeyRejection};
#[cfg(feature = "server")]
pub use header::{DEFAULT_MAX_KEY_LEN, IDEMPOTENCY_KEY, KeyError};
#[cfg(feature = "server")]
pub use layer::IdempotencyLayer;
#[cfg(feature = "server")]
pub use problem::problem;
