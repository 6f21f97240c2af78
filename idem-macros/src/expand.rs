//! Writes the plan out: evaluate key, scope, fingerprint and store from the arguments, then
//! hand the original body to `idem::__private::execute`. Every decision was taken in
//! [`valid`](crate::valid); nothing here checks or reports.

use proc_macro2::{Delimiter, Group, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, TokenStreamExt, format_ident, quote, quote_spanned};
use std::time::Duration;
use syn::ext::IdentExt;
use syn::punctuated::{Pair, Punctuated};
use syn::spanned::Spanned;
use syn::token::Brace;
use syn::{Block, Expr, Ident, Stmt};

use crate::item::{AsyncTrait, Function, Shape};
use crate::parse::{ErrorPolicy, Settings};
use crate::valid::{Hashed, Plan};

/// The rewritten function.
pub(crate) fn expand(plan: Plan) -> TokenStream {
    let krate = match &plan.settings.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::idem),
    };
    let private = quote!(#krate::__private);
    let block = call(&plan, &private);
    let Function {
        outer_attrs,
        vis,
        sig,
        brace,
        inner_attrs,
        ..
    } = plan.function;
    let (brace, stmts) = match plan.shape {
        // The new block is the body.
        Shape::Async => (Brace::default(), block),
        // The body stays `Box::pin(async move { .. })`, around the new block.
        Shape::AsyncTrait(async_trait) => (brace, async_trait_body(*async_trait, block)),
    };
    let mut function = quote!(#(#outer_attrs)* #vis #sig);
    brace.surround(&mut function, |tokens| {
        tokens.append_all(inner_attrs);
        tokens.extend(stmts);
    });
    function
}

/// `#[async_trait]`'s body, with `block` in the braces of its async block.
fn async_trait_body(async_trait: AsyncTrait, block: TokenStream) -> TokenStream {
    let AsyncTrait {
        before,
        mut pin,
        mut future,
        comma,
        ..
    } = async_trait;
    future.block = Block {
        brace_token: Brace::default(),
        stmts: vec![Stmt::Expr(Expr::Verbatim(block), None)],
    };
    pin.args = Punctuated::from_iter([Pair::new(Expr::Async(future), comma)]);
    quote!(#(#before)* #pin)
}

// ---------------------------------------------------------------------------------------
// The call: the runtime calls that make the function idempotent, and what they are given.
// ---------------------------------------------------------------------------------------

/// The new body: the prelude (options, key, fingerprint, store), then the call of the
/// runtime around the original body.
fn call(plan: &Plan, private: &TokenStream) -> TokenStream {
    let ret = &plan.ret;
    let alias = plan.result.alias;
    let (ok_ty, err_ty) = result_types(plan, private);

    let key_ident = Ident::new("__idem_key", Span::mixed_site());
    let fp_ident = Ident::new("__idem_fingerprint", Span::mixed_site());
    let hasher = Ident::new("__idem_hasher", Span::mixed_site());
    let ret_ident = Ident::new("__idem_ret", Span::mixed_site());

    let namespace = namespace(plan, private);
    let settings = settings(&plan.settings, private);
    let key_value = key_value(plan, private);
    let hashed = hashed(plan, private, &hasher);
    let (store, store_span) = store(plan, private);
    let codec = match &plan.settings.codec {
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
    let error_shape = (!matches!(plan.settings.errors, ErrorPolicy::Release)).then(
        || quote!(static __IDEM_ERROR_SHAPE: #private::ShapeCell = #private::ShapeCell::new();),
    );
    let policy = match &plan.settings.errors {
        ErrorPolicy::Release => quote!(#private::Release),
        ErrorPolicy::Cache => {
            quote_spanned!(err_ty.span()=> #private::cache_errors::<#codec, #err_ty>(&__IDEM_ERROR_SHAPE))
        }
        ErrorPolicy::CacheIf(predicate) => {
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
    let spec = quote!(&#private::Idempotent::with(__IDEM_OPTIONS, #output, #policy, #into_error));
    let execute = |body: TokenStream| {
        awaited_at(
            quote!(#private::execute),
            quote!(#store_arg, #key_ident, #fp_ident, #spec, async #body,),
            at_call,
        )
    };

    // The body: a block whose value has the return type as written.
    let body = match &plan.shape {
        Shape::Async => {
            let block = plan.function.block();
            quote!({
                let #ret_ident: #ret = #block;
                #[allow(unreachable_code)]
                #ret_ident
            })
        }
        Shape::AsyncTrait(async_trait) => {
            let stmts = &async_trait.future.block.stmts;
            quote!({ #(#stmts)* })
        }
    };
    let call = if let Some(tx) = &plan.tx {
        // Transactional mode: one call that claims on the transaction, lends it to the body
        // (which writes through it and hands it back), and records on it. The caller commits.
        let (into, from) = if alias {
            let conv = quote_spanned!(ret.span()=> <#ret as #private::IdemResult>);
            (quote!(#conv::into_result), quote!(#conv::from_result))
        } else {
            (quote!(), quote!())
        };
        // The transaction's type, from the signature, so a store that cannot work inside it
        // is reported once, at `store = ...`.
        let (tx, tx_ty) = (&tx.ident, &tx.ty);
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
    quote!(#prelude #call)
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

// ---------------------------------------------------------------------------------------
// What the prelude evaluates, one option at a time.
// ---------------------------------------------------------------------------------------

/// `T` and `E` of the return type: as written, or asked of the type checker.
fn result_types(plan: &Plan, private: &TokenStream) -> (TokenStream, TokenStream) {
    let ret = &plan.ret;
    let part = |written: &Option<syn::Type>, name: &str| match written {
        Some(ty) => ty.to_token_stream(),
        None => {
            let name = format_ident!("{}", name);
            quote_spanned!(ret.span()=> <#ret as #private::IdemResult>::#name)
        }
    };
    (part(&plan.result.ok, "Ok"), part(&plan.result.err, "Err"))
}

/// The records' namespace: `name = "..."`, or the module path and the function's name.
fn namespace(plan: &Plan, private: &TokenStream) -> TokenStream {
    match &plan.settings.name {
        Some(name) => name.to_token_stream(),
        None => {
            let fn_name = plan.function.sig.ident.unraw().to_string();
            quote!(#private::concat!(#private::module_path!(), "::", #fn_name))
        }
    }
}

/// The fields of the runtime's `Options` that differ from its defaults.
fn settings(settings: &Settings, private: &TokenStream) -> Vec<TokenStream> {
    let mut fields = Vec::new();
    if let Some(ttl) = settings.ttl {
        let ttl = nanos(ttl);
        fields.push(quote!(ttl: #private::Duration::from_nanos(#ttl)));
    }
    if let Some(lease) = settings.lease {
        let lease = nanos(lease);
        fields.push(quote!(lease: #private::Duration::from_nanos(#lease)));
    }
    if let Some(wait) = &settings.wait {
        fields.push(quote!(on_conflict: #private::OnConflict::Wait));
        if let Some(timeout) = wait.timeout {
            let timeout = nanos(timeout);
            fields.push(quote!(wait_timeout: #private::Duration::from_nanos(#timeout)));
        }
    }
    fields
}

fn nanos(d: Duration) -> Literal {
    // parse::duration refused anything longer than u64 nanoseconds.
    Literal::u64_suffixed(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The key, from the `key` (and `scope`) expressions. Each keeps its own span, so that a
/// type error points at what the user wrote.
fn key_value(plan: &Plan, private: &TokenStream) -> TokenStream {
    match &plan.scope {
        Some(scope) => {
            let (scope, key) = (borrowed(scope), borrowed(&plan.key));
            quote!(#private::scoped_key(__IDEM_OPTIONS.namespace, #scope, #key))
        }
        None => {
            let key = borrowed(&plan.key);
            quote!(#private::key(__IDEM_OPTIONS.namespace, #key))
        }
    }
}

/// One `hash_arg` into `hasher` per value the fingerprint covers.
fn hashed(plan: &Plan, private: &TokenStream, hasher: &Ident) -> Vec<TokenStream> {
    match &plan.hashed {
        Hashed::Expr(expr) => {
            let value = by_ref(expr);
            vec![quote!(#private::hash_arg(&mut #hasher, #value);)]
        }
        Hashed::Arguments(arguments) => arguments
            .iter()
            .map(|arg| quote_spanned!(arg.span()=> #private::hash_arg(&mut #hasher, &#arg);))
            .collect(),
    }
}

/// `let __idem_store = ..;`, and the span of `store = ...` (where rustc reports a wrong
/// store). Bound by a `let`, so that a temporary (`&self.store`, `self.store()`) lives as
/// long as the call.
fn store(plan: &Plan, private: &TokenStream) -> (TokenStream, Span) {
    let store_ident = Ident::new("__idem_store", Span::mixed_site());
    match &plan.store {
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
        None => {
            let default_store = Ident::new("__idem_default_store", Span::mixed_site());
            (
                quote! {
                    let #default_store = #private::DefaultStore::current();
                    let #store_ident = &#default_store;
                },
                Span::call_site(),
            )
        }
    }
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
