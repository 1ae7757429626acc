//! The worker's `cake_engine_*` metrics: where prompt KV came from beyond
//! the stores (siblings) and the answer chunks kept for the next turn.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

pub const SIBLING_CHUNKS: &str = "cake_engine_sibling_chunks_total";
pub const SIBLING_WAIT: &str = "cake_engine_sibling_wait_seconds";
pub const ANSWER_CHUNKS: &str = "cake_engine_answer_chunks_total";

/// Describes every worker metric once (and makes each exist at zero);
/// call at start-up.
pub fn describe_metrics() {
    describe_counter!(
        SIBLING_CHUNKS,
        "prompt chunks taken from another request computing them on the same worker"
    );
    describe_histogram!(
        SIBLING_WAIT,
        Unit::Seconds,
        "time a request's compute side waited for a sibling's chunk"
    );
    describe_counter!(
        ANSWER_CHUNKS,
        "chunks filled while decoding (prompt tail and answer) and stored for the next turn"
    );
    counter!(SIBLING_CHUNKS).absolute(0);
    counter!(ANSWER_CHUNKS).absolute(0);
}

/// A chunk taken from a sibling, after waiting `waited` for it (`None`:
/// it had landed before compute got there).
pub(crate) fn sibling_chunk_taken(waited: Option<Duration>) {
    counter!(SIBLING_CHUNKS).increment(1);
    histogram!(SIBLING_WAIT).record(waited.map_or(0.0, |d| d.as_secs_f64()));
}

/// A chunk filled while decoding, handed to the store.
pub(crate) fn answer_chunk() {
    counter!(ANSWER_CHUNKS).increment(1);
}
