//! The real thing, small: the `tiny` synthetic model in an embedded
//! engine behind the gateway, as `cake serve` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cake_engine::init::{Dtype, preset, write_checkpoint};
use cake_gateway::Config;
use common::{get, post};
use serde_json::{Value, json};

async fn start(dir: &std::path::Path) -> cake_gateway::Gateway {
    start_with(dir, "", "").await
}

/// The gateway over the tiny model, with `extra` appended to its config.
/// A gateway over the tiny model; `engine`: more `[engine]` keys; `extra`:
/// more sections.
async fn start_with(dir: &std::path::Path, engine: &str, extra: &str) -> cake_gateway::Gateway {
    let model = dir.join("model");
    write_checkpoint(&preset("tiny").unwrap(), 1, Dtype::F32, &model).unwrap();
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        [model]
        path = "{model}"
        [engine]
        chunk_tokens = 16
        token_budget = 64
        {engine}
        [kv]
        chunk_tokens = 16
        [kv.disk]
        enabled = false
        {extra}
        "#,
        data = dir.display(),
        model = model.display()
    );
    let cfg = Config::parse(&text).unwrap();
    cfg.validate().unwrap();
    let info = cake_gateway::model_info(&cfg, &model).unwrap();
    let slots = cake_gateway::build_workers(&cfg, &model).unwrap();
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    cake_gateway::Gateway::start(&cfg.server, &cfg.policy, info, slots, l).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_model_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let a = gw.local_addr();
    let models = get(a, "/v1/models").await.json();
    assert_eq!(models["data"][0]["id"], "model");

    let prompt = "The quick brown fox jumps over the lazy dog, again and again.";
    let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0}).to_string();
    let r = post(a, "/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    assert_eq!(first["usage"]["completion_tokens"], 4, "{first}");
    assert_eq!(first["usage"]["cake"]["class"], "fresh");
    let n = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(n > 16, "the prompt has a full chunk: {n} tokens");

    // Greedy decoding is deterministic; the second time the prompt's full
    // chunks are stored.
    let r = post(a, "/v1/completions", &body).await.json();
    assert_eq!(r["choices"][0]["text"], first["choices"][0]["text"]);
    assert_eq!(r["usage"]["cake"]["class"], "cached", "{r}");
    assert!(
        r["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            >= 16,
        "{r}"
    );

    // Streaming gives the same text.
    let body =
        json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": true}).to_string();
    let ev = post(a, "/v1/completions", &body).await.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let text: String = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(text, first["choices"][0]["text"].as_str().unwrap());

    // Chat with the model's template.
    let r = post(
        a,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["usage"]["completion_tokens"].as_u64().unwrap() <= 3);

    // Echo with logprobs: one entry per prompt token plus the output, the
    // first null.
    let r = post(
        a,
        "/v1/completions",
        r#"{"prompt": "hello world", "max_tokens": 1, "echo": true, "logprobs": 2, "temperature": 0}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let lp = &v["choices"][0]["logprobs"];
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), prompt_tokens + 1);
    assert_eq!(lp["token_logprobs"][0], Value::Null);
    assert!(lp["token_logprobs"][1].is_number(), "{lp}");
    gw.shutdown().await;
}

/// A burst over one new document, sent together to a gateway with two
/// workers: the in-flight prefix registry puts it on the worker computing
/// the prefix, the others take it from that sibling (or from the store),
/// and what each reports as cached is what it loaded or shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_two_workers_lands_together_and_computes_the_prefix_once() {
    let dir = tempfile::tempdir().unwrap();
    // Long answers keep the first request in flight while the others
    // arrive, however slow the machine is.
    let two = "[[workers]]\nname = \"a\"\n[[workers]]\nname = \"b\"\n";
    // Load-only: a request placed elsewhere after the prefix was stored
    // (the machine that slow) loads all of it rather than computing some
    // from the front, so "computed once" is exact either way.
    let gw = start_with(dir.path(), "strategy = \"load\"", two).await;
    let a = gw.local_addr();
    let prefix: Vec<u32> = (0..6 * 16).map(|i| (i * 7 + 3) % 200).collect();
    let tasks: Vec<_> = (0..4u32)
        .map(|i| {
            let mut prompt = prefix.clone();
            prompt.extend((0..5).map(|j| 200 + 5 * i + j));
            let body =
                json!({"prompt": prompt, "max_tokens": 256, "temperature": 0, "ignore_eos": true})
                    .to_string();
            tokio::spawn(async move { post(a, "/v1/completions", &body).await })
        })
        .collect();
    let mut usages = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let u = r.json()["usage"].clone();
        let n = |k: &str| u["cake"][k].as_u64().unwrap();
        let c = u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        assert_eq!(c, n("loaded_tokens") + n("shared_tokens"), "{u}");
        usages.push(u);
    }
    let n = |u: &Value, k: &str| u["cake"][k].as_u64().unwrap();
    // The prefix is computed once in the fleet: every request but the
    // first reuses it.
    let computed: u64 = usages.iter().map(|u| n(u, "computed_tokens")).sum();
    assert_eq!(computed, 6 * 16 + 4 * 5, "{usages:?}");
    let producer = usages.iter().find(|u| n(u, "computed_tokens") > 5).unwrap();
    let worker = |u: &Value| u["cake"]["worker"].as_str().unwrap().to_string();
    // The burst lands where its first request went (the in-flight prefix
    // registry): a request elsewhere is one placed after the prefix was
    // stored, which loaded all of it.
    for u in &usages {
        if worker(u) != worker(producer) {
            assert_eq!(
                (n(u, "loaded_tokens"), n(u, "shared_tokens")),
                (96, 0),
                "{u}"
            );
        }
    }
    gw.shutdown().await;
}
