//! The binary as a user runs it: JSON and plot files, compare mode with
//! several targets and with servers the tool starts itself.

// Test helpers outside #[test] fns: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use crate::support::tokens_after;

const BIN: &str = env!("CARGO_BIN_EXE_cake-loadtest");

const WORKLOAD: &str = r#"
name = "cli"
duration_s = 0.5
[arrival]
process = "constant"
rate = 20.0
[[tenants]]
name = "t1"
api_key = "k1"
ttft_slo_ms = 10000.0
[fresh]
prompt_tokens = { dist = "fixed", value = 4 }
[output]
max_tokens = { dist = "fixed", value = 2 }
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn run_cli(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cake-loadtest {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_plot_and_table_for_two_targets() {
    let m1 = crate::support::start(|_| tokens_after(1, Some("cached"))).await;
    let m2 = crate::support::start(|_| tokens_after(30, Some("fresh"))).await;
    let dir = tempfile::tempdir().unwrap();
    let workload = write(dir.path(), "w.toml", WORKLOAD);
    let (json, plot) = (dir.path().join("r.json"), dir.path().join("r.svg"));
    let (t1, t2) = (format!("fast={}", m1.url()), format!("slow={}", m2.url()));
    let args: Vec<String> = [
        "--target",
        &t1,
        "--target",
        &t2,
        "--workload",
        &workload,
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    // The mocks live on this runtime; the binary runs beside it.
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();

    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("fast") && table.contains("slow"), "{table}");
    assert!(table.contains("Per tenant") && table.contains("t1"));

    let v = read_json(&json);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, name, class) in [(&runs[0], "fast", "cached"), (&runs[1], "slow", "fresh")] {
        assert_eq!(run["name"], name);
        assert_eq!(run["requests"], 10);
        assert_eq!(run["ok"], 10);
        assert_eq!(run["errors"], 0);
        for p in ["p50", "p90", "p99"] {
            assert!(run["ttft_ms"][p].is_f64(), "ttft_ms.{p} in {run}");
        }
        assert!(run["throughput_rps"].as_f64().unwrap() > 0.0);
        assert!(run["goodput_rps"].as_f64().unwrap() > 0.0);
        assert_eq!(run["per_tenant"]["t1"]["requests"], 10);
        assert_eq!(run["per_class"][class]["requests"], 10);
        assert!(run["send_lag_ms"]["max"].is_f64());
    }
    assert!(runs[1]["ttft_ms"]["p50"].as_f64().unwrap() >= 30.0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("fast") && svg.contains("slow"));
}

#[test]
fn serve_configs_start_and_stop_servers_in_turn() {
    // The tool's own noop server stands in for `cake serve`.
    let dir = tempfile::tempdir().unwrap();
    let workload = write(dir.path(), "w.toml", WORKLOAD);
    let a = write(dir.path(), "policy-a.toml", "# config a\n");
    let b = write(dir.path(), "policy-b.toml", "# config b\n");
    let json = dir.path().join("r.json");
    let cmd = format!("{BIN} noop-server --listen {{addr}} --exit-after 60");
    run_cli(&[
        "--serve-config",
        &a,
        "--serve-config",
        &b,
        "--serve-cmd",
        &cmd,
        "--workload",
        &workload,
        "--json",
        json.to_str().unwrap(),
        "--quiet",
    ]);
    let v = read_json(&json);
    let names: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["policy-a", "policy-b"]);
    for r in v["runs"].as_array().unwrap() {
        assert_eq!(r["ok"], 10);
        assert_eq!(r["model"], "noop");
    }
}

#[test]
fn bad_workloads_fail_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let w = write(dir.path(), "w.toml", "[arrival]\nrate = -1.0\n");
    let out = Command::new(BIN)
        .args(["--target", "http://127.0.0.1:9", "--workload", &w])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("arrival.rate"), "{err}");

    let out = Command::new(BIN)
        .args([
            "--target",
            "http://127.0.0.1:9",
            "--workload",
            &w,
            "--rate",
            "5",
            "--duration",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("duration"));
}
