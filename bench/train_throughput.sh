#!/usr/bin/env bash
# Training throughput of the default Fashion-MNIST configs (recipes/*.json): images/s over
# a short run and the process's peak memory, as printed by `guidiff train`. Prints one line
# per model; the figures in docs/training.md come from this script.
#   bash bench/train_throughput.sh [STEPS]   (default 40 steps of batch 64)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "guidiff train, batch 64, $steps steps, $(build/guidiff info | awk '/threads/{print $2}') threads"
for model in cfg_unet classifier; do
  task=diffusion; extra=(--conditional --p-uncond 0.1)
  [ "$model" = classifier ] && { task=classifier; extra=(); }
  line=$(build/guidiff train "$task" --data fashion-mnist --config "recipes/$model.json" "${extra[@]}" \
    --steps "$steps" --batch-size 64 --log-every 0 --save-every 0 --out-dir "$work/$model" 2>&1 | tail -1)
  echo "$model: ${line#*, last loss *, }"
done
