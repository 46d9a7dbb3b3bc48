#!/usr/bin/env bash
# Recipe (a): the default diffusion model. A class-conditional ADM-style UNet (1.2 M
# parameters, recipes/cfg_unet.json) trained on Fashion-MNIST with label dropout
# p_uncond = 0.1, so the one network is both eps(x, c) (classifier-free guidance) and, through
# its null class, the unconditional eps(x) that classifier guidance steers.
# 10000 steps of 64 (10.7 epochs), lr 1e-3 with 200 warm-up steps and a cosine decay, EMA 0.999:
# about an hour on 2 idle cores (docs/training.md). Writes the run to
# out/recipes/cfg_unet/ and copies the EMA weights to models/fashion-mnist/cfg_unet.{safetensors,json}.
# Extra arguments go to `guidiff train` (e.g. --resume after Ctrl-C). The earlier recipes (1.9
# and 5.8 epochs) are in git history (git log -- recipes/fashion_mnist_cfg_unet.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
run=out/recipes/cfg_unet
start=$(date +%s)
build/guidiff train diffusion --data fashion-mnist --config recipes/cfg_unet.json --conditional \
  --p-uncond 0.1 --steps 10000 --batch-size 64 --lr 1e-3 --warmup 200 --lr-schedule cosine --ema-rate 0.999 \
  --seed 0 --log-every 50 --save-every 500 --out-dir "$run" "$@"
mkdir -p models/fashion-mnist
cp "$run/model.safetensors" models/fashion-mnist/cfg_unet.safetensors
cp "$run/model.json" models/fashion-mnist/cfg_unet.json
echo "recipe cfg_unet: $(( $(date +%s) - start )) s of wall time; log in $run/log.jsonl"
