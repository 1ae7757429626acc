//! The engine on every device this build and machine have: the CPU
//! always, `cuda:0` when the `cuda` feature is on and a GPU answers
//! (skipped with the reason printed otherwise; `CAKE_REQUIRE_GPU=1` makes
//! that a failure). The checkpoint is bf16, so the GPU's bf16 weights are
//! the checkpoint's own values; what differs from the CPU is the bf16
//! rounding of activations before each GEMM and the order of sums.
//!
//! Tolerances (relative to the largest |logit| of the CPU result):
//! - GPU against CPU: 5e-2 (activations rounded to bf16 in every GEMM);
//! - chunked prefill against one shot on the same device: 1e-5 on the
//!   CPU (bitwise in fact), 1e-3 on a GPU (cuBLAS picks per-shape kernels);
//! - Cake or load-only from a store against compute-only on the same
//!   device: 1e-4 with the f32 codec (loaded KV is the computed KV),
//!   and the bf16 codec — decoded on the host on the CPU, widened on the
//!   GPU — against the same strategy on the CPU.
use std::sync::Arc;
use std::time::Duration;

use cake_engine::init::{Dtype, preset, write_checkpoint};
use cake_engine::kv::{Codec, KvStore, MemoryStore, chunk_keys};
use cake_engine::worker::{Engine, EngineConfig, Strategy, WorkEvent, WorkOptions, WorkRequest};
use cake_engine::{Device, Model, Rng, Tokenizer};

const CHUNK: usize = 16;

fn devices() -> Vec<Device> {
    cake_kernels::test_devices()
}

fn checkpoint() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_checkpoint(&preset("tiny").unwrap(), 3, Dtype::Bf16, &dir).unwrap();
    (tmp, dir)
}

