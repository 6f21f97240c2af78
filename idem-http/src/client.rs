//! Retrying HTTP requests with the same `Idempotency-Key` (feature `reqwest`).
//!
//! [`IdempotencyRetry`] is a [`reqwest_middleware::Middleware`]: it gives every POST and PATCH
//! request an `Idempotency-Key` header (a fresh UUID v7, unless the caller chose a key) and
//! retries the request — **with that same key every time** — when the attempt failed in a way
//! a retry can fix:
//!
//! - a transport error (connection refused or reset, the connection dropped before a response
//!   arrived, a reqwest timeout) or an attempt that ran past
//!   [`attempt_timeout`](IdempotencyRetry::attempt_timeout);
//! - a `5xx` response, `429 Too Many Requests` or `409 Conflict` (the IETF draft's answer
//!   while the first request with the key is still in progress).
//!
//! Any other `4xx` is returned at once, never retried: the request itself is wrong and sending
//! it again will not help. Methods outside the configured set (by default everything but POST
//! and PATCH, so GET too) get no key and are sent exactly once.
//!
//! Between attempts it waits an exponential backoff with full jitter, or what the response's
//! `Retry-After` asks (delta-seconds or an HTTP-date). Attempts are bounded by
//! [`max_attempts`](IdempotencyRetry::max_attempts) and the whole call, waits and attempts
//! included, by [`max_total_time`](IdempotencyRetry::max_total_time): an attempt still in
//! flight when the budget runs out is cancelled ([`RetryError::OutOfTime`]), and a wait that
//! would end past the budget is not started — the last response or error is returned instead.
//!
//! Because the key stays the same, a server that honours it (for example one behind
//! `idem::http::IdempotencyLayer`, or whose handler is an `#[idempotent]` function keyed by
//! the header) runs the operation once, even when the first attempt did the work and only
//! the answer was lost on the way back.
//!
//! ```no_run
//! # async fn run() -> reqwest_middleware::Result<()> {
//! use std::time::Duration;
//! use idem_http::client::IdempotencyRetry; // `idem::http::client` through the facade
//! use reqwest_middleware::ClientBuilder;
//!
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(
//!         IdempotencyRetry::new() // POST and PATCH; 5 attempts, 30 s in total by default
//!             .max_attempts(5)
//!             .max_total_time(Duration::from_secs(30))
//!             .attempt_timeout(Duration::from_secs(5)),
//!     )
//!     .build();
//!
//! let response = client
//!     .post("https://api.example.com/payments")
//!     .header("Idempotency-Key", "txn_001") // optional: without it, a UUID v7 is made
//!     .header("content-type", "application/json")
//!     .body(r#"{"amount_cents":1999}"#)
//!     .send()
//!     .await?;
//! # drop(response);
//! # Ok(())
//! # }
//! ```
//!
//! The crate versions: reqwest 0.13 and reqwest-middleware 0.5, re-exported here as
//! [`reqwest`] and [`reqwest_middleware`] for code that wants to be sure to name the same
//! ones. reqwest is used without default features: choose its TLS backend in your own
//! `reqwest` dependency (needed for `https://` URLs). Waits and timeouts run on tokio's
//! timer, as reqwest itself does.
//!
//! **Bodies.** A request is retried only if it can be cloned ([`reqwest::Request::try_clone`]):
//! bodies built from bytes, strings, JSON or forms can; a streaming body
//! (`reqwest::Body::wrap_stream`, reqwest feature `stream`) cannot, and such a request is
//! sent once, not retried (it still carries the key, so the caller may resend it with the
//! same key).
//!
//! **The caller's key.** A key header already on the request is kept as it is; a
//! [`RequestKey`] extension (`.with_extension(RequestKey::new("txn_001"))`) sets the key for
//! one request. A key already present is reused, never replaced. Generated and
//! [`RequestKey`] keys are sent as RFC 8941 sf-strings (`Idempotency-Key: "…"`), as
//! draft-ietf-httpapi-idempotency-key-header writes them.
//!
//! **What happened.** A response returned through the middleware carries a [`RetryReport`]
//! in its [extensions](reqwest::Response::extensions): the key sent and the number of
//! attempts. Each retry is logged at `debug` level through `tracing` (attempt, status or
//! error, wait), without the key.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Extensions, HeaderName, HeaderValue, Method, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

/// The reqwest crate this middleware is built for (0.13).
pub use reqwest;
/// The reqwest-middleware crate this middleware plugs into (0.5).
pub use reqwest_middleware;

/// The default key header, `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Attaches an `Idempotency-Key` to POST/PATCH requests and retries them with the same key:
/// a [`reqwest_middleware::Middleware`].
///
/// Defaults: header `Idempotency-Key`, methods POST and PATCH, 5 attempts, 30 s in total,
/// backoff from 100 ms doubling up to 5 s with full jitter, `Retry-After` honoured, no
/// per-attempt timeout (the reqwest client's own timeout, if any, applies), keys UUID v7.
///
/// ```
/// use std::time::Duration;
/// use idem_http::client::IdempotencyRetry;
/// use reqwest_middleware::ClientBuilder;
///
/// let retry = IdempotencyRetry::new()
///     .max_attempts(4)
///     .max_total_time(Duration::from_secs(10))
///     .attempt_timeout(Duration::from_secs(2))
///     .backoff(Duration::from_millis(50), Duration::from_secs(1));
/// let client = ClientBuilder::new(reqwest::Client::new()).with(retry).build();
/// # drop(client);
/// ```
#[derive(Clone)]
pub struct IdempotencyRetry {
    header: HeaderName,
    methods: Vec<Method>,
    max_attempts: u32,
    max_total_time: Duration,
    attempt_timeout: Option<Duration>,
    base_backoff: Duration,
    max_backoff: Duration,
    retry_after: bool,
    new_key: Arc<dyn Fn() -> String + Send + Sync>,
}

impl Default for IdempotencyRetry {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static(IDEMPOTENCY_KEY),
            methods: vec![Method::POST, Method::PATCH],
            max_attempts: 5,
            max_total_time: Duration::from_secs(30),
            attempt_timeout: None,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retry_after: true,
            new_key: Arc::new(|| uuid::Uuid::now_v7().to_string()),
        }
    }
}

