#!/usr/bin/env bash
# Builds uma and runs the whole test suite (what CI runs). Needs ../shared beside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --tests
cmake --preset release
cmake --build build -j"$(nproc)"
ctest --preset release
# The ARM (NEON) kernels, cross-compiled and run under qemu: correctness only.
tools/ci_aarch64.sh
