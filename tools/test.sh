#!/usr/bin/env bash
# Builds uma and runs the whole test suite (what CI runs). Needs ../shared beside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --tests
cmake --preset release
cmake --build build -j"$(nproc)"
ctest --preset release
