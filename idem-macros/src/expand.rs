//! Rewrites the function: evaluate key, scope, fingerprint and store from the arguments,
//! then hand the original body to `idem::__private::execute`.

use proc_macro2::{Delimiter, Group, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use std::time::Duration;
use syn::spanned::Spanned;
use syn::{
    Block, Expr, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Stmt, Type,
    TypeParamBound,
};

use crate::parse::{Errors, Errs, Hash, Options};

/// The whole attribute: options and item in, rewritten item (or the item and errors) out.
pub(crate) fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errs = Errs::default();
    let options = Options::parse(args, &mut errs);
    let function = parse_function(item.clone(), &mut errs);
    let expanded = match (options, function) {
        (Some(options), Some(function)) => expand(options, function, &mut errs),
        _ => None,
    };
    match (errs.finish(), expanded) {
        (Ok(()), Some(tokens)) => tokens,
        (Err(e), _) => {
            // The item stays as written, so the only errors are ours (and no "unused
            // variable" for the arguments the dropped options named).
            let errors = e.to_compile_error();
            quote!(#[allow(unused_variables)] #item #errors)
        }
        (Ok(()), None) => item,
    }
}

/// An `async fn`, or what `#[async_trait]` made of one.
enum Shape {
    Async,
    /// `fn f(..) -> Pin<Box<dyn Future<Output = ret> + ..>> { Box::pin(async move { .. }) }`
    AsyncTrait(Box<Type>),
    /// Not something the macro can rewrite (already reported); its arguments and options
    /// are still checked, so that every mistake is reported at once.
    Invalid,
}

/// The function and its shape; `None` (reported) if the item is not a function at all.
fn parse_function(item: TokenStream, errs: &mut Errs) -> Option<(ItemFn, Shape)> {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            not_a_function(item, errs);
            return None;
        }
    };
    if let Some(constness) = &function.sig.constness {
        errs.add(
            constness,
            "#[idempotent] cannot apply to a `const fn`: remove `const` and make it an `async fn`",
        );
        return Some((function, Shape::Invalid));
    }
    if function.sig.asyncness.is_some() {
        return Some((function, Shape::Async));
    }
    if let Some(ret) = async_trait_output(&function) {
        return Some((function, Shape::AsyncTrait(Box::new(ret))));
    }
    errs.add(
        function.sig.fn_token,
        "#[idempotent] functions must be `async`: write `async fn`",
    );
    Some((function, Shape::Invalid))
}

fn not_a_function(item: TokenStream, errs: &mut Errs) {
    if let Ok(method) = syn::parse2::<syn::TraitItemFn>(item.clone()) {
        errs.add(
            &method.sig.ident,
            "#[idempotent] needs a function body: put it on the implementation, not on the \
             trait's declaration (or give the trait method a default body)",
        );
        return;
    }
    let span = match syn::parse2::<syn::Item>(item) {
        Ok(syn::Item::Struct(s)) => s.struct_token.span,
        Ok(syn::Item::Enum(e)) => e.enum_token.span,
        Ok(syn::Item::Union(u)) => u.union_token.span,
        Ok(syn::Item::Const(c)) => c.const_token.span,
        Ok(syn::Item::Static(s)) => s.static_token.span,
        Ok(syn::Item::Impl(i)) => i.impl_token.span,
        Ok(syn::Item::Trait(t)) => t.trait_token.span,
        Ok(syn::Item::Mod(m)) => m.mod_token.span,
        Ok(syn::Item::Type(t)) => t.type_token.span,
        Ok(other) => other.span(),
        Err(e) => e.span(),
    };
    errs.add_at(
        span,
        "#[idempotent] applies to `async fn` items only (free functions, methods, trait \
         methods with a body)",
    );
}

/// The `Ret` of an `#[async_trait]` method's `Pin<Box<dyn Future<Output = Ret> + ..>>`,
/// if its body is the `Box::pin(async move { .. })` that async-trait writes.
fn async_trait_output(function: &ItemFn) -> Option<Type> {
    async_block(&function.block)?;
    let ReturnType::Type(_, ty) = &function.sig.output else {
        return None;
    };
    let pinned = generic_type(ty, "Pin")?;
    let boxed = generic_type(pinned, "Box")?;
    let Type::TraitObject(object) = boxed else {
        return None;
    };
    object.bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(t) = bound else {
            return None;
        };
        let segment = t.path.segments.last().filter(|s| s.ident == "Future")?;
        let PathArguments::AngleBracketed(args) = &segment.arguments else {
            return None;
        };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(assoc.ty.clone()),
            _ => None,
        })
    })
}

