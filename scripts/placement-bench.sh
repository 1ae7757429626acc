#!/usr/bin/env bash
# Placement policies compared on one machine. Two `cake worker` processes,
# each with one compute thread (RAYON_NUM_THREADS=1: a core each) and its
# own simulated storage link (a throttle in front of one shared Redis),
# behind one gateway (config/examples/placement/). For each policy:
#
#   1. an empty Redis, the two workers and the gateway with that policy;
#   2. a warm-up that stores the workload's documents
#      (config/workloads/placement-warm.toml);
#   3. the measured run (config/workloads/placement.toml, at $RATES);
#   4. everything stopped.
#
# Every policy starts from the same state, so none is measured against
# chunks another run stored. Results: $OUT_DIR/<policy>-<rate>.{json,txt}
# and a table of goodput (requests meeting the TTFT SLO per second) and
# TTFT percentiles per policy and rate.
#
# Usage (repository root, after `cargo build --release`):
#   scripts/placement-bench.sh
#   RATES="1.5 2" DURATION=90s POLICIES="adaptive least-loaded" scripts/placement-bench.sh
#   LINKS="24000000 1500000" scripts/placement-bench.sh
#   GATEWAY_CONFIG=gateway-slo.toml scripts/placement-bench.sh   # SLO shedding on
#
#   CAPACITY=1 OUT_DIR=DIR scripts/placement-bench.sh
# runs the fleet capacity benchmark instead (scripts/fleet-capacity.sh:
# workers with their own memory tiers in front of one shared store behind
# a link calibrated to this machine's compute rate; writes DIR/capacity.json).
set -euo pipefail

if [ "${CAPACITY:-0}" = 1 ]; then
  exec "$(dirname "$0")/fleet-capacity.sh"
fi

BIN=${BIN:-target/release}
OUT=${OUT_DIR:-placement-results}
RATES=${RATES:-1.5}
DURATION=${DURATION:-90s}
POLICIES=${POLICIES:-adaptive round-robin least-loaded cache-affinity}
# Each worker's link in bytes/s (worker.toml's is about the balanced point
# for one core); e.g. LINKS="24000000 1500000" for one worker near the
# store and one far from it.
read -r -a LINK <<<"${LINKS:-6000000 6000000}"
REDIS_PORT=6390 # as in config/examples/placement/worker.toml
GATEWAY=http://127.0.0.1:8101
CFG=config/examples/placement
# The gateway's config in $CFG: gateway.toml (no tenants: nothing is shed)
# or gateway-slo.toml (the workload's SLO configured: requests predicted to
# miss it are refused at once).
GATEWAY_CONFIG=${GATEWAY_CONFIG:-gateway.toml}

for b in cake cake-loadtest; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run cargo build --release first" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()

# stop_all, wait_http
. "$(dirname "$0")/common.sh"
cleanup() {
  stop_all
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

for rate in $RATES; do
  for policy in $POLICIES; do
    echo "== $(date +%T) $policy at $rate req/s"
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    for w in 0 1; do
      sed "s/^bandwidth_bytes_per_s = .*/bandwidth_bytes_per_s = ${LINK[$w]}/" \
        "$CFG/worker.toml" >"$TMP/worker-$w.toml"
      RAYON_NUM_THREADS=1 "$BIN/cake" worker --config "$TMP/worker-$w.toml" --name "w$w" \
        --listen "127.0.0.1:910$((w + 1))" --data-dir "data/placement-w$w" \
        >"$OUT/worker-$w.log" 2>&1 &
      PIDS+=($!)
    done
    sed "s/^placement = .*/placement = \"$policy\"/" "$CFG/$GATEWAY_CONFIG" >"$TMP/gateway.toml"
    "$BIN/cake" serve --config "$TMP/gateway.toml" >"$OUT/gateway.log" 2>&1 &
    PIDS+=($!)
    wait_http "$GATEWAY/health"
    "$BIN/cake-loadtest" --target "$GATEWAY" --workload config/workloads/placement-warm.toml \
      --quiet >"$OUT/warm.txt" 2>&1
    "$BIN/cake-loadtest" --target "$GATEWAY" --workload config/workloads/placement.toml \
      --rate "$rate" --duration "$DURATION" --quiet \
      --json "$OUT/$policy-$rate.json" >"$OUT/$policy-$rate.txt" 2>&1
    # Where placement sent each class.
    curl -fs "$GATEWAY/metrics" | grep '^cake_worker_requests_total' >>"$OUT/$policy-$rate.txt" || true
    stop_all
  done
done
kill "$REDIS_PID" 2>/dev/null || true

# One line per run: the loadtest's per-tenant row (one tenant) with the
# columns that matter here.
printf '%-15s %5s %9s %9s %9s %9s %9s\n' policy rate req/s goodput/s "ttft p50" p90 p99
for rate in $RATES; do
  for policy in $POLICIES; do
    awk -v p="$policy" -v r="$rate" '$1 == "default" && NF >= 10 {
      printf "%-15s %5s %9s %9s %9s %9s %9s\n", p, r, $5, $6, $8, $9, $10; exit }' \
      "$OUT/$policy-$rate.txt"
  done
done
