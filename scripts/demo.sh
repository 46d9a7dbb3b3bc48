#!/usr/bin/env bash
# Installs what is missing, builds, and runs the 2-D Gaussian-mixture guidance demo:
# out/demo/demo.png (five panels), report.json (class purity per setting) and the samples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
build/guidiff demo --out-dir out/demo "$@"
