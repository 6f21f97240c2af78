//! The attribute's options, `#[idempotent(key = ..., store = ..., ...)]`, parsed into typed
//! values. Each option is checked on its own, then against the others; the checks that
//! also need the function are in [`valid`](crate::valid).

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use std::time::Duration;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Path, Token, parenthesized, token};

use crate::errors::Errors;

/// The options' names, and the keywords of their values.
mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(scope);
    syn::custom_keyword!(store);
    syn::custom_keyword!(hash);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(tx);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(on_conflict);
    syn::custom_keyword!(wait_timeout);
    syn::custom_keyword!(errors);
    syn::custom_keyword!(name);
    syn::custom_keyword!(codec);

    syn::custom_keyword!(reject);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(release);
    syn::custom_keyword!(cache);
    syn::custom_keyword!(cache_if);
}

/// The options, each checked. A wrong option is reported and left out, so that the
/// function is still checked against the others and every mistake is reported at once.
pub(crate) struct Options {
    /// `None` when it is missing (already reported).
    pub(crate) key: Option<Expr>,
    pub(crate) scope: Option<Expr>,
    pub(crate) store: Option<Expr>,
    pub(crate) hash: Hash,
    /// Transactional mode: the name of the `&mut sqlx::Transaction` argument.
    pub(crate) tx: Option<Ident>,
    pub(crate) settings: Settings,
}

/// The options that the expansion passes on as they are: nothing about the function
/// constrains them.
pub(crate) struct Settings {
    pub(crate) ttl: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) wait: Option<Wait>,
    pub(crate) errors: ErrorPolicy,
    pub(crate) name: Option<LitStr>,
    pub(crate) codec: Option<Path>,
    pub(crate) krate: Option<Path>,
}

/// What the fingerprint covers.
pub(crate) enum Hash {
    /// All arguments but `self`, the store, the transaction and those skipped.
    Arguments { skip: Vec<Ident> },
    /// An explicit expression.
    Expr(Expr),
}

/// `on_conflict = wait`, with its timeout if given.
pub(crate) struct Wait {
    pub(crate) timeout: Option<Duration>,
}

/// `errors = release | cache | cache_if(predicate)`: what an `Err` leaves behind.
pub(crate) enum ErrorPolicy {
    Release,
    Cache,
    /// A path to a `fn(&E) -> bool`, or a closure that captures nothing.
    CacheIf(Expr),
}

impl Parse for ErrorPolicy {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::release) {
            input.parse::<kw::release>()?;
            Ok(ErrorPolicy::Release)
        } else if lookahead.peek(kw::cache) {
            input.parse::<kw::cache>()?;
            Ok(ErrorPolicy::Cache)
        } else if lookahead.peek(kw::cache_if) {
            input.parse::<kw::cache_if>()?;
            let content;
            parenthesized!(content in input);
            let predicate = content.parse()?;
            content.parse::<Option<Token![,]>>()?;
            if !content.is_empty() {
                return Err(content.error("expected one predicate"));
            }
            Ok(ErrorPolicy::CacheIf(predicate))
        } else {
            Err(lookahead.error())
        }
    }
}

/// `on_conflict = reject | wait`: what a concurrent duplicate gets.
enum OnConflict {
    Reject,
    Wait,
}

impl Parse for OnConflict {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::reject) {
            input.parse::<kw::reject>()?;
            Ok(OnConflict::Reject)
        } else if lookahead.peek(kw::wait) {
            input.parse::<kw::wait>()?;
            Ok(OnConflict::Wait)
        } else {
            Err(lookahead.error())
        }
    }
}

/// Which option a name is.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Key,
    Scope,
    Store,
    Hash,
    Skip,
    Tx,
    Ttl,
    Lease,
    OnConflict,
    WaitTimeout,
    Errors,
    Name,
    Codec,
    Crate,
}

