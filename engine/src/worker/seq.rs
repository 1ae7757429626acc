//! One request inside a worker: its prompt plan, KV cache, decoding state
//! and counters. The scheduler decides when; this decides what is next.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::loader::{Front, LoadPlan};
use super::siblings::ProducerId;
use super::telemetry;
use super::types::{RequestClass, Strategy, TokenEvent, Usage, WorkEvent, WorkRequest};
use crate::generate::logprob_of;
use crate::kv::{ChunkContext, ChunkKey, Namespace, next_chunk_key};
use crate::{
    BatchItem, Decoding, EngineError, GenerateOptions, KvCache, Logits, SamplingParams,
    TokenLogprob,
};
use cake_kernels::Tensor;

/// Work a step gives a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Prompt tokens `start..end`.
    Prefill { start: usize, end: usize },
    /// One decode token.
    Decode,
}

/// The logits a step returned for a piece that asked for them.
fn take_logits(t: Option<Tensor>) -> Result<Vec<f32>, EngineError> {
    match t {
        Some(t) => Ok(t.into_vec()?),
        None => Err(EngineError::KvLayout(
            "a step returned no logits where they were asked for".into(),
        )),
    }
}

/// What a request needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Compute prompt tokens `start..end` (one aligned chunk or the final
    /// piece).
    Prefill { start: usize, end: usize },
    /// One decode token.
    Decode,
    /// Waiting for a load to finish.
    Blocked,
    /// Its next chunk does not fit in what is left of this step's budget
    /// (and was not claimed).
    NoRoom,
    /// Nothing left.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Prefill,
    Decode,
    Done,
}

pub(crate) struct Seq {
    pub req: WorkRequest,
    pub events: UnboundedSender<WorkEvent>,
    pub arrival: Instant,
    pub class: RequestClass,
    pub strategy: Strategy,
    /// Keys of the full chunks of the prompt, then of the chunks filled
    /// while decoding (prompt and answer tokens), as they fill.
    pub keys: Vec<ChunkKey>,
    pub stored: Vec<bool>,
    /// The chunk-key namespace (for the keys of chunks filled decoding).
    pub ns: Namespace,
    /// This request as a producer of chunks siblings wait for.
    pub producer: ProducerId,
    /// Keys of the chunks it registered to produce (released when it ends).
    pub produces: Vec<ChunkKey>,
    /// Chunks `0..cached_end` form the range the loader works on.
    pub cached_end: usize,
    pub plan: Option<Arc<LoadPlan>>,
    pub chunk_tokens: usize,
    pub cache: KvCache,
    /// Next chunk of the cached range for the compute side.
    pub front: usize,
    pub phase: Phase,
    pub decoding: Decoding,
    pub logits: Vec<f32>,
    pub loaded_tokens: usize,
    pub computed_tokens: usize,
    /// Prompt tokens handed over by siblings.
    pub shared_tokens: usize,
    /// Since when compute has waited for a sibling's chunk.
    pub sibling_wait: Option<Instant>,
    pub ttft: Option<f64>,
    pub prompt_logprobs: Vec<Option<TokenLogprob>>,
    pub worker: Arc<str>,
    /// Chunk context of the request's namespace (with a store).
    pub ctx: Option<ChunkContext>,
}

pub(crate) fn generate_options(req: &WorkRequest, chunk_tokens: usize) -> GenerateOptions {
    let o = &req.options;
    GenerateOptions {
        sampling: SamplingParams {
            temperature: o.temperature,
            top_p: o.top_p,
            top_k: o.top_k,
            repetition_penalty: o.repetition_penalty,
            seed: o.seed,
        },
        max_tokens: o.max_tokens,
        min_tokens: o.min_tokens,
        stop: o.stop.clone(),
        ignore_eos: o.ignore_eos,
        logprobs: o.logprobs,
        prompt_logprobs: o.prompt_logprobs,
        chunk_tokens,
    }
}

impl Seq {
    pub fn prompt_len(&self) -> usize {
        self.req.prompt.len()
    }

    /// Prompt tokens the compute side may still need (for load reports):
    /// what is left of the prompt less the chunks that arrive without
    /// compute (loaded, or from a running sibling, whose own report counts
    /// them once). A burst's waiters must not count the shared prefix
    /// again, or placement would think the sibling's worker is saturated.
    pub fn remaining_compute_tokens(&self) -> usize {
        match self.phase {
            Phase::Prefill => {
                let arriving = self
                    .plan
                    .as_ref()
                    .map_or(0, |p| p.arriving_from(self.front) * self.chunk_tokens);
                self.prompt_len()
                    .saturating_sub(self.cache.len())
                    .saturating_sub(arriving)
            }
            Phase::Decode => 1,
            Phase::Done => 0,
        }
    }

