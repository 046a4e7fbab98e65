#!/usr/bin/env bash
# Re-measures uma's CPU speed and fits the planner's CPU efficiency factors (default_efficiency in
# src/plan/plan.cpp, documented in docs/PLAN.md). For each weight type: `uma synth --shape llama-7b`, then
# `uma bench --json` (pp and tg) and `uma plan --hw local --json` on the same file; prints the
# predicted-vs-measured table (with the factors currently built in) and the fitted factors as a C++ block to paste
# between CPU_CALIBRATION_BEGIN/END. Run it twice after pasting: the second table is the check.
#
#   tools/calibrate_cpu.sh [BUILD_DIR] [TYPES...]       e.g. tools/calibrate_cpu.sh build-cal q4_0 q8_0 f16 q4_k_m
# Environment: PP (prompt tokens, 64), TG (generated tokens, 8), THREADS (all cores), TMPDIR.
# On a shared machine run nothing else meanwhile: both the bench and the bandwidth probe feel other processes.
set -euo pipefail
BUILD=${1:-build}
shift || true
TYPES=("$@")
[ ${#TYPES[@]} -eq 0 ] && TYPES=(q4_0 q8_0 f16 q4_k_m)
PP=${PP:-64}
TG=${TG:-8}
THREADS=${THREADS:-$(nproc)}
UMA=$BUILD/uma
WORK=$(mktemp -d "${TMPDIR:-/tmp}/uma-calibrate.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
[ -x "$UMA" ] || { echo "no uma binary at $UMA; build it first (cmake --build $BUILD --target uma)" >&2; exit 1; }

# stories260K: five tiny layers, decode time is almost all per-layer overhead.
STORIES=${STORIES:-$(dirname "$0")/../../shared/models/stories260K.gguf}
if [ -f "$STORIES" ]; then
  "$UMA" bench -m "$STORIES" -p 64 -n 128 -r 3 -t "$THREADS" --json > "$WORK/bench-stories.json"
  "$UMA" plan "$STORIES" --hw local --batch 64 --ctx 256 --kv-type f32 --json > "$WORK/plan-stories.json"
fi
for t in "${TYPES[@]}"; do
  f="$WORK/llama7b-$t.gguf"
  "$UMA" synth --shape llama-7b --type "$t" -o "$f" > /dev/null
  "$UMA" bench -m "$f" -p "$PP" -n "$TG" -r 1 -t "$THREADS" --json > "$WORK/bench-$t.json"
  "$UMA" plan "$f" --hw local --batch "$PP" --ctx $((PP + TG)) --kv-type f32 --json > "$WORK/plan-$t.json"
  rm -f "$f"
done

python3 - "$WORK" "$THREADS" "${TYPES[@]}" <<'EOF'
import json, os, sys
work, threads, types = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
load = lambda name: json.load(open(os.path.join(work, name)))
# The planner's peak for a local CPU (src/plan/hardware.cpp, local_machines): cores x 32 FP32 FLOP/cycle x 3 GHz,
# int8 twice that. Quantized weights run on the int8 path, F16/F32 on the float one.
peak_fp = threads * 32 * 3.0e9
peak = lambda t: peak_fp if t in ("f16", "f32", "bf16") else 2 * peak_fp
n_layer, n_embd, n_vocab = 32, 4096, 32000  # llama-7b

def tps(bench, prefix):
    return next(x["tps_median"] for x in bench["tests"] if x["name"].startswith(prefix))

rows, fit = [], {}
for t in types:
    b, p = load(f"bench-{t}.json"), load(f"plan-{t}.json")[0]
    pp, tg = tps(b, "pp"), tps(b, "tg")
    rows.append((t, p["prefill_tps"], pp, p["decode_tps"], tg, b["bytes_per_token"], b["flops_per_token"]))
ov_us = 5.0
if os.path.exists(os.path.join(work, "bench-stories.json")):
    s = load("bench-stories.json")
    tg_s = tps(s, "tg")
    # Per-layer overhead: a stories260K token is almost all overhead (its 1 MB of weights stay in cache).
    ov_us = 1e6 / tg_s / 5
    print(f"stories260K: tg {tg_s:.0f} t/s -> {ov_us:.1f} us per layer")

print(f"\n| llama-7b | pp{os.environ.get('PP', 64)} predicted | measured | error | tg{os.environ.get('TG', 8)} predicted | measured | error |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for t, pp_p, pp_m, tg_p, tg_m, bpt, fpt in rows:
    print(f"| {t.upper()} | {pp_p:.2f} | {pp_m:.2f} | {100 * (pp_p - pp_m) / pp_m:+.1f} % "
          f"| {tg_p:.2f} | {tg_m:.2f} | {100 * (tg_p - tg_m) / tg_m:+.1f} % |")

# Fit. Decode: the bandwidth fraction is the best any type reached (of the bandwidth the bench measured), so no
# type is predicted slower by the memory bound than it ran; each type's kernel fraction then explains its own
# time. Prefill: FLOPs of a batch (B tokens through the layers, one through the LM head) over the time.
# Against the bandwidth the planner uses for --hw local (the cached probe), not the bench's own probe.
cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uma", "membw.json")
bench_bw = json.load(open(cache))["read_gbps"] if os.path.exists(cache) else rows and load(f"bench-{types[0]}.json")["membw"]["read_gbps"]
decode_bw = max(r[5] * r[4] / 1e9 / bench_bw for r in rows)
B = int(os.environ.get("PP", 64))
head = 2.0 * n_vocab * n_embd
print(f"\nplanner's read bandwidth {bench_bw:.1f} GB/s ({cache}); decode_bandwidth = {decode_bw:.2f}")
print("      // CPU_CALIBRATION_BEGIN (tools/calibrate_cpu.sh prints a replacement for this block)")
kern = []
for t, pp_p, pp_m, tg_p, tg_m, bpt, fpt in rows:
    work_s = 1.0 / tg_m - n_layer * ov_us * 1e-6
    dec = fpt / work_s / peak(t)
    pre = ((fpt - head) * B + head) / (B / pp_m) / peak(t)
    names = {"q4_0": ["Q4_0"], "q8_0": ["Q8_0"], "f16": ["F16"], "f32": ["F32"], "q4_k_m": ["Q4_K", "Q6_K"],
             "q6_k": ["Q6_K"], "q5_k_m": ["Q5_K", "Q6_K"]}.get(t, [t.upper()])
    for n in names:
        kern.append(f"{{GgmlType::{n}, {dec:.4f}, {pre:.4f}}}")
print(f"      return {{{decode_bw:.2f}, 0.10, {ov_us:.1f}, static_cast<uint64_t>(14.4e6 /* runtime base: see test_plan_memory */), true, \"calibrated on <machine> (<date>)\",")
print("              {" + ",\n               ".join(kern) + "},")
print("              false};")
print("      // CPU_CALIBRATION_END")
EOF
