#!/usr/bin/env bash
# The bad-flag matrix (docs/reliability.md): every flag of every subcommand, from the CLI's own
# option list (guidiff --list-options), with a wrong type, an out-of-range value, a missing
# file or a file of the wrong kind; each must give one line of error and exit status 2.
#   bash scripts/bad_flags.sh [TABLE.md]     (the table of every case, default build/bad_flags.md)
set -euo pipefail
cd "$(dirname "$0")/.."
TABLE="${1:-build/bad_flags.md}"
[ -f build/CMakeCache.txt ] || cmake -S . -B build -G Ninja -DGUIDIFF_BUILD_BENCH=OFF
cmake --build build --target guidiff test_bad_flags
GUIDIFF_BAD_FLAGS_REPORT="$(realpath -m "$TABLE")" build/tests/test_bad_flags
echo "table of every case: $TABLE"
