//! The step scheduler: continuous batching under a token budget per step.
//! Each step serves, in the configured order, decode tokens, fresh
//! prefills and Cake's compute side; the I/O side runs independently on
//! the runtime and wakes the scheduler as chunks arrive.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::config::{BudgetOrder, EngineConfig};
use super::seq::{Next, Phase, Piece, Seq};
use super::siblings::{Siblings, offer};
use super::stats::{ComputeMeter, IoMeter};
use super::telemetry;
use super::types::{RequestClass, WorkErrorKind, WorkEvent};
use crate::kv::{EncodedChunk, KvStore};
use crate::{EngineError, Model};

/// Steps whose budget use is kept for reports (a ring).
const STEP_HISTORY: usize = 4096;

pub(crate) enum Msg {
    New(Box<Seq>),
    Wake,
}

/// State the scheduler, the I/O tasks and the engine's handles share.
pub(crate) struct Shared {
    pub compute: ComputeMeter,
    pub io: Arc<IoMeter>,
    pub queued_compute_tokens: AtomicU64,
    /// Requests submitted and not yet finished or cancelled.
    pub running: AtomicU64,
    /// Tokens used by each recent step.
    pub steps: Mutex<VecDeque<u32>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            compute: ComputeMeter::default(),
            io: Arc::default(),
            queued_compute_tokens: AtomicU64::new(0),
            running: AtomicU64::new(0),
            steps: Mutex::new(VecDeque::new()),
        }
    }
}

pub(crate) struct Scheduler {
    pub model: Arc<Model>,
    pub store: Option<Arc<dyn KvStore>>,
    pub cfg: EngineConfig,
    pub rx: Receiver<Msg>,
    pub shared: Arc<Shared>,
    pub siblings: Arc<Siblings>,
    pub runtime: tokio::runtime::Handle,
    pub waiting: VecDeque<Seq>,
    pub active: Vec<Seq>,
    /// Bytes of one stored chunk (for load-time predictions).
    pub chunk_bytes: u64,
}

