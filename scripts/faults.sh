#!/usr/bin/env bash
# Fault trials against the release binaries, each under load from
# cake-loadtest, printed as one table:
#
#   shutdown-term  SIGTERM with streams in flight (drain, exit code, time)
#   shutdown-int   the same with SIGINT
#   disk-full      the KV folder on a 20 MB tmpfs, capacity left at 10 GiB
#                  (needs root to mount; skipped with a message otherwise)
#   big-prompt     one 7.8 MB prompt (under the 8 MiB body limit) during
#                  the load: its status and time, the server's peak RSS
#   corrupt-chunks every stored chunk file corrupted between two runs
#   redis-killed   the Redis KV tier killed mid-load and restarted
#                  (skipped when redis-server is missing)
#   overload       an open loop of non-streaming requests at FLOOD_RATE
#                  req/s (~10x what the CPU serves) for FLOOD_S seconds,
#                  each on its own connection, then one probe
#                  FLOOD_PROBE_S after: how fast refusals come, their
#                  Retry-After, the longest wait for an answer, the probe's
#                  time (not in the default list: TRIALS=overload)
#
# Columns: requests sent, ok, errors by status (or `connect`, `transport`,
# `truncated`, `stream`, `timeout`), lost (neither an answer nor an error
# event: `transport` + `truncated`; a `timeout` is the client giving up on
# a slow answer, counted with the errors), the server's peak RSS, and
# recovery (per trial: the drain's time and exit code, the capacity the
# disk store fell back to, the time until Redis is written again).
#
# Usage (repository root, after
# `cargo build --release -p cake-gateway -p cake-loadtest`):
#   scripts/faults.sh
#   RATE=2 DURATION=20s TRIALS="shutdown-term big-prompt" scripts/faults.sh
#   TRIALS=overload FLOOD_RATE=40 scripts/faults.sh
set -uo pipefail

BIN=${BIN:-target/release}
OUT=${OUT_DIR:-fault-results}
RATE=${RATE:-1.5}
DURATION=${DURATION:-15s}
TRIALS=${TRIALS:-shutdown-term shutdown-int disk-full big-prompt corrupt-chunks redis-killed}
PORT=${PORT:-8311}
# The shutdown trials' server.drain_timeout_ms: streams still running then
# end with an error event and [DONE].
DRAIN_MS=${DRAIN_MS:-10000}
REDIS_PORT=${REDIS_PORT:-6393}
FLOOD_RATE=${FLOOD_RATE:-40}
FLOOD_S=${FLOOD_S:-20}
FLOOD_PROBE_S=${FLOOD_PROBE_S:-10}
URL=http://127.0.0.1:$PORT

for b in cake cake-loadtest; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: cargo build --release -p cake-gateway -p cake-loadtest" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "python3 is needed (JSON and the big prompt)" >&2; exit 1; }
mkdir -p "$OUT"
TMP=$(mktemp -d)
SERVER=""
REDIS=""
ROWS=()

cleanup() {
  [ -n "$SERVER" ] && kill -KILL "$SERVER" 2>/dev/null
  [ -n "$REDIS" ] && kill -KILL "$REDIS" 2>/dev/null
  mountpoint -q "$TMP/tmpfs" 2>/dev/null && umount "$TMP/tmpfs"
  rm -rf "$TMP"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f} s')"; }
rss_mb() { awk '/VmHWM/ {printf "%.0f MB", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

echo "model: small (seed 0) under $TMP/model"
"$BIN/cake" model init --preset small --seed 0 --out "$TMP/model" >/dev/null || exit 1

# Streams of 16-32 tokens over shared documents (the cached class) and
# fresh prompts; long enough that a shutdown always finds some in flight.
cat >"$TMP/load.toml" <<EOF
name = "faults"
seed = 7
duration_s = 15.0
prompt_format = "text"
request_timeout_s = 60.0
temperature = 0.0

[arrival]
process = "poisson"
rate = 3.0

[mix]
shared_prefix = 0.7
fresh = 0.3

[shared_prefix]
documents = 4
document_tokens = 512
question_tokens = { dist = "uniform", min = 16, max = 48 }

[fresh]
prompt_tokens = { dist = "uniform", min = 128, max = 512 }

[output]
max_tokens = { dist = "uniform", min = 16, max = 32 }
EOF

# config FILE [extra TOML appended] [extra [server] keys]
config() {
  cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$PORT"
data_dir = "$TMP/data"
${3:-}
[model]
path = "$TMP/model"
name = "small"
$2
EOF
}

start_server() { # CONFIG LOG
  "$BIN/cake" serve --config "$1" >"$2" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 600); do
    curl -sf "$URL/health" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER" 2>/dev/null || { echo "server exited; see $2" >&2; SERVER=""; return 1; }
    sleep 0.1
  done
  echo "server did not come up; see $2" >&2
  return 1
}