impl fmt::Debug for IdempotencyRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyRetry")
            .field("header", &self.header)
            .field("methods", &self.methods)
            .field("max_attempts", &self.max_attempts)
            .field("max_total_time", &self.max_total_time)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("base_backoff", &self.base_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

impl IdempotencyRetry {
    /// The middleware with the defaults (see [`IdempotencyRetry`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The key header's name (default `Idempotency-Key`; PayPal's APIs use
    /// `PayPal-Request-Id` for the same job).
    #[must_use]
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The methods that get a key and are retried (default POST and PATCH). Requests with
    /// any other method pass through untouched and are sent once.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The most attempts for one request, the first included (default 5; 0 counts as 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The most time one request may take, every attempt and wait included (default 30 s).
    /// An attempt still running when it ends is cancelled ([`RetryError::OutOfTime`]); a
    /// wait that would end after it is not started.
    #[must_use]
    pub fn max_total_time(mut self, budget: Duration) -> Self {
        self.max_total_time = budget;
        self
    }

    /// The most time one attempt may take before it is given up and retried
    /// ([`RetryError::AttemptTimedOut`]). Default: none of its own (the reqwest client's
    /// timeout and [`max_total_time`](Self::max_total_time) still apply).
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The backoff: before retry `n` (1-based) wait a uniformly random time in
    /// `[0, min(max, base × 2^(n-1))]` ("full jitter"). Default 100 ms and 5 s.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_backoff = base;
        self.max_backoff = max;
        self
    }

    /// Whether a response's `Retry-After` (delta-seconds or an HTTP-date) sets the wait
    /// instead of the backoff (default true). A `Retry-After` that would end past
    /// [`max_total_time`](Self::max_total_time) ends the retries: that response is returned.
    #[must_use]
    pub fn retry_after(mut self, honour: bool) -> Self {
        self.retry_after = honour;
        self
    }

    /// How keys are made for requests that bring none (default: a UUID v7). The key is sent
    /// as an RFC 8941 sf-string, so it must be printable ASCII; one that is not fails the
    /// request with [`RetryError::InvalidKey`].
    #[must_use]
    pub fn key_generator(mut self, new_key: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.new_key = Arc::new(new_key);
        self
    }

    /// The full-jitter backoff before retry number `retry` (1-based).
    fn backoff_for(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(31);
        let cap = self
            .base_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=cap_nanos))
    }
}

