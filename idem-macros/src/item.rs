//! The item under the attribute: a function, its body kept as tokens, and the shape that
//! says how to rewrite it.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Pair;
use syn::spanned::Spanned;
use syn::{
    Attribute, Block, Expr, ExprAsync, ExprCall, GenericArgument, PathArguments, ReturnType,
    Signature, Stmt, Token, Type, TypeParamBound, Visibility, braced, token,
};

use crate::errors::Errors;

/// A function with a body, the body kept as tokens (like tracing-attributes'
/// `MaybeItemFn`): a syntax error inside it then reaches rustc, which reports the real error
/// where it is, instead of the whole item failing to parse here.
pub(crate) struct Function {
    pub(crate) outer_attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    pub(crate) brace: token::Brace,
    /// `#![...]` at the top of the body.
    pub(crate) inner_attrs: Vec<Attribute>,
    /// The rest of the body, not parsed.
    pub(crate) body: TokenStream,
}

impl Parse for Function {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let outer_attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let content;
        let brace = braced!(content in input);
        let inner_attrs = content.call(Attribute::parse_inner)?;
        let body = content.parse()?;
        Ok(Function {
            outer_attrs,
            vis,
            sig,
            brace,
            inner_attrs,
            body,
        })
    }
}

impl Function {
    /// The body in its braces, as written (but for its inner attributes).
    pub(crate) fn block(&self) -> TokenStream {
        let mut block = TokenStream::new();
        self.brace
            .surround(&mut block, |tokens| tokens.extend(self.body.clone()));
        block
    }
}

/// How the function is written, which says how to rewrite it.
pub(crate) enum Shape {
    /// An `async fn`: its body is the future's.
    Async,
    /// What `#[async_trait]` made of an `async fn`.
    AsyncTrait(Box<AsyncTrait>),
}

/// `fn f(..) -> Pin<Box<dyn Future<Output = Ret> + ..>> { Box::pin(async move { .. }) }`,
/// taken apart so that the async block's contents can be replaced.
pub(crate) struct AsyncTrait {
    /// `Ret`, the future's output.
    pub(crate) output: Type,
    /// The statements before `Box::pin(..)`.
    pub(crate) before: Vec<Stmt>,
    /// `Box::pin(..)` without its argument.
    pub(crate) pin: ExprCall,
    /// `async move { .. }`, the argument: its block is the original body.
    pub(crate) future: ExprAsync,
    /// A comma after the argument.
    pub(crate) comma: Option<Token![,]>,
}

/// The item as a function, and its shape. `None` (reported) if the item is not a function
/// with a body. The shape is `None` (reported) for a function that is neither `async` nor
/// `#[async_trait]`'s: its signature is still checked against the options, so that every
/// mistake is reported at once.
pub(crate) fn parse(item: TokenStream, errors: &mut Errors) -> Option<(Function, Option<Shape>)> {
    let Ok(function) = syn::parse2::<Function>(item.clone()) else {
        not_a_function(item, errors);
        return None;
    };
    let shape = shape(&function, errors);
    Some((function, shape))
}

fn shape(function: &Function, errors: &mut Errors) -> Option<Shape> {
    if let Some(constness) = &function.sig.constness {
        errors.add(
            constness,
            "#[idempotent] cannot apply to a `const fn`: remove `const` and make it an `async fn`",
        );
        return None;
    }
    if function.sig.asyncness.is_some() {
        return Some(Shape::Async);
    }
    if let Some(async_trait) = async_trait(function) {
        return Some(Shape::AsyncTrait(Box::new(async_trait)));
    }
    errors.add(
        function.sig.fn_token,
        "#[idempotent] functions must be `async`: write `async fn`",
    );
    None
}

fn not_a_function(item: TokenStream, errors: &mut Errors) {
    if let Ok(method) = syn::parse2::<syn::TraitItemFn>(item.clone()) {
        errors.add(
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
    errors.add_at(
        span,
        "#[idempotent] applies to `async fn` items only (free functions, methods, trait \
         methods with a body)",
    );
}

/// The function taken apart, if it is what `#[async_trait]` writes: it returns
/// `Pin<Box<dyn Future<Output = Ret> + ..>>` and its body ends in
/// `Box::pin(async move { .. })`.
fn async_trait(function: &Function) -> Option<AsyncTrait> {
    let output = future_output(&function.sig.output)?;
    // async-trait wrote this body: it parses.
    let mut before = Block::parse_within.parse2(function.body.clone()).ok()?;
    let Some(Stmt::Expr(Expr::Call(mut pin), None)) = before.pop() else {
        return None;
    };
    let Expr::Path(func) = &*pin.func else {
        return None;
    };
    if func.path.segments.last()?.ident != "pin" || pin.args.len() != 1 {
        return None;
    }
    let (future, comma) = pin.args.pop().map(Pair::into_tuple)?;
    let Expr::Async(future) = future else {
        return None;
    };
    Some(AsyncTrait {
        output,
        before,
        pin,
        future,
        comma,
    })
}

/// `Ret` of `Pin<Box<dyn Future<Output = Ret> + ..>>`.
fn future_output(output: &ReturnType) -> Option<Type> {
    let ReturnType::Type(_, ty) = output else {
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

/// `T` of `name<T>` (the last segment of a path).
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