stop_server() { # SIGNAL -> sets STOPPED="drained in <seconds>, exit <code>"
  local t0 t1 rc
  t0=$(now)
  kill -"$1" "$SERVER"
  wait "$SERVER"
  rc=$?
  t1=$(now)
  SERVER=""
  STOPPED="drained in $(secs "$t0" "$t1"), exit $rc"
}

metric() { # NAME_WITH_LABELS -> value (0 when absent)
  curl -s "$URL/metrics" | awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}'
}

load() { # NAME -> runs cake-loadtest in the background, sets LOADER
  "$BIN/cake-loadtest" --target "$URL" --workload "$TMP/load.toml" --model small \
    --rate "$RATE" --duration "$DURATION" --json "$OUT/$1.json" --quiet >"$OUT/$1.txt" 2>&1 &
  LOADER=$!
}

# row TRIAL JSON RSS RECOVERY [EXTRA_SENT EXTRA_OK EXTRA_ERR]
row() {
  ROWS+=("$(python3 - "$@" <<'EOF'
import json, sys
trial, path, rss, recovery = sys.argv[1:5]
extra = sys.argv[5:]
try:
    r = json.load(open(path))["runs"][0]
except Exception as e:
    print(f"| {trial} | ? | ? | no results ({e}) | ? | {rss} | {recovery} |")
    sys.exit()
sent, ok = r["requests"], r["ok"]
errs = dict(r.get("errors_by_status", {}))
if extra:
    sent += int(extra[0]); ok += int(extra[1])
    n = int(extra[3]) if len(extra) > 3 else 1
    if extra[2] and n:
        errs[extra[2]] = errs.get(extra[2], 0) + n
lost = sum(errs.get(k, 0) for k in ("transport", "truncated"))
e = ", ".join(f"{k}: {v}" for k, v in sorted(errs.items())) or "none"
print(f"| {trial} | {sent} | {ok} | {e} | {lost} | {rss} | {recovery} |")
EOF
)")
}

trial_shutdown() { # NAME SIGNAL
  config "$TMP/$1.toml" "" "drain_timeout_ms = $DRAIN_MS"
  start_server "$TMP/$1.toml" "$OUT/$1.server.log" || return
  load "$1"
  sleep 5
  # Three long streams in flight when the signal comes.
  local i
  for i in 1 2 3; do
    curl -sN -H 'content-type: application/json' "$URL/v1/completions" \
      -d "{\"model\": \"small\", \"prompt\": \"stream $i of the shutdown trial\", \"max_tokens\": 200, \"ignore_eos\": true, \"stream\": true}" \
      >"$OUT/$1.stream$i" 2>/dev/null &
  done
  sleep 1
  local rss done=0
  rss=$(rss_mb "$SERVER")
  stop_server "$2"
  wait "$LOADER"
  wait
  for i in 1 2 3; do
    tail -c 200 "$OUT/$1.stream$i" | grep -q 'data: \[DONE\]' && ! grep -q '"error"' "$OUT/$1.stream$i" && done=$((done + 1))
  done
  row "$1" "$OUT/$1.json" "$rss" "$STOPPED; $done/3 long streams whole with [DONE]" 3 "$done" truncated $((3 - done))
}

trial_disk_full() {
  if [ "$(id -u)" != 0 ]; then
    echo "disk-full: skipped (mounting a tmpfs needs root)"
    ROWS+=("| disk-full | - | - | skipped: not root | - | - | - |")
    return
  fi
  mkdir -p "$TMP/tmpfs"
  mount -t tmpfs -o size=20m tmpfs "$TMP/tmpfs" || { ROWS+=("| disk-full | - | - | skipped: mount failed | - | - | - |"); return; }
  config "$TMP/disk.toml" "[kv.memory]
capacity_bytes = 1048576
[kv.disk]
path = \"$TMP/tmpfs/kv\""
  start_server "$TMP/disk.toml" "$OUT/disk-full.server.log" || return
  load disk-full
  wait "$LOADER"
  local rss full errs cap
  rss=$(rss_mb "$SERVER")
  full=$(metric 'cake_kv_disk_full_total{store="disk"}')
  errs=$(metric 'cake_kv_errors_total{store="disk"}')
  cap=$(metric 'cake_kv_capacity_bytes{tier="disk"}')
  stop_server TERM
  umount "$TMP/tmpfs"
  row disk-full "$OUT/disk-full.json" "$rss" \
    "capacity $(python3 -c "print(f'{$cap/1e6:.1f}')") MB; disk full $full, write errors $errs"
}

