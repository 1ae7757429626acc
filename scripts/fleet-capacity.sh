#!/usr/bin/env bash
# Capacity at the TTFT SLO per placement policy, on a fleet calibrated to
# this machine (run as `CAPACITY=1 scripts/placement-bench.sh`, or alone).
#
# The fleet: $WORKERS `cake worker`s (one compute thread each), each with
# its own memory tier, unthrottled, in front of one shared Redis behind a
# throttled link (config/examples/fleet/). What differs between workers is
# where each prefix already is and how busy each one is.
#
#   1. Calibration: one worker serves fresh 1,024-token prompts one at a
#      time (config/workloads/fleet-calibrate.toml); its load report gives
#      the measured compute rate (a + b·i per chunk). From it:
#        - the balanced bandwidth B* of a document: loading it over the link
#          takes as long as computing it;
#        - the shared store's link = LINK_FRACTION × B* (0.3: a remote fetch
#          is 3.3× slower than a prefill, so only a local tier makes a
#          cached prefix cheap);
#        - the unit rate R1 = one worker's document prefills per second;
#        - the TTFT SLO = SLO_DOCS × one document's prefill time.
#      So the balance between loading and computing, the offered rates and
#      the SLO mean the same on a fast or a slow machine.
#   2. For each offered rate (RATE_MULTS × R1) and each policy, interleaved
#      (all policies at one rate, then the next rate; REPEATS rounds): an
#      empty Redis, fresh workers and gateway, then an open-loop Poisson run
#      of config/workloads/fleet.toml for $DURATION.
#   3. Per policy: max goodput over the sweep (requests meeting the SLO per
#      second; over repeats, the median) and the rate where it peaks, in
#      $OUT_DIR/capacity.json, a table and an ASCII plot.
#
# Usage (repository root, after `cargo build --release -p cake-gateway -p cake-loadtest`):
#   CAPACITY=1 OUT_DIR=capacity scripts/placement-bench.sh                    # ~25 min
#   CAPACITY=1 RATE_MULTS="2 4" DURATION=20 scripts/placement-bench.sh          # smoke, ~5 min
#   CAPACITY=1 MIX="0.6 0.1 0.3" LINK_FRACTION=0.5 scripts/placement-bench.sh
#   CAPACITY=1 POLICIES="adaptive adaptive@0 cache-affinity" scripts/placement-bench.sh
# A policy written POLICY@W runs with policy.work_weight = W (WORK_WEIGHT,
# 1.0 by default, for the others): adaptive@0 scores by TTFT alone.
set -euo pipefail

BIN=${BIN:-target/release}
OUT=${OUT_DIR:-capacity-results}
POLICIES=${POLICIES:-adaptive round-robin least-loaded cache-affinity}
RATE_MULTS=${RATE_MULTS:-1 2 3 4}
DURATION=${DURATION:-40}
REPEATS=${REPEATS:-1}
LINK_FRACTION=${LINK_FRACTION:-0.3}
SLO_DOCS=${SLO_DOCS:-3}
WORK_WEIGHT=${WORK_WEIGHT:-1.0}
# Chunks the gateway takes each worker's own tiers to hold
# (policy.local_chunks_per_worker).
LOCAL_CHUNKS=${LOCAL_CHUNKS:-4096}
# Proportions of document questions, fresh prompts and conversation turns.
read -r DOCS_W FRESH_W CONV_W <<<"${MIX:-0.5 0.2 0.3}"
# Ports: the gateway, Redis, then one per worker.
PORT_BASE=${PORT_BASE:-7300}
GW_PORT=$PORT_BASE
REDIS_PORT=$((PORT_BASE + 1))
WORKERS=2 # gateway.toml lists two
CFG=config/examples/fleet
DOC_TOKENS=1024 # fleet.toml's document_tokens
GATEWAY=http://127.0.0.1:$GW_PORT

for b in cake cake-loadtest; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run cargo build --release first" >&2; exit 1; }
done
for c in redis-server redis-cli python3 curl; do
  command -v "$c" >/dev/null || { echo "$c is needed" >&2; exit 1; }
done
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
REDIS_PID=