fn generic_type<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else { return None };
    let segment = path.path.segments.last().filter(|s| s.ident == name)?;
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

/// The `async move { .. }` inside the body's trailing `Box::pin(..)`.
fn async_block(block: &Block) -> Option<&syn::ExprAsync> {
    let Some(Stmt::Expr(Expr::Call(call), None)) = block.stmts.last() else {
        return None;
    };
    let Expr::Path(func) = &*call.func else {
        return None;
    };
    if func.path.segments.last()?.ident != "pin" || call.args.len() != 1 {
        return None;
    }
    match &call.args[0] {
        Expr::Async(inner) => Some(inner),
        _ => None,
    }
}

fn async_block_mut(block: &mut Block) -> Option<&mut syn::ExprAsync> {
    match block.stmts.last_mut() {
        Some(Stmt::Expr(Expr::Call(call), None)) => match call.args.first_mut() {
            Some(Expr::Async(inner)) => Some(inner),
            _ => None,
        },
        _ => None,
    }
}

fn expand(
    options: Options,
    (mut function, shape): (ItemFn, Shape),
    errs: &mut Errs,
) -> Option<TokenStream> {
    let krate = match &options.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::idem),
    };
    let private = quote!(#krate::__private);
    // Every check runs before anything is generated, so that all mistakes are reported.
    let ret = match &shape {
        Shape::AsyncTrait(ret) => Some((**ret).clone()),
        Shape::Async => match &function.sig.output {
            ReturnType::Type(_, ty) => Some((**ty).clone()),
            ReturnType::Default => {
                errs.add(
                    &function.sig.ident,
                    "#[idempotent] functions must return `Result<T, E>`: `T` is recorded and \
                     replayed, and `E: From<idem::Error>` carries idem's own errors",
                );
                None
            }
        },
        // Whatever a non-async function returns says nothing about its future's output.
        Shape::Invalid => None,
    };
    let parts = ret
        .as_ref()
        .and_then(|ret| result_parts(ret, &private, errs));
    let arguments = arguments(&function, &options, errs);
    let (
        Some(key),
        Some(ret),
        Some(Parts {
            ok: ok_ty,
            err: err_ty,
            alias,
        }),
    ) = (&options.key, ret, parts)
    else {
        return None;
    };
    if !errs.is_empty() {
        return None;
    }

    let key_ident = Ident::new("__idem_key", Span::mixed_site());
    let fp_ident = Ident::new("__idem_fingerprint", Span::mixed_site());
    let hasher = Ident::new("__idem_hasher", Span::mixed_site());
    let store_ident = Ident::new("__idem_store", Span::mixed_site());
    let default_store = Ident::new("__idem_default_store", Span::mixed_site());
    let ret_ident = Ident::new("__idem_ret", Span::mixed_site());

    let namespace = match &options.name {
        Some(name) => name.to_token_stream(),
        None => {
            let fn_name = function.sig.ident.unraw_string();
            quote!(#private::concat!(#private::module_path!(), "::", #fn_name))
        }
    };
    let mut settings = Vec::new();
    if let Some(ttl) = options.ttl {
        let ttl = nanos(ttl);
        settings.push(quote!(ttl: #private::Duration::from_nanos(#ttl)));
    }
    if let Some(lease) = options.lease {
        let lease = nanos(lease);
        settings.push(quote!(lease: #private::Duration::from_nanos(#lease)));
    }
    if let Some(wait) = &options.wait {
        settings.push(quote!(on_conflict: #private::OnConflict::Wait));
        if let Some(timeout) = wait.timeout {
            let timeout = nanos(timeout);
            settings.push(quote!(wait_timeout: #private::Duration::from_nanos(#timeout)));
        }
    }

    // Each expression keeps its own span, so a type error points at what the user wrote.
    let key_value = match &options.scope {
        Some(scope) => {
            let (scope, key) = (borrowed(scope), borrowed(key));
            quote!(#private::scoped_key(__IDEM_OPTIONS.namespace, #scope, #key))
        }
        None => {
            let key = borrowed(key);
            quote!(#private::key(__IDEM_OPTIONS.namespace, #key))
        }
    };
    let hashed = match &options.hash {
        Hash::Expr(expr) => {
            let value = by_ref(expr);
            vec![quote!(#private::hash_arg(&mut #hasher, #value);)]
        }
        Hash::Arguments { .. } => arguments
            .iter()
            .map(|arg| quote_spanned!(arg.span()=> #private::hash_arg(&mut #hasher, &#arg);))
            .collect(),
    };
    // Bound by a `let`, so that a temporary (`&self.store`, `self.store()`) lives as long as
    // the call.
    let (store, store_span) = match &options.store {
        Some(expr) => {
            // Checked on its own (a custom message), located where `execute` is, so that
            // rustc reports a wrong store once.
            let at = Span::mixed_site().located_at(expr.span());
            let check = respan(quote!(#private::store), at);
            let arg = Ident::new("__idem_store", at);
            let store = quote! {
                let #store_ident = &(#expr);
                let #store_ident = #check(#arg);
            };
            (store, expr.span())
        }
        None => (
            quote! {
                let #default_store = #private::DefaultStore::current();
                let #store_ident = &#default_store;
            },
            Span::call_site(),
        ),
    };
    let codec = match &options.codec {
        Some(path) => path.to_token_stream(),
        None => quote!(#private::Bincode),
    };
    // Each recorded type's shape is traced once, then read from a `static` of the function
    // (a generic function's other instances fall back to the global cache).
    let output_shape =
        quote!(static __IDEM_OUTPUT_SHAPE: #private::ShapeCell = #private::ShapeCell::new(););
    let output =
        quote_spanned!(ok_ty.span()=> #private::output::<#codec, #ok_ty>(&__IDEM_OUTPUT_SHAPE));
    let into_error = quote_spanned!(err_ty.span()=> #private::error_from::<#err_ty>());
    let error_shape = (!matches!(options.errors, Errors::Release)).then(
        || quote!(static __IDEM_ERROR_SHAPE: #private::ShapeCell = #private::ShapeCell::new();),
    );
    let policy = match &options.errors {
        Errors::Release => quote!(#private::Release),
        Errors::Cache => {
            quote_spanned!(err_ty.span()=> #private::cache_errors::<#codec, #err_ty>(&__IDEM_ERROR_SHAPE))
        }
        Errors::CacheIf(predicate) => {
            let call = quote_spanned!(err_ty.span()=> #private::cache_if::<#codec, #err_ty>);
            quote!(#call(&__IDEM_ERROR_SHAPE, #predicate))
        }
    };
    // With an alias, the call below (located at the return type) reports a non-`Result`.
    let assert_result =
        (!alias).then(|| quote_spanned!(ret.span()=> #private::assert_result::<#ret>();));

    let prelude = quote! {
        #assert_result
        const __IDEM_OPTIONS: #private::Options = #private::Options {
            #(#settings,)*
            ..#private::Options::new(#namespace)
        };
        #output_shape
        #error_shape
        let #key_ident = #key_value;
        let #fp_ident = {
            let mut #hasher = #private::FingerprintBuilder::new();
            #(#hashed)*
            #hasher.finish()
        };
        #store
    };
    // A wrong store fails `execute`'s bounds: the call is located at the store expression
    // so that rustc reports it there, once. With a return type alias the call is located
    // at the return type instead, where a non-`Result` fails the same way.
    let at_call = if alias {
        ret.span()
    } else {
        Span::mixed_site().located_at(store_span)
    };
    let store_arg = Ident::new("__idem_store", Span::mixed_site().located_at(at_call));
    // What the function does with its results, built once per call.
    let spec = quote!(#private::Idempotent::with(__IDEM_OPTIONS, #output, #policy, #into_error));
    let execute = |body: TokenStream| {
        awaited_at(
            quote!(#private::execute),
            quote!(#store_arg, #key_ident, #fp_ident, #spec, async #body,),
            at_call,
        )
    };

    // The body: a block whose value has the return type as written.
    let body = match &shape {
        Shape::Async => {
            let block = &function.block;
            quote!({
                let #ret_ident: #ret = #block;
                #[allow(unreachable_code)]
                #ret_ident
            })
        }
        Shape::AsyncTrait(_) => {
            let stmts = &async_block_mut(&mut function.block)?.block.stmts;
            quote!({ #(#stmts)* })
        }
        Shape::Invalid => return None,
    };
    let call = if let Some(tx) = &options.tx {
        // Transactional mode: claim on the transaction, run the body (an async closure over
        // the transaction, which it writes through), record on it. The caller commits.
        let (into, from) = if alias {
            let conv = quote_spanned!(ret.span()=> <#ret as #private::IdemResult>);
            (quote!(#conv::into_result), quote!(#conv::from_result))
        } else {
            (quote!(), quote!())
        };
        // The transaction's type, from the signature, so a store that cannot work inside it
        // is reported once, at `store = ...`.
        let tx_ty = tx_type(&function, tx)?;
        let check = respan(quote!(#private::tx_store::<#tx_ty, _>), at_call);
        let run = awaited_at(
            quote!(#private::execute_in_tx::<_, #tx_ty, _, _, _, _, _>),
            quote! {
                #store_arg, &mut *#tx, #key_ident, #fp_ident, #spec,
                |#tx| async { (#into(async #body.await), #tx) },
            },
            at_call,
        );
        quote! {
            let #store_arg = #check(#store_arg);
            #from(#run)
        }
    } else if alias {
        // `execute` takes and gives a `Result`: convert from and to the alias; the body's
        // `return`s stay in an async block of their own.
        let result = quote_spanned!(ret.span()=> <#ret as #private::IdemResult>);
        let call = execute(quote!({ #result::into_result(async #body.await) }));
        quote!(#result::from_result(#call))
    } else {
        execute(body)
    };
    let block = syn::parse_quote!({ #prelude #call });
    match shape {
        Shape::AsyncTrait(_) => async_block_mut(&mut function.block)?.block = block,
        _ => *function.block = block,
    }
    Some(function.into_token_stream())
}

/// `function(arguments).await`, every token located at `at`, so that rustc reports an
/// unsatisfied bound of the call there (and only once, next to the check of the same span).
fn awaited_at(function: TokenStream, arguments: TokenStream, at: Span) -> TokenStream {
    let function = respan(function, at);
    let mut arguments = Group::new(Delimiter::Parenthesis, arguments);
    arguments.set_span(at);
    let dot_await = respan(quote!(.await), at);
    quote!(#function #arguments #dot_await)
}

/// `T` of the argument `tx: &mut T`.
fn tx_type(function: &ItemFn, tx: &Ident) -> Option<TokenStream> {
    function.sig.inputs.iter().find_map(|input| match input {
        FnArg::Typed(arg) => match (&*arg.pat, &*arg.ty) {
            (Pat::Ident(pat), Type::Reference(r)) if pat.ident == *tx && r.mutability.is_some() => {
                Some(r.elem.to_token_stream())
            }
            _ => None,
        },
        FnArg::Receiver(_) => None,
    })
}

/// `key = (a, b)` borrows each part, so composite keys need no clones either.
fn borrowed(expr: &Expr) -> TokenStream {
    match expr {
        Expr::Tuple(tuple) if !tuple.elems.is_empty() => {
            let parts = tuple.elems.iter().map(by_ref);
            quote_spanned!(expr.span()=> &(#(#parts,)*))
        }
        other => by_ref(other),
    }
}

/// `&expr`, spanned so that an error about it covers all of `expr` (stable Rust cannot
/// join spans, but rustc spans an expression from its first token to its last).
fn by_ref(expr: &Expr) -> TokenStream {
    let span = expr.span();
    match expr {
        // These bind tighter than a prefix `&`: no parentheses needed.
        Expr::Path(_)
        | Expr::Field(_)
        | Expr::MethodCall(_)
        | Expr::Call(_)
        | Expr::Index(_)
        | Expr::Lit(_)
        | Expr::Paren(_)
        | Expr::Tuple(_)
        | Expr::Array(_)
        | Expr::Macro(_)
        | Expr::Reference(_)
        | Expr::Unary(_)
        | Expr::Try(_)
        | Expr::Await(_)
        | Expr::Struct(_)
        | Expr::Block(_) => quote_spanned!(span=> &#expr),
        _ => quote_spanned!(span=> &(#expr)),
    }
}

/// `tokens` with the span `at` (the expansion's own tokens: no user hygiene to keep).
fn respan(tokens: TokenStream, at: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut group = Group::new(group.delimiter(), respan(group.stream(), at));
                group.set_span(at);
                token = TokenTree::Group(group);
            } else {
                token.set_span(at);
            }
            token
        })
        .collect()
}

fn nanos(d: Duration) -> Literal {
    // parse::duration refused anything longer than u64 nanoseconds.
    Literal::u64_suffixed(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The return type's `T` and `E`.
struct Parts {
    ok: TokenStream,
    err: TokenStream,
    /// The return type is a name that the type checker must resolve to a `Result`.
    alias: bool,
}

/// `T` and `E` of the return type, as written where possible (so errors point at them).
///
/// `Result<T, E>`, `io::Result<T>` and the like are split as written. A bare name that
/// could be an alias (`type Reply = Result<Receipt, MyError>`) is split by the type checker
/// (`<Reply as IdemResult>::Ok`), which reports a non-`Result` at the return type. Anything
/// else is refused here.
fn result_parts(ret: &Type, private: &TokenStream, errs: &mut Errs) -> Option<Parts> {
    let projection = |part: &str| {
        let part = format_ident!("{}", part);
        quote_spanned!(ret.span()=> <#ret as #private::IdemResult>::#part)
    };
    let segment = match ret {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    };
    let segment = match segment {
        Some(segment) if segment.ident.to_string().ends_with("Result") => segment,
        Some(segment) if segment.arguments.is_empty() && !is_std_non_result(&segment.ident) => {
            return Some(Parts {
                ok: projection("Ok"),
                err: projection("Err"),
                alias: true,
            });
        }
        _ => {
            errs.add(
                ret,
                "#[idempotent] functions must return `Result<T, E>`: `T` is recorded and \
                 replayed, and `E: From<idem::Error>` carries idem's own errors",
            );
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
        [ok, err] => (ok.to_token_stream(), err.to_token_stream()),
        [ok] => (ok.to_token_stream(), projection("Err")),
        _ => (projection("Ok"), projection("Err")),
    };
    Some(Parts {
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

/// The arguments the fingerprint covers (all but `self`, the store's and the skipped).
fn arguments(function: &ItemFn, options: &Options, errs: &mut Errs) -> Vec<Ident> {
    let mut named = Vec::new();
    let mut unnamed = Vec::new();
    for input in &function.sig.inputs {
        if let FnArg::Typed(arg) = input {
            match &*arg.pat {
                Pat::Ident(pat) => named.push(pat.ident.clone()),
                other => unnamed.push(other.clone()),
            }
        }
    }
    let Hash::Arguments { skip } = &options.hash else {
        return Vec::new();
    };
    for ident in skip {
        if ident != "self" && !named.contains(ident) {
            errs.add(
                ident,
                format!("`skip` names `{ident}`, which is not an argument of this function"),
            );
        }
    }
    for pat in unnamed {
        errs.add(
            &pat,
            "#[idempotent] cannot hash a destructured argument: bind it to a name, or say what \
             the fingerprint covers with `hash = ...`",
        );
    }
    if let Some(tx) = &options.tx
        && named.contains(tx)
        && tx_type(function, tx).is_none()
    {
        errs.add(
            tx,
            format!("`{tx}` must be a `&mut sqlx::Transaction<'_, DB>` argument: the caller owns and commits the transaction"),
        );
    }
    if let Some(tx) = &options.tx
        && !named.contains(tx)
    {
        errs.add(
            tx,
            format!(
                "`tx` names `{tx}`, which is not an argument of this function: name the \
                 `&mut sqlx::Transaction` argument the body writes through"
            ),
        );
    }
    let store = options.store.as_ref().and_then(root_ident);
    named
        .into_iter()
        .filter(|ident| {
            !skip.contains(ident)
                && Some(ident) != store.as_ref()
                && Some(ident) != options.tx.as_ref()
        })
        .collect()
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

trait UnrawString {
    fn unraw_string(&self) -> String;
}

impl UnrawString for Ident {
    fn unraw_string(&self) -> String {
        syn::ext::IdentExt::unraw(self).to_string()
    }
}