impl Kind {
    /// Every option, in the order the error for an unknown one lists them.
    const ALL: [Kind; 14] = [
        Kind::Key,
        Kind::Scope,
        Kind::Store,
        Kind::Hash,
        Kind::Skip,
        Kind::Tx,
        Kind::Ttl,
        Kind::Lease,
        Kind::OnConflict,
        Kind::WaitTimeout,
        Kind::Errors,
        Kind::Name,
        Kind::Codec,
        Kind::Crate,
    ];

    /// The option named next in `input`, if it is one of ours.
    fn peek(input: ParseStream) -> Option<Kind> {
        Some(if input.peek(kw::key) {
            Kind::Key
        } else if input.peek(kw::scope) {
            Kind::Scope
        } else if input.peek(kw::store) {
            Kind::Store
        } else if input.peek(kw::hash) {
            Kind::Hash
        } else if input.peek(kw::skip) {
            Kind::Skip
        } else if input.peek(kw::tx) {
            Kind::Tx
        } else if input.peek(kw::ttl) {
            Kind::Ttl
        } else if input.peek(kw::lease) {
            Kind::Lease
        } else if input.peek(kw::on_conflict) {
            Kind::OnConflict
        } else if input.peek(kw::wait_timeout) {
            Kind::WaitTimeout
        } else if input.peek(kw::errors) {
            Kind::Errors
        } else if input.peek(kw::name) {
            Kind::Name
        } else if input.peek(kw::codec) {
            Kind::Codec
        } else if input.peek(Token![crate]) {
            Kind::Crate
        } else {
            return None;
        })
    }

    /// The option's name, for messages.
    fn label(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Scope => "scope",
            Kind::Store => "store",
            Kind::Hash => "hash",
            Kind::Skip => "skip",
            Kind::Tx => "tx",
            Kind::Ttl => "ttl",
            Kind::Lease => "lease",
            Kind::OnConflict => "on_conflict",
            Kind::WaitTimeout => "wait_timeout",
            Kind::Errors => "errors",
            Kind::Name => "name",
            Kind::Codec => "codec",
            Kind::Crate => "crate",
        }
    }
}

/// One option as written: `name = value` or `name(a, b)`. Only the syntax is checked here;
/// what the value means is checked after, so that one wrong value does not hide the others.
struct Arg {
    /// `None` for a name that is not an option (kept for its error).
    kind: Option<Kind>,
    name: Ident,
    value: Value,
}

enum Value {
    Expr(Expr),
    List(Punctuated<Ident, Token![,]>),
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let kind = Kind::peek(input);
        // `crate` is a keyword; accept it as an option name like serde does.
        let name = input.call(Ident::parse_any)?;
        let value = if input.peek(token::Paren) {
            let content;
            parenthesized!(content in input);
            Value::List(content.parse_terminated(Ident::parse_any, Token![,])?)
        } else if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Value::Expr(input.parse()?)
        } else {
            let message = match kind {
                Some(Kind::Skip) => SKIP_FORM.to_string(),
                Some(kind) => format!("expected `{} = ...`", kind.label()),
                None => unknown(&name),
            };
            return Err(syn::Error::new(name.span(), message));
        };
        Ok(Arg { kind, name, value })
    }
}

const SKIP_FORM: &str = "write `skip(arg1, arg2)`: the arguments left out of the fingerprint";

fn unknown(name: &Ident) -> String {
    let valid = Kind::ALL.map(Kind::label).join(", ");
    format!("unknown option `{name}`; valid options are: {valid}")
}

impl Options {
    /// Parses the attribute's arguments, reporting every mistake to `errors`. `None` only
    /// when they are not a list of options at all (a syntax error).
    pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> Option<Options> {
        let args = errors.ok(Punctuated::<Arg, Token![,]>::parse_terminated.parse2(args))?;
        let mut given = Given::default();
        let mut seen = Vec::new();
        for Arg { kind, name, value } in args {
            let Some(kind) = kind else {
                errors.add(&name, unknown(&name));
                continue;
            };
            if seen.contains(&kind) {
                let label = kind.label();
                errors.add(&name, format!("duplicate option `{label}`: give it once"));
                continue;
            }
            seen.push(kind);
            given.set(kind, name, value, errors);
        }
        Some(given.finish(errors))
    }
}

