//! [`IdempotencyLayer`]: whole routes made idempotent by the `Idempotency-Key` header.

mod recorded;
mod scope;
mod service;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode, header};
use idem_core::codec::Bincode;
use idem_core::protocol::ValueCodec;
use idem_core::{OnConflict, Options, Store};
use tower_layer::Layer;

use crate::header::{DEFAULT_MAX_KEY_LEN, IDEMPOTENCY_KEY};
pub use recorded::IDEMPOTENT_REPLAYED;
use recorded::RecordedResponse;
#[doc(hidden)]
pub use scope::Tenant;
pub use scope::{ScopeRule, Scoped, Unscoped, Unset};
pub use service::IdempotencyService;

/// The namespace of the layer's records unless [`IdempotencyLayer::namespace`] says another.
pub const DEFAULT_NAMESPACE: &str = "idem::http";

/// The largest request body (and recorded response body) by default: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// A tower [`Layer`] that makes routes idempotent: the first request with an
/// `Idempotency-Key` runs and its response is recorded in an [`idem::Store`](Store); every
/// retry with the key gets that response again, marked `Idempotent-Replayed: true`, without
/// running the handler.
///
/// ```
/// # extern crate idem_core as idem;
/// use axum::{Router, routing::post};
/// use idem_http::IdempotencyLayer;
///
/// async fn create_payment(body: String) -> (axum::http::StatusCode, String) {
///     (axum::http::StatusCode::CREATED, format!("charged {body}"))
/// }
///
/// let app: Router = Router::new()
///     .route("/payments", post(create_payment))
///     .layer(
///         IdempotencyLayer::new(idem::MemoryStore::new())
///             // Each client's keys are its own: the tenant from a header set by your auth.
///             .scope(|parts| {
///                 let account = parts.headers.get("x-account-id")?;
///                 Some(account.to_str().ok()?.to_owned())
///             }),
///     );
/// ```
///
/// What a request gets:
///
/// | request | response |
/// |---|---|
/// | not POST/PATCH ([`methods`](Self::methods)), or no key header | passed through untouched (400 with [`require_key`](Self::require_key)) |
/// | first with its key | the handler's response; recorded unless 5xx or 429 ([`record_if`](Self::record_if)) |
/// | a retry | the recorded status, body and kept headers, `Idempotent-Replayed: true` |
/// | a retry while the first runs | 409 + `Retry-After` (or, with [`wait`](Self::wait), the replay) |
/// | the key with another method, path, query or body | 422 |
/// | key empty, longer than 255, malformed, or the header repeated | 400 |
/// | [`scope`](Self::scope) found no tenant | 400 |
/// | body over the limit (1 MiB) | 413 |
/// | the store failed | 503 (the cause is logged, not sent) |
///
/// Error responses are `application/problem+json` (RFC 9457).
///
/// A layer must say how keys are scoped; one that does not is refused by the compiler:
///
/// ```compile_fail
/// # extern crate idem_core as idem;
/// let app: axum::Router = axum::Router::new()
///     .layer(idem_http::IdempotencyLayer::new(idem::MemoryStore::new()));
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer<Sc = Unset> {
    /// Shared with every service it makes: axum may apply a layer to a route on each
    /// request, and then a clone must not copy the settings.
    shared: Arc<(Config, Sc)>,
}

/// The layer's settings, shared by every clone of its service.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) header: HeaderName,
    /// The header's name for humans (problem titles): `Idempotency-Key`.
    pub(crate) header_title: String,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) max_key_len: usize,
    pub(crate) body_limit: usize,
    pub(crate) kept_headers: Vec<HeaderName>,
    pub(crate) record_if: fn(StatusCode) -> bool,
    pub(crate) options: Options,
    pub(crate) codec: ValueCodec<RecordedResponse>,
}

impl IdempotencyLayer<Unset> {
    /// A layer recording in `store`: any [`Store`], owned or in an `Arc` (to share one
    /// store with `#[idempotent]` functions or other layers).
    ///
    /// Next, say how keys are scoped: [`scope`](Self::scope) or [`unscoped`](Self::unscoped).
    pub fn new<St: Store + 'static>(store: St) -> Self {
        IdempotencyLayer::with(
            Config {
                store: Arc::new(store),
                header: HeaderName::from_static("idempotency-key"),
                header_title: IDEMPOTENCY_KEY.to_owned(),
                methods: vec![Method::POST, Method::PATCH],
                require_key: false,
                max_key_len: DEFAULT_MAX_KEY_LEN,
                body_limit: DEFAULT_BODY_LIMIT,
                kept_headers: vec![header::CONTENT_TYPE, header::LOCATION],
                record_if: default_record_if,
                options: Options::new(DEFAULT_NAMESPACE),
                codec: ValueCodec::new::<Bincode>(),
            },
            Unset,
        )
    }

    /// Keys are per tenant: `scope` returns the request's tenant (say, the account your
    /// authentication put in a header or an extension — run it before this layer), and
    /// the same key sent by two tenants is two records, two executions.
    ///
    /// A request with a key for which `scope` returns `None` is refused with 400 and not
    /// processed: without a tenant its key could replay another tenant's response.
    pub fn scope<F>(self, scope: F) -> IdempotencyLayer<Scoped>
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        IdempotencyLayer::with(self.into_config(), Scoped(Arc::new(scope)))
    }

    /// Keys are global: a key means one record whoever sends it. Right when keys are
    /// unguessable and clients are trusted (one client, or keys that are UUIDs); otherwise
    /// prefer [`scope`](Self::scope).
    pub fn unscoped(self) -> IdempotencyLayer<Unscoped> {
        IdempotencyLayer::with(self.into_config(), Unscoped)
    }
}

