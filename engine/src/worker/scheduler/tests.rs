//! The scheduler's own decisions, over a one-layer tiny model: what each
//! step serves under the budget and in which order, what it reports
//! (`Shared`), and what a client that goes away leaves behind. Most tests
//! step a [`Scheduler`] by hand (deterministic: no thread, no timing); one
//! runs [`Scheduler::run`] on its thread as the engine does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::Sender;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;
use crate::Tokenizer;
use crate::init::{Dtype, Preset, preset, write_checkpoint};
use crate::kv::{Codec, Namespace, chunk_keys};
use crate::worker::seq::generate_options;
use crate::worker::siblings::ProducerId;
use crate::worker::types::{Strategy, WorkOptions, WorkRequest};
use crate::{Decoding, Device};

const C: usize = 16;

struct Fixture {
    _tmp: tempfile::TempDir,
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let p = Preset {
        num_layers: 1,
        ..preset("tiny").unwrap()
    };
    write_checkpoint(&p, 1, Dtype::F32, tmp.path()).unwrap();
    Fixture {
        model: Arc::new(Model::load(tmp.path(), Device::Cpu).unwrap()),
        tokenizer: Arc::new(Tokenizer::from_file(&tmp.path().join("tokenizer.json")).unwrap()),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap(),
        _tmp: tmp,
    }
}

fn config(token_budget: usize, order: BudgetOrder) -> EngineConfig {
    EngineConfig {
        chunk_tokens: C,
        token_budget,
        order,
        ..EngineConfig::default()
    }
}

/// A scheduler as [`crate::worker::Engine::start`] builds one (no store),
/// with the sending end of its channel.
fn scheduler(f: &Fixture, cfg: EngineConfig) -> (Scheduler, Sender<Msg>) {
    cfg.validate().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let sched = Scheduler {
        model: f.model.clone(),
        store: None,
        cfg,
        rx,
        shared: Arc::new(Shared::new()),
        siblings: Arc::default(),
        runtime: f.rt.handle().clone(),
        waiting: VecDeque::new(),
        active: Vec::new(),
        chunk_bytes: 0,
    };
    (sched, tx)
}