/// Each option given, checked on its own, before the checks that involve several.
#[derive(Default)]
struct Given {
    key: Option<Expr>,
    scope: Option<Expr>,
    store: Option<Expr>,
    hash: Option<Expr>,
    /// With the name `skip`, where an error about the option as a whole points.
    skip: Option<(Ident, Vec<Ident>)>,
    tx: Option<Ident>,
    ttl: Option<Duration>,
    lease: Option<Duration>,
    on_conflict: Option<OnConflict>,
    /// With the name `wait_timeout`, where an error about the option as a whole points.
    wait_timeout: Option<(Ident, Duration)>,
    errors: Option<ErrorPolicy>,
    name: Option<LitStr>,
    codec: Option<Path>,
    krate: Option<Path>,
}

impl Given {
    /// Records the option `kind`, written `name` with `value`, or reports what is wrong.
    fn set(&mut self, kind: Kind, name: Ident, value: Value, errors: &mut Errors) {
        let label = kind.label();
        match (kind, value) {
            (Kind::Skip, Value::List(list)) => self.skip = Some((name, list.into_iter().collect())),
            (Kind::Skip, Value::Expr(expr)) => errors.add(expr, SKIP_FORM),
            (_, Value::List(_)) => {
                errors.add(&name, format!("write `{label} = ...`, not `{label}(...)`"));
            }
            (Kind::Key, Value::Expr(expr)) => self.key = Some(expr),
            (Kind::Scope, Value::Expr(expr)) => self.scope = Some(expr),
            (Kind::Store, Value::Expr(expr)) => self.store = Some(expr),
            (Kind::Hash, Value::Expr(expr)) => self.hash = Some(expr),
            (Kind::Tx, Value::Expr(expr)) => self.tx = errors.ok(argument_name(expr)),
            (Kind::Ttl, Value::Expr(expr)) => self.ttl = errors.ok(duration(label, &expr)),
            (Kind::Lease, Value::Expr(expr)) => self.lease = errors.ok(duration(label, &expr)),
            (Kind::WaitTimeout, Value::Expr(expr)) => {
                self.wait_timeout = errors.ok(duration(label, &expr)).map(|d| (name, d));
            }
            (Kind::OnConflict, Value::Expr(expr)) => {
                self.on_conflict = errors.ok(keywords(
                    &expr,
                    "expected `on_conflict = reject` (the default: a concurrent duplicate gets \
                     `Error::InProgress`) or `on_conflict = wait`",
                ));
            }
            (Kind::Errors, Value::Expr(expr)) => {
                self.errors = errors.ok(keywords(
                    &expr,
                    "expected `errors = release` (the default), `errors = cache` or \
                     `errors = cache_if(is_permanent)` with `fn is_permanent(&E) -> bool`",
                ));
            }
            (Kind::Name, Value::Expr(expr)) => self.name = errors.ok(namespace(expr)),
            (Kind::Codec, Value::Expr(expr)) => {
                self.codec = errors.ok(path(
                    expr,
                    "expected a path: `codec = idem::codec::Bincode`",
                ));
            }
            (Kind::Crate, Value::Expr(expr)) => {
                self.krate = errors.ok(path(expr, "expected a path: `crate = ::idem`"));
            }
        }
    }

