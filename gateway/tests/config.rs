//! Every config file in `config/` loads and validates; `cake config check`
//! says so, and names the key of a bad file.
use std::path::{Path, PathBuf};
use std::process::Command;

use cake_gateway::Config;
use cake_gateway::config::WorkerKind;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

#[test]
fn default_file_is_the_built_in_default() {
    let c = Config::load(&config_dir().join("cake.toml")).unwrap();
    // The file lists every key at its default value.
    assert_eq!(c, Config::default());
}

#[test]
fn every_example_loads() {
    let mut n = 0;
    let mut dirs = vec![config_dir().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 3, "one machine, two remote workers, shared redis");
    let placement = Config::load(&config_dir().join("examples/placement/gateway.toml")).unwrap();
    assert_eq!(placement.workers.len(), 2);
    let two = Config::load(&config_dir().join("examples/two-remote-workers.toml")).unwrap();
    assert_eq!(two.workers.len(), 2);
    assert!(two.workers.iter().all(|w| w.kind == WorkerKind::Cake));
    let redis = Config::load(&config_dir().join("examples/shared-redis.toml")).unwrap();
    assert!(redis.kv.redis.enabled);
    let t = Config::load(&config_dir().join("examples/tenants.toml")).unwrap();
    assert_eq!(t.tenants.len(), 2);
    assert_eq!(t.tenants[0].policy().cache_group, "team-a");
    let one = Config::load(&config_dir().join("examples/one-machine.toml")).unwrap();
    assert!(
        one.effective_workers()
            .iter()
            .all(|w| w.kind == WorkerKind::Embedded)
    );
}

#[test]
fn bad_values_name_the_field() {
    for (text, field) in [
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        (
            "[[workers]]\nname = \"a\"\nkind = \"cake\"\nurl = \"ftp://x\"\n",
            "workers[0].url",
        ),
        (
            "[[workers]]\nname = \"a\"\n[[workers]]\nname = \"a\"\n",
            "workers[1].name",
        ),
        (
            "[[tenants]]\nname = \"t\"\napi_key_sha256 = [\"abc\"]\n",
            "tenants[0].api_key_sha256[0]",
        ),
        (
            "[[tenants]]\nname = \"t\"\nweight = 0\n",
            "tenants[0].weight",
        ),
        ("[policy]\nqueue_total = 0\n", "policy.queue_total"),
        (
            "[engine]\nchunk_tokens = 64\ntoken_budget = 512\n",
            "engine.chunk_tokens",
        ),
        ("[kv]\nchunk_tokens = 100\n", "kv.chunk_tokens"),
        ("[model]\npreset = \"huge\"\n", "model.preset"),
    ] {
        let e = Config::parse(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(field), "{text}: {e}");
    }
}

#[test]
fn config_check_command() {
    let bin = env!("CARGO_BIN_EXE_cake");
    let ok = Command::new(bin)
        .args(["config", "check"])
        .arg(config_dir().join("cake.toml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:1\"\nlisten_addr = 5\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_addr"), "{err}");
}