/// A fresh request (nothing stored) planned as the engine plans one on a
/// worker without a store: it registers as the producer of its full
/// chunks. Greedy, never stops before `max_tokens`.
fn fresh(
    f: &Fixture,
    siblings: &Siblings,
    serial: u64,
    prompt_len: usize,
    max_tokens: usize,
    priority: u8,
) -> (Seq, UnboundedReceiver<WorkEvent>) {
    let req = WorkRequest {
        id: format!("r{serial}"),
        prompt: (0..prompt_len)
            .map(|i| (i * 7 + serial as usize) as u32 % 500 + 1)
            .collect(),
        options: WorkOptions {
            max_tokens,
            temperature: 0.0,
            ignore_eos: true,
            ..WorkOptions::default()
        },
        cache_group: "g".into(),
        strategy: None,
        priority,
    };
    let ns = Namespace::new(f.model.fingerprint(), C as u32, Codec::F32, "g");
    let keys = chunk_keys(&ns, &req.prompt);
    let producer = ProducerId {
        serial,
        running: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    let mut reg = siblings.planning();
    for (i, key) in keys.iter().enumerate() {
        reg.produce(*key, i, &producer);
    }
    drop(reg);
    let (tx, rx) = unbounded_channel();
    let seq = Seq {
        decoding: Decoding::new(&f.model, &f.tokenizer, generate_options(&req, C)),
        events: tx,
        arrival: Instant::now(),
        class: RequestClass::Fresh,
        strategy: Strategy::Compute,
        stored: vec![false; keys.len()],
        produces: keys.clone(),
        keys,
        ns,
        producer,
        cached_end: 0,
        plan: None,
        chunk_tokens: C,
        cache: f.model.new_cache(),
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
    (seq, rx)
}

/// One scheduler iteration on the requests already admitted, in the order
/// [`Scheduler::run`] does it: reap, step, publish. Returns the tokens the
/// step computed.
fn tick(s: &mut Scheduler) -> usize {
    s.reap();
    let used = s.step();
    s.publish();
    used
}

/// Tokens (and whether a `Done`) that arrived since the last call.
fn drain(rx: &mut UnboundedReceiver<WorkEvent>) -> (usize, bool) {
    let (mut tokens, mut done) = (0, false);
    while let Ok(e) = rx.try_recv() {
        match e {
            WorkEvent::Token(_) => tokens += 1,
            WorkEvent::Done { .. } => done = true,
            WorkEvent::Error { message, .. } => panic!("request failed: {message}"),
            WorkEvent::PromptLogprobs { .. } => {}
        }
    }
    (tokens, done)
}

/// Steps of a budget of two chunks over `P1` (4 chunks of prompt), `P2`
/// (the same) and `D` (decoding), active in that arrival order: for each
/// step, (tokens used, tokens `D` got, prompt tokens `P1` and `P2` have
/// computed).
fn two_prefills_and_a_decode(order: BudgetOrder) -> Vec<(usize, usize, usize, usize)> {
    let f = fixture();
    let (mut s, _tx) = scheduler(&f, config(2 * C, order));
    let (d, mut d_rx) = fresh(&f, &s.siblings, 1, 3, 64, 0);
    s.active.push(d);
    assert_eq!(tick(&mut s), 3);
    assert_eq!(s.active[0].phase, Phase::Decode);
    assert_eq!(drain(&mut d_rx), (1, false));
    let (p1, _p1_rx) = fresh(&f, &s.siblings, 2, 4 * C, 8, 0);
    let (p2, _p2_rx) = fresh(&f, &s.siblings, 3, 4 * C, 8, 0);
    s.active.insert(0, p2);
    s.active.insert(0, p1);
    (0..5)
        .map(|_| {
            let used = tick(&mut s);
            let (d_tokens, _) = drain(&mut d_rx);
            (
                used,
                d_tokens,
                s.active[0].computed_tokens,
                s.active[1].computed_tokens,
            )
        })
        .collect()
}

/// `adaptive`: the decoding request gets its token every step, ahead of
/// prefills that arrived before it; the budget left takes one chunk of the
/// first prefill, and the second (which no longer fits) waits until the
/// first decodes.
#[test]
fn adaptive_serves_decode_tokens_before_prefill_chunks() {
    let steps = two_prefills_and_a_decode(BudgetOrder::Adaptive);
    assert_eq!(
        steps,
        vec![
            (C + 1, 1, C, 0),
            (C + 1, 1, 2 * C, 0),
            (C + 1, 1, 3 * C, 0),
            (C + 1, 1, 4 * C, 0),
            // P1 decodes now: two decode tokens and P2's first chunk.
            (C + 2, 1, 4 * C, C),
        ]
    );
}

/// `fcfs`: arrival order whatever the work; the two prefills that came
/// first take the whole budget and the decoding request waits for them.
#[test]
fn fcfs_serves_requests_in_arrival_order() {
    let steps = two_prefills_and_a_decode(BudgetOrder::Fcfs);
    assert_eq!(
        steps,
        vec![
            (2 * C, 0, C, C),
            (2 * C, 0, 2 * C, 2 * C),
            (2 * C, 0, 3 * C, 3 * C),
            (2 * C, 0, 4 * C, 4 * C),
            (3, 1, 4 * C, 4 * C),
        ]
    );
}

/// With `priority_alone`, a step that prefills a higher-priority request
/// leaves a lower priority's prefill for later even with room, while
/// lower-priority decode tokens still run; without it, both prefill.
#[test]
fn priority_alone_keeps_lower_priority_prefills_out_of_the_step() {
    let f = fixture();
    for alone in [true, false] {
        let cfg = EngineConfig {
            priority_alone: alone,
            ..config(4 * C, BudgetOrder::Adaptive)
        };
        let (mut s, _tx) = scheduler(&f, cfg);
        let (d, mut d_rx) = fresh(&f, &s.siblings, 1, 3, 64, 0);
        s.active.push(d);
        assert_eq!(tick(&mut s), 3);
        drain(&mut d_rx);
        let (low, _low_rx) = fresh(&f, &s.siblings, 2, 2 * C, 8, 0);
        let (high, _high_rx) = fresh(&f, &s.siblings, 3, 2 * C, 8, 1);
        s.active.push(low);
        s.active.push(high);
        let used = tick(&mut s);
        let computed = (s.active[1].computed_tokens, s.active[2].computed_tokens);
        assert_eq!(drain(&mut d_rx).0, 1, "priority_alone = {alone}");
        if alone {
            assert_eq!((used, computed), (C + 1, (0, C)));
        } else {
            assert_eq!((used, computed), (2 * C + 1, (C, C)));
        }
    }
}

/// However requests mix (short and long prompts, ragged last pieces, many
/// decoders), no step computes more than `token_budget`, every step with
/// work left computes something, and the steps add up to exactly the work
/// asked: every prompt token once and every answer token after the first.
#[test]
fn steps_stay_within_the_token_budget() {
    let f = fixture();
    let budget = C + 3;
    let prompts = [1, C - 1, C, C + 1, 3 * C + 5, 2 * C, 5];
    for order in [BudgetOrder::Adaptive, BudgetOrder::Fcfs] {
        let (mut s, _tx) = scheduler(&f, config(budget, order));
        let mut rxs = Vec::new();
        let mut want = 0;
        for (i, &len) in prompts.iter().enumerate() {
            let max_tokens = 2 + i % 3;
            let (seq, rx) = fresh(&f, &s.siblings, i as u64 + 1, len, max_tokens, 0);
            want += len + max_tokens - 1;
            s.active.push(seq);
            rxs.push((rx, 0, false, max_tokens));
        }
        let mut steps = Vec::new();
        while !s.active.is_empty() {
            assert!(steps.len() < 1000, "{order:?}: no end after 1000 steps");
            let used = tick(&mut s);
            if !s.active.is_empty() {
                assert!(used > 0, "{order:?}: an idle step with work left");
            }
            steps.push(used);
            for (rx, tokens, done, _) in &mut rxs {
                let (t, d) = drain(rx);
                *tokens += t;
                *done |= d;
            }
        }
        assert!(
            steps.iter().all(|&u| u <= budget),
            "{order:?}: a step over the budget of {budget}: {steps:?}"
        );
        assert_eq!(steps.iter().sum::<usize>(), want, "{order:?}: {steps:?}");
        for (i, (_, tokens, done, max_tokens)) in rxs.iter().enumerate() {
            assert_eq!(
                (*tokens, *done),
                (*max_tokens, true),
                "{order:?}: request {i}"
            );
        }
        assert_eq!(s.shared.queued_compute_tokens.load(Ordering::Relaxed), 0);
    }
}

/// `queued_compute_tokens` is the prompt tokens left to compute (waiting
/// requests included) plus one per decoding request, after every step;
/// 0 once all is done.
#[test]
fn queued_compute_tokens_follow_the_work_left() {
    let f = fixture();
    let (mut s, _tx) = scheduler(&f, config(4 * C, BudgetOrder::Adaptive));
    let queued = |s: &Scheduler| s.shared.queued_compute_tokens.load(Ordering::Relaxed) as usize;
    let (a, _a_rx) = fresh(&f, &s.siblings, 1, 2 * C + 5, 3, 0);
    let (w, _w_rx) = fresh(&f, &s.siblings, 2, 7, 1, 0);
    s.active.push(a);
    s.waiting.push_back(w);
    s.publish();
    assert_eq!(queued(&s), 2 * C + 5 + 7);
    let mut trace = Vec::new();
    for _ in 0..5 {
        tick(&mut s);
        trace.push(queued(&s));
    }
    // One chunk a step, then the ragged last piece (its first token), then
    // two decode tokens; the waiting request never ran.
    assert_eq!(trace, vec![C + 5 + 7, 5 + 7, 1 + 7, 1 + 7, 7]);
    s.waiting.clear();
    tick(&mut s);
    assert_eq!(queued(&s), 0);
}

/// A request whose client has gone (receiver dropped), running or still
/// waiting for a slot, is reaped on the next iteration: `running` goes
/// down, its slot is free, the chunks it was to produce are released (no
/// sibling waits on them), and it is no longer counted as queued work.
#[test]
fn a_cancelled_request_is_reaped_and_frees_its_slot() {
    let f = fixture();
    let cfg = EngineConfig {
        max_running: 1,
        ..config(2 * C, BudgetOrder::Adaptive)
    };
    let (mut s, _tx) = scheduler(&f, cfg);
    let (a, a_rx) = fresh(&f, &s.siblings, 1, 3 * C, 1000, 0);
    let (w, w_rx) = fresh(&f, &s.siblings, 2, 2 * C, 1000, 0);
    let (a_keys, w_keys) = (a.keys.clone(), w.keys.clone());
    s.active.push(a);
    s.waiting.push_back(w);
    s.shared.running.store(2, Ordering::Relaxed);
    assert_eq!(tick(&mut s), C);
    assert_eq!(s.siblings.in_flight(&a_keys), vec![true; 3]);
    assert_eq!(s.siblings.in_flight(&w_keys), vec![true; 2]);

    drop(a_rx);
    assert_eq!(tick(&mut s), 0, "a cancelled request computes nothing more");
    assert!(s.active.is_empty());
    assert_eq!(s.shared.running.load(Ordering::Relaxed), 1);
    assert_eq!(s.siblings.in_flight(&a_keys), vec![false; 3]);
    assert_eq!(
        s.shared.queued_compute_tokens.load(Ordering::Relaxed),
        2 * C as u64
    );

    drop(w_rx);
    tick(&mut s);
    assert!(s.waiting.is_empty());
    assert_eq!(s.shared.running.load(Ordering::Relaxed), 0);
    assert_eq!(s.siblings.in_flight(&w_keys), vec![false; 2]);
    assert_eq!(s.shared.queued_compute_tokens.load(Ordering::Relaxed), 0);
}

/// The scheduler thread as the engine runs it: requests arrive as
/// `Msg::New`; with one running slot, the second runs once the first's
/// client goes; `running` and `queued_compute_tokens` end at 0, no
/// recorded step is over the budget, and the thread ends when the channel
/// closes with nothing left.
#[test]
fn run_frees_a_gone_clients_slot_for_the_next_request() {
    let f = fixture();
    let budget = 2 * C;
    let cfg = EngineConfig {
        max_running: 1,
        ..config(budget, BudgetOrder::Adaptive)
    };
    let (s, tx) = scheduler(&f, cfg);
    let shared = s.shared.clone();
    let (a, mut a_rx) = fresh(&f, &s.siblings, 1, 3 * C, 2000, 0);
    let (b, mut b_rx) = fresh(&f, &s.siblings, 2, C + 3, 4, 0);
    // What `Engine::submit` counts before planning.
    shared.running.store(2, Ordering::Relaxed);
    let thread = std::thread::spawn(move || s.run());
    tx.send(Msg::New(Box::new(a))).unwrap();
    tx.send(Msg::New(Box::new(b))).unwrap();
    let hang = Duration::from_secs(30);
    f.rt.block_on(async {
        let first = tokio::time::timeout(hang, a_rx.recv()).await.expect("hang");
        assert!(matches!(first, Some(WorkEvent::Token(_))), "{first:?}");
        drop(a_rx);
        let mut tokens = 0;
        loop {
            match tokio::time::timeout(hang, b_rx.recv()).await.expect("hang") {
                Some(WorkEvent::Token(_)) => tokens += 1,
                Some(WorkEvent::Done { .. }) => break,
                e => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(tokens, 4);
    });
    drop(tx);
    let deadline = Instant::now() + hang;
    while !thread.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the scheduler thread did not end"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    thread.join().unwrap();
    assert_eq!(shared.running.load(Ordering::Relaxed), 0);
    assert_eq!(shared.queued_compute_tokens.load(Ordering::Relaxed), 0);
    let steps = shared.steps.lock();
    assert!(!steps.is_empty());
    assert!(steps.iter().all(|&u| u as usize <= budget), "{steps:?}");
}
