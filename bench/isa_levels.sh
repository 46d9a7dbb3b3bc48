#!/usr/bin/env bash
# float32 against bf16 sampling at each kernel level this CPU allows: its own, and libtorch's
# and oneDNN's forced down (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), as a user on an older
# CPU would run. Prints a markdown table (the one in docs/performance.md) and, per level,
# how far the bf16 samples land from float32's. Run it on an otherwise idle machine.
#   bash bench/isa_levels.sh [SAMPLES] [STEPS]      (default 64 samples, DDIM 25 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
samples=${1:-64}
steps=${2:-25}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
levels=("own level|"
        "libtorch avx2, oneDNN avx2|ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
        "libtorch default, oneDNN sse41|ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41")
common=(sample --model models/fashion-mnist/cfg_unet --class 0,1,2,3,4,5,6,7,8,9 --cfg-scale 3
        --num-samples "$samples" --steps "$steps" --seed 1)
seconds_of() { sed -n 's/^sampling: .* in \([0-9.]*\) s .*/\1/p' "$1"; }
echo "CPU: $(build/guidiff info | sed -n 's/^cpu *//p'); $samples samples, CFG w = 3, DDIM $steps steps"
echo
echo "| kernel level | libtorch / oneDNN report | float32 s | bf16 s | bf16 / float32 | mean abs diff |"
echo "|---|---|---|---|---|---|"
for level in "${levels[@]}"; do
  name=${level%%|*}
  settings=${level#*|}
  # shellcheck disable=SC2086  # the settings are VAR=value words for env
  kernels=$(env $settings build/guidiff info | sed -n 's/^kernels *//p')
  env $settings build/guidiff "${common[@]}" --out "$work/f32.npy" 2> "$work/f32.log"
  env $settings build/guidiff "${common[@]}" --bf16 --out "$work/bf16.npy" 2> "$work/bf16.log"
  f32=$(seconds_of "$work/f32.log")
  bf16=$(seconds_of "$work/bf16.log")
  diff=$(/usr/bin/python3 -c "import numpy as n; print(f'{abs(n.load(\"$work/f32.npy\") - n.load(\"$work/bf16.npy\")).mean():.4f}')")
  ratio=$(/usr/bin/python3 -c "print(f'{$bf16 / $f32:.2f}x')")
  echo "| $name | $kernels | $f32 | $bf16 | $ratio | $diff |"
done
