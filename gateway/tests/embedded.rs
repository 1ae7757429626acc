//! The real thing, small: the `tiny` synthetic model in an embedded
//! engine behind the gateway, as `cake serve` runs it.

use crate::common::{get, post, tiny_config, tiny_gateway};
use cake_gateway::Config;
use serde_json::{Value, json};

async fn start_with(dir: &std::path::Path, engine: &str, extra: &str) -> cake_gateway::Gateway {
    tiny_gateway(dir, engine, extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_model_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    // Load-only: under `cake` the tiny model can compute every chunk
    // before the first load lands, so what the repeat reports as cached
    // would depend on the race, not on what was stored.
    let gw = start_with(dir.path(), "strategy = \"load\"", "").await;
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

/// An engine with one request slot (`max_running = 1`, `max_waiting = 0`),
/// kept full: the request holding it waits a minute in its store lookup
/// (a throttled link's latency), so no timing decides when it ends.
struct FullEngine {
    slots: Vec<cake_gateway::worker::WorkerSlot>,
    _held: cake_gateway::worker::EventStream,
}

fn work(prompt: Vec<u32>) -> cake_engine::worker::WorkRequest {
    cake_engine::worker::WorkRequest {
        id: "t".into(),
        prompt,
        options: cake_engine::worker::WorkOptions {
            max_tokens: 2,
            ..Default::default()
        },
        cache_group: "g".into(),
        strategy: None,
        priority: 0,
    }
}

async fn full_engine(dir: &std::path::Path) -> FullEngine {
    let (cfg, model) = tiny_config(
        dir,
        "max_running = 1\nmax_waiting = 0",
        "[kv.throttle]\nenabled = true\nlatency_us = 60000000",
    );
    let slots = cake_gateway::build_workers(&cfg, &model).unwrap();
    // A full chunk, so its lookup goes through the slow link.
    let held = slots[0]
        .worker
        .submit(work((0..20).collect()))
        .await
        .unwrap();
    FullEngine { slots, _held: held }
}

/// A full engine answers `Overloaded`, in process and over `cake worker`'s
/// HTTP alike: a worker error another worker may take, not a fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_engine_is_overloaded_embedded_and_remote_alike() {
    use cake_gateway::worker::{CakeWorker, Worker, WorkerError, serve_worker};
    let dir = tempfile::tempdir().unwrap();
    let full = full_engine(dir.path()).await;
    let embedded = full.slots[0].worker.clone();
    let e = embedded.submit(work(vec![1, 2, 3])).await.err().unwrap();
    assert!(matches!(e, WorkerError::Overloaded(_)), "{e:?}");
    assert!(e.retryable() && !e.is_health_failure());

    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    let ws = serve_worker(l, embedded, std::time::Duration::from_secs(5)).unwrap();
    let remote = CakeWorker::new(
        "r",
        &format!("http://{}", ws.local_addr()),
        std::time::Duration::from_secs(5),
    );
    let r = remote.submit(work(vec![1, 2, 3])).await.err().unwrap();
    assert!(matches!(r, WorkerError::Overloaded(_)), "{r:?}");
    assert_eq!(r.to_string(), e.to_string());
}

/// Behind the gateway, a full engine's request goes to the next worker;
/// with no other, the client gets 503 `workers_overloaded` with a
/// `Retry-After`, not a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_engine_sends_the_request_elsewhere_or_says_when_to_come_back() {
    use cake_gateway::config::{PlacementPolicy, PolicyConfig};
    let dir = tempfile::tempdir().unwrap();
    let full = full_engine(dir.path()).await;
    let policy = PolicyConfig {
        placement: PlacementPolicy::RoundRobin,
        ..PolicyConfig::default()
    };
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 2}).to_string();

    let mut slots = full.slots;
    let other = crate::common::mock("other");
    slots.push(crate::common::slot(std::sync::Arc::new(other.clone())));
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    let info = || cake_gateway::model_info(&Config::default(), &dir.path().join("model")).unwrap();
    let gw =
        cake_gateway::Gateway::start(&crate::common::server_config(), &policy, info(), slots, l)
            .unwrap();
    // Round robin starts one of the two on the full engine.
    for _ in 0..2 {
        let r = post(gw.local_addr(), "/v1/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["usage"]["cake"]["worker"], "other");
    }
    assert_eq!(other.submitted(), 2);

    // The full engine alone.
    let worker = gw.pool().slots()[0].clone();
    let alone = cake_gateway::worker::WorkerSlot::new(
        worker.worker.clone(),
        worker.timeout,
        worker.idle_timeout,
    );
    let l = cake_gateway::listen("127.0.0.1:0").await.unwrap();
    let gw1 = cake_gateway::Gateway::start(
        &crate::common::server_config(),
        &policy,
        info(),
        vec![alone],
        l,
    )
    .unwrap();
    let r = post(gw1.local_addr(), "/v1/completions", &body).await;
    let v = r.error(503);
    assert_eq!(v["error"]["code"], "workers_overloaded", "{v}");
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    // Still up: a full worker is not a failed one.
    assert!(gw1.pool().slots()[0].is_up());
}
