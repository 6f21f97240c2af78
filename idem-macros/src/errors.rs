//! The mistakes found so far: every step reports into one collector instead of stopping at
//! the first, so that one compilation shows the user all of them.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

/// Every error reported so far, combined into one `syn::Error` (which keeps each message
/// at its own span).
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Reports `error`.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Reports an error covering `tokens` from the first to the last (also on stable Rust,
    /// where spans cannot be joined).
    pub(crate) fn add(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Reports an error at one span.
    pub(crate) fn add_at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    /// The value of `result`, or `None` once its error is reported.
    pub(crate) fn ok<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// Whether nothing was reported.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// A `compile_error!` per error, in the order they were reported (nothing if none was).
    pub(crate) fn into_compile_errors(self) -> TokenStream {
        self.0
            .map(|error| error.to_compile_error())
            .unwrap_or_default()
    }
}
