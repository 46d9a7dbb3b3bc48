#!/usr/bin/env bash
# Data-parallel training throughput of the default UNet (recipes/cfg_unet.json, the network of
# models/fashion-mnist/cfg_unet, conditional with label dropout as its recipe) on this
# machine: 1, 2 and 4 processes of one intra-op thread each (`guidiff train --nproc P
# --threads 1`), each with the same per-process batch, so the global batch grows with P as
# under DistributedDataParallel. Prints per P: images/s (all processes together, over the
# second half of the run), the scaling efficiency images/s(P) / (P x images/s(1)), the time per
# step that backward did not hide of the gradient all-reduce (rank 0, from log.jsonl), and --
# when build/bench/allreduce_cost exists (cmake -DGUIDIFF_BUILD_BENCH=ON) -- the all-reduce
# of the UNet's gradients measured alone, flat and in the trainer's buckets.
# Run it on an otherwise idle machine with at least max(P) cores.
#   bash bench/distributed_scaling.sh [STEPS] [BATCH] [P ...]   (default: 40 steps, batch 32, P = 1 2 4)
#   GUIDIFF_BENCH_TINY=1 bash bench/distributed_scaling.sh      (a 4-channel UNet and 4 steps: checks it runs)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}
batch=${2:-32}
shift $(( $# > 2 ? 2 : $# )) || true
procs=("$@")
[ ${#procs[@]} -eq 0 ] && procs=(1 2 4)
config=recipes/cfg_unet.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${GUIDIFF_BENCH_TINY:-}" ]; then
  steps=4; batch=4
  echo '{"kind": "unet", "image_size": 28, "in_channels": 1, "model_channels": 8, "channel_mult": [1, 2],
         "num_res_blocks": 1, "attention_resolutions": [], "norm_groups": 4, "num_classes": 10}' > "$work/tiny.json"
  config=$work/tiny.json
fi
half=$(( steps / 2 ))
echo "guidiff train diffusion, $config, per-process batch $batch, $steps steps, 1 thread per process, $(nproc) cores"
printf '%-6s %-8s %-10s %-11s %-18s\n' procs batch images/s efficiency allreduce_wait_ms
base=""
for p in "${procs[@]}"; do
  out=$work/p$p
  build/guidiff train diffusion --data fashion-mnist --config "$config" --conditional --p-uncond 0.1 \
    --steps "$steps" --batch-size "$batch" --lr 1e-3 --threads 1 --nproc "$p" --log-every "$half" \
    --save-every 0 --out-dir "$out" 2> "$work/p$p.err" || { cat "$work/p$p.err"; exit 1; }
  # The last log line covers the second half of the run (start-up and warm-up excluded).
  read -r ips wait < <(/usr/bin/python3 -c '
import json, sys
line = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(line["images_per_sec"], line.get("allreduce_wait_ms", 0.0))' "$out/log.jsonl")
  [ -z "$base" ] && base=$ips
  efficiency=$(/usr/bin/python3 -c "print(f'{$ips / ($p * $base):.3f}')")
  printf '%-6s %-8s %-10.1f %-11s %-18.2f\n' "$p" "$(( batch * p ))" "$ips" "$efficiency" "$wait"
done
if [ -x build/bench/allreduce_cost ]; then
  for p in "${procs[@]}"; do
    [ "$p" -gt 1 ] && build/bench/allreduce_cost --nproc "$p" --config "$config"
  done
else
  echo "(build/bench/allreduce_cost not built: cmake -DGUIDIFF_BUILD_BENCH=ON for the all-reduce alone)"
fi