fn prompt(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(vocab as u64) as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn scale(v: &[f32]) -> f32 {
    v.iter().map(|x| x.abs()).fold(0.0, f32::max).max(1e-6)
}

#[test]
fn model_on_each_device_matches_cpu() {
    let (_tmp, dir) = checkpoint();
    let cpu = Model::load(&dir, Device::Cpu).unwrap();
    let toks = prompt(70, 5, cpu.config().vocab_size);
    let want = {
        let mut c = cpu.new_cache();
        cpu.forward(&mut c, &toks).unwrap().into_vec().unwrap()
    };
    let s = scale(&want);
    let v = cpu.config().vocab_size;
    for d in devices() {
        let m = Model::load(&dir, d).unwrap();
        let mut one = m.new_cache();
        let got = m.forward(&mut one, &toks).unwrap().into_vec().unwrap();
        let rel = max_diff(&got, &want) / s;
        eprintln!("{d}: one-shot logits vs CPU: max diff {rel:.2e} of the logit scale");
        assert!(rel <= 5e-2, "{d}: logits differ from the CPU by {rel:e}");

        let mut chunked = m.new_cache();
        let out = m.prefill(&mut chunked, &toks, CHUNK).unwrap();
        let last = &got[(toks.len() - 1) * v..];
        let rel = max_diff(&out.last_logits, last) / s;
        let tol = if d.is_cpu() { 1e-5 } else { 1e-3 };
        eprintln!("{d}: chunked prefill vs one shot: max diff {rel:.2e}");
        assert!(rel <= tol, "{d}: chunked prefill differs by {rel:e}");
        assert_eq!(chunked.len(), toks.len());
        assert_eq!(chunked.chunk_lens(), vec![16, 16, 16, 16, 6]);

        // KV read back from the device and pushed again gives the same
        // next-token logits (the path of chunks loaded from storage).
        let mut again = m.new_cache();
        for i in 0..4 {
            again
                .push_chunk(chunked.chunk(i).unwrap().unwrap())
                .unwrap();
        }
        let a = m.forward_last(&mut again, &toks[64..]).unwrap();
        let rel = max_diff(&a, &out.last_logits) / s;
        eprintln!("{d}: pushed-back KV vs computed: max diff {rel:.2e}");
        assert!(rel <= tol, "{d}: reloaded KV differs by {rel:e}");
    }
}

/// One batched step of four sequences — a decode, a prefill wanting
/// every row's logits, a mid-prompt chunk wanting none, a prompt's last
/// piece — gives each sequence what running it alone gives: the same
/// logits and the same KV (bitwise on the CPU, where GEMM rows do not
/// depend on the row count; 1e-3 on a GPU), and one bad sequence is
/// refused before anything runs.
#[test]
fn batched_step_matches_each_sequence_alone() {
    use cake_engine::{BatchItem, Logits};
    let (_tmp, dir) = checkpoint();
    for d in devices() {
        let m = Model::load(&dir, d).unwrap();
        let v = m.config().vocab_size;
        let histories = [40usize, 23, 0, 16];
        let steps: [(usize, Logits); 4] = [
            (1, Logits::Last),
            (9, Logits::All),
            (16, Logits::None),
            (5, Logits::Last),
        ];
        let prompts: Vec<Vec<u32>> = (0..4)
            .map(|i| prompt(histories[i] + steps[i].0, 20 + i as u64, v))
            .collect();
        let fresh_caches = || -> Vec<_> {
            (0..4)
                .map(|i| {
                    let mut c = m.new_cache();
                    if histories[i] > 0 {
                        m.prefill(&mut c, &prompts[i][..histories[i]], CHUNK)
                            .unwrap();
                    }
                    c
                })
                .collect()
        };
        // Alone.
        let mut alone = fresh_caches();
        let mut want = Vec::new();
        for (i, cache) in alone.iter_mut().enumerate() {
            let toks = &prompts[i][histories[i]..];
            want.push(match steps[i].1 {
                Logits::None => {
                    m.forward_no_logits(cache, toks).unwrap();
                    None
                }
                Logits::Last => Some(m.forward_last(cache, toks).unwrap()),
                Logits::All => Some(m.forward(cache, toks).unwrap().into_vec().unwrap()),
            });
        }
        // Batched.
        let mut batched = fresh_caches();
        let mut items: Vec<BatchItem<'_>> = batched
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| BatchItem {
                cache,
                tokens: &prompts[i][histories[i]..],
                logits: steps[i].1,
            })
            .collect();
        let got = m.forward_batch(&mut items).unwrap();
        drop(items);
        let tol = if d.is_cpu() { 0.0 } else { 1e-3 };
        for i in 0..4 {
            let got = got[i].as_ref().map(|t| t.to_vec().unwrap());
            assert_eq!(got.is_some(), want[i].is_some(), "{d}: sequence {i}");
            if let (Some(g), Some(w)) = (&got, &want[i]) {
                assert_eq!(g.len(), w.len(), "{d}: sequence {i} logits shape");
                let rel = max_diff(g, w) / scale(w);
                eprintln!("{d}: batched vs alone, sequence {i}: logits {rel:.2e}");
                assert!(rel <= tol, "{d}: sequence {i} logits differ by {rel:e}");
            }
            assert_eq!(batched[i].chunk_lens(), alone[i].chunk_lens());
            for c in 0..alone[i].num_chunks() {
                let (a, b) = (
                    alone[i].chunk(c).unwrap().unwrap(),
                    batched[i].chunk(c).unwrap().unwrap(),
                );
                for l in 0..m.config().num_layers {
                    let rel = max_diff(a.k(l), b.k(l)).max(max_diff(a.v(l), b.v(l)))
                        / scale(a.k(l)).max(scale(a.v(l)));
                    assert!(
                        rel <= tol,
                        "{d}: sequence {i} chunk {c} layer {l} KV: {rel:e}"
                    );
                }
            }
        }

        // A token outside the vocabulary: refused, no cache touched.
        let mut caches = fresh_caches();
        let bad = [v as u32];
        let lens: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let mut items: Vec<BatchItem<'_>> = caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| BatchItem {
                cache,
                tokens: if i == 2 {
                    &bad
                } else {
                    &prompts[i][histories[i]..]
                },
                logits: Logits::Last,
            })
            .collect();
        assert!(m.forward_batch(&mut items).is_err());
        drop(items);
        assert_eq!(caches.iter().map(|c| c.len()).collect::<Vec<_>>(), lens);
    }
}

