//! The worker end to end: every strategy gives bitwise-identical results
//! for any pattern of stored chunks, holes and failed loads; cancellation
//! and overload behave. Prefix reuse across requests (siblings, chunks
//! visible at once, answers) is in `reuse.rs`.
use std::sync::Arc;
use std::time::Duration;

use cake_engine::init::{Dtype, preset, write_checkpoint};
use cake_engine::kv::{
    ChunkContext, EncodedChunk, KvStore, Link, MemoryStore, ThrottledStore, chunk_keys,
};
use cake_engine::worker::{
    Engine, EngineConfig, RequestClass, Strategy, TokenEvent, Usage, WorkEvent, WorkOptions,
    WorkRequest,
};
use cake_engine::{Device, Model, Rng, Tokenizer};
use proptest::prelude::*;

mod reuse;

const CHUNK: usize = 16;

struct Fixture {
    _tmp: tempfile::TempDir,
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_checkpoint(&preset("tiny").unwrap(), 1, Dtype::F32, &dir).unwrap();
    Fixture {
        model: Arc::new(Model::load(&dir, Device::Cpu).unwrap()),
        tokenizer: Arc::new(Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap()),
        _tmp: tmp,
    }
}

fn config(strategy: Strategy) -> EngineConfig {
    EngineConfig {
        chunk_tokens: CHUNK,
        token_budget: 4 * CHUNK,
        strategy,
        ..Default::default()
    }
}

fn prompt(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(vocab as u64) as u32).collect()
}

fn request(prompt: &[u32], strategy: Option<Strategy>) -> WorkRequest {
    WorkRequest {
        id: "t".into(),
        prompt: prompt.to_vec(),
        options: WorkOptions {
            max_tokens: 4,
            temperature: 0.0,
            ignore_eos: true,
            logprobs: Some(5),
            ..Default::default()
        },
        cache_group: "g".into(),
        strategy,
        priority: 0,
    }
}

/// The next event of a request, within 30 s.
async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<WorkEvent>) -> WorkEvent {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no event within 30 s")
        .expect("stream ended without Done")
}

async fn run(engine: &Engine, req: WorkRequest) -> (Vec<TokenEvent>, Usage) {
    let mut rx = engine.submit(req).unwrap();
    let mut toks = Vec::new();
    loop {
        match next_event(&mut rx).await {
            WorkEvent::Token(t) => toks.push(t),
            WorkEvent::Done { usage, .. } => return (toks, usage),
            WorkEvent::Error { message, .. } => panic!("request failed: {message}"),
            WorkEvent::PromptLogprobs { .. } => {}
        }
    }
}