    /// The options, once the ones that depend on each other agree.
    fn finish(self, errors: &mut Errors) -> Options {
        let hash = match (self.hash, self.skip) {
            (Some(expr), None) => Hash::Expr(expr),
            (None, skip) => Hash::Arguments {
                skip: skip.map(|(_, s)| s).unwrap_or_default(),
            },
            (Some(_), Some((skip, _))) => {
                errors.add(
                    &skip,
                    "`skip(...)` and `hash = ...` exclude each other: `hash` already says \
                     exactly what the fingerprint covers; remove one",
                );
                Hash::Arguments { skip: Vec::new() }
            }
        };
        let wait = match (self.on_conflict, self.wait_timeout) {
            (Some(OnConflict::Wait), timeout) => Some(Wait {
                timeout: timeout.map(|(_, d)| d),
            }),
            (_, Some((wait_timeout, _))) => {
                errors.add(
                    &wait_timeout,
                    "`wait_timeout` only applies with `on_conflict = wait`; add that, or \
                     remove `wait_timeout`",
                );
                None
            }
            _ => None,
        };
        if self.key.is_none() {
            errors.add_at(
                Span::call_site(),
                "missing `key = ...`: #[idempotent] needs the idempotency key, for example \
                 `#[idempotent(key = req.id)]`",
            );
        }
        Options {
            key: self.key,
            scope: self.scope,
            store: self.store,
            hash,
            tx: self.tx,
            settings: Settings {
                ttl: self.ttl,
                lease: self.lease,
                wait,
                errors: self.errors.unwrap_or(ErrorPolicy::Release),
                name: self.name,
                codec: self.codec,
                krate: self.krate,
            },
        }
    }
}

/// A value made of keywords (`wait`, `cache_if(..)`), parsed by `T`. Any mistake gets
/// `message`, over the whole value.
fn keywords<T: Parse>(expr: &Expr, message: &str) -> syn::Result<T> {
    syn::parse2(expr.to_token_stream()).map_err(|_| syn::Error::new_spanned(expr, message))
}

/// `tx = tx`: the name of the transaction argument.
fn argument_name(expr: Expr) -> syn::Result<Ident> {
    match &expr {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().cloned(),
        _ => None,
    }
    .ok_or_else(|| {
        syn::Error::new_spanned(
            expr,
            "expected the name of the transaction argument: `tx = tx` for \
             `tx: &mut sqlx::Transaction<'_, Postgres>`",
        )
    })
}

/// `name = "payments.charge"`: a non-empty string.
fn namespace(expr: Expr) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) if !s.value().is_empty() => Ok(s),
        other => Err(syn::Error::new_spanned(
            other,
            "expected a non-empty string: `name = \"payments.charge\"`",
        )),
    }
}

/// `codec = path` or `crate = path`.
fn path(expr: Expr, message: &str) -> syn::Result<Path> {
    match expr {
        Expr::Path(p) if p.qself.is_none() => Ok(p.path),
        other => Err(syn::Error::new_spanned(other, message)),
    }
}

/// A humantime duration in a string literal, greater than zero, for the option `label`.
fn duration(label: &str, expr: &Expr) -> syn::Result<Duration> {
    let Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Str(lit),
        ..
    }) = expr
    else {
        return Err(syn::Error::new_spanned(
            expr,
            format!(
                "expected a duration in a string: `{label} = \"30s\"` (or \"500ms\", \"5m\", \
                 \"24h\")"
            ),
        ));
    };
    match humantime::parse_duration(&lit.value()) {
        Ok(d) if d.is_zero() => Err(syn::Error::new_spanned(
            lit,
            format!("`{label}` must be longer than zero: write e.g. `{label} = \"30s\"`"),
        )),
        // The expansion writes durations as u64 nanoseconds.
        Ok(d) if d.as_nanos() > u128::from(u64::MAX) => Err(syn::Error::new_spanned(
            lit,
            format!("`{label}` is too long: it must fit in 584 years"),
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(syn::Error::new_spanned(
            lit,
            format!(
                "invalid duration {:?} for `{label}`: {e}; write e.g. \"30s\", \"5m\" or \
                 \"24h\"",
                lit.value()
            ),
        )),
    }
}
