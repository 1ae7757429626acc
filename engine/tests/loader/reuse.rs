//! Prefix reuse across requests on one worker: siblings computing a shared
//! prefix once, chunks visible the moment they are computed, and answers
//! stored for the next turn.

use super::*;
use cake_engine::kv::{ChunkKey, StoreError, StoreStats, Tier, TieredStore};
use futures::future::BoxFuture;

/// Requests over one new prefix sent together (an agent fanning out over a
/// document): `n` prompts share `shared` chunks and differ after them.
fn fan_out(vocab: usize, n: usize, shared: usize, seed: u64) -> Vec<Vec<u32>> {
    let prefix = prompt(shared * CHUNK, seed, vocab);
    (0..n)
        .map(|i| {
            let mut p = prefix.clone();
            p.extend(prompt(5 + 3 * i, seed + 100 + i as u64, vocab));
            p
        })
        .collect()
}

/// Each prompt's events run alone on a worker with no store: the reference.
async fn alone(f: &Fixture, prompts: &[Vec<u32>]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for p in prompts {
        let engine = storeless_engine(f, config(Strategy::Compute));
        out.push(collect(&engine, request(p, None)).await);
    }
    out
}

/// A burst over a new prefix computes it once: the first request computes
/// the shared chunks, the others take them as it goes (no store at all, so
/// nothing else could supply them), and every answer is bitwise what it is
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_a_new_prefix_computes_it_once() {
    let f = fixture();
    let prompts = fan_out(f.tokenizer.vocab_size(), 4, 6, 21);
    let reference = alone(&f, &prompts).await;
    let cfg = EngineConfig {
        // One chunk a step: the first request is still computing the
        // prefix when the others arrive.
        token_budget: CHUNK,
        ..config(Strategy::Cake)
    };
    let engine = storeless_engine(&f, cfg);
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(request(p, None)).unwrap())
        .collect();
    let mut computed = 0;
    let mut sharing = 0;
    for (i, rx) in rxs.into_iter().enumerate() {
        let (got, u) = drain_usage(rx).await;
        assert_eq!(got, reference[i], "request {i}");
        assert_eq!(
            u.computed_tokens + u.shared_tokens,
            prompts[i].len(),
            "{u:?}"
        );
        assert_eq!(u.cached_tokens, u.shared_tokens, "{u:?}");
        computed += u.computed_tokens;
        sharing += usize::from(u.shared_tokens > 0);
    }
    let suffixes: usize = prompts.iter().map(|p| p.len() - 6 * CHUNK).sum();
    assert_eq!(sharing, 3, "every request but the first takes the prefix");
    assert_eq!(
        computed,
        6 * CHUNK + suffixes,
        "the prefix is computed once"
    );
}

/// A request whose sibling is cancelled before it computed the shared
/// chunks computes them itself: the same answer, no error, no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sibling_hands_its_chunks_back() {
    let f = fixture();
    let prompts = fan_out(f.tokenizer.vocab_size(), 2, 24, 31);
    let reference = alone(&f, &prompts[1..]).await;
    let cfg = EngineConfig {
        token_budget: CHUNK,
        ..config(Strategy::Cake)
    };
    let engine = storeless_engine(&f, cfg);
    let first = engine.submit(request(&prompts[0], None)).unwrap();
    let second = engine.submit(request(&prompts[1], None)).unwrap();
    // Hang up on the first once the second is planned behind it.
    while engine.load_report().running < 2 || engine.step_history().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(first);
    let (got, u) = drain_usage(second).await;
    assert_eq!(got, reference[0]);
    assert_eq!(
        u.computed_tokens + u.shared_tokens,
        prompts[1].len(),
        "{u:?}"
    );
}

/// A tier whose writes never land (a disk or Redis far behind).
struct NeverLands(MemoryStore);

impl KvStore for NeverLands {
    fn name(&self) -> &'static str {
        "disk"
    }
    fn lookup<'a>(&'a self, keys: &'a [ChunkKey]) -> BoxFuture<'a, Vec<Option<Tier>>> {
        self.0.lookup(keys)
    }
    fn get(&self, key: ChunkKey) -> BoxFuture<'_, Option<EncodedChunk>> {
        self.0.get(key)
    }
    fn put(&self, _chunk: EncodedChunk) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(futures::future::pending())
    }
    fn delete(&self, key: ChunkKey) -> BoxFuture<'_, Result<(), StoreError>> {
        self.0.delete(key)
    }
    fn stats(&self) -> StoreStats {
        self.0.stats()
    }
}

