#!/usr/bin/env bash
# Requests larger than the memory (docs/reliability.md): guidiff runs inside a memory cgroup
# of GUIDIFF_MEMORY_LIMIT_MIB (default 2048) and is asked for networks, training state and
# samples that do not fit. Linux would grant each allocation and kill the process (SIGKILL,
# exit 137) when its pages were touched; each case must instead end with exit status 2 and one
# error line saying what needs how much memory. A last case that fits must run.
#   bash scripts/memory_limits.sh
# Needs root and a writable cgroup hierarchy (v2, or v1's memory controller); elsewhere it says
# so and exits 0 without running anything. Needs build/guidiff (bash scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
GUIDIFF="$(pwd)/${GUIDIFF:-build/guidiff}"
[ -x "$GUIDIFF" ] || { echo "memory_limits: $GUIDIFF not built (bash scripts/build.sh)" >&2; exit 2; }
LIMIT=$((${GUIDIFF_MEMORY_LIMIT_MIB:-2048} * 1024 * 1024))
W="$(mktemp -d /tmp/guidiff-memory-XXXXXX)"
NAME="guidiff-memory-$$"
CG=""
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then  # v2
  if grep -qw memory /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null && mkdir "/sys/fs/cgroup/$NAME" 2>/dev/null; then
    CG="/sys/fs/cgroup/$NAME"
    echo "$LIMIT" >"$CG/memory.max"
    echo 0 >"$CG/memory.swap.max" 2>/dev/null || true
  fi
elif [ -d /sys/fs/cgroup/memory ] && mkdir "/sys/fs/cgroup/memory/$NAME" 2>/dev/null; then  # v1
  CG="/sys/fs/cgroup/memory/$NAME"
  echo "$LIMIT" >"$CG/memory.limit_in_bytes"
fi
cleanup() { [ -n "$CG" ] && rmdir "$CG" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
if [ -z "$CG" ]; then
  echo "memory_limits: no writable memory cgroup here (needs root and cgroup v2 with the memory controller, or v1); nothing run"
  exit 0
fi
echo "memory_limits: cgroup $CG, limit $((LIMIT / 1048576)) MiB"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# Runs guidiff in the cgroup; its stderr goes to $W/stderr and its time and peak RSS to $W/time.
in_cgroup() {
  bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec /usr/bin/time -f "%e %M" -o "$0" "$@"' "$W/time" "$CG" "$GUIDIFF" "$@" \
    2>"$W/stderr" >/dev/null
}
# refused NAME EXPECTED ARGS...: exit status 2, one error line (the last) holding EXPECTED.
refused() {
  local name=$1 expected=$2 code=0
  shift 2
  in_cgroup "$@" || code=$?
  local errors seconds rss
  errors=$(grep -c '^guidiff: error: ' "$W/stderr" || true)
  read -r seconds rss < <(tail -1 "$W/time" 2>/dev/null || echo "? 0")
  printf '| %s | %s | %s s | %s MiB | %s |\n' "$name" "$code" "$seconds" "$((rss / 1024))" "$(tail -1 "$W/stderr")"
  [ "$code" -eq 2 ] && [ "$errors" -eq 1 ] && tail -1 "$W/stderr" | grep -qF -- "$expected" ||
    fail "$name: exit $code, $errors error lines, expected '$expected'"
}

echo '{"kind": "mlp_denoiser", "data_dim": 2, "hidden_channels": 20000}' >"$W/wide20k.json"
echo '{"kind": "mlp_denoiser", "data_dim": 2, "hidden_channels": 8000}' >"$W/wide8k.json"
echo "| case | exit | time | peak RSS | stderr |"
echo "|---|---|---|---|---|"
# Three 20000 x 20000 layers: 4.8 GB of weights.
refused "network: mlp 20000 wide (4.8 GB of weights)" "its weights need more than" \
  train diffusion --data mixture --config "$W/wide20k.json" --steps 2 --out-dir "$W/run1"
# 1.7 GB of weights fit; their EMA copy, gradients and AdamW's moments (6.7 GB) do not.
refused "training state: mlp 8000 wide (1.7 GB of weights)" "EMA copy, gradients and AdamW's two moments" \
  train diffusion --data mixture --config "$W/wide8k.json" --steps 2 --out-dir "$W/run2"
# 10^6 Fashion-MNIST samples: 2.9 GiB kept until written.
refused "samples: 10^6 of 28x28" "--num-samples 1000000: the samples" \
  sample --model models/fashion-mnist/cfg_unet.json --num-samples 1000000 --steps 10 --out "$W/x.npy"
refused "samples and trajectories: 10^5 of 1024 floats, 50 steps" "the samples and their trajectories" \
  sample --dim 1024 --num-samples 100000 --steps 50 --trajectory "$W/t.npy" --out "$W/y.npy"
refused "labels: 2x10^9 drawn at random" "the labels need" \
  sample --num-samples 2000000000 --class random --steps 1 --out "$W/z.npy"
# What fits still runs: 10^5 samples of 1024 floats (400 MiB).
code=0
in_cgroup sample --dim 1024 --num-samples 100000 --batch-size 1000 --steps 2 --out "$W/fits.npy" || code=$?
read -r seconds rss < <(tail -1 "$W/time")
printf '| %s | %s | %s s | %s MiB | %s |\n' "fits: 10^5 of 1024 floats" "$code" "$seconds" "$((rss / 1024))" \
  "$(tail -1 "$W/stderr")"
[ "$code" -eq 0 ] && [ -s "$W/fits.npy" ] || fail "the run that fits: exit $code"

if [ "$failures" -gt 0 ]; then
  echo "memory_limits: $failures failure(s)"
  exit 1
fi
echo "memory_limits: every request too large was refused with one line, and the one that fits ran"
