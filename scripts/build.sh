#!/usr/bin/env bash
# Configures (Ninja, Release) into build/ and builds everything: the library, the `guidiff`
# CLI and the tests. Extra arguments go to CMake's configure step, e.g.
#   bash scripts/build.sh -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja "$@"
cmake --build build -j"$(nproc)"
