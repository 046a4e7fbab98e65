#!/usr/bin/env bash
# A/B decode speed on one GPU machine: tg128 of llama-7b models with the current tree's build (build-device)
# and a baseline tree's (BASE_SRC, default .device-base: `git archive <commit> | tar -x -C .device-base`),
# alternating A and B so that clock and thermal drift falls on both.
#   usage: tools/device/ab_decode.sh [TYPES...]   (default q4_0)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BASE_SRC=${BASE_SRC:-$ROOT/.device-base}
BASE_BUILD=${BASE_BUILD:-$ROOT/build-base}
export PATH="/usr/local/cuda/bin:$PATH"
export LD_LIBRARY_PATH=/tmp/uma-deps/usr/lib/x86_64-linux-gnu:/tmp/uma-deps/lib/x86_64-linux-gnu
BUILD="$BASE_BUILD" bash "$BASE_SRC/tools/device/build_and_test.sh" build >/dev/null 2>&1 || { echo "baseline build failed"; exit 1; }
TYPES=("$@")
[ ${#TYPES[@]} -eq 0 ] && TYPES=(q4_0)
for t in "${TYPES[@]}"; do
  m=/tmp/uma-llama-7b-$t.gguf
  [ -f "$m" ] || build-device/uma synth --shape llama-7b --type "$t" -o "$m" >/dev/null
  for round in 1 2; do
    for side in base new; do
      b=build-device/uma; [ $side = base ] && b=$BASE_BUILD/uma
      r=$($b bench -m "$m" --device cuda -p 0 -n "${TG:-128}" -r 2 --no-membw 2>&1 | grep -E "tg[0-9]" | awk -F'|' '{print $8}')
      echo "$t $side round $round: tg${TG:-128} $r"
    done
  done
done
