//! The `#[idempotent]` attribute of [idem](https://docs.rs/idem). Use it through the
//! `idem` crate, which documents every option.
//!
//! The macro only rewrites code: options are parsed in [`parse`](mod@parse), the function
//! is rewritten in [`expand`](mod@expand), and everything that runs lives in `idem-core`.

use proc_macro::TokenStream;

mod expand;
mod parse;

/// Makes an async function idempotent: the first call with a key runs the body and records
/// its result; later calls with that key replay it.
///
/// Use it as `idem::idempotent`, whose documentation is the manual of every option.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::idempotent(args.into(), item.into()).into()
}
