# Helpers the benchmark scripts share (sourced, not run). The caller keeps
# the PIDs of what it starts in the array PIDS.

# Stops everything in PIDS and waits for it.
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# Waits until URL answers 2xx (up to 2 minutes).
wait_http() {
  for _ in $(seq 1 600); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "no answer from $1" >&2
  return 1
}
