#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (each test printed as it
# runs); then the numerically sensitive tests (ctest label `numeric`) again with libtorch's
# and oneDNN's kernels forced down to lower instruction sets, as on an older CPU; then
# builds examples/ against the installed library (scripts/check_install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"

own_level=$(build/guidiff info | sed -n 's/^kernels *//p')
for level in "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41" "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"; do
  # shellcheck disable=SC2086  # the level is VAR=value words for env
  forced=$(env $level build/guidiff info | sed -n 's/^kernels *//p')
  if [ "$forced" = "$own_level" ]; then
    echo "test.sh: $level is this CPU's own level ($own_level), already tested"
    continue
  fi
  echo "test.sh: numeric tests with $level ($forced)"
  # shellcheck disable=SC2086
  env $level ctest --test-dir build -L numeric --output-on-failure -j"$(nproc)"
done

bash scripts/check_install.sh
