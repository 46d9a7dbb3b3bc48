#!/usr/bin/env bash
# One command for the side-by-side benchmark: installs what is missing (python3-torch for the
# PyTorch reference included), builds, and writes docs/performance.md (+ .json) from one run.
# Run it on an otherwise idle machine; extra arguments go to bench/side_by_side.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-python
bash scripts/build.sh -DGUIDIFF_BUILD_BENCH=ON
/usr/bin/python3 bench/reference/check_against_guidiff.py
/usr/bin/python3 bench/side_by_side.py "$@"
