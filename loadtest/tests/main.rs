//! The crate's integration tests, one binary: one link, and one
//! `cargo test` target (`--test integration`); a file's tests are
//! `FILE::name`, so `cargo test --test integration FILE::` runs one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod cli;
mod reuse;
mod run;
