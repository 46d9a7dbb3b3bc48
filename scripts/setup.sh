#!/usr/bin/env bash
# Installs everything guidiff needs to build, test and run its demo on Debian 12 (bookworm).
# Idempotent: does nothing (not even apt-get update) when every package is already there.
# Run as root (or with sudo available).
#   --with-python   also install python3-torch and python3-torchvision (regenerating test fixtures,
#                   the Python benchmarks; torchvision for the Inception-v3 fixture and benchmark)
#   --with-clang    also install clang and its runtime libraries (libFuzzer, the sanitizers'
#                   runtimes): scripts/sanitize.sh and scripts/fuzz.sh ask for them
#   --with-qemu     also install qemu-user: scripts/emulated_cpu_tests.sh runs the tests on an
#                   emulated older CPU
set -euo pipefail

# libgloo-dev: Gloo's headers, which c10d's ProcessGroupGloo.hpp includes (data-parallel
# runs, docs/distributed.md); libtorch1.13 already links libgloo0.
packages=(
  build-essential cmake ninja-build ccache git pkg-config
  libtorch-dev libopenblas0-openmp libgloo-dev
  libstb-dev libcli11-dev nlohmann-json3-dev zlib1g-dev
  libgtest-dev libbenchmark-dev
  gnuplot-nox dataset-fashion-mnist
)
for arg in "$@"; do
  case "$arg" in
    --with-python) packages+=(python3-torch python3-torchvision) ;;
    --with-clang) packages+=(clang libclang-rt-14-dev) ;;
    --with-qemu) packages+=(qemu-user) ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$package")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup.sh: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: run as root (missing: ${missing[*]})" >&2; exit 1; }
  sudo=(sudo)
fi
echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
