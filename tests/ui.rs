//! Compile-time behaviour of `#[idempotent]`: every misuse is a compile error pointing at the
//! offending token (tests/ui/fail, with the expected `.stderr`), and every supported shape
//! compiles and replays (tests/ui/pass, each a program that runs).
//!
//! Regenerate the `.stderr` files with the pinned toolchain:
//! `TRYBUILD=overwrite cargo test --test ui`, then read each one.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
