#!/usr/bin/env bash
# Scale-out trials on one machine, as config/examples/scale-out/ lays it
# out: nginx in front of two `cake serve` gateways, sharing two
# `cake worker`s, the KV cache and the tenants' limits on a Redis Cluster
# of 3 masters and 3 replicas. Prints one table:
#
#   limits       tenant `acme` (5 req/s) offered OFFERED req/s through
#                nginx for LIMIT_S s, spread over both gateways by nginx:
#                what was admitted per second (the first second's burst of
#                5 apart)
#   master-kill  steady traffic through nginx (documents asked twice: a
#                fresh prefill, then a cached repeat) while the master
#                holding the most chunks is SIGKILLed: failed requests, the
#                failover's time (a replica serving its slots), and when a
#                repeat was cached in full again
#   drain        a gateway SIGTERMed under the same traffic: failed
#                requests (nginx sends new ones to the other gateway)
#
# Usage (repository root, after
# `cargo build --release -p cake-gateway -p cake-loadtest`; needs
# redis-server, redis-cli, nginx, python3, curl):
#   scripts/scale-out.sh
#   OFFERED=40 LIMIT_S=20 scripts/scale-out.sh
set -uo pipefail

BIN=${BIN:-target/release}
OUT=${OUT_DIR:-results/tmp/scale-out}
PORT_BASE=${PORT_BASE:-7400}
OFFERED=${OFFERED:-20}
LIMIT_S=${LIMIT_S:-10}
TRAFFIC_S=${TRAFFIC_S:-30}
KILL_AT_S=${KILL_AT_S:-10}
DOC_TOKENS=${DOC_TOKENS:-2048}
CFG=config/examples/scale-out
NGINX_PORT=$PORT_BASE
GW_PORTS=($((PORT_BASE + 1)) $((PORT_BASE + 2)))
WORKER_PORTS=($((PORT_BASE + 11)) $((PORT_BASE + 12)))
REDIS_PORTS=($(seq $((PORT_BASE + 21)) $((PORT_BASE + 26))))
URL=http://127.0.0.1:$NGINX_PORT

for b in cake cake-loadtest; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: cargo build --release -p cake-gateway -p cake-loadtest" >&2; exit 1; }
done
for c in redis-server redis-cli nginx python3 curl; do
  command -v "$c" >/dev/null || { echo "$c is needed (Debian: apt-get install redis-server nginx python3 curl)" >&2; exit 1; }
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d)
PIDS=()
REDIS_PIDS=()
NGINX_PID=
ROWS=()