    /// Takes the loaded chunks at the front into the cache (they cost no
    /// compute), so that the scheduler ranks the request by the work it
    /// has left: past its cached range, only an ordinary prefill.
    pub fn take_loaded(&mut self) -> Result<(), EngineError> {
        let Some(plan) = self.plan.clone() else {
            return Ok(());
        };
        while self.phase == Phase::Prefill && self.front < self.cached_end {
            let Some((chunk, shared)) = plan.take_landed(self.front) else {
                break;
            };
            self.cache.push_loaded(chunk)?;
            if shared {
                self.shared_tokens += self.chunk_tokens;
                let waited = self.sibling_wait.take().map(|t| t.elapsed());
                telemetry::sibling_chunk_taken(waited);
            } else {
                self.loaded_tokens += self.chunk_tokens;
            }
            self.front += 1;
        }
        Ok(())
    }

    /// Decides the next piece of work, taking loaded chunks at the front
    /// into the cache on the way (they cost no compute).
    ///
    /// `steal(issued, chunk)` says whether compute should take over chunk
    /// `chunk` whose load has been in flight since `issued` rather than
    /// wait for it. `room`: tokens left in this step's budget. Compute
    /// claims a chunk of the cached range only when it can run it in this
    /// step: a claim left waiting for a step with room would keep the I/O
    /// side off that chunk while the link sits idle.
    pub fn next(
        &mut self,
        steal: &dyn Fn(Instant, usize) -> bool,
        room: usize,
    ) -> Result<Next, EngineError> {
        match self.phase {
            Phase::Done => return Ok(Next::Finished),
            Phase::Decode => return Ok(Next::Decode),
            Phase::Prefill => {}
        }
        self.take_loaded()?;
        let c = self.chunk_tokens;
        if self.front < self.cached_end
            && let Some(plan) = &self.plan
        {
            let i = self.front;
            let load_only = self.strategy == Strategy::Load;
            return Ok(
                match plan.claim_front(i, c <= room, load_only, |issued| steal(issued, i))? {
                    Front::Compute => Next::Prefill {
                        start: i * c,
                        end: (i + 1) * c,
                    },
                    Front::Wait => Next::Blocked,
                    Front::WaitSibling => {
                        self.sibling_wait.get_or_insert_with(Instant::now);
                        Next::Blocked
                    }
                    Front::NoRoom => Next::NoRoom,
                },
            );
        }
        let start = self.cache.len();
        let end = ((start / c + 1) * c).min(self.prompt_len());
        Ok(Next::Prefill { start, end })
    }

