#!/usr/bin/env bash
# Recipe (d): the autoguidance guide (Karras et al. 2024, "Guiding a Diffusion Model with a Bad
# Version of Itself"): a smaller and shorter-trained version of recipe (a)'s model, with the same
# data, classes, label dropout and schedule (recipes/guide_unet.json: 16 channels, two
# resolutions, no attention), so its errors are the main model's, only larger. Sample with
#   build/guidiff sample --model models/fashion-mnist/cfg_unet --guide-model models/fashion-mnist/guide_unet \
#       --cfg-scale 1 --class 0,1,2,3,4,5,6,7,8,9 ...
# (--cfg-scale w weighs the guide: eps~ = (1 + w) eps - w eps_guide). A few minutes on 2 cores.
# Writes the run to out/recipes/guide_unet/ and copies the EMA weights to
# models/fashion-mnist/guide_unet.{safetensors,json}. Extra arguments go to `guidiff train`.
set -euo pipefail
cd "$(dirname "$0")/.."
run=out/recipes/guide_unet
start=$(date +%s)
build/guidiff train diffusion --data fashion-mnist --config recipes/guide_unet.json --conditional \
  --p-uncond 0.1 --steps 400 --batch-size 64 --lr 2e-3 --warmup 50 --ema-rate 0.99 --seed 1 \
  --log-every 50 --save-every 200 --out-dir "$run" "$@"
mkdir -p models/fashion-mnist
cp "$run/model.safetensors" models/fashion-mnist/guide_unet.safetensors
cp "$run/model.json" models/fashion-mnist/guide_unet.json
echo "recipe guide_unet: $(( $(date +%s) - start )) s of wall time; log in $run/log.jsonl"
