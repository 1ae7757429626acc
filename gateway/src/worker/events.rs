//! A worker's event stream: reading it (the next event within the idle
//! bound, an `Error` event as an error) and writing it as NDJSON.

use std::time::Duration;

use bytes::Bytes;
use cake_engine::worker::WorkEvent;
use futures::StreamExt;

use super::{EventStream, WorkerError};

/// A worker's event as a result: its `Error` event becomes an error.
pub fn event_result(ev: WorkEvent) -> Result<WorkEvent, WorkerError> {
    match ev {
        WorkEvent::Error { kind, message } => Err(WorkerError::from_kind(kind, message)),
        other => Ok(other),
    }
}

/// The next event, at most `idle` away; the end of the stream before
/// `Done` is an error.
pub async fn next_event(
    events: &mut EventStream,
    idle: Duration,
) -> Result<WorkEvent, WorkerError> {
    match tokio::time::timeout(idle, events.next()).await {
        Err(_) => Err(WorkerError::Timeout(idle)),
        Ok(None) => Err(WorkerError::Unreachable(
            "the event stream ended early".into(),
        )),
        Ok(Some(r)) => r.and_then(event_result),
    }
}

/// One event as an NDJSON line (`cake worker`'s stream, read back by
/// [`super::CakeWorker`]).
pub(crate) fn ndjson_line(ev: &WorkEvent) -> Bytes {
    let mut line = serde_json::to_vec(ev).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}
