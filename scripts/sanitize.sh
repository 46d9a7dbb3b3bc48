#!/usr/bin/env bash
# The whole test suite under AddressSanitizer and UndefinedBehaviorSanitizer
# (docs/reliability.md): configures build-san (-DGUIDIFF_SANITIZE=address,undefined; with
# clang also -DGUIDIFF_FUZZ=ON, so scripts/fuzz.sh shares the build), builds, runs ctest.
#   bash scripts/sanitize.sh [CTEST_ARGS...]      e.g. -R Training
# libtorch itself is not instrumented; scripts/sanitizers/options.sh holds the few runtime
# options that follow from that, each explained there and in docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-clang || echo "sanitize.sh: clang could not be installed; building with gcc's sanitizers" >&2
BUILD=build-san
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  if command -v clang++ >/dev/null 2>&1; then
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DGUIDIFF_SANITIZE=address,undefined -DGUIDIFF_FUZZ=ON -DGUIDIFF_BUILD_BENCH=OFF
  else
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGUIDIFF_SANITIZE=address,undefined \
      -DGUIDIFF_BUILD_BENCH=OFF
  fi
fi
cmake --build "$BUILD" -j"$(nproc)"
source scripts/sanitizers/options.sh
# One thread per test process, idle threads asleep: as scripts/test.sh, for the same reason.
export GUIDIFF_THREADS=1 OMP_WAIT_POLICY=PASSIVE
ctest --test-dir "$BUILD" --output-on-failure -j"$(nproc)" "$@"