impl Scheduler {
    pub fn run(mut self) {
        loop {
            let mut disconnected = false;
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::New(s)) => self.waiting.push_back(*s),
                    Ok(Msg::Wake) => {}
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            self.reap();
            self.serve_late();
            while self.active.len() < self.cfg.max_running {
                // The first of the highest priority waiting.
                let best = self
                    .waiting
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, s)| (s.req.priority, std::cmp::Reverse(*i)))
                    .map(|(i, _)| i);
                match best.and_then(|i| self.waiting.remove(i)) {
                    Some(s) => {
                        s.producer.running.store(true, Ordering::Release);
                        self.active.push(s);
                    }
                    None => break,
                }
            }
            // A request still waiting for a running slot computes nothing
            // soon: requests waiting on its chunks compute them themselves.
            for s in &self.waiting {
                s.producer.running.store(false, Ordering::Release);
            }
            let used = self.step();
            self.publish();
            if used > 0 {
                let mut steps = self.shared.steps.lock();
                if steps.len() == STEP_HISTORY {
                    steps.pop_front();
                }
                steps.push_back(used as u32);
                continue;
            }
            if disconnected && self.active.is_empty() && self.waiting.is_empty() {
                return;
            }
            // Nothing runnable: wait for a request or a finished load.
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Msg::New(s)) => self.waiting.push_back(*s),
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if self.active.is_empty() && self.waiting.is_empty() {
                        return;
                    }
                }
            }
        }
    }

    /// Drops finished requests and those whose client has gone (their
    /// loads in flight are cancelled).
    fn reap(&mut self) {
        let running = &self.shared.running;
        let siblings = &self.siblings;
        let keep = |s: &Seq| {
            let gone = s.client_gone();
            if gone || s.phase == Phase::Done {
                if let Some(p) = &s.plan {
                    p.cancel();
                }
                // Chunks it owed and did not compute go to their waiters.
                siblings.release(s.producer.serial, &s.produces);
                if gone && s.phase != Phase::Done {
                    tracing::debug!(id = %s.req.id, "client gone; request cancelled");
                }
                let _ = running.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    Some(r.saturating_sub(1))
                });
                false
            } else {
                true
            }
        };
        self.active.retain(keep);
        self.waiting.retain(|s| keep(s));
    }

    /// Hands requests planned after their siblings computed the chunks
    /// they share a copy from those siblings' caches.
    fn serve_late(&self) {
        let c = self.cfg.chunk_tokens;
        for late in self.siblings.take_late() {
            let producer = self
                .active
                .iter()
                .chain(self.waiting.iter())
                .find(|s| s.producer.serial == late.serial);
            match producer {
                Some(p) => {
                    let (start, end) = (late.index * c, (late.index + 1) * c);
                    offer(vec![(late.plan, late.slot)], || {
                        p.cache.device_range(start, end)
                    });
                }
                None => late.plan.sibling_gone(late.slot),
            }
        }
    }

    fn publish(&self) {
        let queued: usize = self
            .active
            .iter()
            .chain(self.waiting.iter())
            .map(|s| s.remaining_compute_tokens())
            .sum();
        self.shared
            .queued_compute_tokens
            .store(queued as u64, Ordering::Relaxed);
    }

    /// Order in which requests get this step's budget. `adaptive`: decode
    /// tokens, then fresh prefills (and cached requests' suffixes), then
    /// Cake's compute side, higher priority first within each; `fcfs`:
    /// arrival order. With `priority_alone`, prefills go by priority before
    /// kind (`adaptive` still serves decode tokens first; `fcfs` goes by
    /// priority, then arrival), so the step's prefills are the highest
    /// priority's. With one priority, the orders are as without it.
    fn order(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.active.len()).collect();
        let adaptive = self.cfg.order == BudgetOrder::Adaptive;
        let by_priority = self.cfg.priority_alone;
        if !adaptive && !by_priority {
            return idx;
        }
        // Stable sort keeps arrival order among equals.
        idx.sort_by_key(|&i| {
            let s = &self.active[i];
            let rank: u8 = match (s.phase, s.class) {
                _ if !adaptive => 0,
                (Phase::Decode, _) => 0,
                (_, RequestClass::Fresh) => 1,
                // Past the cached range, what is left is an ordinary
                // prefill of the uncached suffix.
                (_, RequestClass::Cached) if s.front >= s.cached_end => 1,
                (_, RequestClass::Cached) => 2,
            };
            let priority = std::cmp::Reverse(s.req.priority);
            match (adaptive, by_priority) {
                (true, true) => (u8::from(s.phase != Phase::Decode), priority, rank),
                (true, false) => (rank, priority, 0),
                // fcfs: arrival order within a priority.
                (false, _) => (0, priority, 0),
            }
        });
        idx
    }

    /// Whether compute should take over a chunk whose load is in flight:
    /// yes when the load is predicted to land later than compute would
    /// finish the chunk (from the measured rates), and always before the
    /// rates are measured (never worse than computing).
    fn steal_rule(&self) -> impl Fn(Instant, usize) -> bool + use<> {
        let (a, b) = self.shared.compute.fit();
        let bw = self.shared.io.bandwidth();
        let depth = self.cfg.io_queue_depth as f64;
        let chunk_bytes = self.chunk_bytes as f64;
        move |issued: Instant, chunk: usize| {
            if a <= 0.0 || bw <= 0.0 {
                return true;
            }
            let load_left = depth * chunk_bytes / bw - issued.elapsed().as_secs_f64();
            let compute = a + b * chunk as f64;
            load_left > compute
        }
    }

    /// Runs one step; returns the tokens it computed. The budget is shared
    /// out in [`Scheduler::order`]; every request that got a piece then
    /// runs in one batched forward ([`Model::forward_batch`]), so a step's
    /// decode tokens and short prefills read each weight once.
    fn step(&mut self) -> usize {
        let budget_total = self.cfg.token_budget;
        let mut budget = budget_total;
        let steal = self.steal_rule();
        let mut picked: Vec<(usize, Piece)> = Vec::new();
        let mut failed: Vec<(usize, EngineError)> = Vec::new();
        // With `priority_alone`: the priority of the first request that has
        // prefill work this step; lower ones do not prefill in it.
        let mut top: Option<u8> = None;
        // Loads that landed since the last step count before ranking: a
        // request whose cached range is all in is no longer Cake's
        // compute side but an ordinary prefill of its suffix.
        for (i, seq) in self.active.iter_mut().enumerate() {
            if let Err(e) = seq.take_loaded() {
                failed.push((i, e));
            }
        }
        for i in self.order() {
            if budget == 0 {
                break;
            }
            if failed.iter().any(|(j, _)| *j == i) {
                continue;
            }
            let seq = &mut self.active[i];
            if let Some(t) = top
                && seq.req.priority < t
                && seq.phase == Phase::Prefill
            {
                // Not asked what it needs, so it claims nothing now.
                continue;
            }
            match seq.next(&steal, budget) {
                Err(e) => failed.push((i, e)),
                Ok(Next::Finished | Next::Blocked) => {}
                Ok(Next::NoRoom) => {
                    // It has prefill work, as a piece that does not fit.
                    if self.cfg.priority_alone && top.is_none() {
                        top = Some(seq.req.priority);
                    }
                }
                Ok(Next::Decode) => {
                    picked.push((i, Piece::Decode));
                    budget -= 1;
                }
                Ok(Next::Prefill { start, end }) => {
                    if self.cfg.priority_alone && top.is_none() {
                        top = Some(seq.req.priority);
                    }
                    // A piece that does not fit waits for a step with
                    // room (a chunk of the cached range is not even
                    // claimed then: `Seq::next` knows the room).
                    if end - start <= budget {
                        picked.push((i, Piece::Prefill { start, end }));
                        budget -= end - start;
                    }
                }
            }
        }
        drop(steal);
        let used = self.run_batch(picked, &mut failed);
        for (i, e) in failed {
            let seq = &mut self.active[i];
            let kind = e.kind();
            if kind == WorkErrorKind::Internal {
                tracing::error!(id = %seq.req.id, error = %e, "request failed on the worker");
            } else {
                tracing::warn!(id = %seq.req.id, error = %e, "request failed on the worker");
            }
            seq.send(WorkEvent::Error {
                kind,
                message: e.to_string(),
            });
            seq.phase = Phase::Done;
        }
        debug_assert!(used <= budget_total - budget);
        used
    }

    /// Runs the step's pieces as one batch and hands each request its
    /// result; requests whose piece cannot run go to `failed` (one bad
    /// request never fails the others; a device fault fails the batch).
    /// Returns the tokens computed.
    fn run_batch(
        &mut self,
        picked: Vec<(usize, Piece)>,
        failed: &mut Vec<(usize, EngineError)>,
    ) -> usize {
        if picked.is_empty() {
            return 0;
        }
        let model = self.model.clone();
        let mut seqs: Vec<Option<&mut Seq>> = self.active.iter_mut().map(Some).collect();
        let mut items = Vec::with_capacity(picked.len());
        let mut ran = Vec::with_capacity(picked.len());
        // Each piece's share of the step's time, from its operation count.
        let mut flops = Vec::with_capacity(picked.len());
        for &(i, piece) in &picked {
            let Some(seq) = seqs[i].take() else { continue };
            let item = match seq.batch_item(piece) {
                Ok(item) => item,
                Err(e) => {
                    failed.push((i, e));
                    continue;
                }
            };
            if let Err(e) = model.check_input(item.cache, item.tokens) {
                failed.push((i, e));
                continue;
            }
            flops.push(model.step_flops(item.cache.len(), item.tokens.len(), item.logit_rows()));
            items.push(item);
            ran.push((i, piece));
        }
        if items.is_empty() {
            return 0;
        }
        let t = Instant::now();
        let out = model.forward_batch(&mut items);
        let secs = t.elapsed().as_secs_f64();
        drop(items);
        drop(seqs);
        let outs = match out {
            Ok(o) => o,
            Err(e) => {
                let msg = e.to_string();
                for &(i, _) in &ran {
                    failed.push((i, EngineError::Step(msg.clone())));
                }
                return 0;
            }
        };
        let total_flops: f64 = flops.iter().sum::<f64>().max(1.0);
        let mut used = 0;
        for (((i, piece), logits), f) in ran.into_iter().zip(outs).zip(flops) {
            let seq = &mut self.active[i];
            if let Piece::Prefill { start, end } = piece {
                self.shared.compute.record(
                    start / seq.chunk_tokens,
                    end - start,
                    seq.chunk_tokens,
                    secs * f / total_flops,
                );
            }
            used += match piece {
                Piece::Prefill { start, end } => end - start,
                Piece::Decode => 1,
            };
            match seq.finish_piece(piece, logits) {
                Ok(_) => {
                    let c = seq.chunk_tokens;
                    let filled = match piece {
                        Piece::Prefill { start, end } => {
                            (end - start == c && start.is_multiple_of(c)).then_some(start / c)
                        }
                        Piece::Decode => seq.filled_chunk().inspect(|_| telemetry::answer_chunk()),
                    };
                    if let Some(j) = filled {
                        self.chunk_ready(i, j);
                    }
                }
                Err(e) => failed.push((i, e)),
            }
        }
        used
    }

    /// Request `i` has just computed its full chunk `j`: it becomes
    /// visible at once — handed to the requests waiting for it here, and
    /// put into the store (whose write-behind answers lookups from now on,
    /// before any tier has it).
    fn chunk_ready(&self, i: usize, j: usize) {
        let seq = &self.active[i];
        let Some(&key) = seq.keys.get(j) else { return };
        let c = seq.chunk_tokens;
        if seq.stored.get(j).copied() != Some(true) {
            self.store_chunk(seq, j);
        }
        let cache = &seq.cache;
        self.siblings.computed(&key, seq.producer.serial, || {
            cache.device_range(j * c, (j + 1) * c)
        });
    }

    /// Puts chunk `j` of `seq` into the store, unless write-back is off.
    /// A tiered store takes it at once (it is visible from then on) and
    /// writes it to its tiers behind the request; a put that must wait is
    /// left to the runtime.
    fn store_chunk(&self, seq: &Seq, j: usize) {
        let (Some(store), true, Some(ctx)) = (&self.store, self.cfg.write_back, seq.ctx) else {
            return;
        };
        let Some(&key) = seq.keys.get(j) else { return };
        let c = seq.chunk_tokens;
        let encoded = match seq.cache.range(j * c, (j + 1) * c) {
            Ok(kv) => EncodedChunk::encode(key, &ctx, j as u32, &kv).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let chunk = match encoded {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "could not encode a chunk for write-back");
                return;
            }
        };
        let store = store.clone();
        let _runtime = self.runtime.enter();
        let mut put = Box::pin(async move {
            if let Err(e) = store.put(chunk).await {
                tracing::debug!(error = %e, "write-back of a chunk failed");
            }
        });
        if futures::FutureExt::now_or_never(&mut put).is_none() {
            self.runtime.spawn(put);
        }
    }
}

#[cfg(test)]
mod tests;
