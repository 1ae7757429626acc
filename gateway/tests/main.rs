//! The crate's integration tests, one binary: one link, and one
//! `cargo test` target (`--test integration`); a file's tests are
//! `FILE::name`, so `cargo test --test integration FILE::` runs one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod api;
mod config;
mod drain;
mod embedded;
mod errors;
mod limits_redis;
mod prompt_limits;
mod real_model;
mod redis_cluster;
mod remote;
mod tenants;