trial_big_prompt() {
  config "$TMP/big.toml" ""
  start_server "$TMP/big.toml" "$OUT/big-prompt.server.log" || return
  python3 - "$TMP/big.json" <<'EOF'
import json, sys
words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do ".split()
text = " ".join(words[i % len(words)] for i in range(1_300_000))[: 7_800_000]
json.dump({"model": "small", "prompt": text, "max_tokens": 1}, open(sys.argv[1], "w"))
EOF
  load big-prompt
  sleep 3
  local before res rss
  before=$(rss_mb "$SERVER")
  res=$(curl -s -o "$OUT/big-prompt.body" -w '%{http_code} %{time_total}' \
    -H 'content-type: application/json' --data-binary @"$TMP/big.json" "$URL/v1/completions")
  wait "$LOADER"
  rss=$(rss_mb "$SERVER")
  stop_server TERM
  local code=${res% *} t=${res#* }
  local ok=0 err=$code
  [ "$code" = 200 ] && { ok=1; err=""; }
  row big-prompt "$OUT/big-prompt.json" "$rss (before: $before)" \
    "7.8 MB prompt: $code $(grep -o '"code":"[a-z_]*"' "$OUT/big-prompt.body" | head -1 | cut -d'"' -f4) in $(printf %.2f "$t") s" 1 "$ok" "$err"
}

trial_corrupt() {
  config "$TMP/corrupt.toml" "[kv.memory]
enabled = false"
  start_server "$TMP/corrupt.toml" "$OUT/corrupt-warm.server.log" || return
  load corrupt-warm
  wait "$LOADER"
  stop_server TERM
  local n
  n=$(python3 - "$TMP/data/kv" <<'EOF'
import os, sys
n = 0
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        if f.endswith(".kv"):
            p = os.path.join(d, f)
            size = os.path.getsize(p)
            with open(p, "r+b") as fh:
                fh.seek(size // 2)
                fh.write(b"\xff" * 64)
            n += 1
print(n)
EOF
)
  start_server "$TMP/corrupt.toml" "$OUT/corrupt-chunks.server.log" || return
  load corrupt-chunks
  wait "$LOADER"
  local rss c
  rss=$(rss_mb "$SERVER")
  c=$(metric 'cake_kv_corrupt_total{store="disk"}')
  stop_server TERM
  row corrupt-chunks "$OUT/corrupt-chunks.json" "$rss" "$n files corrupted; $c found corrupt, recomputed"
}

trial_redis() {
  if ! command -v redis-server >/dev/null; then
    echo "redis-killed: skipped (no redis-server)"
    ROWS+=("| redis-killed | - | - | skipped: no redis-server | - | - | - |")
    return
  fi
  redis-server --port "$REDIS_PORT" --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  REDIS=$!
  sleep 0.5
  config "$TMP/redis.toml" "[kv.memory]
enabled = false
[kv.disk]
enabled = false
[kv.redis]
enabled = true
url = \"redis://127.0.0.1:$REDIS_PORT\""
  start_server "$TMP/redis.toml" "$OUT/redis-killed.server.log" || return
  load redis-killed
  sleep 5
  kill -KILL "$REDIS"
  wait "$REDIS" 2>/dev/null
  sleep 3
  redis-server --port "$REDIS_PORT" --save "" --appendonly no >>"$OUT/redis.log" 2>&1 &
  REDIS=$!
  local t0 w0 rec="not written again"
  t0=$(now)
  w0=$(metric 'cake_kv_written_bytes_total{tier="redis"}')
  for _ in $(seq 1 100); do
    sleep 0.2
    if [ "$(metric 'cake_kv_written_bytes_total{tier="redis"}')" != "$w0" ]; then
      rec="written again $(secs "$t0" "$(now)") after restart"
      break
    fi
  done
  wait "$LOADER"
  local rss
  rss=$(rss_mb "$SERVER")
  stop_server TERM
  kill -TERM "$REDIS" 2>/dev/null
  wait "$REDIS" 2>/dev/null
  REDIS=""
  row redis-killed "$OUT/redis-killed.json" "$rss" "$rec"
}

trial_overload() {
  config "$TMP/overload.toml" ""
  start_server "$TMP/overload.toml" "$OUT/overload.server.log" || return
  local rss
  python3 - "$URL" "$FLOOD_RATE" "$FLOOD_S" "$FLOOD_PROBE_S" "$OUT/overload.json" <<'EOF' >"$OUT/overload.txt" 2>&1
# Open loop: every request on its own connection, sent on schedule
# whatever the answers; then one probe. Standard library only.
import asyncio, json, random, sys, time
from urllib.parse import urlparse

url, rate, dur, probe_after, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
u = urlparse(url)
words = "the of and to in is was for on that with as by at from his her an were are".split()

async def one(i, max_tokens=None):
    rnd = random.Random(i)
    prompt = " ".join(rnd.choice(words) for _ in range(rnd.randint(100, 400)))
    body = json.dumps({"model": "small", "prompt": f"{i} {prompt}",
                       "max_tokens": max_tokens or rnd.randint(64, 128), "temperature": 0,
                       "ignore_eos": True}).encode()
    t0 = time.monotonic()
    try:
        r, w = await asyncio.open_connection(u.hostname, u.port)
        w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await w.drain()
        data = await asyncio.wait_for(r.read(), 120)
        w.close()
    except Exception as e:
        return {"status": "transport", "t": time.monotonic() - t0, "error": str(e)}
    t = time.monotonic() - t0
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    if not lines or len(lines[0].split()) < 2:
        return {"status": "truncated", "t": t}
    status = lines[0].split()[1]
    hdr = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    code = None
    if status != "200":
        try:
            code = json.loads(rest)["error"]["code"]
        except Exception:
            pass
    return {"status": status, "t": t, "retry_after": hdr.get("retry-after"), "code": code}

async def main():
    tasks, start = [], time.monotonic()
    n = int(rate * dur)
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    flood_end = time.monotonic()
    await asyncio.sleep(max(0.0, flood_end + probe_after - time.monotonic()))
    probe = await one(10**9, max_tokens=16)
    res = await asyncio.gather(*tasks)
    json.dump({"results": res, "probe": probe}, open(out, "w"))
asyncio.run(main())
EOF
  rss=$(rss_mb "$SERVER")
  stop_server TERM
  ROWS+=("$(python3 - "$OUT/overload.json" "$rss" "$FLOOD_RATE" "$FLOOD_S" "$FLOOD_PROBE_S" <<'EOF'
import json, sys
rss, rate, dur, after = sys.argv[2:6]
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"| overload | ? | ? | no results ({e}) | ? | {rss} | - |")
    sys.exit()
res, probe = d["results"], d["probe"]
ok = [r for r in res if r["status"] == "200"]
bad = [r for r in res if r["status"] != "200"]
by = {}
for r in bad:
    k = r["status"] + (f" {r['code']}" if r.get("code") else "")
    by[k] = by.get(k, 0) + 1
lost = sum(v for k, v in by.items() if k.startswith(("transport", "truncated")))
refused = [r for r in bad if r["status"] in ("429", "503")]
def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")
ts = [r["t"] for r in refused]
ra = sorted({int(r["retry_after"]) for r in refused if r.get("retry_after")})
noretry = sum(1 for r in refused if not r.get("retry_after"))
oks = [r["t"] for r in ok]
e = ", ".join(f"{k}: {v}" for k, v in sorted(by.items())) or "none"
rec = (f"{rate}/s for {dur} s; refused in p50 {q(ts, .5):.2f} s, max {max(ts, default=float('nan')):.2f} s, "
       f"Retry-After {ra[0] if ra else '-'}-{ra[-1] if ra else '-'} s ({noretry} without); "
       f"answers in p50 {q(oks, .5):.1f} s, max {max(oks, default=float('nan')):.1f} s; "
       f"probe {after} s after: {probe['status']} in {probe['t']:.2f} s")
print(f"| overload | {len(res) + 1} | {len(ok) + (probe['status'] == '200')} | {e} | {lost} | {rss} | {rec} |")
EOF
)")
}

for t in $TRIALS; do
  echo "== $t"
  rm -rf "$TMP/data"
  case $t in
    shutdown-term) trial_shutdown shutdown-term TERM ;;
    shutdown-int) trial_shutdown shutdown-int INT ;;
    disk-full) trial_disk_full ;;
    big-prompt) trial_big_prompt ;;
    corrupt-chunks) trial_corrupt ;;
    redis-killed) trial_redis ;;
    overload) trial_overload ;;
    *) echo "unknown trial $t" >&2 ;;
  esac
done

echo
echo "| trial | sent | ok | errors by status | lost | peak RSS | recovery |"
echo "|---|---|---|---|---|---|---|"
for r in "${ROWS[@]}"; do echo "$r"; done
