#!/usr/bin/env bash
# Server decode throughput on the GPU machine: `uma serve` on a uma synth model (SERVE_SHAPE, default
# llama3-8b, Q4_0), then /v1/completions of 256 tokens (ignore_eos) one at a time and PARALLEL at once, with
# top_k 40 (penalties and top-k next to the logits: Model::forward_top_k_rows), top_k 300 (above the device's
# k, so each row comes to the host and is selected there, as every server step did before) and top_k 0
# (OpenAI's default: the device's 256 best and the row's mass, the whole row only when the draw lands past
# them). SERVE_TOP_K lists them; SERVE_TEMP sets the temperature (default 0.8; a uma synth model's logits are
# flat, so a low one stands in for a trained model's peaked rows).
#   usage: tools/device/serve_bench.sh   (after tools/device/build_and_test.sh build)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-$ROOT/build-device}
LIBS=/tmp/uma-deps/usr/lib/x86_64-linux-gnu:/tmp/uma-deps/lib/x86_64-linux-gnu  # uma's only: not the system curl's
shape=${SERVE_SHAPE:-llama3-8b} par=${PARALLEL:-4} port=8093
m=/tmp/uma-$shape-q4_0.gguf
[ -f "$m" ] || LD_LIBRARY_PATH=$LIBS "$BUILD/uma" synth --shape "$shape" --type q4_0 -o "$m" >/dev/null
LD_LIBRARY_PATH=$LIBS "$BUILD/uma" serve -m "$m" --port $port --parallel "$par" -c 1024 >/tmp/serve.log 2>&1 &
pid=$!
for _ in $(seq 120); do curl -sf localhost:$port/v1/models >/dev/null && break; sleep 0.5; done
one() {  # one request of 256 tokens with top_k $1
  curl -sf localhost:$port/v1/completions -H 'Content-Type: application/json' \
    -d "{\"prompt\":\"Once upon a time\",\"max_tokens\":256,\"ignore_eos\":true,\"top_k\":$1,\"temperature\":${SERVE_TEMP:-0.8},\"seed\":$2}" \
    >/dev/null
}
for round in 1 2; do
  for k in ${SERVE_TOP_K:-40 300 0}; do
    t0=$(date +%s.%N); one $k 1; t1=$(date +%s.%N)
    reqs=()
    for i in $(seq "$par"); do one $k "$i" & reqs+=($!); done
    wait "${reqs[@]}"; t2=$(date +%s.%N)
    python3 -c "print(f'top_k $k temperature ${SERVE_TEMP:-0.8} round $round: 1 request {256 / ($t1 - $t0):.1f} t/s, $par at once {$par * 256 / ($t2 - $t1):.1f} t/s together')"
  done
done
kill $pid
