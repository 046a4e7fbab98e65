#!/usr/bin/env bash
# Re-measures uma's CPU speed and fits the planner's CPU efficiency factors (default_efficiency in
# src/plan/plan.cpp, documented in docs/PLAN.md). For each weight type: `uma synth --shape llama-7b`, then
# `uma bench --json` and `uma plan --hw local --json` on the same file; prints the predicted-vs-measured table
# (with the factors currently built in) and the fitted factors as a C++ block to paste between
# CPU_CALIBRATION_BEGIN/END. Fit (over two runs: KEEP=/tmp/a ..., then KEEP=/tmp/b FIT_FROM=/tmp/a ...), paste,
# rebuild, run it once more: that run's table is the check (docs/PLAN.md, "Speed (CPU, this machine)").
#
#   tools/calibrate_cpu.sh [BUILD_DIR] [TYPES...]       e.g. tools/calibrate_cpu.sh build-cal q4_0 q8_0 f16 q4_k_m
# Environment: PP (prompt tokens, 64), TG (generated tokens, 8), ROUNDS (decode measurements per type, 7),
# THREADS (all cores), TMPDIR; KEEP=DIR keeps this run's measurements in DIR, FIT_FROM="DIR..." adds the decode
# rounds kept by earlier runs to the fit (the table compares this run only): a fit over runs minutes apart sees
# more of the VM's states.
#
# What is compared. A shared VM's memory bandwidth moves by tens of percent within seconds to minutes (this one:
# 33-57 GB/s between two probes 5 s apart), so a decode prediction made with the bandwidth cached when `uma plan`
# first ran, checked against a decode measured later, mostly measures that drift. Here each type's decode is
# measured in ROUNDS separate `uma bench -p 0 -n TG -r 1` calls; each probes the read bandwidth right before and
# right after its generation (runtime/membw.h: all threads, prefetching as the kernels do), and the mean of the
# two is that round's bandwidth. Every round's prediction is made with that round's bandwidth (written into a
# private membw cache that `uma plan --hw local` reads), so prediction and measurement see the same machine; the
# table gives the medians over the rounds of the prediction, the measurement and the per-round error (and each
# round, below it). The fitted decode bandwidth fractions are likewise fractions of the probe of the round they
# came from. Prefill is compute-bound: one call per type, the median of 3 batches, no probes. Each synthetic file is
# flushed to disk (`sync`) before it is measured: the kernel writing back gigabytes of dirty pages competes for
# memory bandwidth and a core. On a shared machine run nothing else meanwhile: both the bench and the probe feel
# other processes, and a round that shares a core with another process runs slower than its probe says.
set -euo pipefail
BUILD=${1:-build}
shift || true
TYPES=("$@")
[ ${#TYPES[@]} -eq 0 ] && TYPES=(q4_0 q8_0 f16 q4_k_m)
PP=${PP:-64}
TG=${TG:-8}
ROUNDS=${ROUNDS:-7}
THREADS=${THREADS:-$(nproc)}
UMA=$BUILD/uma
if [ -n "${KEEP:-}" ]; then
  WORK=$KEEP
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/uma-calibrate.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
[ -x "$UMA" ] || { echo "no uma binary at $UMA; build it first (cmake --build $BUILD --target uma)" >&2; exit 1; }

# Writes a membw cache (for `uma plan` with XDG_CACHE_HOME=$2) holding the mean of the probes that a bench JSON
# ($1) took before and after its tests.
bench_bandwidth_cache() {
  mkdir -p "$2/uma"
  python3 - "$1" "$2/uma/membw.json" <<'PY'
import json, os, sys
m = json.load(open(sys.argv[1]))["membw"]
json.dump({"read_gbps": (m["before_gbps"] + m["after_gbps"]) / 2, "cores": os.cpu_count(), "threads": m["threads"],
           "buffer_bytes": m["buffer_bytes"], "passes": m["passes"], "prefetch_bytes": m["prefetch_bytes"]},
          open(sys.argv[2], "w"), indent=2)
PY
}

# stories260K: five tiny layers, decode time is almost all per-layer overhead.
STORIES=${STORIES:-$(dirname "$0")/../../shared/models/stories260K.gguf}
if [ -f "$STORIES" ]; then
  "$UMA" bench -m "$STORIES" -p 64 -n 128 -r 3 -t "$THREADS" --no-membw --json > "$WORK/bench-stories.json"
fi
for t in "${TYPES[@]}"; do
  f="$WORK/llama7b-$t.gguf"
  "$UMA" synth --shape llama-7b --type "$t" -o "$f" > /dev/null
  sync
  "$UMA" bench -m "$f" -p "$PP" -n 0 -r 3 -t "$THREADS" --no-membw --json > "$WORK/bench-pp-$t.json"
  for i in $(seq "$ROUNDS"); do
    "$UMA" bench -m "$f" -p 0 -n "$TG" -r 1 -t "$THREADS" --json > "$WORK/bench-tg-$t-$i.json"
    bench_bandwidth_cache "$WORK/bench-tg-$t-$i.json" "$WORK/cache-$t-$i"
    XDG_CACHE_HOME="$WORK/cache-$t-$i" "$UMA" plan "$f" --hw local --batch "$PP" --ctx $((PP + TG)) --kv-type f32 \
      --json > "$WORK/plan-$t-$i.json"
  done
  rm -f "$f"
done

python3 - "$WORK" "$THREADS" "$ROUNDS" "${TYPES[@]}" <<'PY'
import glob, json, os, statistics, sys
work, threads, rounds, types = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
load = lambda name, d=work: json.load(open(os.path.join(d, name)))
median = statistics.median
# The planner's peak for a local CPU (src/plan/hardware.cpp, local_machines): cores x 32 FP32 FLOP/cycle x 3 GHz,
# int8 twice that. Quantized weights run on the int8 path, F16/F32 on the float one.
peak_fp = threads * 32 * 3.0e9
peak = lambda t: peak_fp if t in ("f16", "f32", "bf16") else 2 * peak_fp
n_layer, n_embd, n_vocab = 32, 4096, 32000  # llama-7b
PP, TG = int(os.environ.get("PP", 64)), int(os.environ.get("TG", 8))

def tps(bench, prefix):
    return next(x["tps_median"] for x in bench["tests"] if x["name"].startswith(prefix))

runs = [work] + os.environ.get("FIT_FROM", "").split()  # the fit's; the table is this run's alone
ov_us = 5.0
stories = [tps(load("bench-stories.json", d), "tg") for d in runs
           if os.path.exists(os.path.join(d, "bench-stories.json"))]
if stories:
    # Per-layer overhead: a stories260K token is almost all overhead (its 1 MB of weights stay in cache).
    tg_s = median(stories)
    ov_us = 1e6 / tg_s / 5
    print(f"stories260K: tg {tg_s:.0f} t/s (median of {len(stories)} runs) -> {ov_us:.1f} us per layer")

rows = []
for t in types:
    pp_b, p0 = load(f"bench-pp-{t}.json"), load(f"plan-{t}-1.json")[0]
    r = dict(t=t, pp_p=p0["prefill_tps"], pp_m=tps(pp_b, "pp"), bytes=p0["active_bytes"], rounds=[])
    for i in range(1, rounds + 1):
        b, p = load(f"bench-tg-{t}-{i}.json"), load(f"plan-{t}-{i}.json")[0]
        m = b["membw"]
        r["flops"] = b["flops_per_token"]
        r["rounds"].append(dict(tg_p=p["decode_tps"], tg_m=tps(b, "tg"), bw=(m["before_gbps"] + m["after_gbps"]) / 2,
                                bound="bandwidth" if p["devices"][0]["bandwidth_bound"] else "compute"))
    rows.append(r)

err = lambda p, m: 100 * (p - m) / m
print(f"\nDecode: {rounds} rounds per type, each predicted with the mean of the probes around its own generation; "
      "medians over the rounds (error: median of the per-round errors).")
print(f"\n| llama-7b | pp{PP} predicted | measured | error | probe GB/s (min-max) | tg{TG} predicted | measured | error "
      f"| errors (min to max) | plan's bound |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for r in rows:
    R = r["rounds"]
    for x in R:
        x["err"] = err(x["tg_p"], x["tg_m"])
    errs = [x["err"] for x in R]
    bws = [x["bw"] for x in R]
    bounds = sorted(set(x["bound"] for x in R))
    print(f"| {r['t'].upper()} | {r['pp_p']:.2f} | {r['pp_m']:.2f} | {err(r['pp_p'], r['pp_m']):+.1f} % "
          f"| {median(bws):.1f} ({min(bws):.1f}-{max(bws):.1f}) | {median(x['tg_p'] for x in R):.2f} "
          f"| {median(x['tg_m'] for x in R):.2f} | {median(errs):+.1f} % | {min(errs):+.1f} to {max(errs):+.1f} % "
          f"| {'/'.join(bounds)} |")
print("\nEach round: measured t/s @ probe GB/s (error).")
for r in rows:
    print(f"{r['t'].upper()}: " + ", ".join(f"{x['tg_m']:.2f} @ {x['bw']:.1f} ({x['err']:+.0f} %)" for x in r["rounds"]))

# Fit. Decode: a round's work time is its measured time less the per-layer overhead; the fraction of its own
# round's probe it streamed at is bytes / work / probe. Each type's decode kernel gets its median fraction (the
# types differ: on the 2-core VM Q4_0 streams at ~0.92 of the probe, F16 at ~1.05; on two cores both the memory
# and the kernel's arithmetic take time, so its own fraction describes a type better than a shared one with a
# compute bound that cannot move with the bandwidth); decode_bandwidth, for the cache and the types without an
# entry, is the median of the types'. A type's compute fraction comes from its fastest round: the kernel ran at
# least that fast, so the compute bound stays out of the way while the memory bound describes the type (a type
# whose rounds all met low bandwidth gets too low a bound: fit over several runs). Prefill: FLOPs of a batch (B
# tokens through the layers, one through the LM head) over the time, the median over the runs.
head = 2.0 * n_vocab * n_embd
for d in runs[1:]:  # earlier runs' decode rounds (bench JSON + the mean probe) and prefill
    for r in rows:
        r.setdefault("pp_fit", [r["pp_m"]]).append(tps(load(f"bench-pp-{r['t']}.json", d), "pp"))
        for f in sorted(glob.glob(os.path.join(d, f"bench-tg-{r['t']}-*.json"))):
            b = load(os.path.basename(f), d)
            m = b["membw"]
            r["rounds"].append(dict(tg_m=tps(b, "tg"), bw=(m["before_gbps"] + m["after_gbps"]) / 2, extra=True))
if os.environ.get("FIT_FROM"):
    print(f"\nfit over this run's rounds and those kept in {os.environ['FIT_FROM']}: " +
          ", ".join(f"{r['t'].upper()} {len(r['rounds'])}" for r in rows))
for r in rows:
    for x in r["rounds"]:
        x["work"] = 1.0 / x["tg_m"] - n_layer * ov_us * 1e-6
        x["frac"] = r["bytes"] / x["work"] / (x["bw"] * 1e9)
    r["frac"] = median(x["frac"] for x in r["rounds"])
decode_bw = median(r["frac"] for r in rows)
print("\nfraction of its round's probe each decode streamed at, median (min-max): " +
      ", ".join(f"{r['t'].upper()} {r['frac']:.3f} ({min(x['frac'] for x in r['rounds']):.3f}-"
                f"{max(x['frac'] for x in r['rounds']):.3f})" for r in rows) + f"; decode_bandwidth = {decode_bw:.3f}")
print("      // CPU_CALIBRATION_BEGIN (tools/calibrate_cpu.sh prints a replacement for this block)")
kern = []
names = {"q4_0": ["Q4_0"], "q8_0": ["Q8_0"], "f16": ["F16"], "f32": ["F32"], "q4_k_m": ["Q4_K", "Q6_K"],
         "q6_k": ["Q6_K"], "q5_k_m": ["Q5_K", "Q6_K"]}
for r in rows:
    dec = r["flops"] / min(x["work"] for x in r["rounds"]) / peak(r["t"])
    pre = ((r["flops"] - head) * PP + head) / (PP / median(r.get("pp_fit", [r["pp_m"]]))) / peak(r["t"])
    for n in names.get(r["t"], [r["t"].upper()]):
        kern.append(f"{{GgmlType::{n}, {dec:.4f}, {pre:.4f}, {r['frac']:.3f}}}")
print(f"      return {{{decode_bw:.3f}, 0.10, {ov_us:.1f}, static_cast<uint64_t>(14.4e6 /* runtime base: see test_plan_memory */), true, \"calibrated on <machine> (<date>)\",")
print("              {" + ",\n               ".join(kern) + "},")
print("              false};")
print("      // CPU_CALIBRATION_END")
PY
