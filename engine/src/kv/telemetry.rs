//! The `cake_kv_*` metrics, recorded through the `metrics` facade (the
//! exporter is installed by the binary). Labels: `store` is one of
//! `memory`, `disk`, `redis`, `tiered`, `throttle`, `reader` — a bounded
//! set. Bytes are recorded by the stores that move them (memory, disk,
//! redis), so summing a byte metric over `store` does not count twice.

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

pub const HITS: &str = "cake_kv_hits_total";
pub const MISSES: &str = "cake_kv_misses_total";
pub const CORRUPT: &str = "cake_kv_corrupt_total";
pub const ERRORS: &str = "cake_kv_errors_total";
pub const READ_BYTES: &str = "cake_kv_read_bytes_total";
pub const WRITTEN_BYTES: &str = "cake_kv_written_bytes_total";
pub const DROPPED_WRITES: &str = "cake_kv_dropped_writes_total";
pub const EVICTIONS: &str = "cake_kv_evictions_total";
pub const STORED_BYTES: &str = "cake_kv_stored_bytes";
pub const WRITE_BEHIND_BYTES: &str = "cake_kv_write_behind_bytes";
pub const DISK_FULL: &str = "cake_kv_disk_full_total";
pub const CAPACITY_BYTES: &str = "cake_kv_capacity_bytes";

/// Describes every KV metric once; call at start-up.
pub fn describe_metrics() {
    describe_counter!(HITS, "KV chunk reads that found the chunk, by store");
    describe_counter!(
        MISSES,
        "KV chunk reads that did not (corrupt and unreachable included), by store"
    );
    describe_counter!(
        CORRUPT,
        "KV chunks that failed their checks and were deleted, by store"
    );
    describe_counter!(
        ERRORS,
        "failed KV store operations (I/O, Redis down, timeouts), by store"
    );
    describe_counter!(READ_BYTES, Unit::Bytes, "KV bytes read, by tier");
    describe_counter!(WRITTEN_BYTES, Unit::Bytes, "KV bytes written, by tier");
    describe_counter!(
        DROPPED_WRITES,
        "KV chunk writes given up (too large, write-behind full)"
    );
    describe_counter!(
        EVICTIONS,
        "KV chunks evicted to stay within capacity, by tier"
    );
    describe_gauge!(STORED_BYTES, Unit::Bytes, "KV bytes held, by tier");
    describe_counter!(
        DISK_FULL,
        "KV chunk writes the file system refused for space (ENOSPC, EDQUOT); each lowers the disk store's capacity"
    );
    describe_gauge!(
        CAPACITY_BYTES,
        Unit::Bytes,
        "KV bytes a tier may hold (the disk store's is lowered to what its file system holds)"
    );
    describe_gauge!(
        WRITE_BEHIND_BYTES,
        Unit::Bytes,
        "KV bytes accepted for writing behind the request, not yet written"
    );
    register_at_zero();
}

/// The counters, at 0 for every store and tier, so `/metrics` lists them
/// before their first event.
fn register_at_zero() {
    for store in ["memory", "disk", "redis", "tiered"] {
        for name in [HITS, MISSES, CORRUPT, ERRORS, DROPPED_WRITES] {
            counter!(name, "store" => store).increment(0);
        }
    }
    for tier in ["memory", "disk", "redis"] {
        for name in [READ_BYTES, WRITTEN_BYTES, EVICTIONS] {
            counter!(name, "tier" => tier).increment(0);
        }
    }
    counter!(DISK_FULL, "store" => "disk").increment(0);
}

fn moves_bytes(store: &str) -> bool {
    matches!(store, "memory" | "disk" | "redis")
}

pub(crate) fn hit(store: &'static str, bytes: usize) {
    counter!(HITS, "store" => store).increment(1);
    if moves_bytes(store) {
        counter!(READ_BYTES, "tier" => store).increment(bytes as u64);
    }
}

pub(crate) fn miss(store: &'static str) {
    counter!(MISSES, "store" => store).increment(1);
}

pub(crate) fn corrupt(store: &'static str) {
    counter!(CORRUPT, "store" => store).increment(1);
}

pub(crate) fn error(store: &'static str) {
    counter!(ERRORS, "store" => store).increment(1);
}

pub(crate) fn written(store: &'static str, bytes: usize) {
    if moves_bytes(store) {
        counter!(WRITTEN_BYTES, "tier" => store).increment(bytes as u64);
    }
}

pub(crate) fn dropped(store: &'static str) {
    counter!(DROPPED_WRITES, "store" => store).increment(1);
}

pub(crate) fn evicted(store: &'static str, n: usize) {
    counter!(EVICTIONS, "tier" => store).increment(n as u64);
}

pub(crate) fn stored_bytes(store: &'static str, bytes: u64) {
    gauge!(STORED_BYTES, "tier" => store).set(bytes as f64);
}

pub(crate) fn write_behind_bytes(bytes: u64) {
    gauge!(WRITE_BEHIND_BYTES).set(bytes as f64);
}

pub(crate) fn disk_full() {
    counter!(DISK_FULL, "store" => "disk").increment(1);
}

pub(crate) fn capacity_bytes(store: &'static str, bytes: u64) {
    gauge!(CAPACITY_BYTES, "tier" => store).set(bytes as f64);
}
