#!/usr/bin/env bash
# Recipe (b): the noise-aware classifier p_phi(y | x_t, t) for classifier guidance: the
# encoder half of the same UNet with attention pooling (recipes/classifier.json), trained with
# cross-entropy on x_t = q_sample(x0, t), t = floor(1000 u^2) for uniform u (--t-power 2: a
# third of the images at t < 100, where uniform t gives a tenth; docs/training.md, "The t
# distribution"), with random horizontal flips. It guides the null class of recipe (a)'s model
# (`guidiff sample --unconditional`).
# 20000 steps of 64 (21.3 epochs), lr 1e-3 with 500 warm-up steps and a cosine decay, weight
# decay 0.05, EMA 0.9995: about 52 minutes on one idle core, 60 beside another run on the
# other core (docs/training.md). Writes the run
# to out/recipes/classifier/ and copies the EMA weights to
# models/fashion-mnist/classifier.{safetensors,json}. Extra arguments go to `guidiff train`
# (e.g. --resume). The earlier recipes (1.3 epochs; then uniform t) are in git history.
set -euo pipefail
cd "$(dirname "$0")/.."
run=out/recipes/classifier
start=$(date +%s)
build/guidiff train classifier --data fashion-mnist --config recipes/classifier.json \
  --steps 20000 --batch-size 64 --lr 1e-3 --warmup 500 --lr-schedule cosine --ema-rate 0.9995 \
  --weight-decay 0.05 --flip --t-power 2 --seed 0 --log-every 100 --save-every 500 --out-dir "$run" "$@"
mkdir -p models/fashion-mnist
cp "$run/model.safetensors" models/fashion-mnist/classifier.safetensors
cp "$run/model.json" models/fashion-mnist/classifier.json
echo "recipe classifier: $(( $(date +%s) - start )) s of wall time; log in $run/log.jsonl"
