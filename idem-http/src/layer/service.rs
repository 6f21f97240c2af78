//! The layer's service: one request through the protocol.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt, stream};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idem_core::protocol::{Disposition, Idempotent, Release};
use idem_core::{FingerprintBuilder, Key};
use serde::Serialize;
use tower_service::Service;

use super::recorded::RecordedResponse;
use super::scope::Tenant;
use super::{Config, ScopeRule};
use crate::header::{self, KeyError};
use crate::problem::{Problem, problem_for};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The [`Service`] of an [`IdempotencyLayer`](super::IdempotencyLayer) around `S`.
pub struct IdempotencyService<S, Sc> {
    inner: S,
    shared: Arc<(Config, Sc)>,
}

impl<S, Sc> IdempotencyService<S, Sc> {
    pub(super) fn new(inner: S, shared: Arc<(Config, Sc)>) -> Self {
        IdempotencyService { inner, shared }
    }
}

impl<S: Clone, Sc> Clone for IdempotencyService<S, Sc> {
    fn clone(&self) -> Self {
        IdempotencyService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, Sc> fmt::Debug for IdempotencyService<S, Sc> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Sc, ResBody> Service<Request<Body>> for IdempotencyService<S, Sc>
where
    S: Service<Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    Sc: ScopeRule,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // Other methods pass before anything else (and in a smaller future).
        if !self.shared.0.methods.contains(request.method()) {
            return Box::pin(pass(inner, request));
        }
        Box::pin(handle(self.shared.clone(), inner, request))
    }
}

/// Why the protocol's body did not give a response to record.
enum Failure<E> {
    /// idem refused or failed: a problem response.
    Idem(idem_core::Error),
    /// A response to send but not to record (5xx, 429, too large): the key is released.
    Pass(Response),
    /// The inner service failed.
    Inner(E),
}

impl<E> From<idem_core::Error> for Failure<E> {
    fn from(e: idem_core::Error) -> Self {
        Failure::Idem(e)
    }
}

async fn handle<S, Sc, ResBody>(
    shared: Arc<(Config, Sc)>,
    mut inner: S,
    request: Request<Body>,
) -> Result<Response, S::Error>
where
    S: Service<Request<Body>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    Sc: ScopeRule,
{
    let (config, scope) = &*shared;
    let (parts, body) = request.into_parts();
    // Borrowed from the request's header (unless it has escapes).
    let key = match header::key_of(
        parts.headers.get_all(&config.header).iter(),
        config.max_key_len,
    ) {
        Ok(key) => key,
        Err(KeyError::Missing) if !config.require_key => {
            return pass(inner, Request::from_parts(parts, body)).await;
        }
        Err(e) => return Ok(Problem::bad_key(&config.header_title, &e).into_response()),
    };
    let Some(tenant) = scope.scope_of(&parts) else {
        return Ok(no_scope(&config.header_title));
    };
    let body = match read_request(body, config.body_limit).await {
        Ok(bytes) => bytes,
        Err(e) if e.is::<LengthLimitError>() => return Ok(too_large(config.body_limit)),
        Err(e) => {
            tracing::debug!(error = %e, "could not read the request body");
            return Ok(Problem::new(
                StatusCode::BAD_REQUEST,
                "Request body unreadable",
                "The request body could not be read.",
            )
            .into_response());
        }
    };

    let namespace = config.options.namespace;
    let key = match &tenant {
        Tenant::One(tenant) => Key::scoped(namespace, tenant.as_str(), &*key),
        Tenant::Everyone => Key::new(namespace, &*key),
    };
    let key = match key {
        Ok(key) => key,
        Err(e) => return Ok(problem_for(&config.header_title, &e, None).into_response()),
    };
    let mut fingerprint = FingerprintBuilder::new();
    fingerprint.arg(parts.method.as_str());
    fingerprint.arg(parts.uri.path());
    fingerprint.arg(&parts.uri.query());
    fingerprint.arg(&RawBytes(&body));
    let fingerprint = match fingerprint.finish() {
        Ok(fingerprint) => fingerprint,
        Err(e) => {
            let e = idem_core::Error::from(e);
            return Ok(problem_for(&config.header_title, &e, None).into_response());
        }
    };

    let request = Request::from_parts(parts, Body::from(body));
    let spec = Idempotent::with(
        config.options,
        config.codec,
        Release,
        Failure::<S::Error>::Idem,
    );
    // The owner's response keeps every header it set; only the record is cut to the kept
    // ones. The body leaves the head and the body bytes here for the owner's response (also
    // when the store refuses the record, as the handler ran).
    let mut head: Option<(http::response::Parts, Bytes)> = None;
    // Boxed once: the protocol moves its body's future through its layers, and this one
    // holds the inner service's future.
    let run = Box::pin(async {
        let response = inner.call(request).await.map_err(Failure::Inner)?;
        let (parts, body) = response.into_parts();
        if !(config.record_if)(parts.status) {
            return Err(Failure::Pass(Response::from_parts(parts, Body::new(body))));
        }
        match buffer(body, config.body_limit).await {
            Buffered::Complete(bytes) => {
                let recorded = RecordedResponse::new(&parts, &config.kept_headers, bytes.clone());
                head = Some((parts, bytes));
                Ok(recorded)
            }
            Buffered::Partial(body) => {
                tracing::warn!(
                    limit = config.body_limit,
                    "response body over the limit is not recorded; the key is released"
                );
                Err(Failure::Pass(Response::from_parts(parts, body)))
            }
        }
    });
    let (result, disposition) = spec
        .run_reported(&*config.store, key, fingerprint, run)
        .await;
    match result {
        Ok(recorded) => Ok(match (disposition, head) {
            (Disposition::Executed, Some((head, body))) => {
                Response::from_parts(head, Body::from(body))
            }
            _ => recorded.replay(),
        }),
        Err(Failure::Pass(response)) => Ok(response),
        Err(Failure::Inner(e)) => Err(e),
        Err(Failure::Idem(e))
            if let (Disposition::Executed, Some((head, body))) = (disposition, head) =>
        {
            // The handler ran but its response could not be recorded (larger than the
            // store takes, say): the client gets it all the same; the key was released.
            tracing::warn!(error = %e, "response not recorded; the key is released");
            Ok(Response::from_parts(head, Body::from(body)))
        }
        Err(Failure::Idem(e)) => {
            let retry_after = match disposition {
                Disposition::InProgress { retry_after } => retry_after,
                _ => None,
            };
            Ok(problem_for(&config.header_title, &e, retry_after).into_response())
        }
    }
}

