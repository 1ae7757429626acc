//! Prompt limits against prompts far over them: refused with 413
//! `prompt_too_long` after tokenizing no more than the limit needs;
//! prompts within the limit reach the worker tokenized exactly as the
//! tokenizer does it.

use std::sync::Arc;

use crate::common::{mock, model, post, server_config, slot, start};
use serde_json::json;

/// A text of about `bytes` bytes, words and spaces.
fn text(bytes: usize) -> String {
    let words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"];
    let mut s = String::with_capacity(bytes + 16);
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(words[i % words.len()]);
        s.push(' ');
        i += 1;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_megabytes_over_the_limit_is_413() {
    let m = mock("w0");
    let gw = start(vec![slot(Arc::new(m.clone()))], server_config()).await;
    let a = gw.local_addr();
    // 7.8 MB: under the 8 MiB body limit, thousands of times the context.
    let big = text(7_800_000);
    let body = json!({"prompt": big, "max_tokens": 1}).to_string();
    let v = post(a, "/v1/completions", &body).await.error(413);
    assert_eq!(v["error"]["code"], "prompt_too_long", "{v}");
    assert_eq!(v["error"]["param"], "prompt", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&crate::common::CONTEXT.to_string()),
        "names the limit: {msg}"
    );

    // The same text as a chat message.
    let body = json!({"messages": [{"role": "user", "content": big}], "max_tokens": 1}).to_string();
    let v = post(a, "/v1/chat/completions", &body).await.error(413);
    assert_eq!(v["error"]["code"], "prompt_too_long", "{v}");
    assert_eq!(m.submitted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_within_the_limit_are_tokenized_as_before() {
    let m = mock("w0");
    let gw = start(vec![slot(Arc::new(m.clone()))], server_config()).await;
    let tok = model().tokenizer;
    for prompt in [
        text(100),
        text(1000),
        "ünï 漢字 \u{1F600}  two  spaces\n".repeat(8),
    ] {
        let want = tok.encode(&prompt, true).unwrap();
        assert!(want.len() < crate::common::CONTEXT, "{}", want.len());
        let body = json!({"prompt": prompt, "max_tokens": 1}).to_string();
        let r = post(gw.local_addr(), "/v1/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(m.last_request().unwrap().prompt, want);
    }
}
