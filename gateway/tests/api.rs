//! The OpenAI-compatible API over real HTTP, in front of a mock worker.

use crate::common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn completion_with_usage() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"model": "tiny", "prompt": "Hello there", "max_tokens": 5, "temperature": 0, "seed": 7}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers.get("x-request-id").is_some());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"][0]["text"], "abcde");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let u = &v["usage"];
    let sent = m.last_request().unwrap();
    assert_eq!(u["prompt_tokens"], sent.prompt.len());
    assert_eq!(u["completion_tokens"], 5);
    assert_eq!(u["total_tokens"], sent.prompt.len() + 5);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u["cake"]["class"], "fresh");
    assert_eq!(u["cake"]["worker"], "w0");
    assert!(u["cake"]["ttft_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(u["cake"]["computed_tokens"], sent.prompt.len());
    // Options reach the worker; the prompt starts with BOS.
    assert_eq!(sent.options.max_tokens, 5);
    assert_eq!(sent.options.temperature, 0.0);
    assert_eq!(sent.options.seed, Some(7));
    assert_eq!(sent.cache_group, "default");
}

#[tokio::test]
async fn prompt_shapes_and_stop() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    let a = gw.local_addr();
    let r = post(
        a,
        "/v1/completions",
        r#"{"prompt": [5, 6, 7], "max_tokens": 2}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(m.last_request().unwrap().prompt, vec![5, 6, 7]);
    let r = post(
        a,
        "/v1/completions",
        r#"{"prompt": [[8, 9]], "max_tokens": 2}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(m.last_request().unwrap().prompt, vec![8, 9]);
    let r = post(a, "/v1/completions", r#"{"prompt": ["hi"], "max_tokens": 2, "stop": ["c"], "ignore_eos": true, "min_tokens": 1, "top_k": 5, "repetition_penalty": 1.2}"#).await;
    assert_eq!(r.status, 200);
    let o = m.last_request().unwrap().options;
    assert_eq!(o.stop, vec!["c".to_string()]);
    assert!(o.ignore_eos);
    assert_eq!((o.min_tokens, o.top_k), (1, 5));
    let r = post(
        a,
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 10, "stop": "c"}"#,
    )
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], "ab");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn echo_with_logprobs_like_vllm() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"prompt": [104, 105], "max_tokens": 1, "echo": true, "logprobs": 1}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let c = &v["choices"][0];
    assert_eq!(c["text"], "hia");
    let lp = &c["logprobs"];
    assert_eq!(lp["tokens"], json!(["h", "i", "a"]));
    assert_eq!(lp["token_logprobs"][0], Value::Null);
    assert_eq!(lp["top_logprobs"][0], Value::Null);
    assert_eq!(lp["token_logprobs"][1], -1.0);
    assert_eq!(lp["top_logprobs"][1]["i"], -1.0);
    assert_eq!(lp["text_offset"], json!([0, 1, 2]));
    assert!(m.last_request().unwrap().options.prompt_logprobs);

    // Scoring only: max_tokens 0 with echo.
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"prompt": [104, 105], "max_tokens": 0, "echo": true, "logprobs": 0}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["text"], "hi");
}

#[tokio::test]
async fn streaming_completion_sse() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let ev = r.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|x| x["text"].as_str()))
        .collect();
    assert_eq!(text, "abc");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(usage["usage"]["cake"]["class"], "fresh");

    // Without include_usage: no usage chunk.
    let r = post(
        gw.local_addr(),
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 2, "stream": true}"#,
    )
    .await;
    let ev = r.events();
    assert!(ev.iter().all(|e| !e.contains("\"usage\"")), "{ev:?}");
}

#[tokio::test]
async fn chat_with_the_models_template() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    let r = post(
        gw.local_addr(),
        "/v1/chat/completions",
        r#"{"model": "tiny", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_completion_tokens": 2, "logprobs": true, "top_logprobs": 2}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "ab");
    let lp = &v["choices"][0]["logprobs"]["content"];
    assert_eq!(lp[0]["token"], "a");
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
    // The synthetic tokenizer's Llama-3-style template was applied.
    let model = model();
    let sent = m.last_request().unwrap();
    let text = model.tokenizer.decode(&sent.prompt).unwrap();
    assert!(
        text.starts_with(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        ),
        "{text:?}"
    );
    assert!(
        text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "{text:?}"
    );
    assert_eq!(sent.options.max_tokens, 2);
}

#[tokio::test]
async fn streaming_chat() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    let r = post(
        gw.local_addr(),
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": true}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let ev = r.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let content: String = ev[1..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "ab");
}

#[tokio::test]
async fn second_identical_prompt_is_cached() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    // 40 tokens: two full chunks of the mock's 16.
    let prompt: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    let body = json!({"prompt": prompt, "max_tokens": 1}).to_string();
    let a = post(gw.local_addr(), "/v1/completions", &body).await.json();
    assert_eq!(a["usage"]["cake"]["class"], "fresh");
    let b = post(gw.local_addr(), "/v1/completions", &body).await.json();
    assert_eq!(b["usage"]["cake"]["class"], "cached");
    assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
    assert_eq!(b["usage"]["cake"]["loaded_tokens"], 32);
    assert_eq!(b["usage"]["cake"]["computed_tokens"], 8);
    let metrics = get(gw.local_addr(), "/metrics").await.text();
    assert!(
        metrics.contains(
            "cake_gateway_requests_total{tenant=\"default\",class=\"cached\",status=\"200\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn models_health_metrics() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    let a = gw.local_addr();
    let v = get(a, "/v1/models").await.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["max_model_len"], CONTEXT);
    let h = get(a, "/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["workers"][0]["name"], "w0");
    post(a, "/v1/completions", r#"{"prompt": "x", "max_tokens": 2}"#).await;
    let m = get(a, "/metrics").await;
    assert_eq!(m.status, 200);
    let t = m.text();
    for name in [
        "cake_gateway_requests_total",
        "cake_gateway_ttft_seconds_bucket",
        "cake_gateway_e2e_seconds_bucket",
        "cake_gateway_tpot_seconds_bucket",
        "cake_gateway_computed_tokens_total",
        "cake_worker_in_flight_requests",
    ] {
        assert!(t.contains(name), "{name} missing from /metrics:\n{t}");
    }
}

#[tokio::test]
async fn client_request_id_is_kept() {
    let m = mock("w0");
    let gw = start_with(&m).await;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/v1/completions", gw.local_addr()))
        .header("x-request-id", "abc-123")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"prompt":"x","max_tokens":1}"#,
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    assert_eq!(m.last_request().unwrap().id, "abc-123");
}
