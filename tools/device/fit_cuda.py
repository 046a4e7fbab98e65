#!/usr/bin/env python3
"""Refits the planner's CUDA efficiency factors (default_efficiency in src/plan/plan.cpp, docs/PLAN.md) from one
device run of `tools/device/build_and_test.sh bench llama3 plan` (bench-<type>.log, bench-f16-noattn.log,
plan-<type>.json in the run's result folder).

The planner's CUDA time model, which this inverts (src/plan/plan.cpp):
  decode  = layers x layer_overhead_us + max(bytes / (catalog bandwidth x decode_bandwidth),
                                             sum over types of FLOPs / (peak(type) x decode fraction))
  prefill = layers x layer_overhead_us + attention FLOPs / (fp32 peak x compute)
            + sum over types of FLOPs / (peak(type) x prefill fraction)
Every term but the fitted one is known, so each factor is scaled by (predicted - rest) / (measured - rest):
F16 decode sets decode_bandwidth (it streams its bytes), each quantized file its decode and prefill fraction,
and the prefill attention's share (F16 pp512 with and without it, UMA_CUDA_SKIP=attention_gemm) sets
`compute`. The fit reproduces its llama-7b figures by construction; the check is llama3-8b, predicted again
after the new factors are pasted and measured in the same run.

  usage: tools/device/fit_cuda.py RESULT_DIR [h100|h200]   (the entry to refit; h200: a run with PLAN_HW=h200)
"""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYERS, HEADS, HEAD_DIM, BATCH = 32, 32, 128, 512  # llama-7b, pp512 from an empty cache
FP32_TFLOPS = 67.0  # data/hardware.json, h100-sxm and h200 alike
FILES = {"q4_0": ["Q4_0"], "q8_0": ["Q8_0"], "f16": ["F16"], "q4_k_m": ["Q4_K", "Q6_K"]}


def bench(path):
    """pp and tg t/s from a `uma bench` table."""
    out = {}
    for line in open(path):
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 7 and re.match(r"(pp|tg)\d+$", cells[6]):
            out[cells[6][:2]] = float(cells[7].split()[0])
    return out


def current_factors(entry):
    """decode_bandwidth, compute, layer_overhead_us and the per-type fractions of a CUDA entry (h100, h200)."""
    src = open(os.path.join(ROOT, "src/plan/plan.cpp")).read()
    tag = entry.upper()
    block = src[src.index(f"// CUDA_{tag}_BEGIN"):src.index(f"// CUDA_{tag}_END")]
    bw, compute, overhead = (float(x) for x in re.search(r"\{([\d.]+), ([\d.]+), ([\d.]+),", block).groups())
    kernels = {t: (float(d), float(p)) for t, d, p in re.findall(r"GgmlType::(\w+), ([\d.]+), ([\d.]+)\}", block)}
    return bw, compute, overhead, kernels


def main():
    run = sys.argv[1]
    entry = sys.argv[2] if len(sys.argv) > 2 else "h100"
    hw = {"h100": "h100-sxm", "h200": "h200"}[entry]
    bw, compute, overhead_us, kernels = current_factors(entry)
    fixed = LAYERS * overhead_us / 1e3  # ms a forward pass pays in small kernels
    attn_flops = BATCH * LAYERS * 2.0 * HEADS * (BATCH / 2) * 2 * HEAD_DIM  # at the batch's mean position
    t_attn_old = attn_flops / (FP32_TFLOPS * 1e12 * compute) * 1e3
    f16, f16_noattn = bench(f"{run}/bench-f16.log"), bench(f"{run}/bench-f16-noattn.log")
    t_attn_new = 1e3 * BATCH / f16["pp"] - 1e3 * BATCH / f16_noattn["pp"]
    compute_new = attn_flops / (FP32_TFLOPS * 1e12 * t_attn_new / 1e3)
    print(f"prefill attention: {t_attn_new:.2f} ms a pp512 pass (F16 with and without it) -> compute {compute_new:.3f}"
          f" (was {compute:.3f}: {t_attn_old:.2f} ms)")
    new_bw, new_kernels = bw, dict(kernels)
    rows = []
    for f, types in FILES.items():
        b = bench(f"{run}/bench-{f}.log")
        plan = json.load(open(f"{run}/plan-{f}.json"))[0]
        dev = plan["devices"][0]
        t_dec, t_pre = 1e3 / b["tg"], 1e3 * BATCH / b["pp"]
        p_dec, p_pre = dev["decode_ms"], dev["prefill_ms"]
        dec_scale = (p_dec - fixed) / (t_dec - fixed)
        pre_scale = (p_pre - fixed - t_attn_old) / (t_pre - fixed - t_attn_new)
        rows.append((f, plan["prefill_tps"], b["pp"], plan["decode_tps"], b["tg"]))
        if dev["bandwidth_bound"]:
            new_bw = bw * dec_scale
        for t in types:
            d, p = kernels[t]
            new_kernels[t] = (new_kernels[t][0] if dev["bandwidth_bound"] else d * dec_scale, p * pre_scale)
    print("\nllama-7b with the factors built in (predicted vs measured):")
    print("| file | pp512 predicted | measured | error | tg128 predicted | measured | error |")
    for f, pp_p, pp_m, tg_p, tg_m in rows:
        print(f"| {f} | {pp_p:,.0f} | {pp_m:,.0f} | {100 * (pp_p / pp_m - 1):+.1f} % | {tg_p:,.1f} | {tg_m:,.1f} |"
              f" {100 * (tg_p / tg_m - 1):+.1f} % |")
    print(f"\nfitted CUDA entry (paste between CUDA_{entry.upper()}_BEGIN and _END in src/plan/plan.cpp):")
    print(f"      return {{{new_bw:.3f}, {compute_new:.3f}, {overhead_us:.1f}, ...")
    for t, (d, p) in new_kernels.items():
        print(f"              {{GgmlType::{t}, {d:.6f}, {p:.4f}}},")
    if os.path.exists(f"{run}/bench-llama3.log"):
        b = bench(f"{run}/bench-llama3.log")
        print(f"\ncheck, llama3-8b Q4_0 measured: pp512 {b['pp']:,.0f}, tg128 {b['tg']:.1f} t/s; predict it with the"
              f" new factors: uma plan FILE --hw {hw} --batch 512 --ctx 640 --kv-type f16")


if __name__ == "__main__":
    main()
