//! The `#[idempotent]` attribute of [idem](https://docs.rs/idem). Use it through the
//! `idem` crate, which documents every option.
//!
//! The macro only rewrites code, in three steps: the options are parsed in
//! [`parse`](mod@parse) and the function in [`item`](mod@item), both are checked together
//! into a [`Plan`](valid::Plan) in [`valid`](mod@valid), and the plan is written out in
//! [`expand`](mod@expand). Every mistake is collected in [`Errors`](errors::Errors) and
//! reported at once. Everything that runs lives in `idem-core`.

use proc_macro::TokenStream;
use quote::quote;

use crate::errors::Errors;
use crate::parse::Options;

mod errors;
mod expand;
mod item;
mod parse;
mod valid;

/// Makes an async function idempotent: the first call with a key runs the body and records
/// its result; later calls with that key replay it.
///
/// Use it as `idem::idempotent`, whose documentation is the manual of every option.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let mut errors = Errors::default();
    let options = Options::parse(args.into(), &mut errors);
    let function = item::parse(item.clone(), &mut errors);
    let plan = match (options, function) {
        (Some(options), Some((function, shape))) => {
            valid::plan(options, function, shape, &mut errors)
        }
        _ => None,
    };
    match plan {
        Some(plan) if errors.is_empty() => expand::expand(plan),
        _ => {
            // The item stays as written, so the errors are ours and, for a syntax error in
            // the body, rustc's own (and no "unused variable" for the arguments the dropped
            // options named).
            let errors = errors.into_compile_errors();
            quote!(#[allow(unused_variables)] #item #errors)
        }
    }
    .into()
}