# stop_all, wait_http
. "$(dirname "$0")/common.sh"
cleanup() {
  stop_all
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null
  for p in "${REDIS_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

# The example's ports (7401.., 7411.., 7421..) become this run's.
ports() {
  sed -e "s/127\.0\.0\.1:7400/127.0.0.1:$NGINX_PORT/g" \
    -e "s/127\.0\.0\.1:7401/127.0.0.1:${GW_PORTS[0]}/g" \
    -e "s/127\.0\.0\.1:7402/127.0.0.1:${GW_PORTS[1]}/g" \
    -e "s/127\.0\.0\.1:7411/127.0.0.1:${WORKER_PORTS[0]}/g" \
    -e "s/127\.0\.0\.1:7412/127.0.0.1:${WORKER_PORTS[1]}/g" \
    -e "s/127\.0\.0\.1:7421/127.0.0.1:${REDIS_PORTS[0]}/g" \
    -e "s/127\.0\.0\.1:7422/127.0.0.1:${REDIS_PORTS[1]}/g" \
    -e "s/127\.0\.0\.1:7423/127.0.0.1:${REDIS_PORTS[2]}/g" "$1"
}

start_cluster() {
  local p i=0
  for p in "${REDIS_PORTS[@]}"; do
    mkdir -p "$TMP/redis-$p"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no \
      --cluster-enabled yes --cluster-node-timeout 1000 --repl-diskless-sync-delay 0 \
      --cluster-replica-validity-factor 0 --dir "$TMP/redis-$p" \
      >"$OUT/redis-$p.log" 2>&1 &
    REDIS_PIDS[i]=$!
    i=$((i + 1))
  done
  for p in "${REDIS_PORTS[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create $(for p in "${REDIS_PORTS[@]}"; do printf '127.0.0.1:%s ' "$p"; done) \
    --cluster-replicas 1 --cluster-yes >"$OUT/cluster-create.log" 2>&1 ||
    { echo "redis-cli --cluster create failed: see $OUT/cluster-create.log" >&2; return 1; }
  cluster_ok 20
}

# cluster_ok SECONDS: every running node says cluster_state:ok and no
# stopped node still serves slots (a killed master's replica has taken over).
cluster_ok() {
  local deadline=$((SECONDS + $1)) i ok live=
  while [ $SECONDS -lt $deadline ]; do
    ok=1
    for i in "${!REDIS_PORTS[@]}"; do
      if [ -z "${REDIS_PIDS[i]}" ]; then continue; fi
      live=${REDIS_PORTS[i]}
      redis-cli -p "$live" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
    done
    for i in "${!REDIS_PORTS[@]}"; do
      [ -n "${REDIS_PIDS[i]}" ] && continue
      # A stopped node listed as a master with slots (fields past the 8th).
      redis-cli -p "$live" cluster nodes 2>/dev/null |
        awk -v p="127.0.0.1:${REDIS_PORTS[i]}@" 'index($2, p) == 1 && $3 ~ /master/ && NF > 8 {f=1} END {exit !f}' && ok=0
    done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  return 1
}

start_fleet() {
  # The workers' own memory tier off: every cached prefix here comes
  # through the cluster, so the trials measure it.
  ports "$CFG/worker.toml" | sed '/^\[kv.memory\]/,/^\[/ s/^enabled = true/enabled = false/' >"$TMP/worker.toml"
  ports "$CFG/gateway.toml" >"$TMP/gateway.toml"
  mkdir -p "$TMP/nginx/logs"
  ports "$CFG/nginx.conf" >"$TMP/nginx.conf"
  local i
  for i in 0 1; do
    RAYON_NUM_THREADS=1 "$BIN/cake" worker --config "$TMP/worker.toml" --name "w$i" \
      --listen "127.0.0.1:${WORKER_PORTS[i]}" --data-dir "$TMP/data-w$i" \
      >"$OUT/worker-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 0 1; do
    "$BIN/cake" serve --config "$TMP/gateway.toml" --listen "127.0.0.1:${GW_PORTS[i]}" \
      --data-dir "$TMP/data-g$i" >"$OUT/gateway-$i.log" 2>&1 &
    PIDS+=($!)
    GW_PIDS[i]=$!
  done
  nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -g 'daemon off;' >"$OUT/nginx.log" 2>&1 &
  NGINX_PID=$!
  for i in 0 1; do wait_http "http://127.0.0.1:${WORKER_PORTS[i]}/health" || return 1; done
  for i in 0 1; do wait_http "http://127.0.0.1:${GW_PORTS[i]}/health" || return 1; done
  wait_http "$URL/health"
}

echo "== $(date +%T) cluster on ${REDIS_PORTS[*]}"
start_cluster || exit 1
echo "== $(date +%T) workers ${WORKER_PORTS[*]}, gateways ${GW_PORTS[*]}, nginx $NGINX_PORT"
start_fleet || { echo "the fleet did not start: see $OUT/*.log" >&2; exit 1; }

# ---- limits: one tenant's rate across both gateways ----
echo "== $(date +%T) limits: acme at 5 req/s, offered $OFFERED req/s for $LIMIT_S s through nginx"
python3 - "$URL" "$OFFERED" "$LIMIT_S" "${GW_PORTS[@]}" >"$OUT/limits.json" <<'EOF'
import json, sys, threading, time, urllib.request, urllib.error
url, rate, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
res, lock = [], threading.Lock()
body = json.dumps({"prompt": "hello there", "max_tokens": 1}).encode()
def one(i):
    t = time.time()
    req = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-acme"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read(); s = r.status
    except urllib.error.HTTPError as e:
        e.read(); s = e.code
    except Exception as e:
        s = type(e).__name__
    with lock:
        res.append({"i": i, "t": t, "status": s})
start, threads, n = time.time(), [], int(rate * secs)
for i in range(n):
    delay = start + i / rate - time.time()
    if delay > 0: time.sleep(delay)
    th = threading.Thread(target=one, args=(i,)); th.start(); threads.append(th)
for th in threads: th.join()
ok = [r for r in res if r["status"] == 200]
# The bucket starts full (a burst of 5): the rate is what passed after it.
print(json.dumps({"offered": n, "seconds": secs, "ok": len(ok),
    "refused": sum(1 for r in res if r["status"] == 429),
    "other": sorted(set(str(r["status"]) for r in res) - {"200", "429"}),
    "per_s": (len(ok) - 5) / secs}))
EOF
ROWS+=("$(python3 - "$OUT/limits.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
other = ", ".join(r["other"]) or "none"
print(f"| limits | {r['offered']} | {r['ok']} | 429: {r['refused']}; other: {other} | "
      f"{r['per_s']:.2f} req/s admitted after the burst (limit 5: {r['per_s'] / 5:.2f}x) |")
EOF
)")

# ---- master-kill and drain: steady traffic, a fault in the middle ----
# traffic SECONDS LOG: documents asked twice (fresh, then a repeat), one at
# a time, through nginx; each request's time, status and cached tokens.
traffic() {
  python3 - "$URL" "$1" "$DOC_TOKENS" >"$2" <<'EOF'
import json, sys, time, urllib.request, urllib.error
url, secs, tokens = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
# ~1.3 tokens a word for the small model's tokenizer.
words = int(tokens / 1.3)
start, i = time.time(), 0
def ask(doc, rep):
    text = " ".join(f"doc{doc} word{w} value{(w * 7919 + doc) % 1000}" for w in range(words // 3))
    body = json.dumps({"prompt": text + "\nQuestion: what is it about?", "max_tokens": 2,
                       "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-steady"})
    t = time.time()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            v = json.loads(r.read()); s = r.status
        cached = v["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
        prompt = v["usage"]["prompt_tokens"]
    except urllib.error.HTTPError as e:
        e.read(); s, cached, prompt = e.code, 0, 0
    except Exception as e:
        s, cached, prompt = type(e).__name__, 0, 0
    print(json.dumps({"t": t, "end": time.time(), "doc": doc, "repeat": rep, "status": s,
                      "cached": cached, "prompt": prompt}), flush=True)
# A user's next turn comes a moment after the answer: the write-behind of
# the first answer's chunks has landed by then.
while time.time() - start < secs:
    ask(i, False); time.sleep(0.5); ask(i, True); i += 1
EOF
}

# The master holding the most keys.
busiest_master() {
  local i best= most=-1 n
  for i in "${!REDIS_PORTS[@]}"; do
    [ -z "${REDIS_PIDS[i]}" ] && continue
    redis-cli -p "${REDIS_PORTS[i]}" role 2>/dev/null | head -1 | grep -q master || continue
    n=$(redis-cli -p "${REDIS_PORTS[i]}" dbsize 2>/dev/null)
    [ "${n:-0}" -gt "$most" ] && { most=$n; best=$i; }
  done
  echo "$best"
}

echo "== $(date +%T) master-kill: traffic for $TRAFFIC_S s, the busiest master killed at $KILL_AT_S s"
traffic "$TRAFFIC_S" "$OUT/master-kill.jsonl" &
TRAFFIC=$!
sleep "$KILL_AT_S"
victim=$(busiest_master)
victim_port=${REDIS_PORTS[victim]}
KILLED=$(python3 -c 'import time; print(time.time())')
kill -9 "${REDIS_PIDS[victim]}"
REDIS_PIDS[victim]=
if cluster_ok 30; then
  FAILOVER=$(python3 -c 'import time; print(time.time())')
else
  FAILOVER=
fi
wait "$TRAFFIC"
ROWS+=("$(python3 - "$OUT/master-kill.jsonl" "$KILLED" "${FAILOVER:-0}" "$victim_port" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
killed, failover, port = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ok = [r for r in rows if r["status"] == 200]
bad = [r for r in rows if r["status"] != 200]
errs = {}
for r in bad: errs[str(r["status"])] = errs.get(str(r["status"]), 0) + 1
# Cake computes some front chunks of a cached prompt while it loads the
# rest, so a repeat's cached tokens vary; "cached again" is a repeat that
# reused at least 90% of what the median repeat before the kill did.
reps = lambda rs: [r for r in rs if r["repeat"] and r["status"] == 200]
before = sorted(r["cached"] for r in reps(rows) if r["end"] < killed)
typical = before[len(before) // 2] if before else 0
during = [r["cached"] for r in reps(rows) if killed < r["t"] and (not failover or r["t"] < failover)]
after = [r for r in reps(rows) if r["t"] > max(killed, failover) and r["cached"] >= 0.9 * typical > 0]
back = f"{after[0]['end'] - failover:.1f} s after the failover" if after and failover else "never"
fo = f"{failover - killed:.1f} s" if failover else "not within 30 s"
e = ", ".join(f"{k}: {v}" for k, v in sorted(errs.items())) or "none"
dur = f"{sum(during) / len(during):.0f}" if during else "-"
print(f"| master-kill | {len(rows)} | {len(ok)} | {e} | master :{port} killed; failover {fo}; "
      f"repeats reused {typical} tokens before, {dur} during; cached again {back} |")
EOF
)")

echo "== $(date +%T) drain: traffic for 12 s, gateway 0 SIGTERMed at 4 s"
traffic 12 "$OUT/drain.jsonl" &
TRAFFIC=$!
sleep 4
kill -TERM "${GW_PIDS[0]}"
T0=$SECONDS
wait "${GW_PIDS[0]}"
CODE=$?
DRAINED=$((SECONDS - T0))
wait "$TRAFFIC"
ROWS+=("$(python3 - "$OUT/drain.jsonl" "$CODE" "$DRAINED" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad = [r for r in rows if r["status"] != 200]
errs = {}
for r in bad: errs[str(r["status"])] = errs.get(str(r["status"]), 0) + 1
e = ", ".join(f"{k}: {v}" for k, v in sorted(errs.items())) or "none"
print(f"| drain | {len(rows)} | {len(rows) - len(bad)} | {e} | gateway 0 exited {sys.argv[2]} "
      f"after {sys.argv[3]} s; nginx sent the rest to gateway 1 |")
EOF
)")

echo
echo "| trial | sent | ok | errors | result |"
echo "|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