/// The caller's own idempotency key for one request, as a request extension:
/// `client.post(url).with_extension(RequestKey::new("txn_001"))`.
///
/// It is sent as an RFC 8941 sf-string (`Idempotency-Key: "txn_001"`). A key header set on
/// the request directly takes precedence over it and is sent as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey(String);

impl RequestKey {
    /// A key for one request (and all its retries).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the middleware did for one request, in the returned response's
/// [extensions](reqwest::Response::extensions).
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware) -> reqwest_middleware::Result<()> {
/// use idem_http::client::RetryReport;
///
/// let response = client.post("https://api.example.com/payments").body("{}").send().await?;
/// if let Some(report) = response.extensions().get::<RetryReport>() {
///     println!("key {:?}, {} attempt(s)", report.key, report.attempts);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryReport {
    /// The key header's value as sent (`None` for a method the middleware does not handle).
    pub key: Option<String>,
    /// How many attempts were sent, this one included.
    pub attempts: u32,
}

/// The errors the middleware itself produces, inside
/// [`reqwest_middleware::Error::Middleware`] (find them with `downcast_ref`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryError {
    /// The last attempt ran past [`IdempotencyRetry::attempt_timeout`].
    AttemptTimedOut {
        /// The attempt timeout.
        after: Duration,
        /// How many attempts were sent.
        attempts: u32,
    },
    /// [`IdempotencyRetry::max_total_time`] ran out while an attempt was in flight.
    OutOfTime {
        /// How many attempts were sent, the cancelled one included.
        attempts: u32,
        /// The time spent.
        elapsed: Duration,
    },
    /// The key cannot be sent as an sf-string (empty, or not printable ASCII).
    InvalidKey(String),
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AttemptTimedOut { after, attempts } => {
                write!(f, "attempt {attempts} timed out after {after:?}")
            }
            Self::OutOfTime { attempts, elapsed } => {
                write!(
                    f,
                    "gave up after {attempts} attempt(s) and {elapsed:?}: out of time"
                )
            }
            Self::InvalidKey(key) => write!(
                f,
                "idempotency key {key:?} cannot be sent: it must be non-empty printable ASCII"
            ),
        }
    }
}

impl std::error::Error for RetryError {}

/// `key` as an RFC 8941 sf-string header value: `"…"` with `\` and `"` escaped.
fn sf_string(key: &str) -> Result<HeaderValue, RetryError> {
    let printable = !key.is_empty() && key.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if !printable {
        return Err(RetryError::InvalidKey(key.to_owned()));
    }
    let mut quoted = String::with_capacity(key.len() + 2);
    quoted.push('"');
    for c in key.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    HeaderValue::try_from(quoted).map_err(|_| RetryError::InvalidKey(key.to_owned()))
}

/// The wait a `Retry-After` value asks for: delta-seconds or an HTTP-date (a date in the
/// past is no wait). `None` if it is neither.
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurd values: they end the retries through the budget anyway.
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a response status is worth another attempt with the same key.
fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::CONFLICT
}

