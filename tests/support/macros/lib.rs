//! `#[juggler_testkit::test]`: an `async fn` integration test on the runtime the suite uses, under
//! the suite's time bound. Re-exported by `juggler-testkit`; use it from there.
//!
//! The expansion is a plain `#[test]` that hands the body to `juggler_testkit::run_test`, so the
//! runtime and the bound are ordinary code in the harness and this crate only rewrites the item.
//!
//! ```ignore
//! #[juggler_testkit::test]                 // multi-thread runtime, 2 workers
//! async fn proxies_a_get() { ... }
//!
//! #[juggler_testkit::test(current_thread)] // one thread, like a bare `#[tokio::test]`
//! async fn handshake_completes() { ... }
//! ```

use proc_macro::TokenStream;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{Ident, ItemFn};

/// Marks an `async fn` without arguments as a test; see the crate documentation.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    let flavour = syn::parse_macro_input!(args as Flavour);
    let test = syn::parse_macro_input!(item as ItemFn);
    expand(flavour, test)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The runtime the test asks for: the argument of the attribute, if any.
enum Flavour {
    /// No argument: what most tests want, a server and its clients really running in parallel.
    MultiThread,
    /// `current_thread`: for tests that never needed more than one thread.
    CurrentThread,
}

impl Parse for Flavour {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.is_empty() {
            return Ok(Flavour::MultiThread);
        }
        let word: Ident = input.parse()?;
        if word != "current_thread" || !input.is_empty() {
            return Err(syn::Error::new(
                word.span(),
                "expected `#[juggler_testkit::test]` or `#[juggler_testkit::test(current_thread)]`",
            ));
        }
        Ok(Flavour::CurrentThread)
    }
}

fn expand(flavour: Flavour, test: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = test;
    if sig.asyncness.take().is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[juggler_testkit::test] marks an `async fn` (a file with `use juggler_testkit::*;` \
             gets it for `#[test]` too: write `#[::core::prelude::v1::test]` for a plain test)",
        ));
    }
    if !sig.inputs.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            "a test takes no arguments",
        ));
    }
    let runtime = match flavour {
        Flavour::MultiThread => quote!(MultiThread),
        Flavour::CurrentThread => quote!(CurrentThread),
    };
    let name = sig.ident.to_string();
    // `::core::prelude::v1::test` rather than `test`: a file that imports this macro as `test`
    // would otherwise expand into itself.
    Ok(quote! {
        #[::core::prelude::v1::test]
        #(#attrs)*
        #vis #sig {
            ::juggler_testkit::run_test(::juggler_testkit::Runtime::#runtime, #name, async move #block)
        }
    })
}
