#!/usr/bin/env bash
# Installs the build in build/ into a scratch prefix and builds examples/ against the
# installed package twice, as another project would: with CMake's find_package(guidiff) and
# with pkg-config. Runs the CMake-built example on the committed Fashion-MNIST models.
# scripts/test.sh calls it after the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="$PWD/build/install-check"
rm -rf "$prefix" build/example-cmake build/example-pkgconfig
cmake --install build --prefix "$prefix" > /dev/null

cmake -S examples -B build/example-cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" > /dev/null
cmake --build build/example-cmake

mkdir -p build/example-pkgconfig
pc_dir="$(dirname "$(find "$prefix" -name guidiff.pc | head -n 1)")"
# shellcheck disable=SC2046  # pkg-config's output is a list of flags
c++ -O1 -o build/example-pkgconfig/guided_sampling examples/guided_sampling.cpp \
  $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs guidiff)

GUIDIFF_THREADS="${GUIDIFF_THREADS:-$(nproc)}" build/example-cmake/guided_sampling models/fashion-mnist build/example-cmake
test -s build/example-cmake/classifier_guidance.png && test -s build/example-cmake/classifier_free.png
# Without arguments the example prints its usage and exits 2: proof the binary links and starts.
usage=$(build/example-pkgconfig/guided_sampling 2>&1 || true)
case "$usage" in
  *usage:*) ;;
  *) echo "check_install.sh: the pkg-config build does not run: $usage" >&2; exit 1 ;;
esac
echo "check_install.sh: the installed package builds examples/ with CMake and pkg-config, and the example runs"
