#!/usr/bin/env bash
# Recipe (c): the evaluator network behind every metric of `guidiff eval` and `guidiff sweep`:
# a plain CNN (recipes/evaluator.json; 6 convolutions, GroupNorm, global pooling, 0.29M
# parameters) trained on clean Fashion-MNIST images (--max-t 1: the noise level is always
# t = 0) with random flips. The spatial means of its three stages (32 + 64 + 128 features),
# each put on unit total variance over the training images (--calibrate-features), feed FID,
# precision/recall and density/coverage; its softmax feeds IS and class accuracy. Afterwards
# its accuracy on the 10000 test images is measured and written to
# models/fashion-mnist/evaluator_test.json.
# About 25 minutes on 2 cores (about 320 images/s). Writes the run to out/recipes/evaluator/ and copies the EMA
# weights to models/fashion-mnist/evaluator.{safetensors,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
run=out/recipes/evaluator
start=$(date +%s)
build/guidiff train classifier --data fashion-mnist --config recipes/evaluator.json --max-t 1 \
  --accuracy-buckets 1 --flip --steps 4000 --batch-size 128 --lr 2e-3 --warmup 100 --ema-rate 0.995 \
  --weight-decay 0.05 --seed 0 --log-every 100 --save-every 500 --out-dir "$run" "$@"
mkdir -p models/fashion-mnist
cp "$run/model.safetensors" models/fashion-mnist/evaluator.safetensors
cp "$run/model.json" models/fashion-mnist/evaluator.json
build/guidiff eval --evaluator models/fashion-mnist/evaluator --calibrate-features --data fashion-mnist --split train
build/guidiff eval --evaluator models/fashion-mnist/evaluator --data fashion-mnist --split test \
  --json models/fashion-mnist/evaluator_test.json
echo "recipe evaluator: $(( $(date +%s) - start )) s of wall time; log in $run/log.jsonl"