/// Stores every full chunk of `prompt` (computed by a compute-only run
/// with write-back), then removes `holes` and replaces `corrupt` chunks by
/// ones that fail the reader's checks.
async fn populate(
    f: &Fixture,
    store: Arc<dyn KvStore>,
    prompt: &[u32],
    holes: &[usize],
    corrupt: &[usize],
) {
    let engine = Engine::start(
        f.model.clone(),
        f.tokenizer.clone(),
        Some(store.clone()),
        config(Strategy::Compute),
    )
    .unwrap();
    run(&engine, request(prompt, None)).await;
    // Write-back happens behind the request: wait for it to land.
    let ns = engine.namespace("g");
    let keys = chunk_keys(&ns, prompt);
    for _ in 0..200 {
        if store.lookup(&keys).await.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.lookup(&keys).await.iter().all(Option::is_some));
    let ctx = ChunkContext::new(&ns, f.model.layout());
    for &h in holes {
        store.delete(keys[h]).await.unwrap();
    }
    for &c in corrupt {
        let good = store
            .get(keys[c])
            .await
            .unwrap()
            .decode(&ctx, c as u32)
            .unwrap();
        // Right key, wrong chunk index inside: the reader rejects it.
        let bad = EncodedChunk::encode(keys[c], &ctx, c as u32 + 1000, &good).unwrap();
        store.delete(keys[c]).await.unwrap();
        store.put(bad).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_agree_bitwise_and_use_the_store() {
    let f = fixture();
    let p = prompt(6 * CHUNK + 5, 3, f.tokenizer.vocab_size());
    let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new(64 << 20));
    populate(&f, mem.clone(), &p, &[], &[]).await;
    let engine = Engine::start(
        f.model.clone(),
        f.tokenizer.clone(),
        Some(mem.clone()),
        config(Strategy::Cake),
    )
    .unwrap();
    let c = engine.classify(&p, "g").await;
    assert_eq!(c.class, Some(RequestClass::Cached));
    assert_eq!(c.cached_tokens, 6 * CHUNK);
    assert_eq!(
        engine.classify(&p, "other-group").await.class,
        Some(RequestClass::Fresh)
    );
    let (reference, u) = run(&engine, request(&p, Some(Strategy::Compute))).await;
    assert_eq!(u.computed_tokens, p.len());
    // Cached tokens are those the request did not compute.
    assert_eq!(u.cached_tokens, 0);
    for s in [Strategy::Load, Strategy::Cake, Strategy::Auto] {
        let (toks, u) = run(&engine, request(&p, Some(s))).await;
        assert_eq!(toks, reference, "{s:?} differs from compute-only");
        assert_eq!(u.loaded_tokens + u.computed_tokens, p.len(), "{s:?}: {u:?}");
        assert_eq!(u.cached_tokens, u.loaded_tokens, "{s:?}: {u:?}");
        assert_eq!(u.prompt_tokens, p.len());
        assert_eq!(u.completion_tokens, 4);
        if s == Strategy::Load {
            assert_eq!(u.loaded_tokens, 6 * CHUNK, "{u:?}");
        }
    }
}

/// Runs `f` on a runtime of its own (a property-test case is synchronous).
fn block_on(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

fn equivalence_case(
    stored_mask: u8,
    corrupt_mask: u8,
    strategy: Strategy,
    bw: u64,
    latency_us: u64,
) {
    block_on(async {
        let f = fixture();
        let p = prompt(6 * CHUNK + 3, 11, f.tokenizer.vocab_size());
        let holes: Vec<usize> = (0..6).filter(|i| stored_mask & (1 << i) == 0).collect();
        let corrupt: Vec<usize> = (0..6)
            .filter(|i| stored_mask & (1 << i) != 0 && corrupt_mask & (1 << i) != 0)
            .collect();
        let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new(64 << 20));
        populate(&f, mem.clone(), &p, &holes, &corrupt).await;
        let link = Arc::new(Link::new(bw, Duration::from_micros(latency_us)));
        let store: Arc<dyn KvStore> = Arc::new(ThrottledStore::new(mem, link, false));
        // No write-back: the reference run must not fill the holes.
        let cfg = EngineConfig {
            write_back: false,
            ..config(Strategy::Cake)
        };
        let engine = Engine::start(f.model.clone(), f.tokenizer.clone(), Some(store), cfg).unwrap();
        let (reference, _) = run(&engine, request(&p, Some(Strategy::Compute))).await;
        let (toks, u) = run(&engine, request(&p, Some(strategy))).await;
        assert_eq!(
            toks, reference,
            "{strategy:?}, holes {holes:?}, corrupt {corrupt:?}"
        );
        assert_eq!(u.loaded_tokens + u.computed_tokens, p.len(), "{u:?}");
        let loadable = 6 - holes.len() - corrupt.len();
        assert!(
            u.loaded_tokens <= loadable * CHUNK,
            "{u:?} with {loadable} loadable"
        );
        if strategy == Strategy::Load {
            assert_eq!(u.loaded_tokens, loadable * CHUNK, "{u:?}");
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// Any holes, any failed loads, any meeting point (the link's speed
    /// moves it): the tokens and their log-probabilities are bitwise those
    /// of compute-only.
    #[test]
    fn every_strategy_matches_compute_only(
        stored_mask in 0u8..64,
        corrupt_mask in 0u8..64,
        strategy in prop::sample::select(vec![Strategy::Load, Strategy::Cake, Strategy::Auto]),
        bw in prop::sample::select(vec![0u64, 2_000_000, 20_000_000, 200_000_000]),
        latency_us in 0u64..3000,
    ) {
        equivalence_case(stored_mask, corrupt_mask, strategy, bw, latency_us);
    }
}

/// A worker with no KV store (every request computes its prompt).
fn storeless_engine(f: &Fixture, cfg: EngineConfig) -> Engine {
    Engine::start(f.model.clone(), f.tokenizer.clone(), None, cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_cancels_and_others_still_run() {
    let f = fixture();
    let engine = storeless_engine(&f, config(Strategy::Cake));
    let p = prompt(40, 5, f.tokenizer.vocab_size());
    let mut long = request(&p, None);
    long.options.max_tokens = 2000;
    let mut rx = engine.submit(long).unwrap();
    // Take one token, then hang up.
    loop {
        if let Some(WorkEvent::Token(_)) = rx.recv().await {
            break;
        }
    }
    drop(rx);
    let (toks, _) = run(&engine, request(&p, None)).await;
    assert_eq!(toks.len(), 4);
    // The cancelled request no longer counts as running.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.load_report().running, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_and_bad_requests_are_refused_at_submit() {
    let f = fixture();
    let cfg = EngineConfig {
        max_running: 1,
        max_waiting: 0,
        ..config(Strategy::Cake)
    };
    let engine = storeless_engine(&f, cfg);
    let p = prompt(20, 5, f.tokenizer.vocab_size());
    let mut long = request(&p, None);
    long.options.max_tokens = 500;
    let _rx = engine.submit(long).unwrap();
    let err = engine.submit(request(&p, None)).unwrap_err();
    assert!(err.to_string().contains("overloaded"), "{err}");

    let engine = storeless_engine(&f, config(Strategy::Cake));
    let mut bad = request(&p, None);
    bad.options.temperature = -1.0;
    assert!(
        engine
            .submit(bad)
            .unwrap_err()
            .to_string()
            .contains("temperature")
    );
    let too_long = request(&vec![1; f.model.max_context() + 1], None);
    assert!(engine.submit(too_long).is_err());
    let oov = request(&[u32::MAX], None);
    assert!(
        engine
            .submit(oov)
            .unwrap_err()
            .to_string()
            .contains("vocabulary")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_higher_priority_request_runs_first() {
    let f = fixture();
    let cfg = EngineConfig {
        max_running: 1,
        ..config(Strategy::Compute)
    };
    let engine = Arc::new(Engine::start(f.model.clone(), f.tokenizer.clone(), None, cfg).unwrap());
    let vocab = f.model.config().vocab_size;
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // The first holds the only running slot; then a low- and a
    // high-priority request wait, in that order.
    for (label, max_tokens, priority) in [("first", 48, 0u8), ("low", 1, 0), ("high", 1, 3)] {
        let mut req = request(&prompt(20, 7, vocab), None);
        req.options.max_tokens = max_tokens;
        req.options.logprobs = None;
        req.priority = priority;
        let (engine, order) = (engine.clone(), order.clone());
        let mut rx = engine.submit(req).unwrap();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if matches!(ev, WorkEvent::Done { .. }) {
                    order.lock().push(label);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().clone();
    let pos = |l| order.iter().position(|&x| x == l).unwrap();
    assert!(pos("high") < pos("low"), "{order:?}");
}

/// Requests that share steps (each step runs all of them as one batched
/// forward) produce exactly what each produces alone: tokens, logprobs and
/// prompt logprobs, bitwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_steps_match_each_alone_bitwise() {
    let f = fixture();
    let vocab = f.tokenizer.vocab_size();
    let reqs: Vec<WorkRequest> = [5usize, 16, 37, 70, 1, 23]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut r = request(&prompt(n, 40 + i as u64, vocab), None);
            r.id = format!("r{i}");
            r.options.prompt_logprobs = i % 2 == 0;
            r.options.max_tokens = 3 + i;
            r
        })
        .collect();
    let mut alone = Vec::new();
    for r in &reqs {
        let engine = storeless_engine(&f, config(Strategy::Compute));
        alone.push(collect(&engine, r.clone()).await);
    }
    let engine = storeless_engine(&f, config(Strategy::Compute));
    let rxs: Vec<_> = reqs
        .iter()
        .map(|r| engine.submit(r.clone()).unwrap())
        .collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let got = drain(rx).await;
        assert_eq!(got, alone[i], "request {i}");
    }
}

/// Every event's content as text (tokens, logprobs, prompt logprobs), the
/// usage's timing left out.
async fn collect(engine: &Engine, req: WorkRequest) -> Vec<String> {
    drain(engine.submit(req).unwrap()).await
}

async fn drain(rx: tokio::sync::mpsc::UnboundedReceiver<WorkEvent>) -> Vec<String> {
    drain_usage(rx).await.0
}

/// The events of a request and its usage.
async fn drain_usage(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<WorkEvent>,
) -> (Vec<String>, Usage) {
    let mut out = Vec::new();
    loop {
        match next_event(&mut rx).await {
            WorkEvent::Token(t) => out.push(format!("{t:?}")),
            WorkEvent::PromptLogprobs { logprobs } => out.push(format!("{logprobs:?}")),
            WorkEvent::Done { usage, .. } => {
                out.push(format!(
                    "{} {}",
                    usage.prompt_tokens, usage.completion_tokens
                ));
                return (out, usage);
            }
            WorkEvent::Error { message, .. } => panic!("request failed: {message}"),
        }
    }
}

/// With `priority_alone`, the step that prefills a higher-priority request
/// holds no lower-priority prefill: two low-priority prompts of 60 chunks
/// are running when a 5-token high-priority prompt arrives, and some step
/// computes exactly those 5 tokens. Without it, no step does (the prompt
/// shares its step with the others' chunks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_prefill_gets_a_step_of_its_own() {
    let f = fixture();
    let vocab = f.model.config().vocab_size;
    for alone in [true, false] {
        let cfg = EngineConfig {
            priority_alone: alone,
            ..config(Strategy::Compute)
        };
        let engine = storeless_engine(&f, cfg);
        let mut rxs = Vec::new();
        for (n, priority, seed) in [(60 * CHUNK, 0u8, 1u64), (60 * CHUNK, 0, 2), (5, 2, 3)] {
            if priority > 0 {
                // Once the others are running (a prompt shorter than a
                // chunk skips the presence lookup, so it could otherwise
                // arrive first and run alone either way).
                while engine.step_history().is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let mut req = request(&prompt(n, seed, vocab), None);
            req.options.max_tokens = 1;
            req.priority = priority;
            rxs.push(engine.submit(req).unwrap());
        }
        for rx in rxs {
            drain(rx).await;
        }
        let steps = engine.step_history();
        let own = steps.iter().filter(|&&s| s == 5).count();
        if alone {
            assert_eq!(own, 1, "steps {steps:?}");
        } else {
            assert_eq!(own, 0, "steps {steps:?}");
        }
    }
}

/// Loads the compute side takes over stop using the link: on a link so
/// slow that no load lands, Cake computes every chunk, and the link is free
/// again as soon as compute has taken the chunks over, while the request is
/// still decoding, rather than busy with the loads no longer needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_compute_takes_over_free_the_link() {
    let f = fixture();
    let p = prompt(6 * CHUNK + 3, 13, f.tokenizer.vocab_size());
    let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new(64 << 20));
    populate(&f, mem.clone(), &p, &[], &[]).await;
    let cfg = EngineConfig {
        write_back: false,
        ..config(Strategy::Cake)
    };
    let probe = Engine::start(f.model.clone(), f.tokenizer.clone(), None, cfg.clone()).unwrap();
    // 30 s per chunk.
    let link = Arc::new(Link::new(probe.chunk_bytes() / 30, Duration::ZERO));
    let store: Arc<dyn KvStore> = Arc::new(ThrottledStore::new(mem, link.clone(), false));
    let engine = Engine::start(f.model.clone(), f.tokenizer.clone(), Some(store), cfg).unwrap();
    let mut long = request(&p, None);
    long.options.max_tokens = 3000;
    let mut rx = engine.submit(long).unwrap();
    while !matches!(next_event(&mut rx).await, WorkEvent::Token(_)) {}
    let busy_for = || {
        let busy = link.busy_until().expect("the I/O side issued loads");
        busy.saturating_duration_since(tokio::time::Instant::now())
    };
    for _ in 0..300 {
        if busy_for() < Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        busy_for() < Duration::from_secs(5),
        "link busy for {:?} more",
        busy_for()
    );
    assert_eq!(engine.load_report().queued_io_bytes, 0);
    drop(rx);
}
