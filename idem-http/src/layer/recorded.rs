//! What the layer records of a response: status, the kept headers, the body bytes.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, response};
use serde::{Deserialize, Serialize};

/// The header a replayed response carries (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// A recorded response. `Bytes` serializes as one byte string (its `serde` feature), not as a
/// sequence of numbers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RecordedResponse {
    status: u16,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
}

impl RecordedResponse {
    /// The response's status and body, and those of its headers named in `kept`.
    pub(crate) fn new(head: &response::Parts, kept: &[HeaderName], body: Bytes) -> Self {
        let headers = kept
            .iter()
            .flat_map(|name| {
                head.headers.get_all(name).iter().map(|value| {
                    (
                        name.as_str().to_owned(),
                        Bytes::copy_from_slice(value.as_bytes()),
                    )
                })
            })
            .collect();
        RecordedResponse {
            status: head.status.as_u16(),
            headers,
            body,
        }
    }

    /// The recorded response, marked `Idempotent-Replayed: true`.
    pub(crate) fn replay(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        // A record holds what a valid response had; anything else was not written by us.
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or_else(|_| {
            tracing::warn!(
                status = self.status,
                "recorded response has an invalid status"
            );
            StatusCode::INTERNAL_SERVER_ERROR
        });
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_maybe_shared(value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                _ => tracing::warn!(header = %name, "recorded response has an invalid header"),
            }
        }
        // Checked once, at compile time, rather than per replay (cloning a static is a copy).
        static NAME: HeaderName = HeaderName::from_static(IDEMPOTENT_REPLAYED);
        static TRUE: HeaderValue = HeaderValue::from_static("true");
        headers.insert(NAME.clone(), TRUE.clone());
        response
    }
}