fn request(prompt: &[u32], strategy: Strategy) -> WorkRequest {
    WorkRequest {
        id: "t".into(),
        prompt: prompt.to_vec(),
        options: WorkOptions {
            max_tokens: 3,
            temperature: 0.0,
            ignore_eos: true,
            logprobs: Some(5),
            ..Default::default()
        },
        cache_group: "g".into(),
        strategy: Some(strategy),
        priority: 0,
    }
}

/// Tokens and their logprobs, and how many prompt tokens were loaded.
async fn run(engine: &Engine, req: WorkRequest) -> (Vec<u32>, Vec<f32>, usize) {
    let mut rx = engine.submit(req).unwrap();
    let (mut toks, mut lps) = (Vec::new(), Vec::new());
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("no event within 60 s")
            .expect("stream ended without Done");
        match ev {
            WorkEvent::Token(t) => {
                toks.push(t.token);
                lps.push(t.logprob.map(|l| l.logprob).unwrap_or(f32::NAN));
            }
            WorkEvent::Done { usage, .. } => return (toks, lps, usage.loaded_tokens),
            WorkEvent::Error { message, .. } => panic!("request failed: {message}"),
            WorkEvent::PromptLogprobs { .. } => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cake_from_a_store_matches_compute_on_each_device() {
    let (_tmp, dir) = checkpoint();
    let tokenizer = Arc::new(Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap());
    let mut cpu_bf16: Option<Vec<f32>> = None;
    for d in devices() {
        let model = Arc::new(Model::load(&dir, d).unwrap());
        let p = prompt(6 * CHUNK + 5, 9, model.config().vocab_size);
        for codec in [Codec::F32, Codec::Bf16] {
            let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new(64 << 20));
            let cfg = EngineConfig {
                chunk_tokens: CHUNK,
                token_budget: 4 * CHUNK,
                codec,
                write_back: true,
                ..Default::default()
            };
            let engine =
                Engine::start(model.clone(), tokenizer.clone(), Some(store.clone()), cfg).unwrap();
            let (ctoks, clps, loaded) = run(&engine, request(&p, Strategy::Compute)).await;
            assert_eq!(loaded, 0);
            let keys = chunk_keys(&engine.namespace("g"), &p);
            for _ in 0..500 {
                if store.lookup(&keys).await.iter().all(Option::is_some) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(store.lookup(&keys).await.iter().all(Option::is_some));
            for strategy in [Strategy::Cake, Strategy::Load] {
                let (toks, lps, loaded) = run(&engine, request(&p, strategy)).await;
                assert!(loaded > 0, "{d} {codec:?} {strategy:?}: nothing loaded");
                let diff = max_diff(&lps, &clps);
                eprintln!(
                    "{d} {codec:?} {strategy:?}: {loaded} tokens loaded, logprob diff {diff:.2e} vs compute"
                );
                if codec == Codec::F32 {
                    assert_eq!(
                        toks, ctoks,
                        "{d} {strategy:?}: tokens differ from compute-only"
                    );
                    assert!(diff <= 1e-4, "{d} {strategy:?}: logprobs differ by {diff}");
                } else if d.is_cpu() {
                    if strategy == Strategy::Load {
                        cpu_bf16 = Some(lps.clone());
                    }
                } else if strategy == Strategy::Load {
                    let want = cpu_bf16.as_ref().expect("the CPU runs first");
                    let diff = max_diff(&lps, want);
                    eprintln!("{d} bf16 load-only vs CPU bf16 load-only: logprob diff {diff:.2e}");
                    assert!(
                        diff <= 5e-2,
                        "{d}: bf16 chunks widened on the GPU differ by {diff}"
                    );
                }
            }
        }
    }
}
