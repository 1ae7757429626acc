//! Closed loops and reuse reporting against the in-process mock: a closed
//! conversation carries the answers it received, fan-out waves share a new
//! prefix each, and the reuse figures come from the usage fields.

// Test helpers outside #[test] fns: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::support::Reply;
use cake_loadtest::{Endpoint, Plan, RunResult, RunSpec, Workload, render_table, run, summarize};
use serde_json::{Value, json};

async fn run_toml(toml: &str, target: &str, endpoint: Endpoint) -> RunResult {
    let w = Workload::from_toml(toml, "test").unwrap();
    let plan = Arc::new(Plan::build(&w));
    let spec = RunSpec {
        name: "test".into(),
        target: target.into(),
        endpoint,
        model: None,
        progress: false,
    };
    run(&w, plan, &spec).await.unwrap()
}

/// The mock's answer to a prompt: a function of its last paragraph, so a
/// test can tell which answer belongs to which request.
fn answer(last: &str) -> String {
    format!(" re {}", last.split(' ').next().unwrap_or(""))
}

fn echo(text: String) -> Reply {
    Reply::Echo {
        delay: Duration::from_millis(40),
        text,
        usage: json!({"prompt_tokens": 10, "completion_tokens": 2}),
    }
}

const CLOSED: &str = r#"
duration_s = 1.0
[arrival]
process = "constant"
rate = 2.0
[mix]
fresh = 0.0
conversation = 1.0
[conversation]
mode = "closed"
turns = 3
system_tokens = 4
user_tokens = { dist = "fixed", value = 3 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_chat_turns_carry_the_answers_received() {
    let mock = crate::support::start_with(|_, body| {
        let msgs = body["messages"].as_array().unwrap();
        echo(answer(msgs.last().unwrap()["content"].as_str().unwrap()))
    })
    .await;
    let result = run_toml(CLOSED, &mock.url(), Endpoint::Chat).await;
    assert_eq!(result.planned, 6);
    assert_eq!(result.records.len(), 6);
    let seen = mock.seen.lock().clone();
    let times = mock.times.lock().clone();
    let msgs = |i: usize| seen[i].1["messages"].as_array().unwrap().clone();
    let mut follow_ups = 0;
    for i in 0..seen.len() {
        let m = msgs(i);
        if m.len() < 4 {
            continue;
        }
        follow_ups += 1;
        // Its previous turn: the request whose messages it extends.
        let prev = (0..seen.len())
            .find(|&j| msgs(j) == m[..m.len() - 2])
            .expect("the previous turn was sent");
        let asked = m[m.len() - 3]["content"].as_str().unwrap();
        assert_eq!(m[m.len() - 2]["role"], "assistant");
        assert_eq!(
            m[m.len() - 2]["content"],
            answer(asked),
            "the text received"
        );
        // Sent only after the previous answer (held 40 ms) had arrived.
        assert!(times[i] >= times[prev] + Duration::from_millis(40));
    }
    assert_eq!(follow_ups, 4, "two conversations, turns 2 and 3");
    // The records say the same: each turn is due after the last one ended.
    let mut turns: Vec<_> = result
        .records
        .iter()
        .filter_map(|r| r.turn.map(|t| (r, t)))
        .collect();
    turns.sort_by_key(|(r, _)| r.intended);
    for (r, t) in &turns {
        if *t > 0 {
            let before = turns
                .iter()
                .filter(|(p, pt)| *pt == t - 1 && p.intended + p.e2e <= r.intended)
                .count();
            assert!(before >= 1, "turn {t} due before any turn {} ended", t - 1);
        }
    }
    let s = summarize(&result);
    assert_eq!(s.per_turn["1"].ok, 2);
    assert_eq!(s.per_turn["2+"].ok, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_completions_append_the_answer_to_the_prompt() {
    let mock = crate::support::start_with(|_, body| {
        let p = body["prompt"].as_str().unwrap();
        echo(answer(p.rsplit("\n\n").next().unwrap()))
    })
    .await;
    let result = run_toml(CLOSED, &mock.url(), Endpoint::Completions).await;
    assert_eq!(result.records.len(), 6);
    let seen = mock.seen.lock().clone();
    let prompts: Vec<String> = seen
        .iter()
        .map(|(_, j)| j["prompt"].as_str().unwrap().to_string())
        .collect();
    let mut extended = 0;
    for p in &prompts {
        // Each later turn = an earlier prompt + its answer + a new message.
        if let Some(prev) = prompts.iter().find(|q| {
            let a = answer(q.rsplit("\n\n").next().unwrap());
            p.starts_with(&format!("{q}{a}\n\n"))
        }) {
            assert!(p.len() > prev.len());
            extended += 1;
        }
    }
    assert_eq!(extended, 4);
}

/// A mock cache: the first request to bring a document computes it, the
/// others find 60 of their 100 prompt tokens cached (10 of them shared).
fn caching_mock(words: usize) -> impl Fn(&str, &Value) -> Reply + Send + Sync + 'static {
    let known = Mutex::new(HashSet::new());
    move |_, body| {
        let p = body["prompt"].as_str().unwrap();
        let doc: Vec<&str> = p.split(' ').take(words).collect();
        let fresh = known.lock().insert(doc.join(" "));
        let usage = if fresh {
            json!({"prompt_tokens": 100, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 0},
                "cake": {"class": "fresh", "computed_tokens": 100, "shared_tokens": 0}})
        } else {
            json!({"prompt_tokens": 100, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 60},
                "cake": {"class": "cached", "computed_tokens": 40, "shared_tokens": 10,
                    "loaded_tokens": 50, "ttft_ms": 3.0, "worker": "w0"}})
        };
        Reply::Echo {
            delay: Duration::from_millis(20),
            text: " ok".into(),
            usage,
        }
    }
}

