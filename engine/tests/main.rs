//! The crate's integration tests, one binary: one link, and one
//! `cargo test` target (`--test integration`); a file's tests are
//! `FILE::name`, so `cargo test --test integration FILE::` runs one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kv_support;
mod tokenizer_support;

mod devices;
mod gguf;
mod init_checkpoint;
mod init_determinism;
mod init_tokenizer;
mod init_tokenizer_formats;
mod kv_bench_store;
mod kv_config;
mod kv_disk_full;
mod kv_redis;
mod kv_redis_cluster;
mod kv_stores;
mod loader;
mod model;
mod reference;
mod tokenizer_config;
mod weights_dtype;
