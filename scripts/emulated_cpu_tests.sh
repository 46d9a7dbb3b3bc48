#!/usr/bin/env bash
# Runs test files on an emulated older CPU: qemu-user presents the CPU model's CPUID to the test
# process, so everything that chooses its code by CPUID at run time takes that CPU's path.
#   bash scripts/emulated_cpu_tests.sh [CPU] [TEST_FILE...]
# CPU: avx2 (Haswell: AVX2 and FMA, no AVX-512; the default) or sse4 (Nehalem: SSE4.2, no AVX),
# or any `qemu-x86_64 -cpu` model. TEST_FILE: names in build/tests; by default every file of
# ctest's `numeric` label except four: test_cli and test_bad_flags start the guidiff binary,
# and a child process runs on the real CPU (qemu-user does not follow execve);
# test_evaluation and test_fid_inception each run for over 20 minutes emulated, and their
# networks run on libtorch's kernels, which scripts/test.sh's reruns already lower. Name them
# to run them.
#
# Why, beside scripts/test.sh's reruns with ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA: those
# variables lower only libtorch's and oneDNN's kernels. guidiff's own kernels (GCC
# target_clones in cpu_lanes.hpp) and its bf16 path (which measures whether libtorch's bf16
# kernels accumulate in float32, and replaces them where they do not: bf16_kernels.cpp) still see
# the real CPU, so on an AVX-512 BF16 machine their AVX2 and baseline paths are never run.
# Emulation is slow (8-50x; test_bf16 the slowest, bf16 being emulated on such a CPU), so this is
# not part of scripts/test.sh: 13.4 minutes on 2 cores for the default files with avx2
# (docs/performance.md, "Kernel levels and results").
set -euo pipefail
cd "$(dirname "$0")/.."
cpu="${1:-avx2}"
shift || true
case "$cpu" in
  # qemu 7.2's TCG lacks a few of Haswell's system features (pcid, x2apic, ...); dropping them
  # silences its warnings and changes nothing a user process sees but those bits.
  avx2) model="Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid" ;;
  # OpenBLAS's kernels follow OPENBLAS_CORETYPE where it is set (these machines set Haswell, for
  # their real CPU), and Haswell's kernels are AVX2: an emulated Nehalem needs Nehalem's.
  sse4) model="Nehalem"; export OPENBLAS_CORETYPE=Nehalem ;;
  *) model="$cpu" ;;
esac
bash scripts/setup.sh --with-qemu
# As scripts/test.sh does: an up-to-date build takes seconds, a stale one would test old code.
bash scripts/build.sh
if [ "$#" -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(grep -v -x -E "test_cli|test_bad_flags|test_evaluation|test_fid_inception" build/tests/numeric_test_files.txt)
fi
# qemu-x86_64 takes its CPU model from QEMU_CPU.
export QEMU_CPU="$model"
echo "emulated_cpu_tests.sh: qemu-x86_64 -cpu $model"
qemu-x86_64 build/guidiff info | grep -E "^(cpu|kernels|conv|bf16) "

# One thread per file, nproc files at once, OpenMP's idle threads asleep (scripts/test.sh says
# why).
export GUIDIFF_THREADS=1 OMP_WAIT_POLICY=PASSIVE
printf '%s\n' "${files[@]}" | xargs -P "$(nproc)" -n 1 sh -c 'cd build/tests && start=$(date +%s)
  if qemu-x86_64 ./"$1" > "$1.emulated.log" 2>&1; then
    echo "emulated_cpu_tests.sh: $1: $(grep -h "PASSED" "$1.emulated.log") ($(( $(date +%s) - start )) s)"
  else
    cat "$1.emulated.log"; echo "emulated_cpu_tests.sh: $1 FAILED"; exit 1
  fi' sh || { echo "emulated_cpu_tests.sh: tests failed on the emulated CPU ($model)"; exit 1; }
echo "emulated_cpu_tests.sh: every file passed on the emulated CPU ($model)"
