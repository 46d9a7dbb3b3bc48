#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (each test printed as it
# runs); then the numerically sensitive test files (ctest label `numeric`) again with
# libtorch's and oneDNN's kernels forced down to lower instruction sets, as on an older CPU; then
# builds examples/ against the installed library (scripts/check_install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh

# ctest and the reruns below run nproc test processes at once. Each takes one intra-op thread,
# and OpenMP's idle threads sleep instead of spinning: with every process on all cores, one
# process's spin-waiting threads hold the cores the other's working threads wait for, and two
# 2-thread test processes on 2 cores took 165 s where one thread each took 13 s
# (docs/performance.md).
export GUIDIFF_THREADS=1 OMP_WAIT_POLICY=PASSIVE
ctest --test-dir build --output-on-failure -j"$(nproc)"

own_level=$(build/guidiff info | sed -n 's/^kernels *//p')
for level in "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41" "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"; do
  # shellcheck disable=SC2086  # the level is VAR=value words for env
  forced=$(env $level build/guidiff info | sed -n 's/^kernels *//p')
  if [ "$forced" = "$own_level" ]; then
    echo "test.sh: $level is this CPU's own level ($own_level), already tested"
    continue
  fi
  echo "test.sh: numeric tests with $level ($forced), each test file in one process"
  # The files of ctest's `numeric` label (tests/CMakeLists.txt); a failing file's whole output
  # is printed.
  # shellcheck disable=SC2086,SC2016
  env $level xargs -P "$(nproc)" -n 1 sh -c 'cd build/tests && if ./"$1" > "$1.rerun.log" 2>&1; then
      echo "test.sh: $1: $(grep -h "PASSED" "$1.rerun.log")"; else cat "$1.rerun.log"; echo "test.sh: $1 FAILED"; exit 1; fi' sh \
    < build/tests/numeric_test_files.txt || { echo "test.sh: numeric tests failed with $level"; exit 1; }
done

bash scripts/check_install.sh
