//! The checks that need both the options and the function, and what they decide: the
//! [`Plan`] that `expand` writes out.

use syn::{Expr, FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Type};

use crate::errors::Errors;
use crate::item::{Function, Shape};
use crate::parse::{Hash, Options, Settings};

/// Everything the expansion needs, checked: nothing is left to decide or to report.
pub(crate) struct Plan {
    /// The function as written; its body becomes the call's.
    pub(crate) function: Function,
    pub(crate) shape: Shape,
    /// What the function's future gives: `Result<T, E>` or a name for one.
    pub(crate) ret: Type,
    pub(crate) result: ResultParts,
    /// The `key`, `scope` and `store` expressions, as written.
    pub(crate) key: Expr,
    pub(crate) scope: Option<Expr>,
    pub(crate) store: Option<Expr>,
    pub(crate) hashed: Hashed,
    pub(crate) tx: Option<Tx>,
    pub(crate) settings: Settings,
}

/// `T` and `E` of the return type, where they are written (so that errors point at them);
/// `None` where only the type checker can tell (`<Ret as IdemResult>::Ok`).
pub(crate) struct ResultParts {
    pub(crate) ok: Option<Type>,
    pub(crate) err: Option<Type>,
    /// The return type is a name that the type checker must resolve to a `Result`.
    pub(crate) alias: bool,
}

/// What the fingerprint covers.
pub(crate) enum Hashed {
    /// `hash = expr`.
    Expr(Expr),
    /// These arguments, in order.
    Arguments(Vec<Ident>),
}

/// Transactional mode: the argument `ident: &mut ty`.
pub(crate) struct Tx {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

const MUST_RETURN_RESULT: &str = "#[idempotent] functions must return `Result<T, E>`: `T` is \
                                  recorded and replayed, and `E: From<idem::Error>` carries \
                                  idem's own errors";

/// Checks the options against the function, reporting every mistake. `None` once a part of
/// the plan was found missing or wrong (always reported). `shape` is `None` for a function
/// that cannot be rewritten (already reported): its arguments are still checked.
pub(crate) fn plan(
    options: Options,
    function: Function,
    shape: Option<Shape>,
    errors: &mut Errors,
) -> Option<Plan> {
    // Every check runs before anything is returned, so that all mistakes are reported.
    let ret = match &shape {
        Some(Shape::AsyncTrait(async_trait)) => Some(async_trait.output.clone()),
        Some(Shape::Async) => match &function.sig.output {
            ReturnType::Type(_, ty) => Some((**ty).clone()),
            ReturnType::Default => {
                errors.add(&function.sig.ident, MUST_RETURN_RESULT);
                None
            }
        },
        // Whatever a non-async function returns says nothing about its future's output.
        None => None,
    };
    let result = ret.as_ref().and_then(|ret| result_parts(ret, errors));
    let hashed = hashed(&function, &options, errors);
    let tx = match options.tx {
        Some(ident) => Some(transaction(&function, ident, errors)?),
        None => None,
    };
    let (Some(shape), Some(ret), Some(result), Some(key)) = (shape, ret, result, options.key)
    else {
        return None;
    };
    Some(Plan {
        function,
        shape,
        ret,
        result,
        key,
        scope: options.scope,
        store: options.store,
        hashed,
        tx,
        settings: options.settings,
    })
}

/// `T` and `E` of the return type.
///
/// `Result<T, E>`, `io::Result<T>` and the like are split as written. A bare name that
/// could be an alias (`type Reply = Result<Receipt, MyError>`) is split by the type checker,
/// which reports a non-`Result` at the return type. Anything else is refused here.
fn result_parts(ret: &Type, errors: &mut Errors) -> Option<ResultParts> {
    let segment = match ret {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    };
    let segment = match segment {
        Some(segment) if segment.ident.to_string().ends_with("Result") => segment,
        Some(segment) if segment.arguments.is_empty() && !is_std_non_result(&segment.ident) => {
            return Some(ResultParts {
                ok: None,
                err: None,
                alias: true,
            });
        }
        _ => {
            errors.add(ret, MUST_RETURN_RESULT);
            return None;
        }
    };
    let types: Vec<&Type> = match &segment.arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let (ok, err) = match types.as_slice() {
        [ok, err] => (Some((*ok).clone()), Some((*err).clone())),
        [ok] => (Some((*ok).clone()), None),
        _ => (None, None),
    };
    Some(ResultParts {
        ok,
        err,
        alias: false,
    })
}

/// Names that are certainly not a `Result` alias.
fn is_std_non_result(ident: &Ident) -> bool {
    const NAMES: &[&str] = &[
        "bool", "char", "str", "String", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16",
        "i32", "i64", "i128", "isize", "f32", "f64",
    ];
    NAMES.iter().any(|name| ident == name)
}

/// What the fingerprint covers: `hash = ...`, or the arguments but `self`, the store's, the
/// transaction and those skipped (all of which must be arguments with a name).
fn hashed(function: &Function, options: &Options, errors: &mut Errors) -> Hashed {
    let skip = match &options.hash {
        Hash::Expr(expr) => return Hashed::Expr(expr.clone()),
        Hash::Arguments { skip } => skip,
    };
    let mut named = Vec::new();
    let mut unnamed = Vec::new();
    for input in &function.sig.inputs {
        if let FnArg::Typed(arg) = input {
            match &*arg.pat {
                Pat::Ident(pat) => named.push(pat.ident.clone()),
                other => unnamed.push(other),
            }
        }
    }
    for ident in skip {
        if ident != "self" && !named.contains(ident) {
            errors.add(
                ident,
                format!("`skip` names `{ident}`, which is not an argument of this function"),
            );
        }
    }
    for pat in unnamed {
        errors.add(
            pat,
            "#[idempotent] cannot hash a destructured argument: bind it to a name, or say what \
             the fingerprint covers with `hash = ...`",
        );
    }
    let store = options.store.as_ref().and_then(root_ident);
    Hashed::Arguments(
        named
            .into_iter()
            .filter(|ident| {
                !skip.contains(ident)
                    && Some(ident) != store.as_ref()
                    && Some(ident) != options.tx.as_ref()
            })
            .collect(),
    )
}

/// `store` in `store = store`, `store = &store` or `store = *store`.
fn root_ident(expr: &Expr) -> Option<Ident> {
    match expr {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().cloned(),
        Expr::Reference(r) => root_ident(&r.expr),
        Expr::Unary(u) => root_ident(&u.expr),
        Expr::Paren(p) => root_ident(&p.expr),
        _ => None,
    }
}

/// `tx = ident`: the argument `ident: &mut T` (`None` once reported otherwise).
fn transaction(function: &Function, ident: Ident, errors: &mut Errors) -> Option<Tx> {
    let mut named = false;
    for input in &function.sig.inputs {
        let FnArg::Typed(arg) = input else { continue };
        let Pat::Ident(pat) = &*arg.pat else { continue };
        if pat.ident != ident {
            continue;
        }
        named = true;
        if let Type::Reference(r) = &*arg.ty
            && r.mutability.is_some()
        {
            let ty = (*r.elem).clone();
            return Some(Tx { ident, ty });
        }
    }
    if named {
        errors.add(
            &ident,
            format!("`{ident}` must be a `&mut sqlx::Transaction<'_, DB>` argument: the caller owns and commits the transaction"),
        );
    } else {
        errors.add(
            &ident,
            format!(
                "`tx` names `{ident}`, which is not an argument of this function: name the \
                 `&mut sqlx::Transaction` argument the body writes through"
            ),
        );
    }
    None
}
