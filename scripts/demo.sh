#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs the image demo on Fashion-MNIST
# with the committed models (models/fashion-mnist/): every class generated with classifier
# guidance of the UNet's null class (s = 0, 1, 3, 10), classifier guidance of the conditional
# UNet (s = 1, 3) and classifier-free guidance (w = 0, 1, 3, 5), 250 samples
# per setting with DDIM in 25 steps, each scored by the evaluator network (FID, IS,
# precision/recall, density/coverage, class accuracy), with trade-off plots, class-by-strength
# grids and a report: out/demo/report.html (and report.md). Extra arguments go to
# `guidiff sweep`. Rerunning continues an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
start=$(date +%s)
build/guidiff sweep --model models/fashion-mnist/cfg_unet --classifier models/fashion-mnist/classifier \
  --classifier-scales 0,1,3,10 --conditional-classifier-scales 1,3 --cfg-scales 0,1,3,5 --steps 25 \
  --num-samples 250 --seed 0 \
  --evaluator models/fashion-mnist/evaluator --out-dir out/demo "$@"
echo "demo: $(( $(date +%s) - start )) s after the build; open out/demo/report.html"