/// Not 5xx (a server failure: the retry should run again) and not 429 (nothing ran).
fn default_record_if(status: StatusCode) -> bool {
    !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS
}

impl<Sc: Clone> IdempotencyLayer<Sc> {
    fn with(config: Config, scope: Sc) -> Self {
        IdempotencyLayer {
            shared: Arc::new((config, scope)),
        }
    }

    fn into_config(self) -> Config {
        Arc::unwrap_or_clone(self.shared).0
    }

    /// The settings, to change while the layer is being built.
    fn config(&mut self) -> &mut Config {
        &mut Arc::make_mut(&mut self.shared).0
    }

    /// A request without the key header is refused with 400 instead of passed through.
    pub fn require_key(mut self) -> Self {
        self.config().require_key = true;
        self
    }

    /// A duplicate that arrives while the first request runs waits for it (at most
    /// `timeout`) and gets its response replayed, instead of 409 at once. If the first
    /// fails without a record (5xx, a panic), the duplicate runs. After `timeout`: 409.
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.config().options.on_conflict = OnConflict::Wait;
        self.config().options.wait_timeout = timeout;
        self
    }

    /// The methods the layer applies to (POST and PATCH by default); others pass through.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config().methods = methods.into_iter().collect();
        self
    }

    /// The header the key is read from (`Idempotency-Key` by default; PayPal's APIs use
    /// `PayPal-Request-Id`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config().header_title = title_case(name.as_str());
        self.config().header = name;
        self
    }

    /// The longest key accepted, in characters (255 by default); longer → 400.
    pub fn max_key_len(mut self, chars: usize) -> Self {
        self.config().max_key_len = chars;
        self
    }

    /// The largest request body, in bytes (1 MiB by default): a request with a larger one
    /// gets 413. It is also the largest response body recorded: a larger one is sent as it
    /// is but not recorded (the key is released and a retry runs again; a warning is
    /// logged).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config().body_limit = bytes;
        self
    }

    /// The response headers recorded and replayed (`content-type` and `location` by
    /// default). The first response keeps all its headers; replays get these.
    pub fn keep_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config().kept_headers = names.into_iter().collect();
        self
    }

    /// Which responses are recorded (by default all but 5xx and 429). A response that is
    /// not recorded is sent as it is and its key released: a retry runs again.
    pub fn record_if(mut self, record: fn(StatusCode) -> bool) -> Self {
        self.config().record_if = record;
        self
    }

    /// How long a recorded response is replayed (24 hours by default).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config().options.ttl = ttl;
        self
    }

    /// How long a running request's claim lives without renewal (30 s by default; it is
    /// renewed while the handler runs, so this bounds the recovery after a crash).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config().options.lease = lease;
        self
    }

    /// The namespace of the layer's records (`idem::http` by default): layers on one store
    /// that must not see each other's keys need different ones.
    pub fn namespace(mut self, namespace: &'static str) -> Self {
        self.config().options.namespace = namespace;
        self
    }
}

impl<Sc: fmt::Debug> fmt::Debug for IdempotencyLayer<Sc> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, scope) = &*self.shared;
        f.debug_struct("IdempotencyLayer")
            .field("scope", scope)
            .field("header", &c.header)
            .field("methods", &c.methods)
            .field("require_key", &c.require_key)
            .field("max_key_len", &c.max_key_len)
            .field("body_limit", &c.body_limit)
            .field("kept_headers", &c.kept_headers)
            .field("options", &c.options)
            .finish_non_exhaustive()
    }
}

impl<S, Sc: ScopeRule> Layer<S> for IdempotencyLayer<Sc> {
    type Service = IdempotencyService<S, Sc>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(inner, self.shared.clone())
    }
}

/// `paypal-request-id` → `Paypal-Request-Id`: header names are stored lowercase.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_titles() {
        assert_eq!(super::title_case("idempotency-key"), "Idempotency-Key");
        assert_eq!(super::title_case("paypal-request-id"), "Paypal-Request-Id");
    }

    #[test]
    fn default_records() {
        use http::StatusCode;
        for (status, recorded) in [
            (200, true),
            (201, true),
            (404, true),
            (409, true),
            (429, false),
            (500, false),
            (503, false),
        ] {
            assert_eq!(
                super::default_record_if(StatusCode::from_u16(status).unwrap()),
                recorded,
                "{status}"
            );
        }
    }
}
