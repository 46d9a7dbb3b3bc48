#!/usr/bin/env bash
# One command for the side-by-side benchmark: installs what is missing (python3-torch for the
# PyTorch reference included), builds, and writes docs/performance_<kind of CPU>.md (+ .json)
# from one run; docs/performance.md links each kind's page.
# Run it on an otherwise idle machine; extra arguments go to bench/side_by_side.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-python
bash scripts/build.sh -DGUIDIFF_BUILD_BENCH=ON
/usr/bin/python3 bench/reference/check_against_guidiff.py
# One page per kind of CPU, so a reader can tell an AVX2 machine's figures from an
# AVX-512-BF16 machine's: docs/performance_<kind>.md (+ .json and the growth plot).
features=$(build/guidiff info | sed -n 's/^cpu *//p')
case " $features " in
  *" avx512_bf16 "*|*" amx_bf16 "*) kind=avx512_bf16 ;;
  *" avx512f "*) kind=avx512 ;;
  *" avx2 "*) kind=avx2 ;;
  *) kind=baseline ;;
esac
/usr/bin/python3 bench/side_by_side.py --out "docs/performance_$kind.md" "$@"
