//! Tenant rate limits shared by two gateways through one real Redis
//! (`policy.limits_redis`), and failing open to each gateway's own limits
//! when Redis dies. Needs `redis-server` (skipped with a message when there
//! is none, unless CAKE_REQUIRE_REDIS=1).

use std::time::Duration;

use tokio::time::Instant;

use crate::common::*;
use cake_engine::kv::LocalRedis;
use cake_gateway::worker::MockWorker;
use cake_gateway::{Config, Gateway};

const SMALL: &str = r#"{"prompt": "hello world", "max_tokens": 1}"#;

/// A local redis-server, or `None` (with the reason printed) when there is
/// none — unless `CAKE_REQUIRE_REDIS=1`, where that is a failure.
fn redis() -> Option<LocalRedis> {
    LocalRedis::for_test(&[])
}

/// Tenants `a` (4 requests/s), `b` (1000 requests/s, to warm the Redis
/// connections up) and `c` (60 prompt tokens/min), rate limits in `url`.
fn config(url: &str) -> Config {
    let toml = format!(
        "[policy]\nlimits_redis = \"{url}/0\"\nlimits_redis_prefix = \"test:limits:\"\n\
         limits_redis_timeout_ms = 200\n\
         [[tenants]]\nname = \"a\"\napi_key_sha256 = [\"{KEY_A}\"]\n\
         [tenants.limits]\nrequests_per_s = 4.0\n\
         [[tenants]]\nname = \"b\"\napi_key_sha256 = [\"{KEY_B}\"]\n\
         [tenants.limits]\nrequests_per_s = 1000.0\n\
         [[tenants]]\nname = \"c\"\napi_key_sha256 = [\"{KEY_C}\"]\n\
         [tenants.limits]\nprompt_tokens_per_min = 60\n"
    );
    let cfg = Config::parse(&toml).unwrap();
    cfg.validate().unwrap();
    cfg
}

async fn gateway(cfg: &Config, worker: &MockWorker) -> Gateway {
    tenant_gateway(cfg, std::slice::from_ref(worker)).await
}

async fn call(gw: &Gateway, key: &str, body: &str) -> Reply {
    complete_as(gw, Some(key), body).await
}

/// Two gateways on one Redis, each in front of its own mock worker, with
/// their connections to Redis warmed up.
async fn two_gateways(server: &LocalRedis) -> (Gateway, Gateway) {
    let cfg = config(&server.url());
    let one = gateway(&cfg, &mock("w1")).await;
    let two = gateway(&cfg, &mock("w2")).await;
    for gw in [&one, &two] {
        let r = call(gw, "key-b", SMALL).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    (one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_tenants_request_rate_and_fail_open_without_redis() {
    let Some(mut server) = redis() else { return };
    let (one, two) = two_gateways(&server).await;

    // 4 per second, burst 4: of 8 quick requests alternating between the
    // gateways, 4 pass in all (each gateway alone would pass 4 itself).
    let t0 = Instant::now();
    let mut ok = [0; 2];
    let mut refused = 0;
    for i in 0..8 {
        let r = call(if i % 2 == 0 { &one } else { &two }, "key-a", SMALL).await;
        if r.status == 200 {
            ok[i % 2] += 1;
        } else {
            let e = r.error(429);
            assert_eq!(e["error"]["code"], "requests_per_second", "{e}");
            assert_eq!(r.headers["retry-after"], "1");
            refused += 1;
        }
    }
    let took = t0.elapsed();
    assert_eq!(ok, [2, 2], "took {took:?}");
    assert_eq!(refused, 4);

    // Redis gone: requests are neither failed nor held; each gateway's own
    // limits (4/s each, still full) decide.
    server.kill();
    for gw in [&one, &two, &one, &two] {
        let t = Instant::now();
        let r = call(gw, "key-a", SMALL).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // ... and those limits still hold, per gateway.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(&one, "key-a", SMALL).await.status.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_tenants_prompt_token_rate() {
    let Some(server) = redis() else { return };
    let (one, two) = two_gateways(&server).await;
    // 60 tokens a minute; 20-token prompts: 3 pass in all.
    let ids: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let body = format!(r#"{{"prompt": [{}], "max_tokens": 1}}"#, ids.join(", "));
    assert_eq!(call(&one, "key-c", &body).await.status, 200);
    assert_eq!(call(&two, "key-c", &body).await.status, 200);
    assert_eq!(call(&one, "key-c", &body).await.status, 200);
    let r = call(&two, "key-c", &body).await;
    let e = r.error(429);
    assert_eq!(e["error"]["code"], "prompt_tokens_per_minute", "{e}");
    // 20 tokens at 1 per second.
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((18..=20).contains(&secs), "{secs}");
    // A refusal took nothing: the other gateway refuses the same way.
    let r = call(&one, "key-c", &body).await;
    assert_eq!(r.error(429)["error"]["code"], "prompt_tokens_per_minute");
}
