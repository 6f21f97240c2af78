//! The attribute's options: `#[idempotent(key = ..., store = ..., ...)]`.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use std::time::Duration;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Path, Token, parenthesized};

const VALID: &str = "key, scope, store, hash, skip, tx, ttl, lease, on_conflict, \
                     wait_timeout, errors, name, codec, crate";

/// The options as written, validated one by one.
pub(crate) struct Options {
    /// `None` when it is missing (already reported): the function is still checked.
    pub(crate) key: Option<Expr>,
    pub(crate) scope: Option<Expr>,
    pub(crate) store: Option<Expr>,
    pub(crate) hash: Hash,
    /// Transactional mode: the `&mut sqlx::Transaction` argument.
    pub(crate) tx: Option<Ident>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) wait: Option<Wait>,
    pub(crate) errors: Errors,
    pub(crate) name: Option<LitStr>,
    pub(crate) codec: Option<Path>,
    pub(crate) krate: Option<Path>,
}

/// What the fingerprint covers.
pub(crate) enum Hash {
    /// All arguments but `self`, the store and those skipped.
    Arguments { skip: Vec<Ident> },
    /// An explicit expression.
    Expr(Expr),
}

/// `on_conflict = wait`, with its timeout if given.
pub(crate) struct Wait {
    pub(crate) timeout: Option<Duration>,
}

/// `errors = ...`.
pub(crate) enum Errors {
    Release,
    Cache,
    /// A path to a `fn(&E) -> bool`, or a closure that captures nothing.
    CacheIf(Expr),
}

/// One `name = value` or `name(...)` as written.
struct RawOption {
    name: Ident,
    value: RawValue,
}

enum RawValue {
    Expr(Expr),
    List(Punctuated<Ident, Token![,]>),
}

impl Parse for RawOption {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `crate` is a keyword; accept it as an option name like serde does.
        let name = input.call(Ident::parse_any)?;
        let value = if input.peek(syn::token::Paren) {
            let content;
            parenthesized!(content in input);
            RawValue::List(content.parse_terminated(Ident::parse_any, Token![,])?)
        } else if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            RawValue::Expr(input.parse()?)
        } else {
            let label = name.unraw().to_string();
            let message = if label == "skip" {
                "write `skip(arg1, arg2)`: the arguments left out of the fingerprint".to_string()
            } else if VALID.split(", ").any(|v| v == label) {
                format!("expected `{label} = ...`")
            } else {
                unknown(&label)
            };
            return Err(syn::Error::new(name.span(), message));
        };
        Ok(RawOption { name, value })
    }
}

/// Collects every error instead of stopping at the first.
#[derive(Default)]
pub(crate) struct Errs(Option<syn::Error>);

