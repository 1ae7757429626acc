//! The KV tier and the tenant limits on a real Redis Cluster (3 masters, 3
//! replicas on loopback): prompts cached through it, a master killed
//! mid-traffic, two gateways sharing a tenant's limits. Needs redis-server
//! and redis-cli (skipped with a message when missing, unless
//! CAKE_REQUIRE_REDIS=1).

use std::time::Duration;

use tokio::time::Instant;

use crate::common::*;
use cake_engine::kv::LocalRedisCluster;
use cake_gateway::{Config, Gateway};
use serde_json::json;

fn toml_list(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A document of about 200 tokens of the tiny model: a dozen chunks.
fn document(i: u32) -> String {
    (0..40)
        .map(|w| format!("w{}x{}", i, w * 7 + i))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn complete(gw: &Gateway, prompt: &str) -> (u16, u64) {
    let body = json!({"prompt": prompt, "max_tokens": 2, "temperature": 0}).to_string();
    let r = post(gw.local_addr(), "/v1/completions", &body).await;
    let cached = if r.status == 200 {
        r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0)
    } else {
        0
    };
    (r.status.as_u16(), cached)
}

/// Sends `prompt` until a repeat reports cached tokens (the first write
/// goes behind the answer); the attempts it took.
async fn until_cached(gw: &Gateway, prompt: &str, attempts: u32) -> Option<u32> {
    for i in 1..=attempts {
        let (status, cached) = complete(gw, prompt).await;
        assert_eq!(status, 200);
        if cached >= 16 {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_are_cached_through_a_cluster_and_a_failover_fails_no_request() {
    let Some(mut cluster) = LocalRedisCluster::for_test(3, 1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kv = format!(
        "[kv.memory]\nenabled = false\n[kv.redis]\nenabled = true\nnodes = {}\n\
         key_prefix = \"test:gw:\"\ntimeout_ms = 500\nconnect_timeout_ms = 500\nretry_after_ms = 200\n",
        toml_list(&cluster.urls())
    );
    let gw = tiny_gateway(dir.path(), "", &kv).await;

    // A repeated prompt is cached, through the cluster alone.
    assert!(until_cached(&gw, &document(0), 40).await.is_some());
    let held = cluster.keys_per_master();
    let holding: Vec<_> = held.iter().filter(|(_, n)| *n > 0).collect();
    assert!(holding.len() >= 2, "chunks on one master only: {held:?}");

    // Traffic while a master holding chunks dies: no request fails.
    let victim = holding[0].0;
    let mut statuses = Vec::new();
    let mut killed = None;
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(4) || i < 12 {
        if i == 4 {
            cluster.kill(victim);
            killed = Some(Instant::now());
        }
        // Repeats of three documents, and fresh ones.
        let prompt = if i % 2 == 0 {
            document(i % 3)
        } else {
            document(1000 + i)
        };
        statuses.push(complete(&gw, &prompt).await.0);
        i += 1;
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");

    // The replica takes over; a new prompt's repeat is cached again.
    cluster.wait_ok(Duration::from_secs(30)).unwrap();
    let after = killed.unwrap().elapsed();
    let mut back = None;
    for n in 0..40 {
        if until_cached(&gw, &document(5000 + n), 3).await.is_some() {
            back = Some(killed.unwrap().elapsed());
            break;
        }
    }
    eprintln!("failover seen after {after:?}; caching back after {back:?}");
    assert!(
        back.is_some(),
        "caching did not come back after the failover"
    );
    let m = get(gw.local_addr(), "/metrics").await.text();
    assert!(m.contains("cake_kv_"), "kv metrics exported");
    gw.shutdown().await;
}

/// Tenant `a` at 4 requests/s (burst 4), `b` unlimited-ish to warm up.
fn limits_config(nodes: &[String]) -> Config {
    let toml = format!(
        "[policy]\nlimits_redis_nodes = {}\nlimits_redis_prefix = \"test:limits:\"\n\
         limits_redis_timeout_ms = 300\n\
         [[tenants]]\nname = \"a\"\napi_key_sha256 = [\"{KEY_A}\"]\n\
         [tenants.limits]\nrequests_per_s = 4.0\n\
         [[tenants]]\nname = \"b\"\napi_key_sha256 = [\"{KEY_B}\"]\n\
         [tenants.limits]\nrequests_per_s = 1000.0\n",
        toml_list(nodes)
    );
    let cfg = Config::parse(&toml).unwrap();
    cfg.validate().unwrap();
    cfg
}

const SMALL: &str = r#"{"prompt": "hello world", "max_tokens": 1}"#;

/// Of 8 quick requests of tenant `a` alternating between the gateways,
/// how many each passed.
async fn burst(one: &Gateway, two: &Gateway) -> [u32; 2] {
    let mut ok = [0; 2];
    for i in 0..8 {
        let r = complete_as(if i % 2 == 0 { one } else { two }, Some("key-a"), SMALL).await;
        if r.status == 200 {
            ok[i % 2] += 1;
        } else {
            let e = r.error(429);
            assert_eq!(e["error"]["code"], "requests_per_second", "{e}");
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_tenants_limit_on_a_cluster_through_a_failover() {
    let Some(mut cluster) = LocalRedisCluster::for_test(3, 1) else {
        return;
    };
    let cfg = limits_config(&cluster.urls());
    let one = tenant_gateway(&cfg, &[mock("w1")]).await;
    let two = tenant_gateway(&cfg, &[mock("w2")]).await;
    for gw in [&one, &two] {
        let r = complete_as(gw, Some("key-b"), SMALL).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Both buckets of a tenant share a slot: one master decides.
    assert_eq!(
        cake_engine::kv::slot_of(b"test:limits:{a}:requests_per_second"),
        cake_engine::kv::slot_of(b"test:limits:{a}:prompt_tokens_per_minute")
    );

    // 4 in all pass, not 4 per gateway.
    let t0 = Instant::now();
    assert_eq!(burst(&one, &two).await, [2, 2], "took {:?}", t0.elapsed());

    // The master holding tenant a's slot dies: requests are neither failed
    // nor held; each gateway's own limits decide meanwhile.
    let slot = cake_engine::kv::slot_of(b"test:limits:{a}:requests_per_second");
    let owner = cluster
        .master_of_slot(slot)
        .expect("a master owns the slot");
    cluster.kill(owner);
    for gw in [&one, &two] {
        let t = Instant::now();
        let r = complete_as(gw, Some("key-b"), SMALL).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    // After the replica takes over (it has never run the script), the
    // limit is shared again.
    cluster.wait_ok(Duration::from_secs(30)).unwrap();
    let mut shared = None;
    for _ in 0..20 {
        // A full bucket again, and past the gateways' skip window.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let ok = burst(&one, &two).await;
        if ok == [2, 2] {
            shared = Some(ok);
            break;
        }
    }
    assert_eq!(shared, Some([2, 2]), "limits not shared after the failover");
}
