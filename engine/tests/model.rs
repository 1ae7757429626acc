//! The model against itself: chunking, splitting, determinism, dtypes,
//! malformed checkpoints and over-long prompts. Generation runs through the
//! worker engine, the path that serves requests.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cake_engine::init::{Dtype, preset, write_checkpoint};
use cake_engine::worker::{Engine, EngineConfig, WorkEvent, WorkOptions, WorkRequest};
use cake_engine::{Device, EngineError, Model, Rng, TokenLogprob, Tokenizer};

fn tiny(dtype: Dtype, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_checkpoint(&preset("tiny").unwrap(), seed, dtype, &dir).unwrap();
    (tmp, dir)
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(vocab as u64) as u32).collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn chunked_prefill_matches_one_shot() {
    let (_t, dir) = tiny(Dtype::F32, 1);
    let model = Model::load(&dir, Device::Cpu).unwrap();
    let toks = tokens(203, model.config().vocab_size, 2);
    let mut one = model.new_cache();
    let full = model.forward(&mut one, &toks).unwrap().into_vec().unwrap();
    let v = model.config().vocab_size;
    let one_shot_last = &full[(toks.len() - 1) * v..];
    for chunk in [16, 64, 256] {
        let mut cache = model.new_cache();
        let out = model.prefill(&mut cache, &toks, chunk).unwrap();
        assert_eq!(cache.len(), toks.len());
        // Chunking changes only how rows are grouped into calls; with the
        // CPU kernels every row is computed the same way, so the tolerance
        // is tight: 1e-5 of the logits' scale.
        let d = max_rel_diff(one_shot_last, &out.last_logits);
        assert!(d < 1e-5, "chunk {chunk}: relative difference {d}");
        // Full chunks sit on chunk boundaries, ready to be stored.
        let lens = cache.chunk_lens();
        assert!(
            lens[..lens.len() - 1]
                .iter()
                .all(|&l| l == chunk.min(toks.len()))
        );
    }
}

#[test]
fn prefill_in_two_calls_equals_one_call_bitwise() {
    let (_t, dir) = tiny(Dtype::F32, 3);
    let model = Model::load(&dir, Device::Cpu).unwrap();
    let toks = tokens(150, model.config().vocab_size, 4);
    let mut a = model.new_cache();
    let one = model.prefill(&mut a, &toks, 32).unwrap().last_logits;
    for split in [32, 64, 77, 149] {
        let mut b = model.new_cache();
        model.prefill(&mut b, &toks[..split], 32).unwrap();
        let two = model
            .prefill(&mut b, &toks[split..], 32)
            .unwrap()
            .last_logits;
        assert_eq!(one, two, "split at {split}");
        // And the KV the cache holds is the same, position for position.
        assert!(
            kv_by_layer(&a) == kv_by_layer(&b),
            "KV differs after split {split}"
        );
    }
}

#[test]
fn decoded_tokens_join_one_piece_with_the_same_bits() {
    let (_t, dir) = tiny(Dtype::F32, 5);
    let model = Model::load(&dir, Device::Cpu).unwrap();
    let toks = tokens(70, model.config().vocab_size, 6);
    let mut whole = model.new_cache();
    let want = model.prefill(&mut whole, &toks, 32).unwrap().last_logits;
    // The prompt, then one token a step, as decoding runs.
    let mut dec = model.new_cache();
    model.prefill(&mut dec, &toks[..50], 32).unwrap();
    let mut last = Vec::new();
    for t in &toks[50..] {
        last = model
            .forward(&mut dec, std::slice::from_ref(t))
            .unwrap()
            .into_vec()
            .unwrap();
    }
    assert_eq!(last, want, "decoded logits");
    assert_eq!(
        dec.chunk_lens(),
        vec![32, 18, 20],
        "one piece for the decoded"
    );
    assert!(kv_by_layer(&dec) == kv_by_layer(&whole));
    assert_eq!(dec.range(40, 65).unwrap(), whole.range(40, 65).unwrap());
    // Cut back inside the decoded piece and decode again: a piece of its
    // own after the cut, the same KV as before.
    dec.truncate(60).unwrap();
    for t in &toks[60..] {
        model.forward(&mut dec, std::slice::from_ref(t)).unwrap();
    }
    assert_eq!(dec.chunk_lens(), vec![32, 18, 10, 10]);
    assert!(kv_by_layer(&dec) == kv_by_layer(&whole));
}

/// Per layer, K of every position then V of every position, whatever the
/// chunking.
fn kv_by_layer(cache: &cake_engine::KvCache) -> Vec<(Vec<f32>, Vec<f32>)> {
    let layers = cache.layout().layers;
    let mut out = vec![(Vec::new(), Vec::new()); layers];
    for i in 0..cache.num_chunks() {
        let c = cache.chunk(i).unwrap().unwrap();
        for (l, (k, v)) in out.iter_mut().enumerate() {
            k.extend_from_slice(c.k(l));
            v.extend_from_slice(c.v(l));
        }
    }
    out
}