impl Errs {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// An error covering `tokens` from the first to the last (also on stable Rust, where
    /// spans cannot be joined).
    pub(crate) fn add(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// An error at one span.
    pub(crate) fn add_at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

impl Options {
    /// Parses and validates the attribute's arguments, pushing every mistake to `errs`.
    /// `None` only when the arguments are not a list of options at all (a syntax error).
    pub(crate) fn parse(args: TokenStream, errs: &mut Errs) -> Option<Options> {
        let raw = match syn::parse::Parser::parse2(
            Punctuated::<RawOption, Token![,]>::parse_terminated,
            args,
        ) {
            Ok(raw) => raw,
            Err(e) => {
                errs.push(e);
                return None;
            }
        };
        let mut seen: Vec<String> = Vec::new();
        let mut key = None;
        let mut scope = None;
        let mut store = None;
        let mut tx = None;
        let mut hash_expr: Option<Expr> = None;
        let mut skip: Option<(Ident, Vec<Ident>)> = None;
        let mut ttl = None;
        let mut lease = None;
        let mut on_conflict_wait: Option<bool> = None;
        let mut wait_timeout: Option<(Ident, Duration)> = None;
        let mut errors = Errors::Release;
        let mut name = None;
        let mut codec = None;
        let mut krate = None;

        for RawOption { name: opt, value } in raw {
            let label = opt.unraw().to_string();
            let known = VALID.split(", ").any(|v| v == label);
            if !known {
                errs.add(&opt, unknown(&label));
                continue;
            }
            if seen.contains(&label) {
                errs.add(&opt, format!("duplicate option `{label}`: give it once"));
                continue;
            }
            seen.push(label.clone());
            let value = match (label.as_str(), value) {
                ("skip", RawValue::List(list)) => {
                    skip = Some((opt, list.into_iter().collect()));
                    continue;
                }
                ("skip", RawValue::Expr(e)) => {
                    errs.add(
                        e,
                        "write `skip(arg1, arg2)`: the arguments left out of the fingerprint",
                    );
                    continue;
                }
                (_, RawValue::List(_)) => {
                    errs.add(&opt, format!("write `{label} = ...`, not `{label}(...)`"));
                    continue;
                }
                (_, RawValue::Expr(e)) => e,
            };
            match label.as_str() {
                "key" => key = Some(value),
                "scope" => scope = Some(value),
                "store" => store = Some(value),
                "tx" => match path_ident(&value) {
                    Some(_) => {
                        if let Expr::Path(p) = &value {
                            tx = p.path.get_ident().cloned();
                        }
                    }
                    None => errs.add(
                        &value,
                        "expected the name of the transaction argument: `tx = tx` for \
                         `tx: &mut sqlx::Transaction<'_, Postgres>`",
                    ),
                },
                "hash" => hash_expr = Some(value),
                "ttl" => ttl = duration(&label, &value, errs),
                "lease" => lease = duration(&label, &value, errs),
                "wait_timeout" => {
                    wait_timeout = duration(&label, &value, errs).map(|d| (opt, d));
                }
                "on_conflict" => match path_ident(&value).as_deref() {
                    Some("reject") => on_conflict_wait = Some(false),
                    Some("wait") => on_conflict_wait = Some(true),
                    _ => errs.add(
                        &value,
                        "expected `on_conflict = reject` (the default: a concurrent duplicate \
                         gets `Error::InProgress`) or `on_conflict = wait`",
                    ),
                },
                "errors" => match errors_policy(&value) {
                    Some(policy) => errors = policy,
                    None => errs.add(
                        &value,
                        "expected `errors = release` (the default), `errors = cache` or \
                         `errors = cache_if(is_permanent)` with `fn is_permanent(&E) -> bool`",
                    ),
                },
                "name" => match &value {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) if !s.value().is_empty() => name = Some(s.clone()),
                    _ => errs.add(
                        &value,
                        "expected a non-empty string: `name = \"payments.charge\"`",
                    ),
                },
                "codec" | "crate" => match value {
                    Expr::Path(p) if p.qself.is_none() => {
                        if label == "codec" {
                            codec = Some(p.path);
                        } else {
                            krate = Some(p.path);
                        }
                    }
                    other => errs.add(
                        other,
                        if label == "codec" {
                            "expected a path: `codec = idem::codec::Bincode`"
                        } else {
                            "expected a path: `crate = ::idem`"
                        },
                    ),
                },
                // Every name in VALID is handled above.
                _ => errs.add(&opt, unknown(&label)),
            }
        }

        let hash = match (hash_expr, skip) {
            (Some(expr), None) => Hash::Expr(expr),
            (None, skip) => Hash::Arguments {
                skip: skip.map(|(_, s)| s).unwrap_or_default(),
            },
            (Some(_), Some((skip, _))) => {
                errs.add(
                    &skip,
                    "`skip(...)` and `hash = ...` exclude each other: `hash` already says \
                     exactly what the fingerprint covers; remove one",
                );
                Hash::Arguments { skip: Vec::new() }
            }
        };
        let wait = match (on_conflict_wait, wait_timeout) {
            (Some(true), timeout) => Some(Wait {
                timeout: timeout.map(|(_, d)| d),
            }),
            (_, Some((opt, _))) => {
                errs.add(
                    &opt,
                    "`wait_timeout` only applies with `on_conflict = wait`; add that, or \
                     remove `wait_timeout`",
                );
                None
            }
            _ => None,
        };
        if key.is_none() {
            errs.add_at(
                Span::call_site(),
                "missing `key = ...`: #[idempotent] needs the idempotency key, for example \
                 `#[idempotent(key = req.id)]`",
            );
        }
        Some(Options {
            key,
            scope,
            store,
            hash,
            tx,
            ttl,
            lease,
            wait,
            errors,
            name,
            codec,
            krate,
        })
    }
}

fn unknown(label: &str) -> String {
    format!("unknown option `{label}`; valid options are: {VALID}")
}

fn path_ident(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(|i| i.to_string()),
        _ => None,
    }
}

/// `release`, `cache` or `cache_if(predicate)`.
fn errors_policy(expr: &Expr) -> Option<Errors> {
    match path_ident(expr).as_deref() {
        Some("release") => return Some(Errors::Release),
        Some("cache") => return Some(Errors::Cache),
        _ => {}
    }
    match expr {
        Expr::Call(call) if path_ident(&call.func).as_deref() == Some("cache_if") => {
            match call.args.iter().collect::<Vec<_>>().as_slice() {
                [predicate] => Some(Errors::CacheIf((*predicate).clone())),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A humantime duration in a string literal, greater than zero.
fn duration(label: &str, expr: &Expr, errs: &mut Errs) -> Option<Duration> {
    let Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Str(lit),
        ..
    }) = expr
    else {
        errs.add(
            expr,
            format!(
                "expected a duration in a string: `{label} = \"30s\"` (or \"500ms\", \"5m\", \
                 \"24h\")"
            ),
        );
        return None;
    };
    match humantime::parse_duration(&lit.value()) {
        Ok(d) if d.is_zero() => {
            errs.add(
                lit,
                format!("`{label}` must be longer than zero: write e.g. `{label} = \"30s\"`"),
            );
            None
        }
        Ok(d) if d.as_nanos() > u128::from(u64::MAX) => {
            errs.add(
                lit,
                format!("`{label}` is too long: it must fit in 584 years"),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errs.add(
                lit,
                format!(
                    "invalid duration {:?} for `{label}`: {e}; write e.g. \"30s\", \"5m\" or \
                     \"24h\"",
                    lit.value()
                ),
            );
            None
        }
    }
}