/// The request as it came, through the inner service.
async fn pass<S, ResBody>(mut inner: S, request: Request<Body>) -> Result<Response, S::Error>
where
    S: Service<Request<Body>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    Ok(inner.call(request).await?.map(Body::new))
}

fn no_scope(header: &str) -> Response {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "Idempotency scope is missing",
        format!(
            "The request does not say which client it is from, so its {header} cannot be \
             scoped; it was not processed."
        ),
    )
    .into_response()
}

fn too_large(limit: usize) -> Response {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body is too large",
        format!("An idempotent request's body may be at most {limit} bytes."),
    )
    .into_response()
}

/// Bytes hashed as one byte string (serde's default for `&[u8]` is a sequence of numbers).
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// A response body read up to the limit.
enum Buffered {
    /// All of it.
    Complete(Bytes),
    /// Too large or failed: what was read, then the rest as it comes (or the error).
    Partial(Body),
}

async fn buffer<B>(body: B, limit: usize) -> Buffered
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut chunks = Chunks::default();
    loop {
        match body.frame().await {
            // Trailers are not recorded.
            None => return Buffered::Complete(chunks.concat()),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                chunks.push(data);
                if chunks.len > limit {
                    let read = stream::iter(chunks.into_chunks().map(Ok::<_, BoxError>));
                    let rest = body.into_data_stream().map_err(Into::into);
                    return Buffered::Partial(Body::from_stream(read.chain(rest)));
                }
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                tracing::warn!(error = %e, "response body failed; not recorded");
                let read = stream::iter(chunks.into_chunks().map(Ok::<_, BoxError>));
                return Buffered::Partial(Body::from_stream(
                    read.chain(stream::once(async { Err::<Bytes, BoxError>(e) })),
                ));
            }
        }
    }
}

/// The request body, up to the limit (over it: a [`LengthLimitError`]). Trailers are
/// dropped.
async fn read_request(body: Body, limit: usize) -> Result<Bytes, BoxError> {
    let mut body = Limited::new(body, limit);
    let mut chunks = Chunks::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            chunks.push(data);
        }
    }
    Ok(chunks.concat())
}

/// A body's chunks read so far: the first one without allocating (most bodies are one).
#[derive(Default)]
struct Chunks {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
    /// Their bytes in all.
    len: usize,
}

impl Chunks {
    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        match self.first {
            None => self.first = Some(data),
            Some(_) => self.rest.push(data),
        }
    }

    fn into_chunks(self) -> impl Iterator<Item = Bytes> {
        self.first.into_iter().chain(self.rest)
    }

    /// One `Bytes` (the chunk itself if there is one).
    fn concat(self) -> Bytes {
        if self.rest.is_empty() {
            return self.first.unwrap_or_default();
        }
        let mut all = BytesMut::with_capacity(self.len);
        for chunk in self.into_chunks() {
            all.extend_from_slice(&chunk);
        }
        all.freeze()
    }
}

// The service only ever fails as the inner service does; axum's are `Infallible`.
const _: fn() = || {
    fn assert<T: Service<Request<Body>, Error = Infallible>>() {}
    assert::<IdempotencyService<axum::routing::Route, super::Unscoped>>();
};