# stop_all, wait_http
. "$(dirname "$0")/common.sh"
cleanup() {
  stop_all
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

worker_port() { echo $((PORT_BASE + 11 + $1)); }

# start_fleet POLICY LINK_BYTES_PER_S NWORKERS
start_fleet() {
  # POLICY@W: the policy with work_weight W (adaptive@0: TTFT alone).
  local policy=${1%@*} link=$2 n=$3 w ww=$WORK_WEIGHT
  [[ $1 == *@* ]] && ww=${1#*@}
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  sed -e "s/^bandwidth_bytes_per_s = .*/bandwidth_bytes_per_s = ${link}/" \
    -e "s#^url = .*#url = \"redis://127.0.0.1:${REDIS_PORT}\"#" \
    "$CFG/worker.toml" >"$TMP/worker.toml"
  {
    sed -n '/^\[\[workers\]\]/q;p' "$CFG/gateway.toml" |
      sed -e "s/^placement = .*/placement = \"$policy\"/" \
        -e "s/^listen = .*/listen = \"127.0.0.1:${GW_PORT}\"/" \
        -e "s/^shared_store_bandwidth_bytes_per_s = .*/shared_store_bandwidth_bytes_per_s = ${link}.0/" \
        -e "s/^work_weight = .*/work_weight = ${ww}/" \
        -e "s/^local_chunks_per_worker = .*/local_chunks_per_worker = ${LOCAL_CHUNKS}/"
    for w in $(seq 0 $((n - 1))); do
      printf '[[workers]]\nname = "w%s"\nkind = "cake"\nurl = "http://127.0.0.1:%s"\n\n' "$w" "$(worker_port "$w")"
    done
  } >"$TMP/gateway.toml"
  for w in $(seq 0 $((n - 1))); do
    rm -rf "$TMP/data-w$w"
    RAYON_NUM_THREADS=1 "$BIN/cake" worker --config "$TMP/worker.toml" --name "w$w" \
      --listen "127.0.0.1:$(worker_port "$w")" --data-dir "$TMP/data-w$w" \
      >"$OUT/worker-$w.log" 2>&1 &
    PIDS+=($!)
  done
  "$BIN/cake" serve --config "$TMP/gateway.toml" >"$OUT/gateway.log" 2>&1 &
  PIDS+=($!)
  for w in $(seq 0 $((n - 1))); do wait_http "http://127.0.0.1:$(worker_port "$w")/health"; done
  wait_http "$GATEWAY/health"
}

redis-server --port "$REDIS_PORT" --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# 1. Calibration: one worker, fresh prompts one at a time.
echo "== $(date +%T) calibration"
start_fleet least-loaded 1000000000 1
"$BIN/cake-loadtest" --target "$GATEWAY" --workload config/workloads/fleet-calibrate.toml \
  --quiet >"$OUT/calibrate.txt" 2>&1
curl -fs "http://127.0.0.1:$(worker_port 0)/worker/v1/load" >"$OUT/calibrate-load.json"
stop_all
python3 - "$OUT/calibrate-load.json" "$LINK_FRACTION" "$SLO_DOCS" "$DOC_TOKENS" >"$OUT/calibration.json" <<'EOF'
import json, sys
load = json.load(open(sys.argv[1]))
frac, slo_docs, doc = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
a, b = load["compute_a_s"], load["compute_b_s"]
ct, kvb = load["chunk_tokens"], load["kv_bytes_per_token"]
if not (a > 0 and ct > 0 and kvb > 0):
    sys.exit(f"calibration: the worker measured no compute rate: {load}")
n = doc // ct
doc_s = n * a + b * n * (n - 1) / 2  # one document's prefill, idle
balanced = n * ct * kvb / doc_s      # loading it takes as long
print(json.dumps({
    "compute_a_s": a, "compute_b_s": b, "chunk_tokens": ct, "kv_bytes_per_token": kvb,
    "prefill_tokens_per_s": doc / doc_s, "doc_prefill_s": doc_s,
    "balanced_bandwidth_bytes_per_s": balanced, "link_fraction": frac,
    "link_bytes_per_s": int(balanced * frac), "unit_rate_rps": 1 / doc_s,
    "ttft_slo_ms": round(slo_docs * doc_s * 1000), "slo_docs": slo_docs,
}, indent=1))
EOF
cal() { python3 -c "import json,sys; print(json.load(open('$OUT/calibration.json'))['$1'])"; }
LINK=$(cal link_bytes_per_s)
UNIT=$(cal unit_rate_rps)
SLO_MS=$(cal ttft_slo_ms)
echo "   prefill $(cal prefill_tokens_per_s) tok/s; link $LINK B/s ($LINK_FRACTION x balanced); unit rate $UNIT req/s; SLO $SLO_MS ms"

# 2. The sweep, policies interleaved.
for rep in $(seq 1 "$REPEATS"); do
  for m in $RATE_MULTS; do
    rate=$(python3 -c "print(round($m * $UNIT, 3))")
    for policy in $POLICIES; do
      echo "== $(date +%T) round $rep: $policy at ${m}x ($rate req/s)"
      sed -e "s/^duration_s = .*/duration_s = $DURATION/" \
        -e "s/^ttft_slo_ms = .*/ttft_slo_ms = $SLO_MS/" \
        -e "s/^shared_prefix = [0-9.]*$/shared_prefix = $DOCS_W/" \
        -e "s/^fresh = [0-9.]*$/fresh = $FRESH_W/" \
        -e "s/^conversation = [0-9.]*$/conversation = $CONV_W/" \
        config/workloads/fleet.toml >"$TMP/fleet.toml"
      start_fleet "$policy" "$LINK" "$WORKERS"
      base="$OUT/$policy-${m}x-r$rep"
      "$BIN/cake-loadtest" --target "$GATEWAY" --workload "$TMP/fleet.toml" \
        --rate "$rate" --duration "${DURATION}s" --quiet --json "$base.json" >"$base.txt" 2>&1
      curl -fs "$GATEWAY/metrics" | grep '^cake_worker_requests_total' >>"$base.txt" || true
      stop_all
    done
  done
done

# 3. capacity.json, the table and the plot.
python3 - "$OUT" "$UNIT" "$REPEATS" "$RATE_MULTS" "$POLICIES" <<'EOF'
import json, statistics, sys
out, unit, repeats = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
mults, policies = sys.argv[4].split(), sys.argv[5].split()

def overall(path):
    j = json.load(open(path))
    runs = j.get("runs") if isinstance(j, dict) else j
    r = runs[0] if isinstance(runs, list) and runs else j
    return r.get("overall", r)

res = {}
for p in policies:
    sweep = []
    for m in mults:
        g, t, p99 = [], [], []
        for rep in range(1, repeats + 1):
            try:
                o = overall(f"{out}/{p}-{m}x-r{rep}.json")
            except (OSError, KeyError, ValueError, IndexError):
                continue
            g.append(o["goodput_rps"]); t.append(o["throughput_rps"])
            p99.append(o["ttft_ms"].get("p99", float("nan")))
        if not g:
            continue
        sweep.append({"rate_mult": float(m), "offered_rps": round(float(m) * unit, 3),
                      "goodput_rps": statistics.median(g), "goodput_runs": g,
                      "throughput_rps": statistics.median(t), "ttft_p99_ms": statistics.median(p99)})
    best = max(sweep, key=lambda s: s["goodput_rps"], default=None)
    res[p] = {"max_goodput_rps": best and best["goodput_rps"],
              "at_rate": best and best["offered_rps"],
              "at_rate_mult": best and best["rate_mult"], "sweep": sweep}
cal = json.load(open(f"{out}/calibration.json"))
json.dump({"policies": res, "calibration": cal}, open(f"{out}/capacity.json", "w"), indent=1)

print(f"\ncapacity at the TTFT SLO ({cal['ttft_slo_ms']} ms); unit rate {unit:.3f} req/s")
print(f"{'policy':15} {'max goodput':>11} {'at rate':>9} " + " ".join(f"{m + 'x':>7}" for m in mults))
for p, r in res.items():
    by = {str(s["rate_mult"]): s["goodput_rps"] for s in r["sweep"]}
    cells = " ".join(f"{by.get(str(float(m)), float('nan')):7.2f}" for m in mults)
    print(f"{p:15} {r['max_goodput_rps'] or 0:11.2f} {r['at_rate'] or 0:9.2f} {cells}")
base = [r["max_goodput_rps"] or 0 for p, r in res.items() if not p.startswith("adaptive")]
for p, r in res.items():
    if p.startswith("adaptive") and base and max(base) > 0:
        print(f"{p} / best baseline: {(r['max_goodput_rps'] or 0) / max(base):.2f}")

# Goodput against offered rate, one letter per policy.
rows, width = 12, 4 * len(mults)
top = max((s["goodput_rps"] for r in res.values() for s in r["sweep"]), default=1) or 1
grid = [[" "] * width for _ in range(rows)]
for p, r in res.items():
    for s in r["sweep"]:
        x = mults.index(next(m for m in mults if float(m) == s["rate_mult"])) * 4 + 1
        y = rows - 1 - min(rows - 1, int(s["goodput_rps"] / top * (rows - 1) + 0.5))
        grid[y][x] = "*" if grid[y][x] not in (" ", p[0]) else p[0]
print(f"\ngoodput (req/s, top {top:.2f}) against offered rate; " +
      ", ".join(f"{p[0]} = {p}" for p in res) + ", * = several")
for row in grid:
    print("|" + "".join(row))
print("+" + "".join(f"{m + 'x':<4}" for m in mults))
EOF
