#!/usr/bin/env bash
# What the CPU's kernel level changes in guidiff's results (the figures in docs/formats.md,
# "What is bit-identical"). For this CPU's own level and two forced-down levels it compares:
#   - the 2-D toy's samples (float64 closed-form model, DDPM with classifier guidance),
#   - the Fashion-MNIST UNet's samples (DDIM 25, CFG w = 3), and the same at batch sizes 1 and 7,
#   - the evaluator's reference statistics of the test set, as FID between the levels, and the
#     FID of one sample set against each level's statistics.
#   bash bench/isa_reproducibility.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
levels=("own|" "avx2|ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
        "default|ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41")
unet=(--model models/fashion-mnist/cfg_unet --class 0,1,2,3,4,5,6,7,8,9 --cfg-scale 3 --num-samples 64 --steps 25 --seed 1)
for level in "${levels[@]}"; do
  name=${level%%|*}
  settings=${level#*|}
  # shellcheck disable=SC2086  # VAR=value words for env
  echo "$name: $(env $settings build/guidiff info | sed -n 's/^kernels *//p')"
  # shellcheck disable=SC2086
  env $settings build/guidiff sample --sampler ddpm --steps 50 --num-samples 500 --class 0,1,2,3 \
    --classifier-scale 2 --seed 3 --out "$work/toy_$name.npy" 2> /dev/null
  # shellcheck disable=SC2086
  env $settings build/guidiff sample "${unet[@]}" --out "$work/unet_$name.npy" --npz "$work/unet_$name.npz" 2> /dev/null
  # shellcheck disable=SC2086
  env $settings build/guidiff eval --samples "$work/unet_own.npz" --cache-dir "$work/cache_$name" \
    --json "$work/scores_$name.json" > /dev/null 2>&1
done
for batch in 1 7; do
  build/guidiff sample "${unet[@]}" --batch-size "$batch" --out "$work/unet_batch$batch.npy" 2> /dev/null
done
/usr/bin/python3 - "$work" <<'PY'
import glob, json, os, sys
import numpy as np
work = sys.argv[1]
def compare(label, a, b):
    x, y = np.load(os.path.join(work, a)), np.load(os.path.join(work, b))
    same = np.array_equal(x, y)
    print(f"| {label} | {'bit-identical' if same else f'max |diff| {abs(x - y).max():.2e}, mean {abs(x - y).mean():.2e}'} |")
print("| comparison | result |\n|---|---|")
for level in ("avx2", "default"):
    compare(f"toy samples, own level vs {level}", "toy_own.npy", f"toy_{level}.npy")
    compare(f"UNet samples, own level vs {level}", "unet_own.npy", f"unet_{level}.npy")
for batch in (1, 7):
    compare(f"UNet samples, batch 64 vs batch {batch}", "unet_own.npy", f"unet_batch{batch}.npy")
fids = {level: json.load(open(os.path.join(work, f"scores_{level}.json")))["fid"] for level in ("own", "avx2", "default")}
print(f"| FID of the own-level samples against each level's reference statistics | " +
      ", ".join(f"{k}: {v:.6f}" for k, v in fids.items()) + " |")
PY
