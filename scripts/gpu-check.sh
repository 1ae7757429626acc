#!/usr/bin/env bash
# The GPU check, in one run of about 10 minutes on a machine with an
# NVIDIA GPU (H100/H200) and the CUDA 13 libraries (libcuda, NVRTC, cuBLAS):
#
#   1. builds `cake` and the device test binaries with `--features cuda`
#      (or, where cargo is missing, takes them prebuilt from $CAKE_GPU_BIN:
#      `cake`, `kernels-tests`, `engine-tests`: the crates' integration-test binaries);
#   2. runs the device tests with CAKE_REQUIRE_GPU=1 (same test bodies on
#      the CPU and the GPU, GPU results against the CPU's);
#   3. runs `cake bench prefill` and `cake bench ttft` at llama-3-8b's
#      shapes with synthetic weights ($LAYERS of its 32 layers; 8 by
#      default to fit the time, LAYERS=32 for the whole model), contexts
#      $CONTEXTS, stored chunks in bf16, a throttled link at `auto`
#      bandwidths (0.1x to 10x the balanced point) and at the paper's
#      7, 25 and 100 Gbps;
#   4. runs `cake bench mixed` at the paper's size (one 16K-token cached
#      request among 22 fresh ones of 32-448 tokens, batched steps of
#      $BUDGET tokens), FCFS against the adaptive order;
#   5. writes everything to $OUT_DIR (default gpu-results/), eight files:
#      steps.log (nvidia-smi, each step's exit status), tests.log,
#      prefill.json, prefill.txt, ttft.json, ttft.txt (auto bandwidths,
#      then 7/25/100 Gbps), ttft.svg, mixed.txt.
#
# Usage: scripts/gpu-check.sh            (from the repository root)
set -uo pipefail

OUT=${OUT_DIR:-gpu-results}
LAYERS=${LAYERS:-8}
CONTEXTS=${CONTEXTS:-4096,8192,16384}
CHUNK=${CHUNK:-512}
BUDGET=${BUDGET:-2048}
DATA=${DATA_DIR:-/tmp/cake-gpu-data}
mkdir -p "$OUT" "$DATA"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.log"; }

nvidia-smi >> "$OUT/steps.log" 2>&1 || true

# CUDA 13 libraries where the loader does not already see them.
for lib in libnvrtc.so.13 libcublas.so.13; do
  if ! ldconfig -p 2>/dev/null | grep -q "$lib"; then
    p=$(find /usr/local /opt /usr/lib -name "$lib" 2>/dev/null | head -1)
    if [ -n "$p" ]; then
      export LD_LIBRARY_PATH="$(dirname "$p")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
  fi
done
log "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
export CAKE_KERNEL_CACHE="$DATA/kernel-cache"

if command -v cargo >/dev/null && [ -z "${CAKE_GPU_BIN:-}" ]; then
  log "building with --features cuda"
  cargo build --release --features cuda -p cake-gateway || exit 1
  BIN=$(mktemp -d)
  cp target/release/cake "$BIN/"
  # Each crate's integration tests are one binary; a file's are `FILE::`.
  for spec in "cake-kernels kernels-tests" "cake-engine engine-tests"; do
    set -- $spec
    exe=$(cargo test --release --features cuda -p "$1" --test integration --no-run --message-format=json 2>/dev/null \
      | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    cp "$exe" "$BIN/$2"
  done
else
  BIN=${CAKE_GPU_BIN:?cargo is missing: set CAKE_GPU_BIN to a folder of prebuilt binaries}
fi

log "device tests"
for t in "kernels-tests cuda_compile::" "kernels-tests devices::" "engine-tests devices::"; do
  set -- $t
  CAKE_REQUIRE_GPU=1 timeout 120 "$BIN/$1" "$2" --test-threads=1 --nocapture >> "$OUT/tests.log" 2>&1
  echo "$1 $2 exit $?" | tee -a "$OUT/tests.log" "$OUT/steps.log"
done

MODEL=(--preset llama-3-8b --layers "$LAYERS" --device cuda:0 --data-dir "$DATA")
log "bench prefill (llama-3-8b shapes, $LAYERS layers)"
timeout 200 "$BIN/cake" bench prefill "${MODEL[@]}" --context 16384 --chunk "$CHUNK" \
  --json "$OUT/prefill.json" > "$OUT/prefill.txt" 2>&1
echo "prefill exit $?" | tee -a "$OUT/steps.log"

log "bench ttft, auto bandwidths"
timeout 240 "$BIN/cake" bench ttft "${MODEL[@]}" --context "$CONTEXTS" --chunk "$CHUNK" \
  --codec bf16 --io-depth 2 --bandwidth auto --repeat 1 \
  --json "$OUT/ttft.json" --plot "$OUT/ttft.svg" > "$OUT/ttft.txt" 2>&1
echo "ttft exit $?" | tee -a "$OUT/steps.log"

log "bench ttft, 7/25/100 Gbps"
timeout 120 "$BIN/cake" bench ttft "${MODEL[@]}" --context 8192 --chunk "$CHUNK" \
  --codec bf16 --io-depth 2 --bandwidth 0.875G,3.125G,12.5G --repeat 1 \
  >> "$OUT/ttft.txt" 2>&1
echo "ttft-gbps exit $?" | tee -a "$OUT/steps.log"

log "bench mixed (16K cached + 22 fresh, budget $BUDGET)"
timeout 150 "$BIN/cake" bench mixed "${MODEL[@]}" --cached-tokens 16384 --chunk "$CHUNK" \
  --token-budget "$BUDGET" --repeat 3 > "$OUT/mixed.txt" 2>&1
echo "mixed exit $?" | tee -a "$OUT/steps.log"
log "done"
