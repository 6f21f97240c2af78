//! What the benches share: clocks that do not count other processes' time slices, the
//! request and body every side runs, and the measurements (criterion benches of a
//! protocol's calls, and paired measurements of two protocols).
// Each bench uses a part of it.
#![allow(dead_code)]

pub(crate) mod clock;
pub(crate) mod measure;
pub(crate) mod paired;
pub(crate) mod payload;
