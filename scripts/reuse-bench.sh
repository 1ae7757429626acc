#!/usr/bin/env bash
# Prefix reuse on traffic shaped like users': what `cake serve` (the
# default config: one embedded CPU worker, the synthetic `small` model,
# memory and disk tiers) caches of
#
#   1. a long prompt sent again the moment its answer arrived;
#   2. fan-out bursts (config/workloads/burst.toml: waves of 8 requests over
#      one new ~6,000-token document each), and the same waves of 1 request
#      (what one such request costs alone); then the waves of 8 on a server
#      with two embedded workers (one store), where the gateway's in-flight
#      prefix registry must put each wave on one worker;
#   3. closed-loop chat (config/workloads/chat.toml: each turn sent the
#      moment the previous answer arrived, carrying it).
#
# Every part starts a fresh server on an empty data folder and stops it.
# Results: $OUT_DIR/{repeat.txt,burst.{json,txt},single.{json,txt},burst2.{json,txt},burst2-metrics.txt,chat.{json,txt}}.
#
# Usage (repository root, after `cargo build --release -p cake-gateway -p cake-loadtest`):
#   scripts/reuse-bench.sh
#   CAKE=/path/to/other/cake OUT_DIR=before scripts/reuse-bench.sh   # another build of the server
#   SERVE_ARGS="--model /path/to/model.gguf" scripts/reuse-bench.sh  # a real model
#   PARTS="burst" scripts/reuse-bench.sh                             # some parts only (repeat burst chat)
set -euo pipefail

BIN=${BIN:-target/release}
CAKE=${CAKE:-$BIN/cake}
LOADTEST=${LOADTEST:-$BIN/cake-loadtest}
OUT=${OUT_DIR:-reuse-results}
PORT=${PORT:-8111}
SERVE_ARGS=${SERVE_ARGS:-}
PARTS=${PARTS:-repeat burst chat}
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
tmp=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

start() {
  local data="$tmp/data-$1"
  shift
  # shellcheck disable=SC2086
  "$CAKE" serve --listen "127.0.0.1:$PORT" --data-dir "$data" $SERVE_ARGS "$@" \
    >"$OUT/server-$(basename "$data").log" 2>&1 &
  server=$!
  for _ in $(seq 1 600); do
    if curl -sf "$URL/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "reuse-bench: the server did not come up; see $OUT/server-$(basename "$data").log" >&2
  exit 1
}

stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}

part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if part repeat; then
echo "== 1. the same long prompt, sent again at once"
start repeat
python3 - "$URL" <<'EOF' | tee "$OUT/repeat.txt"
import json, sys, time, urllib.request
url = sys.argv[1]
words = " ".join(f"w{i % 997} says {i * 7919 % 10007}." for i in range(1300))
body = json.dumps({"prompt": words, "max_tokens": 16, "temperature": 0}).encode()
for attempt in ("first", "again at once"):
    t = time.monotonic()
    req = urllib.request.Request(url + "/v1/completions", body, {"content-type": "application/json"})
    u = json.load(urllib.request.urlopen(req))["usage"]
    took = time.monotonic() - t
    print(f"{attempt:>14}: {u['prompt_tokens']} prompt tokens, class {u['cake']['class']}, "
          f"cached {u['prompt_tokens_details']['cached_tokens']}, computed {u['cake']['computed_tokens']}, "
          f"{took * 1000:.0f} ms")
EOF
stop
fi

if part burst; then
echo "== 2. fan-out: waves of 8 over a new document each, then waves of 1"
start burst
"$LOADTEST" --target "$URL" --workload config/workloads/burst.toml --quiet \
  --json "$OUT/burst.json" | tee "$OUT/burst.txt"
stop
sed -e 's/^wave_size = .*/wave_size = 1/' -e 's/^name = .*/name = "burst-single"/' \
  config/workloads/burst.toml >"$tmp/single.toml"
start single
"$LOADTEST" --target "$URL" --workload "$tmp/single.toml" --quiet \
  --json "$OUT/single.json" | tee "$OUT/single.txt"
stop

printf '[[workers]]\nname = "a"\n[[workers]]\nname = "b"\n' >"$tmp/two.toml"
start burst2 --config "$tmp/two.toml"
"$LOADTEST" --target "$URL" --workload config/workloads/burst.toml --quiet \
  --json "$OUT/burst2.json" | tee "$OUT/burst2.txt"
# Requests per worker and tokens computed, as the gateway counted them.
curl -s "$URL/metrics" | grep -E '^cake_(worker_requests|gateway_computed_tokens)_total' \
  | tee "$OUT/burst2-metrics.txt"
stop
fi

if part chat; then
echo "== 3. closed-loop chat, turns back to back"
start chat
"$LOADTEST" --target "$URL" --endpoint chat --workload config/workloads/chat.toml --quiet \
  --json "$OUT/chat.json" | tee "$OUT/chat.txt"
stop
fi
echo "reuse-bench: results in $OUT/"
