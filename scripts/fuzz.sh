#!/usr/bin/env bash
# The fuzz campaign (docs/reliability.md): every reader of fuzz/targets.cpp, one after the
# other, for SECONDS each or a million executions, whichever comes first.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]        (default 600 s, every target)
# With clang and libFuzzer (Debian: clang, libclang-rt-14-dev) it builds build-san
# (address + undefined sanitizers, libFuzzer) and runs guidiff_fuzz; otherwise it runs the
# seed-mutation fuzzer guidiff_fuzz_mutate of the ordinary build. Each target starts from
# fuzz/corpus/<target> and the past findings fuzz/regressions/<target>; new findings land in
# fuzz/findings/<target>/ (fix the reader, then move the file to fuzz/regressions/<target>/).
# The summary (executions, time, findings per target) is printed and written to
# build-san/fuzz-summary.tsv (or build/fuzz-summary.tsv; GUIDIFF_FUZZ_SUMMARY=FILE elsewhere, so
# that two runs over different targets can share the machine's cores). Runs at nice 10.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-clang || echo "fuzz.sh: clang could not be installed; the seed-mutation fuzzer runs instead" >&2
SECONDS_PER_TARGET="${1:-600}"
shift || true
MAX_RUNS="${GUIDIFF_FUZZ_RUNS:-1000000}"

have_libfuzzer() {
  command -v clang++ >/dev/null 2>&1 || return 1
  local dir
  dir="$(clang++ -print-resource-dir 2>/dev/null)/lib/linux"
  ls "$dir"/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || ls "$dir"/libclang_rt.fuzzer*.a >/dev/null 2>&1
}

if have_libfuzzer && [ "${GUIDIFF_FUZZ_MUTATE:-0}" != 1 ]; then
  MODE=libfuzzer
  BUILD=build-san
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DGUIDIFF_SANITIZE=address,undefined -DGUIDIFF_FUZZ=ON -DGUIDIFF_BUILD_BENCH=OFF
  fi
  nice -n 10 cmake --build "$BUILD" --target guidiff_fuzz guidiff_fuzz_mutate
  LIST="$BUILD/fuzz/guidiff_fuzz_mutate"
else
  MODE=mutate
  BUILD=build
  [ -f "$BUILD/CMakeCache.txt" ] || cmake -S . -B "$BUILD" -G Ninja -DGUIDIFF_BUILD_BENCH=OFF
  nice -n 10 cmake --build "$BUILD" --target guidiff_fuzz_mutate
  LIST="$BUILD/fuzz/guidiff_fuzz_mutate"
fi

if [ $# -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <("$LIST" --list | awk '{print $1}')
fi

# libtorch is not instrumented: scripts/sanitizers/options.sh says why each option is set.
source scripts/sanitizers/options.sh

declare -A DICT=([npy]=npy [npz]=npz [safetensors]=safetensors [resume]=safetensors [image_folder]=png
                 [model_config]=json [training_options]=json [mixture_config]=json)

SUMMARY="${GUIDIFF_FUZZ_SUMMARY:-$BUILD/fuzz-summary.tsv}"
printf 'target\tmode\texecutions\tseconds\texec_per_s\tnew_findings\n' >"$SUMMARY"
status=0
for target in "${TARGETS[@]}"; do
  findings="fuzz/findings/$target"
  work="$BUILD/fuzz-corpus/$target"
  mkdir -p "$findings" "$work" "fuzz/regressions/$target"
  before=$(find "$findings" -type f | wc -l)
  log="$BUILD/fuzz-$target.log"
  start=$(date +%s.%N)
  if [ "$MODE" = libfuzzer ]; then
    dict=()
    [ -n "${DICT[$target]:-}" ] && dict=(-dict="fuzz/dicts/${DICT[$target]}.dict")
    # -malloc_limit_mb: an input of a few KB must not make a reader ask for a GiB.
    GUIDIFF_FUZZ_TARGET="$target" nice -n 10 "$BUILD/fuzz/guidiff_fuzz" \
      -max_total_time="$SECONDS_PER_TARGET" -runs="$MAX_RUNS" -timeout=20 -rss_limit_mb=3072 -malloc_limit_mb=1024 \
      -print_final_stats=1 -artifact_prefix="$findings/" "${dict[@]}" \
      "$work" "fuzz/corpus/$target" "fuzz/regressions/$target" >"$log" 2>&1 || status=1
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  else
    nice -n 10 "$BUILD/fuzz/guidiff_fuzz_mutate" --target "$target" --seconds "$SECONDS_PER_TARGET" --runs "$MAX_RUNS" \
      --findings "$findings" "fuzz/corpus/$target" "fuzz/regressions/$target" >"$log" 2>&1 || status=1
    runs=$(grep -o '^target .*: [0-9]* runs' "$log" | grep -o '[0-9]* runs' | grep -o '[0-9]*' || echo 0)
  fi
  end=$(date +%s.%N)
  after=$(find "$findings" -type f | wc -l)
  awk -v t="$target" -v m="$MODE" -v r="${runs:-0}" -v s="$start" -v e="$end" -v f="$((after - before))" \
    'BEGIN { printf "%s\t%s\t%d\t%.0f\t%.0f\t%d\n", t, m, r, e - s, r / (e - s), f }' | tee -a "$SUMMARY"
done
echo "summary: $SUMMARY"
awk -F '\t' '{ printf "%-18s %-10s %12s %8s %10s %s\n", $1, $2, $3, $4, $5, $6 }' "$SUMMARY"
exit $status
