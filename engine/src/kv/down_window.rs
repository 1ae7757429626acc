//! "Down for a while after a failure", for a remote service (Redis) that
//! requests should not wait on while it is unreachable: after a failure
//! the caller skips the service until a window has passed, then tries
//! again (one request probes it); the first failure of an outage and the
//! recovery are reported once each, so each is logged once. Used by the
//! Redis KV store (per server) and by the gateway's shared tenant limits.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// When the last failure happened, while the service counts as down.
#[derive(Debug, Default)]
pub struct DownWindow {
    down_since: Mutex<Option<Instant>>,
}

impl DownWindow {
    pub fn new() -> DownWindow {
        DownWindow::default()
    }

    /// Whether the last call failed less than `window` ago: skip the
    /// service for now.
    pub fn is_down(&self, window: Duration) -> bool {
        self.down_since
            .lock()
            .is_some_and(|since| since.elapsed() < window)
    }

    /// Records a success; `true` when it ends an outage (log the recovery).
    pub fn succeeded(&self) -> bool {
        self.down_since.lock().take().is_some()
    }

    /// Records a failure, starting the window again; `true` when it starts
    /// an outage (log it), `false` while one goes on.
    pub fn failed(&self) -> bool {
        self.down_since.lock().replace(Instant::now()).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn skips_for_the_window_after_a_failure_and_reports_edges_once() {
        let w = DownWindow::new();
        let window = Duration::from_millis(100);
        assert!(!w.is_down(window));
        assert!(!w.succeeded(), "up stays up: nothing to report");
        assert!(w.failed(), "the first failure starts an outage");
        assert!(w.is_down(window));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(w.is_down(window));
        assert!(!w.failed(), "a failure during an outage is not a new one");
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(w.is_down(window), "the window restarts at the last failure");
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(!w.is_down(window), "past the window: try again");
        assert!(w.succeeded(), "the recovery is reported once");
        assert!(!w.succeeded());
        assert!(!w.is_down(window));
    }
}