/// A request sent the moment the one before it answered finds that one's
/// chunks although no tier has written them (their writes never land):
/// the write-behind answers lookups and reads meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_sent_at_once_is_cached_before_the_tier_has_it() {
    let f = fixture();
    let p = prompt(6 * CHUNK + 3, 41, f.tokenizer.vocab_size());
    let tier = Arc::new(NeverLands(MemoryStore::new(64 << 20)));
    let store: Arc<dyn KvStore> = Arc::new(TieredStore::new(vec![tier.clone()], 64 << 20));
    let engine = Engine::start(
        f.model.clone(),
        f.tokenizer.clone(),
        Some(store),
        config(Strategy::Cake),
    )
    .unwrap();
    let (first, u) = run(&engine, request(&p, None)).await;
    assert_eq!(u.cached_tokens, 0);
    // Load-only, so that every stored chunk is loaded (Cake may compute
    // the first ones while the others load).
    let (again, u) = run(&engine, request(&p, Some(Strategy::Load))).await;
    assert_eq!(again, first);
    assert_eq!(u.loaded_tokens, 6 * CHUNK, "{u:?}");
    assert_eq!(u.cached_tokens, 6 * CHUNK, "{u:?}");
    assert_eq!(tier.stats().entries, 0, "nothing reached the tier");
}

/// Chunks that fill while decoding are stored like the prompt's: the next
/// turn, whose prompt holds the answer, finds every full chunk of the
/// previous prompt and answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_turn_reuses_the_answer() {
    let f = fixture();
    let vocab = f.tokenizer.vocab_size();
    let p = prompt(2 * CHUNK + 5, 51, vocab);
    let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new(64 << 20));
    let engine = Engine::start(
        f.model.clone(),
        f.tokenizer.clone(),
        Some(mem.clone()),
        config(Strategy::Cake),
    )
    .unwrap();
    let mut turn = request(&p, None);
    turn.options.max_tokens = 2 * CHUNK;
    let (answer, _) = run(&engine, turn).await;
    // The KV of every token but the last one sampled: 4 full chunks.
    let mut next = p.clone();
    next.extend(answer.iter().map(|t| t.token));
    next.extend(prompt(10, 52, vocab));
    let (_, u) = run(&engine, request(&next, Some(Strategy::Load))).await;
    assert_eq!(u.cached_tokens, 4 * CHUNK, "{u:?}");
    assert_eq!(u.loaded_tokens, 4 * CHUNK, "{u:?}");
}

fn siblings_case(
    n: usize,
    stored_mask: u8,
    cancel: Option<usize>,
    strategy: Strategy,
    budget_chunks: usize,
) {
    block_on(async {
        let f = fixture();
        let prompts = fan_out(f.tokenizer.vocab_size(), n, 5, 61);
        let reference = alone(&f, &prompts).await;
        // Some chunks of the shared prefix stored already, the rest new.
        let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new(64 << 20));
        let holes: Vec<usize> = (0..5).filter(|i| stored_mask & (1 << i) == 0).collect();
        populate(&f, mem.clone(), &prompts[0][..5 * CHUNK + 1], &holes, &[]).await;
        let cfg = EngineConfig {
            token_budget: budget_chunks * CHUNK,
            write_back: false,
            ..config(strategy)
        };
        let engine = Engine::start(f.model.clone(), f.tokenizer.clone(), Some(mem), cfg).unwrap();
        let rxs: Vec<_> = prompts
            .iter()
            .map(|p| engine.submit(request(p, None)).unwrap())
            .collect();
        for (i, rx) in rxs.into_iter().enumerate() {
            if Some(i) == cancel {
                drop(rx);
                continue;
            }
            let (got, u) = drain_usage(rx).await;
            assert_eq!(got, reference[i], "request {i}, holes {holes:?}");
            assert_eq!(
                u.computed_tokens + u.loaded_tokens + u.shared_tokens,
                prompts[i].len(),
                "{u:?}"
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    /// Siblings beside stores: any stored chunks, any of the requests
    /// cancelled at once, any strategy and step size: every answer is
    /// bitwise what the request gives alone, and each prompt token was
    /// computed, loaded or taken from a sibling exactly once.
    #[test]
    fn siblings_match_compute_only(
        n in 2usize..4,
        stored_mask in 0u8..32,
        cancel in prop::option::of(0usize..3),
        strategy in prop::sample::select(vec![Strategy::Load, Strategy::Cake, Strategy::Compute]),
        budget_chunks in 1usize..3,
    ) {
        siblings_case(n, stored_mask, cancel, strategy, budget_chunks);
    }
}
