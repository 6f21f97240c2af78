//! Error responses as RFC 9457 problem details (`application/problem+json`), titled as in
//! the examples of draft-ietf-httpapi-idempotency-key-header.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::header::{IDEMPOTENCY_KEY, KeyError};

/// The `type` of every problem idem answers with: one page that lists them (RFC 9457 lets a
/// type URI be a link to documentation).
const TYPE: &str = "https://docs.rs/idem-http/latest/idem_http/#problems";

/// A problem details object (RFC 9457).
#[derive(Debug, Serialize)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: String,
    status: u16,
    detail: String,
    #[serde(skip)]
    retry_after: Option<Duration>,
}

impl Problem {
    pub(crate) fn new(
        status: StatusCode,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: TYPE,
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After`, in whole seconds rounded up (at least 1: "now" would invite a
    /// retry storm against the owner).
    pub(crate) fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The key header is missing or unusable: 400.
    pub(crate) fn bad_key(header: &str, error: &KeyError) -> Self {
        let title = match error {
            KeyError::Missing => format!("{header} is missing"),
            _ => format!("{header} is invalid"),
        };
        Problem::new(
            StatusCode::BAD_REQUEST,
            title,
            format!(
                "This operation is idempotent and it requires correct usage of {header}: {error}."
            ),
        )
    }

    /// Another request with the key is being processed: 409.
    pub(crate) fn in_progress(header: &str, retry_after: Option<Duration>) -> Self {
        Problem::new(
            StatusCode::CONFLICT,
            format!("A request is outstanding for this {header}"),
            format!(
                "A request with the same {header} for the same operation is being processed \
                 or is outstanding."
            ),
        )
        .retry_after(retry_after.unwrap_or(Duration::from_secs(1)))
    }

    /// The key was used with another payload: 422.
    pub(crate) fn mismatch(header: &str) -> Self {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{header} is already used"),
            format!(
                "This operation is idempotent and it requires correct usage of {header}. \
                 {header} MUST not be reused across different payloads of this operation."
            ),
        )
    }

    /// The store failed: 503, with nothing of the failure in the body (it is logged).
    pub(crate) fn store_unavailable() -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Idempotency store unavailable",
            "The request could not be checked for duplicates; it was not processed. \
             Retry it later with the same key.",
        )
    }

    /// Anything else idem failed at: 500, no detail.
    pub(crate) fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "The request could not be processed idempotently.",
        )
    }

    /// The response.
    pub(crate) fn into_response(self) -> Response {
        // A struct of strings and an integer always serializes.
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(after)),
            );
        }
        response
    }
}

/// Whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

/// The response the IETF Idempotency-Key draft gives an [`idem::Error`](idem_core::Error),
/// as `application/problem+json` (RFC 9457), for the `IntoResponse` of your own error
/// types when handlers call `#[idempotent]` functions themselves:
///
/// | error | status |
/// |---|---|
/// | `MissingKey`, `InvalidKey` | 400 |
/// | `InProgress`, `WaitTimeout` | 409, `Retry-After: 1` |
/// | `PayloadMismatch` | 422 |
/// | `Store(..)` | 503 (the cause is logged, not sent) |
/// | `Codec(..)`, `Config(..)`, others | 500 (logged, not sent) |
///
/// ```
/// # extern crate idem_core as idem;
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
///
/// enum PaymentError { Declined, Idem(idem::Error) }
///
/// impl IntoResponse for PaymentError {
///     fn into_response(self) -> Response {
///         match self {
///             PaymentError::Declined => (StatusCode::PAYMENT_REQUIRED, "declined").into_response(),
///             PaymentError::Idem(e) => idem_http::problem(&e),
///         }
///     }
/// }
/// # let r = PaymentError::Idem(idem::Error::PayloadMismatch).into_response();
/// # assert_eq!(r.status(), 422);
/// ```
pub fn problem(error: &idem_core::Error) -> Response {
    problem_for(IDEMPOTENCY_KEY, error, None).into_response()
}

/// The problem for `error`, naming `header`; `retry_after` is the owner's remaining lease
/// when the protocol reported it.
pub(crate) fn problem_for(
    header: &str,
    error: &idem_core::Error,
    retry_after: Option<Duration>,
) -> Problem {
    use idem_core::Error;
    match error {
        Error::MissingKey => Problem::bad_key(header, &KeyError::Missing),
        Error::InvalidKey => Problem::bad_key(header, &KeyError::Empty),
        Error::InProgress | Error::WaitTimeout => Problem::in_progress(header, retry_after),
        Error::PayloadMismatch => Problem::mismatch(header),
        // What is an outage (503) and what a mistake (500) is `Error::http_status`'s call.
        other if other.http_status() == 503 => {
            tracing::error!(error = %other, "idempotency store failed");
            Problem::store_unavailable()
        }
        other => {
            tracing::error!(error = %other, "idempotent request failed");
            Problem::internal()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn the_mapping() {
        use idem_core::{Error, StoreError};
        let cases = [
            (Error::MissingKey, 400),
            (Error::InvalidKey, 400),
            (Error::InProgress, 409),
            (Error::WaitTimeout, 409),
            (Error::PayloadMismatch, 422),
            (
                Error::Store(StoreError::backend("claim", "secret host db-7 down")),
                503,
            ),
            (Error::Config("bad".into()), 500),
        ];
        for (error, status) in cases {
            let response = problem(&error);
            assert_eq!(response.status(), status, "{error}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                status == 409,
                "{error}"
            );
        }
    }

    #[test]
    fn a_store_failure_leaks_nothing() {
        let error = idem_core::Error::Store(idem_core::StoreError::backend(
            "claim",
            "secret host db-7 down",
        ));
        let body = serde_json::to_string(&problem_for(IDEMPOTENCY_KEY, &error, None)).unwrap();
        assert!(!body.contains("db-7"), "{body}");
        assert!(body.contains("\"status\":503"), "{body}");
    }
}
