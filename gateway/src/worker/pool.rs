//! The gateway's workers: health (down after N failures, back when a check
//! answers) and their last load reports. What the gateway has sent each
//! worker and not seen finish is admission's (`crate::admission`: the
//! ledger in placement, the in-flight counts).

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use cake_engine::worker::{Classification, LoadReport};

use super::{Worker, WorkerError};
use crate::telemetry as tm;

/// One worker and what the gateway knows of it.
pub struct WorkerSlot {
    pub worker: Arc<dyn Worker>,
    /// Longest wait for control calls and a response's head.
    pub timeout: Duration,
    /// Longest gap between two events of one request.
    pub idle_timeout: Duration,
    up: AtomicBool,
    failures: AtomicU32,
    load: ArcSwap<LoadReport>,
    /// When the last report was asked for: it counts everything sent
    /// before then.
    load_as_of: Mutex<Option<Instant>>,
}

impl WorkerSlot {
    pub fn new(worker: Arc<dyn Worker>, timeout: Duration, idle_timeout: Duration) -> WorkerSlot {
        WorkerSlot {
            worker,
            timeout,
            idle_timeout,
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            load: ArcSwap::from_pointee(LoadReport::default()),
            load_as_of: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        self.worker.name()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub fn last_load(&self) -> Arc<LoadReport> {
        self.load.load_full()
    }

    /// When the last load report was asked for (`None`: no report yet).
    pub fn load_as_of(&self) -> Option<Instant> {
        *self.load_as_of.lock()
    }
}

/// See the module docs.
pub struct WorkerPool {
    slots: Vec<Arc<WorkerSlot>>,
    down_after: u32,
    /// The health checks' interval in milliseconds (the default until they
    /// are spawned): when a down worker may be seen back.
    check_every_ms: AtomicU64,
}

/// The health checks' interval before [`WorkerPool::spawn_health_checks`]
/// sets it (the config's default).
const DEFAULT_CHECK_EVERY_MS: u64 = 2_000;

impl WorkerPool {
    pub fn new(slots: Vec<WorkerSlot>, down_after_failures: u32) -> WorkerPool {
        WorkerPool {
            slots: slots.into_iter().map(Arc::new).collect(),
            down_after: down_after_failures.max(1),
            check_every_ms: AtomicU64::new(DEFAULT_CHECK_EVERY_MS),
        }
    }

    pub fn slots(&self) -> &[Arc<WorkerSlot>] {
        &self.slots
    }

    pub fn healthy(&self) -> usize {
        self.slots.iter().filter(|s| s.is_up()).count()
    }

    /// Records a failure; the worker goes down after `down_after_failures`
    /// in a row.
    pub fn failure(&self, slot: &WorkerSlot, why: &WorkerError) {
        let n = slot.failures.fetch_add(1, Ordering::SeqCst) + 1;
        tm::worker_failure(slot.name());
        if n >= self.down_after && slot.up.swap(false, Ordering::SeqCst) {
            tracing::warn!(worker = slot.name(), failures = n, error = %why, "worker marked down");
            tm::worker_up(slot.name(), false);
        }
    }

    /// Records an answer; a down worker comes back.
    pub fn success(&self, slot: &WorkerSlot) {
        slot.failures.store(0, Ordering::SeqCst);
        if !slot.up.swap(true, Ordering::SeqCst) {
            tracing::info!(worker = slot.name(), "worker back up");
            tm::worker_up(slot.name(), true);
        }
    }

    /// How often workers are checked: when a down one may be back.
    pub fn check_interval(&self) -> Duration {
        Duration::from_millis(self.check_every_ms.load(Ordering::Relaxed))
    }

    /// One presence lookup, on the first healthy worker that can answer;
    /// `None` when none can (the request is then `fresh`).
    pub async fn classify(&self, prompt: &[u32], cache_group: &str) -> Option<Classification> {
        for slot in self.slots.iter().filter(|s| s.is_up()) {
            // A prompt shorter than one chunk has nothing stored: no need
            // to ask (once the worker has said its chunk size).
            let chunk = slot.last_load().chunk_tokens as usize;
            if chunk > 0 && prompt.len() < chunk {
                return Some(Classification::default());
            }
            let call = slot
                .worker
                .classify(prompt.to_vec(), cache_group.to_string());
            match tokio::time::timeout(slot.timeout, call).await {
                Ok(Ok(c)) => return Some(c),
                Ok(Err(WorkerError::Unsupported(_))) => continue,
                Ok(Err(e)) => {
                    tracing::debug!(worker = slot.name(), error = %e, "classify failed");
                    if e.is_health_failure() {
                        self.failure(slot, &e);
                    }
                }
                Err(_) => {
                    self.failure(slot, &WorkerError::Timeout(slot.timeout));
                }
            }
        }
        None
    }

    /// Checks every worker once: health, then (when up) its load.
    pub async fn check_all(&self) {
        let checks = self.slots.iter().map(|slot| async move {
            let health = tokio::time::timeout(slot.timeout, slot.worker.health()).await;
            match health {
                Ok(Ok(())) => self.success(slot),
                Ok(Err(e)) => {
                    self.failure(slot, &e);
                    return;
                }
                Err(_) => {
                    self.failure(slot, &WorkerError::Timeout(slot.timeout));
                    return;
                }
            }
            let asked = Instant::now();
            if let Ok(Ok(report)) = tokio::time::timeout(slot.timeout, slot.worker.load()).await {
                tm::worker_load(slot.name(), &report);
                slot.load.store(Arc::new(report));
                *slot.load_as_of.lock() = Some(asked);
            }
        });
        futures::future::join_all(checks).await;
    }

    /// Checks every `interval` until the pool is dropped.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.check_every_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.check_all().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::worker::{MockWorker, mock_pool};

    fn pool(n: usize, down_after: u32) -> (Vec<MockWorker>, Arc<WorkerPool>) {
        mock_pool(n, down_after)
    }

    /// A worker goes down after `down_after_failures` failures in a row
    /// (an answer between them starts the count again) and comes back
    /// with the next answer.
    #[test]
    fn down_after_failures_in_a_row_and_back_with_an_answer() {
        let (_m, p) = pool(2, 3);
        let (w0, why) = (&p.slots()[0], WorkerError::Unreachable("test".into()));
        p.failure(w0, &why);
        p.failure(w0, &why);
        p.success(w0);
        p.failure(w0, &why);
        p.failure(w0, &why);
        assert_eq!(p.healthy(), 2, "the answer started the count again");
        p.failure(w0, &why);
        assert!(!w0.is_up());
        assert_eq!(p.healthy(), 1);
        p.success(w0);
        assert_eq!(p.healthy(), 2);
    }

    /// The health checks mark a failing worker down and an answering one
    /// up, and take its load report with the time it was asked.
    #[tokio::test]
    async fn checks_follow_health_and_take_load_reports() {
        let (m, p) = pool(2, 1);
        assert!(p.slots()[0].load_as_of().is_none());
        m[1].set_healthy(false);
        p.check_all().await;
        assert!(p.slots()[0].is_up() && !p.slots()[1].is_up());
        assert!(p.slots()[0].load_as_of().is_some());
        assert!(
            p.slots()[1].load_as_of().is_none(),
            "no load from a down worker"
        );
        m[1].set_healthy(true);
        p.check_all().await;
        assert_eq!(p.healthy(), 2);
    }

    /// The presence lookup asks the first healthy worker; with none up
    /// it is `None` (the request is fresh), never an error.
    #[tokio::test]
    async fn classify_asks_a_healthy_worker_or_says_nothing() {
        let (m, p) = pool(2, 1);
        let prompt: Vec<u32> = (0..40).collect();
        m[1].store_prompt(&prompt, "g");
        p.failure(&p.slots()[0], &WorkerError::Unreachable("test".into()));
        let c = p.classify(&prompt, "g").await.unwrap();
        assert_eq!(c.cached_tokens, 32, "worker 1 answered");
        p.failure(&p.slots()[1], &WorkerError::Unreachable("test".into()));
        assert!(p.classify(&prompt, "g").await.is_none());
    }
}