/// A worker engine over a checkpoint, with no store: generation goes the
/// way production serves a request (the scheduler's prefill steps with
/// their prompt log-probabilities, then decode steps).
struct Worker {
    // Before the runtime: the engine's handle goes first.
    engine: Engine,
    rt: tokio::runtime::Runtime,
}

/// What the engine streamed back for one request.
struct Served {
    tokens: Vec<u32>,
    /// Each token's text delta, in order.
    deltas: Vec<String>,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    finish: String,
}

impl Served {
    /// The text a client receives: the deltas joined.
    fn text(&self) -> String {
        self.deltas.concat()
    }
}

impl Worker {
    fn start(dir: &Path, chunk_tokens: usize) -> Worker {
        let model = Arc::new(Model::load(dir, Device::Cpu).unwrap());
        let tokenizer = Arc::new(Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = EngineConfig {
            chunk_tokens,
            ..Default::default()
        };
        let engine = rt
            .block_on(async { Engine::start(model, tokenizer, None, cfg) })
            .unwrap();
        Worker { engine, rt }
    }

    fn tokenizer(&self) -> &Tokenizer {
        self.engine.tokenizer()
    }

    /// Submits `prompt` and collects every event up to `Done`; a request
    /// refused at submit is the error.
    fn run(&self, prompt: &[u32], options: WorkOptions) -> Result<Served, EngineError> {
        let req = WorkRequest {
            id: "t".into(),
            prompt: prompt.to_vec(),
            options,
            cache_group: "g".into(),
            strategy: None,
            priority: 0,
        };
        let mut rx = {
            let _rt = self.rt.enter();
            self.engine.submit(req)?
        };
        let mut out = Served {
            tokens: Vec::new(),
            deltas: Vec::new(),
            logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            finish: String::new(),
        };
        self.rt.block_on(async {
            loop {
                let event = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                    .await
                    .expect("no event within 60 s")
                    .expect("stream ended without Done");
                match event {
                    WorkEvent::PromptLogprobs { logprobs } => out.prompt_logprobs = logprobs,
                    WorkEvent::Token(t) => {
                        out.tokens.push(t.token);
                        out.deltas.push(t.text);
                        out.logprobs.extend(t.logprob);
                    }
                    WorkEvent::Done { finish_reason, .. } => {
                        out.finish = finish_reason;
                        return;
                    }
                    WorkEvent::Error { message, .. } => panic!("request failed: {message}"),
                }
            }
        });
        Ok(out)
    }
}

#[test]
fn generation_is_deterministic_for_a_seed() {
    let (_t, dir) = tiny(Dtype::F32, 5);
    let worker = Worker::start(&dir, 256);
    let tok = worker.tokenizer();
    let prompt = tok.encode("The cake is a lie, said nobody.", true).unwrap();
    let run = |seed| {
        let opts = WorkOptions {
            temperature: 1.0,
            top_p: 0.95,
            seed: Some(seed),
            max_tokens: 24,
            ignore_eos: true,
            ..Default::default()
        };
        worker.run(&prompt, opts).unwrap()
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.text(), b.text());
    assert_eq!(a.tokens.len(), 24);
    assert_ne!(
        a.tokens, c.tokens,
        "different seeds gave the same 24 tokens"
    );
    // Streaming deltas add up to the whole text of the tokens.
    let opts = WorkOptions {
        temperature: 0.0,
        max_tokens: 20,
        ignore_eos: true,
        ..Default::default()
    };
    let g = worker.run(&prompt, opts).unwrap();
    assert_eq!(g.text(), tok.decode(&g.tokens).unwrap());
}

#[test]
fn stop_sequences_cut_the_text() {
    let (_t, dir) = tiny(Dtype::F32, 5);
    let worker = Worker::start(&dir, 256);
    let tok = worker.tokenizer();
    let prompt = tok.encode("hello", true).unwrap();
    let opts = WorkOptions {
        temperature: 0.0,
        max_tokens: 30,
        ignore_eos: true,
        ..Default::default()
    };
    let free = worker.run(&prompt, opts.clone()).unwrap();
    let free_text = free.text();
    assert_eq!(free_text, tok.decode(&free.tokens).unwrap());
    // Pick a stop string from the middle of the free-running text.
    let chars: Vec<char> = free_text.chars().collect();
    assert!(chars.len() >= 6, "text too short: {free_text:?}");
    let stop: String = chars[3..5].iter().collect();
    let cut = free_text.find(&stop).unwrap();
    let stopped = worker
        .run(
            &prompt,
            WorkOptions {
                stop: vec![stop.clone()],
                ..opts
            },
        )
        .unwrap();
    assert_eq!(stopped.text(), free_text[..cut]);
    // The tokens streamed spell the stop sequence right after that text.
    let spelled = tok.decode(&stopped.tokens).unwrap();
    assert_eq!(spelled.find(&stop), Some(cut), "{spelled:?}");
    assert_eq!(stopped.finish, cake_engine::FinishReason::Stop.as_str());
}

#[test]
fn logprobs_are_normalised_and_prompt_logprobs_match_output_ones() {
    let (_t, dir) = tiny(Dtype::F32, 9);
    let worker = Worker::start(&dir, 16);
    let prompt = tokens(40, worker.tokenizer().vocab_size(), 10);
    let opts = WorkOptions {
        temperature: 0.0,
        max_tokens: 5,
        ignore_eos: true,
        logprobs: Some(3),
        prompt_logprobs: true,
        ..Default::default()
    };
    let g = worker.run(&prompt, opts.clone()).unwrap();
    assert_eq!(g.prompt_logprobs.len(), prompt.len());
    assert!(g.prompt_logprobs[0].is_none());
    assert_eq!(g.logprobs.len(), 5);
    for lp in g.prompt_logprobs.iter().flatten().chain(&g.logprobs) {
        assert!(lp.logprob <= 0.0 && lp.logprob.is_finite());
        assert_eq!(lp.top.len(), 3);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
    // Greedy: the chosen token is the top alternative.
    for lp in &g.logprobs {
        assert_eq!(lp.token, lp.top[0].0);
    }
    // Feeding prompt + output back as a prompt gives the output tokens the
    // same log-probabilities.
    let mut all = prompt.clone();
    all.extend(&g.tokens);
    let again = worker
        .run(
            &all,
            WorkOptions {
                max_tokens: 1,
                ..opts
            },
        )
        .unwrap();
    for (i, lp) in g.logprobs.iter().enumerate() {
        let p = again.prompt_logprobs[prompt.len() + i].as_ref().unwrap();
        assert!((p.logprob - lp.logprob).abs() < 1e-4, "{p:?} vs {lp:?}");
    }
}

#[test]
fn f16_and_bf16_checkpoints_load_and_run() {
    let (_t32, d32) = tiny(Dtype::F32, 11);
    let m32 = Model::load(&d32, Device::Cpu).unwrap();
    let toks = tokens(20, m32.config().vocab_size, 1);
    let ref_logits = m32
        .prefill(&mut m32.new_cache(), &toks, 8)
        .unwrap()
        .last_logits;
    for dtype in [Dtype::F16, Dtype::Bf16] {
        let (_t, dir) = tiny(dtype, 11);
        let m = Model::load(&dir, Device::Cpu).unwrap();
        let l = m.prefill(&mut m.new_cache(), &toks, 8).unwrap().last_logits;
        assert!(l.iter().all(|v| v.is_finite()));
        // Same seed, rounded weights: close to the f32 model's logits.
        let d = max_rel_diff(&ref_logits, &l);
        assert!(d < 0.1, "{dtype:?}: relative difference {d}");
        assert_ne!(m.fingerprint(), m32.fingerprint());
    }
}

fn rewrite_tensors(
    dir: &Path,
    edit: impl FnOnce(&mut HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut map);
    let views: Vec<(String, safetensors::tensor::TensorView)> = map
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir, Device::Cpu) {
        Ok(_) => panic!("malformed checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_checkpoints_name_the_problem() {
    let name = "model.layers.1.mlp.up_proj.weight";
    let (_t, dir) = tiny(Dtype::F32, 1);
    rewrite_tensors(&dir, |m| {
        m.remove(name);
    });
    let e = load_err(&dir);
    assert!(e.contains(name) && e.contains("missing"), "{e}");

    let (_t, dir) = tiny(Dtype::F32, 1);
    rewrite_tensors(&dir, |m| {
        let t = m.get_mut(name).unwrap();
        t.1 = vec![t.1[1], t.1[0]];
    });
    let e = load_err(&dir);
    assert!(e.contains(name) && e.contains("shape"), "{e}");

    let (_t, dir) = tiny(Dtype::F32, 1);
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json"), "{e}");

    let (_t, dir) = tiny(Dtype::F32, 1);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json"), "{e}");

    let (_t, dir) = tiny(Dtype::F32, 1);
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("num_hidden_layers"), "{e}");

    let (_t, dir) = tiny(Dtype::F32, 1);
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");

    let (_t, dir) = tiny(Dtype::F32, 1);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn prompt_longer_than_context_is_a_clear_error() {
    let (_t, dir) = tiny(Dtype::F32, 1);
    let model = Model::load(&dir, Device::Cpu).unwrap();
    let ctx = model.max_context();
    let toks = vec![1u32; ctx + 1];
    let err = model
        .prefill(&mut model.new_cache(), &toks, 256)
        .unwrap_err();
    assert!(matches!(err, EngineError::PromptTooLong { .. }), "{err}");
    assert!(err.to_string().contains(&ctx.to_string()));
    // Prompt fits but prompt + max_tokens does not: the worker refuses it.
    let worker = Worker::start(&dir, 256);
    let opts = WorkOptions {
        max_tokens: 10,
        ..Default::default()
    };
    let err = worker.run(&vec![1u32; ctx - 5], opts).err().unwrap();
    assert!(
        matches!(err, EngineError::PromptTooLong { extra: 10, .. }),
        "{err}"
    );
    // Out-of-vocabulary ids are a bad request, not a panic.
    let err = model
        .prefill(&mut model.new_cache(), &[u32::MAX], 16)
        .unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
}
