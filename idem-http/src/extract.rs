//! [`IdempotencyKey`]: the key header as an axum extractor, for handlers that call
//! `#[idempotent]` functions themselves.

use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use idem_core::{IntoKey, KeyWriter};

use crate::header::{self, DEFAULT_MAX_KEY_LEN, IDEMPOTENCY_KEY, KeyError};
use crate::problem::Problem;

/// The request's `Idempotency-Key` header (an sf-string `"abc"` or a bare `abc`, at most
/// 255 characters), as an axum extractor and an [`IntoKey`], so a handler can pass it to
/// an `#[idempotent]` function:
///
/// ```
/// # extern crate idem_core as idem;
/// use idem_http::IdempotencyKey;
///
/// async fn charge(key: IdempotencyKey, body: String) -> String {
///     // #[idempotent(key = key, ...)] takes it as it is.
///     format!("charging {body} once for {}", key.as_str())
/// }
/// let app: axum::Router = axum::Router::new().route("/charges", axum::routing::post(charge));
/// ```
///
/// A request without the header, or with an unusable one, is refused with 400
/// (`application/problem+json`). Take `Option<IdempotencyKey>` to make the key optional: a
/// missing header is `None`, a malformed one is still refused.
///
/// It serializes as its text, so an `#[idempotent]` function that takes it by value needs
/// no `skip(..)`.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value: an sf-string or a bare key, not empty, at most 255 characters.
    pub fn parse(value: &str) -> Result<Self, KeyError> {
        header::parse(value.as_bytes(), DEFAULT_MAX_KEY_LEN)
            .map(|key| IdempotencyKey(key.into_owned()))
    }

    /// The key (without the quotes of the sf-string form).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }

    fn from_parts(parts: &Parts) -> Result<Self, KeyRejection> {
        header::key_of(
            parts.headers.get_all(IDEMPOTENCY_KEY).iter(),
            DEFAULT_MAX_KEY_LEN,
        )
        .map(|key| IdempotencyKey(key.into_owned()))
        .map_err(KeyRejection)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl IntoKey for IdempotencyKey {
    fn write_key(&self, out: &mut KeyWriter) -> Result<(), idem_core::Error> {
        out.part(&self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = KeyRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        IdempotencyKey::from_parts(parts)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = KeyRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        match IdempotencyKey::from_parts(parts) {
            Ok(key) => Ok(Some(key)),
            Err(KeyRejection(KeyError::Missing)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Why [`IdempotencyKey`] refused a request: a 400 problem+json response.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct KeyRejection(pub KeyError);

impl IntoResponse for KeyRejection {
    fn into_response(self) -> Response {
        Problem::bad_key(IDEMPOTENCY_KEY, &self.0).into_response()
    }
}