/// The first 50 words of each prompt the mock received, with the count.
fn documents(mock: &crate::support::Mock) -> HashMap<String, usize> {
    let mut docs = HashMap::new();
    for (_, j) in mock.seen.lock().iter() {
        let p = j["prompt"].as_str().unwrap();
        let doc: Vec<&str> = p.split(' ').take(50).collect();
        *docs.entry(doc.join(" ")).or_default() += 1;
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_waves_send_together_over_a_new_prefix_and_report_reuse() {
    let mock = crate::support::start_with(caching_mock(50)).await;
    let toml = r#"
duration_s = 1.0
[mix]
fresh = 0.0
[fanout]
wave_size = 4
interval_s = 0.5
document_tokens = 50
question_tokens = { dist = "fixed", value = 5 }
"#;
    let result = run_toml(toml, &mock.url(), Endpoint::Completions).await;
    assert_eq!(result.records.len(), 8);
    // Same intended time within a wave; the two waves apart.
    let mut at: HashMap<u32, HashSet<Duration>> = HashMap::new();
    for r in &result.records {
        at.entry(r.wave.unwrap()).or_default().insert(r.intended);
    }
    assert_eq!(at.len(), 2);
    assert!(at.values().all(|t| t.len() == 1), "{at:?}");
    // One new document per wave, shared by its four members, each with
    // its own question.
    let docs = documents(&mock);
    assert_eq!(docs.values().copied().collect::<Vec<_>>(), [4, 4]);
    let prompts: HashSet<String> = mock
        .seen
        .lock()
        .iter()
        .map(|(_, j)| j["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts.len(), 8);

    let s = summarize(&result);
    let r = &s.overall.reuse;
    assert_eq!((r.prompt_tokens, r.cached_tokens), (800, 360));
    assert_eq!(r.cached_share, Some(0.45));
    assert_eq!(r.cached_requests, 6);
    assert_eq!(r.computed_tokens_mean, Some(55.0));
    assert_eq!(r.shared_tokens, Some(60));
    assert_eq!(s.per_class["cached"].reuse.cached_requests, 6);
    assert_eq!(s.per_kind["fanout"].reuse.cached_share, Some(0.45));
    let w = s.waves.as_ref().unwrap();
    assert_eq!((w.waves, w.requests, w.cached_requests), (2, 8, 6));
    assert!(
        w.per_wave
            .iter()
            .all(|w| w.cached_requests == 3 && w.ok == 4)
    );
    assert!(w.per_wave.iter().all(|w| w.time_ms >= 20.0));
    let table = render_table(std::slice::from_ref(&s));
    assert!(
        table.contains("waves: 2, cached 6/8, wave time p50"),
        "{table}"
    );
    assert!(table.contains("45.0%"), "{table}");
    let v: Value = serde_json::from_str(&cake_loadtest::to_json(&[s]).unwrap()).unwrap();
    assert_eq!(v["runs"][0]["reuse"]["cached_share"], 0.45);
    assert_eq!(
        v["runs"][0]["per_kind"]["fanout"]["reuse"]["shared_tokens"],
        60
    );
    assert_eq!(v["runs"][0]["waves"]["per_wave"][1]["cached_requests"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_waves_wait_for_the_previous_wave() {
    let mock = crate::support::start_with(caching_mock(50)).await;
    let toml = r#"
duration_s = 0.1
[mix]
fresh = 0.0
[fanout]
wave_size = 3
waves = 3
pacing = "back_to_back"
document_tokens = 50
question_tokens = { dist = "fixed", value = 5 }
"#;
    let result = run_toml(toml, &mock.url(), Endpoint::Completions).await;
    assert_eq!(result.planned, 9);
    assert_eq!(result.records.len(), 9);
    assert_eq!(documents(&mock).len(), 3, "a new document per wave");
    let end_of = |w: u32| {
        result
            .records
            .iter()
            .filter(|r| r.wave == Some(w))
            .map(|r| r.intended + r.e2e)
            .max()
            .unwrap()
    };
    for w in 1..3u32 {
        let starts: HashSet<Duration> = result
            .records
            .iter()
            .filter(|r| r.wave == Some(w))
            .map(|r| r.intended)
            .collect();
        assert_eq!(starts.len(), 1, "wave {w} leaves together");
        assert!(starts.into_iter().all(|t| t >= end_of(w - 1)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_without_reuse_fields_show_dashes() {
    let mock = crate::support::start(|_| crate::support::tokens_after(1, None)).await;
    let toml = r#"
duration_s = 0.5
[arrival]
process = "constant"
rate = 10.0
[fresh]
prompt_tokens = { dist = "fixed", value = 4 }
"#;
    let s = summarize(&run_toml(toml, &mock.url(), Endpoint::Completions).await);
    assert_eq!(s.overall.ok, 5);
    let r = &s.overall.reuse;
    assert_eq!(
        (r.cached_share, r.computed_tokens_mean, r.shared_tokens),
        (None, None, None)
    );
    assert!(s.waves.is_none() && s.per_turn.is_empty());
    assert!(!render_table(std::slice::from_ref(&s)).contains("waves:"));
    let table = render_table(&[s]);
    let all = table.lines().find(|l| l.starts_with("all ")).unwrap();
    assert!(all.contains(" - "), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_turn_ends_its_conversation_and_the_rest_is_unfinished() {
    // Second turns fail; third turns are never sent.
    let mock = crate::support::start_with(|_, body| {
        if body["messages"].as_array().unwrap().len() > 2 {
            Reply::Status(500)
        } else {
            echo(" fine".into())
        }
    })
    .await;
    let toml = CLOSED.replace("user_tokens", "think_time_s = 0.05\nuser_tokens");
    let result = run_toml(&toml, &mock.url(), Endpoint::Chat).await;
    assert_eq!(mock.seen.lock().len(), 4);
    let times = mock.times.lock().clone();
    let s = summarize(&result);
    assert_eq!((s.planned, s.overall.requests, s.overall.ok), (6, 6, 2));
    assert_eq!(s.overall.errors_by_status["500"], 2);
    assert_eq!(s.overall.errors_by_status["unfinished"], 2);
    assert_eq!(s.per_turn["2+"].errors, 2);
    // The failed turns still waited for the answer and the think time.
    let seen = mock.seen.lock();
    for (i, (_, j)) in seen.iter().enumerate() {
        if j["messages"].as_array().unwrap().len() > 2 {
            let first = &j["messages"].as_array().unwrap()[..2];
            let prev = seen
                .iter()
                .position(|(_, p)| p["messages"].as_array().unwrap()[..] == *first)
                .unwrap();
            assert!(times[i] >= times[prev] + Duration::from_millis(90));
        }
    }
}