    /// This request's part of a batched step: the tokens of `piece` and
    /// the logits it needs back.
    pub fn batch_item(&mut self, piece: Piece) -> Result<BatchItem<'_>, EngineError> {
        let (tokens, logits) = match piece {
            Piece::Decode => {
                let toks = self.decoding.tokens();
                if toks.is_empty() {
                    return Err(EngineError::Internal(
                        "decode before the first token".into(),
                    ));
                }
                (&toks[toks.len() - 1..], Logits::Last)
            }
            Piece::Prefill { start, end } => {
                let logits = if self.req.options.prompt_logprobs {
                    Logits::All
                } else if end == self.prompt_len() {
                    Logits::Last
                } else {
                    Logits::None
                };
                (&self.req.prompt[start..end], logits)
            }
        };
        Ok(BatchItem {
            cache: &mut self.cache,
            tokens,
            logits,
        })
    }

    /// Takes in a step's result for `piece`: the logits asked for by
    /// [`Seq::batch_item`]. Returns true when the prompt is done (the first
    /// token was produced).
    pub fn finish_piece(
        &mut self,
        piece: Piece,
        logits: Option<Tensor>,
    ) -> Result<bool, EngineError> {
        match piece {
            Piece::Decode => {
                self.logits = take_logits(logits)?;
                self.sample()?;
                Ok(false)
            }
            Piece::Prefill { start, end } => self.finish_prefill(start, end, logits),
        }
    }

    fn finish_prefill(
        &mut self,
        start: usize,
        end: usize,
        logits: Option<Tensor>,
    ) -> Result<bool, EngineError> {
        let last = end == self.prompt_len();
        if self.req.options.prompt_logprobs {
            let logits = take_logits(logits)?;
            let v = logits.len() / (end - start);
            if start == 0 {
                self.prompt_logprobs.push(None);
            }
            let top = self.req.options.logprobs.unwrap_or(0);
            for (r, row) in logits.chunks(v).enumerate() {
                let i = start + r + 1;
                if i < self.prompt_len() {
                    self.prompt_logprobs
                        .push(Some(logprob_of(row, self.req.prompt[i], top)));
                } else {
                    self.logits = row.to_vec();
                }
            }
        } else if last {
            self.logits = take_logits(logits)?;
        }
        self.computed_tokens += end - start;
        if start / self.chunk_tokens == self.front && self.front < self.cached_end {
            if let Some(plan) = &self.plan {
                plan.computed(self.front);
            }
            // A chunk compute took over from a sibling no longer counts as
            // waited for.
            self.sibling_wait = None;
            self.front += 1;
        }
        if last {
            self.phase = Phase::Decode;
            if self.req.options.prompt_logprobs {
                let logprobs = std::mem::take(&mut self.prompt_logprobs);
                self.send(WorkEvent::PromptLogprobs { logprobs });
            }
            if self.req.options.max_tokens == 0 {
                self.finish("length");
            } else {
                self.sample()?;
            }
        }
        Ok(last)
    }

    fn sample(&mut self) -> Result<(), EngineError> {
        let step = self.decoding.step(&self.logits)?;
        if self.ttft.is_none() {
            self.ttft = Some(self.arrival.elapsed().as_secs_f64());
        }
        self.send(WorkEvent::Token(TokenEvent {
            token: step.token,
            text: step.text_delta,
            logprob: step.logprob,
        }));
        if let Some(f) = step.finish {
            self.finish(f.as_str());
        }
        Ok(())
    }

    fn finish(&mut self, reason: &str) {
        self.phase = Phase::Done;
        let usage = self.usage();
        self.send(WorkEvent::Done {
            finish_reason: reason.to_string(),
            usage,
        });
    }

    /// The chunk a decode step just filled, if it filled one: its index,
    /// with its key (over the prompt and the tokens generated so far)
    /// appended to [`Seq::keys`]. Chunks of the answer are stored like the
    /// prompt's, so the next turn of a conversation reuses them.
    pub fn filled_chunk(&mut self) -> Option<usize> {
        let c = self.chunk_tokens;
        let len = self.cache.len();
        if c == 0 || len == 0 || !len.is_multiple_of(c) || len / c <= self.keys.len() {
            return None;
        }
        let j = len / c - 1;
        if j != self.keys.len() {
            return None;
        }
        let p = self.prompt_len();
        let generated = self.decoding.tokens();
        let mut tokens = Vec::with_capacity(c);
        for t in j * c..len {
            let token = if t < p {
                self.req.prompt.get(t)
            } else {
                generated.get(t - p)
            };
            tokens.push(*token?);
        }
        let key = next_chunk_key(&self.ns, self.keys.last(), &tokens);
        self.keys.push(key);
        Some(j)
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len(),
            completion_tokens: self.decoding.tokens().len(),
            // What this request did not compute: loaded, or handed over.
            cached_tokens: self.loaded_tokens + self.shared_tokens,
            loaded_tokens: self.loaded_tokens,
            computed_tokens: self.computed_tokens,
            shared_tokens: self.shared_tokens,
            ttft_ms: self.ttft.unwrap_or(0.0) * 1e3,
            total_ms: self.arrival.elapsed().as_secs_f64() * 1e3,
            strategy: self.strategy.as_str().to_string(),
            worker: self.worker.to_string(),
        }
    }

    /// Sends an event; a closed receiver means the client is gone.
    pub fn send(&self, e: WorkEvent) {
        let _ = self.events.send(e);
    }

    pub fn client_gone(&self) -> bool {
        self.events.is_closed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::init::{Dtype, preset, write_checkpoint};
    use crate::worker::loader::Slot;
    use crate::{Device, Model, Tokenizer};

    const C: usize = 16;

    /// A cake request over a tiny model whose first three chunks are
    /// stored, with its load plan.
    fn cached_seq(dir: &std::path::Path) -> (Seq, Arc<LoadPlan>) {
        write_checkpoint(&preset("tiny").unwrap(), 1, Dtype::F32, dir).unwrap();
        let model = Model::load(dir, Device::Cpu).unwrap();
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let req = WorkRequest {
            id: "t".into(),
            prompt: vec![1; 4 * C],
            options: Default::default(),
            cache_group: "g".into(),
            strategy: Some(Strategy::Cake),
            priority: 0,
        };
        let plan = LoadPlan::new(&[true; 3]);
        let seq = Seq {
            decoding: Decoding::new(&model, &tokenizer, generate_options(&req, C)),
            events: tokio::sync::mpsc::unbounded_channel().0,
            arrival: Instant::now(),
            class: RequestClass::Cached,
            strategy: Strategy::Cake,
            keys: Vec::new(),
            stored: vec![true; 3],
            ns: Namespace::new([0; 32], C as u32, crate::kv::Codec::F32, "g"),
            producer: ProducerId {
                serial: 1,
                running: Default::default(),
            },
            produces: Vec::new(),
            cached_end: 3,
            plan: Some(plan.clone()),
            chunk_tokens: C,
            cache: model.new_cache(),
            front: 0,
            phase: Phase::Prefill,
            logits: Vec::new(),
            loaded_tokens: 0,
            computed_tokens: 0,
            shared_tokens: 0,
            sibling_wait: None,
            ttft: None,
            prompt_logprobs: Vec::new(),
            worker: "w".into(),
            ctx: None,
            req,
        };
        (seq, plan)
    }

    /// Compute claims a chunk only in a step that can run it: a claim left
    /// waiting would keep the I/O side off the chunk with the link idle.
    #[test]
    fn compute_claims_only_what_fits_this_step() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut seq, plan) = cached_seq(tmp.path());
        let never = |_: Instant, _: usize| false;
        let always = |_: Instant, _: usize| true;

        assert_eq!(seq.next(&never, C - 1).unwrap(), Next::NoRoom);
        assert!(
            matches!(plan.slots_for_test()[0], Slot::Stored),
            "claimed without room"
        );
        let chunk0 = Next::Prefill { start: 0, end: C };
        assert_eq!(seq.next(&never, C).unwrap(), chunk0);
        assert!(matches!(plan.slots_for_test()[0], Slot::Computing));

        // A chunk being loaded is not taken over without room either.
        seq.front = 1;
        plan.slots_for_test()[1] = Slot::Loading(Instant::now());
        assert_eq!(seq.next(&always, C - 1).unwrap(), Next::Blocked);
        assert!(matches!(plan.slots_for_test()[1], Slot::Loading(_)));
        let chunk1 = Next::Prefill {
            start: C,
            end: 2 * C,
        };
        assert_eq!(seq.next(&always, C).unwrap(), chunk1);
        assert!(matches!(plan.slots_for_test()[1], Slot::Computing));
    }

    /// Landed chunks at the front are taken in before the step is ranked;
    /// a chunk still to load or compute stops it.
    #[test]
    fn landed_front_chunks_are_taken_in() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut seq, plan) = cached_seq(tmp.path());
        let layout = seq.cache.layout();
        let landed = || {
            Slot::Loaded(
                crate::cache::DeviceChunk::from_planes(layout, C, Device::Cpu, |_, _| {}).unwrap(),
            )
        };
        plan.slots_for_test()[0] = landed();
        plan.slots_for_test()[2] = landed();
        seq.take_loaded().unwrap();
        assert_eq!((seq.front, seq.loaded_tokens, seq.cache.len()), (1, C, C));
        assert!(matches!(plan.slots_for_test()[1], Slot::Stored));
        assert!(matches!(plan.slots_for_test()[2], Slot::Loaded(_)));
        plan.slots_for_test()[1] = landed();
        seq.take_loaded().unwrap();
        assert_eq!((seq.front, seq.loaded_tokens), (3, 3 * C));
    }
    /// Load reports count what the compute side may still do: not chunks
    /// already loaded, nor those a running sibling hands over (its own
    /// report counts them), but those of a sibling that is not running.
    #[test]
    fn remaining_compute_leaves_out_what_arrives_without_compute() {
        let tmp = tempfile::tempdir().unwrap();
        let (seq, plan) = cached_seq(tmp.path());
        let layout = seq.cache.layout();
        assert_eq!(seq.remaining_compute_tokens(), 4 * C);
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        plan.slots_for_test()[0] = Slot::Sibling(running.clone());
        plan.slots_for_test()[1] = Slot::Shared(
            crate::cache::DeviceChunk::from_planes(layout, C, Device::Cpu, |_, _| {}).unwrap(),
        );
        assert_eq!(seq.remaining_compute_tokens(), 2 * C);
        running.store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(seq.remaining_compute_tokens(), 3 * C);
    }
}
