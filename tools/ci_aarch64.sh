#!/usr/bin/env bash
# Cross-compiles the kernel tests for aarch64 (NEON/SVE via Highway) and runs them under qemu-aarch64:
# correctness of the ARM code paths on an x86 CI machine (speed is not measured here).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg-query -W -f='${Status}' libhwy-dev:arm64 2>/dev/null | grep -q "install ok installed" ||
   ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu qemu-user libhwy-dev:arm64 libgtest-dev
fi

out=build-aarch64
mkdir -p "$out"
# Baseline armv8-a+crypto: Highway compiles its NEON target with the AES extension, and GCC refuses to
# inline its intrinsics into code of a lesser baseline. Every Apple M-series and Graviton core has it.
cxx="aarch64-linux-gnu-g++ -std=c++20 -O2 -march=armv8-a+crypto -Iinclude -Isrc -Itests/support -DFMT_HEADER_ONLY -DPCRE2_CODE_UNIT_WIDTH=8"
gtest=/usr/src/googletest/googletest
sources=(src/quant/*.cpp src/backend/cpu/matmul.cpp src/backend/cpu/matmul_hwy.cpp src/backend/cpu/matmul_vnni.cpp
         src/runtime/thread_pool.cpp tests/support/test_support.cpp tests/kernels/*.cpp)
objs=()
for s in "${sources[@]}"; do
  o="$out/$(echo "$s" | tr '/' '_').o"
  if [[ ! -f "$o" || "$s" -nt "$o" ]]; then
    $cxx -DUMA_SHARED_DIR="\"$PWD/../shared\"" -DUMA_BINARY_DIR="\"$PWD/$out\"" -DUMA_SOURCE_DIR="\"$PWD\"" -c "$s" -o "$o" &
  fi
  objs+=("$o")
  # two compiles at a time (CI has 2 cores)
  while (( $(jobs -r | wc -l) >= 2 )); do sleep 0.2; done
done
[[ -f "$out/gtest-all.o" ]] || $cxx -I"$gtest/include" -I"$gtest" -c "$gtest/src/gtest-all.cc" -o "$out/gtest-all.o"
[[ -f "$out/gtest_main.o" ]] || $cxx -I"$gtest/include" -c "$gtest/src/gtest_main.cc" -o "$out/gtest_main.o"
wait
aarch64-linux-gnu-g++ -o "$out/test_kernels" "${objs[@]}" "$out/gtest-all.o" "$out/gtest_main.o" \
  -L/usr/lib/aarch64-linux-gnu -lhwy -lpthread
echo "aarch64: running the kernel tests under qemu-aarch64"
# One thread: qemu-user's thread creation hangs in this environment; the kernels are what is under test.
UMA_MAX_THREADS=1 qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/test_kernels" "$@"