/// Whether an error from the rest of the chain is a transport failure worth another attempt.
fn retryable_error(error: &reqwest_middleware::Error) -> bool {
    match error {
        reqwest_middleware::Error::Reqwest(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        reqwest_middleware::Error::Middleware(e) => matches!(
            e.downcast_ref::<RetryError>(),
            Some(RetryError::AttemptTimedOut { .. })
        ),
    }
}

#[async_trait::async_trait]
impl Middleware for IdempotencyRetry {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if !self.methods.contains(req.method()) {
            return next.run(req, extensions).await;
        }
        let start = Instant::now();
        // `Duration::MAX` means no budget: a deadline far away, not an overflow.
        let deadline = start
            .checked_add(self.max_total_time)
            .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 86_400));

        // A key already on the request is reused, never replaced.
        let key = match req.headers().get(&self.header) {
            Some(value) => value.clone(),
            None => {
                let value = match extensions.get::<RequestKey>() {
                    Some(key) => sf_string(key.as_str()),
                    None => sf_string(&(self.new_key)()),
                }
                .map_err(reqwest_middleware::Error::middleware)?;
                req.headers_mut().insert(self.header.clone(), value.clone());
                value
            }
        };
        let report_key = key.to_str().ok().map(str::to_owned);

        let mut request = req;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // A copy for the next attempt, if there may be one and the body allows it.
            let spare = if attempts < self.max_attempts {
                request.try_clone()
            } else {
                None
            };

            let remaining = deadline.saturating_duration_since(Instant::now());
            let limit = self.attempt_timeout.map_or(remaining, |t| t.min(remaining));
            let outcome =
                match tokio::time::timeout(limit, next.clone().run(request, extensions)).await {
                    Ok(outcome) => outcome,
                    Err(_) if Instant::now() >= deadline || limit == remaining => {
                        return Err(reqwest_middleware::Error::middleware(
                            RetryError::OutOfTime {
                                attempts,
                                elapsed: start.elapsed(),
                            },
                        ));
                    }
                    Err(_) => Err(reqwest_middleware::Error::middleware(
                        RetryError::AttemptTimedOut {
                            after: limit,
                            attempts,
                        },
                    )),
                };

            let (retry, asked) = match &outcome {
                Ok(response) => (
                    retryable_status(response.status()),
                    self.retry_after
                        .then(|| response.headers().get(http::header::RETRY_AFTER))
                        .flatten()
                        .and_then(|v| parse_retry_after(v, SystemTime::now())),
                ),
                Err(error) => (retryable_error(error), None),
            };
            if let (true, Some(spare)) = (retry, spare) {
                let wait = asked.unwrap_or_else(|| self.backoff_for(attempts));
                // A wait that ends past the budget leaves no time for the attempt after it.
                if Instant::now()
                    .checked_add(wait)
                    .is_some_and(|end| end < deadline)
                {
                    match &outcome {
                        Ok(response) => tracing::debug!(
                            attempt = attempts,
                            status = response.status().as_u16(),
                            ?wait,
                            "idempotent request: retrying with the same key"
                        ),
                        Err(error) => tracing::debug!(
                            attempt = attempts,
                            %error,
                            ?wait,
                            "idempotent request: retrying with the same key"
                        ),
                    }
                    drop(outcome);
                    tokio::time::sleep(wait).await;
                    request = spare;
                    continue;
                }
            }
            return outcome.map(|mut response| {
                response.extensions_mut().insert(RetryReport {
                    key: report_key,
                    attempts,
                });
                response
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            parse_retry_after(&v("3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(parse_retry_after(&v(" 0 "), now), Some(Duration::ZERO));
        // 1_000_000_000 s after the epoch is Sun, 09 Sep 2001 01:46:40 GMT.
        assert_eq!(
            parse_retry_after(&v("Sun, 09 Sep 2001 01:46:50 GMT"), now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(&v("Sun, 09 Sep 2001 01:46:30 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&v("-1"), now), None);
        assert_eq!(parse_retry_after(&v("soon"), now), None);
        assert_eq!(
            parse_retry_after(&v("99999999999999999999999"), now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn keys_are_sf_strings() {
        assert_eq!(sf_string("abc").unwrap(), "\"abc\"");
        assert_eq!(sf_string(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert!(sf_string("").is_err());
        assert!(sf_string("caf\u{e9}").is_err());
        assert!(sf_string("a\nb").is_err());
    }

    #[test]
    fn backoff_is_full_jitter_capped() {
        let retry =
            IdempotencyRetry::new().backoff(Duration::from_millis(10), Duration::from_millis(50));
        for retry_no in 1..40 {
            let cap = Duration::from_millis(10 * (1 << (retry_no - 1).min(10)))
                .min(Duration::from_millis(50));
            for _ in 0..50 {
                assert!(retry.backoff_for(retry_no) <= cap);
            }
        }
        // Jitter: the waits are not all the same.
        let waits: std::collections::HashSet<_> = (0..20).map(|_| retry.backoff_for(3)).collect();
        assert!(waits.len() > 1);
    }

    #[test]
    fn which_statuses_are_retried() {
        for s in [500, 502, 503, 504, 429, 409] {
            assert!(retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 201, 301, 400, 401, 403, 404, 408, 413, 422] {
            assert!(!retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
