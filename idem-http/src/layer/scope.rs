//! Whose keys a request's key is among: the typestate that makes the choice compulsory.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;

/// How a layer finds a request's tenant: [`Scoped`] or [`Unscoped`]. A layer without either
/// ([`Unset`]) is not a `Layer`, so a router that uses it does not compile.
#[diagnostic::on_unimplemented(
    message = "this IdempotencyLayer does not say whose keys a request's key is among",
    label = "neither `.scope(..)` nor `.unscoped()` was called on it",
    note = "call `.scope(|parts| ...)` to keep each client's keys apart (the tenant from an \
            authenticated header or extension), or `.unscoped()` if every client shares \
            one key space"
)]
pub trait ScopeRule: private::Sealed + Clone + Send + Sync + 'static {
    /// The request's tenant, or `None` when it has none.
    #[doc(hidden)]
    fn scope_of(&self, parts: &Parts) -> Option<Tenant>;
}

/// Whose a request is (see [`ScopeRule`]).
#[doc(hidden)]
#[derive(Debug)]
pub enum Tenant {
    /// Keys are global.
    Everyone,
    /// Keys are this tenant's.
    One(String),
}

/// The function given to [`scope`](super::IdempotencyLayer::scope).
type ScopeFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

mod private {
    pub trait Sealed {}
    impl Sealed for super::Scoped {}
    impl Sealed for super::Unscoped {}
}

/// A layer that has not been told how to scope keys yet: call
/// [`scope`](super::IdempotencyLayer::scope) or [`unscoped`](super::IdempotencyLayer::unscoped).
#[derive(Clone, Copy, Debug)]
pub struct Unset;

/// Keys are global: one key means one record whoever sends it
/// ([`unscoped`](super::IdempotencyLayer::unscoped)).
#[derive(Clone, Copy, Debug)]
pub struct Unscoped;

/// Keys are per tenant, as the function given to
/// [`scope`](super::IdempotencyLayer::scope) says.
#[derive(Clone)]
pub struct Scoped(pub(crate) Arc<ScopeFn>);

impl fmt::Debug for Scoped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scoped(..)")
    }
}

impl ScopeRule for Unscoped {
    fn scope_of(&self, _: &Parts) -> Option<Tenant> {
        Some(Tenant::Everyone)
    }
}

impl ScopeRule for Scoped {
    fn scope_of(&self, parts: &Parts) -> Option<Tenant> {
        // An empty tenant names no one: refused like `None`, not taken as a shared scope.
        (self.0)(parts)
            .filter(|tenant| !tenant.is_empty())
            .map(Tenant::One)
    }
}
