#!/usr/bin/env python3
"""Refits the planner's CUDA prefill terms for mixture-of-experts and latent-attention layers (default_efficiency in
src/plan/plan.cpp, docs/PLAN.md "MLA and shared experts on CUDA") from one device run of
`MOE_DEVICE=cuda MOE_PP2048=1 MOE_SHAPES="qwen3-30b-a3b deepseek-v3-mini deepseek-v2-lite"
tools/device/build_and_test.sh moe` (moe-<shape>.log with pp512, moe-<shape>-pp2048.log).

A prompt's MoE and MLA layers cost, on top of what the dense model predicts (src/plan/plan.cpp):
  per MoE layer and prompt token:  c0 (routing, grouping, combine)  +  routed-expert FLOPs / (int8 peak x f)
  per MLA layer and prompt token:  m  (the per-head latent products, norms, gathers)
                                   +  absorbed attention FLOPs at the token's position / (fp32 peak x g)
Four unknowns (c0, f, m, g), fitted on four figures: pp512 of qwen3-30b-a3b (MoE only, 128 experts of 768),
of deepseek-v3-mini (MoE of 512 + MLA) and of deepseek-v2-lite (MoE of 1,408 + MLA), and deepseek-v3-mini's
pp2048 (attention at 4x the mean position). What the rest of the model predicts ("base") is `uma plan` on the
same synth files minus these terms at the factors built in now. The check is pp2048 of qwen3-30b-a3b and
deepseek-v2-lite, predicted with the new factors, which the fit never saw.

  usage: tools/device/fit_cuda_moe.py RESULT_DIR UMA_BINARY MODEL_DIR
  (MODEL_DIR holds <shape>.gguf written by `uma synth --shape <shape> --type q4_0`: the same files as the run's)
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INT8_TOPS, FP32_TFLOPS = 1979.0, 67.0  # data/hardware.json, h100-sxm
MLA_ATTN = 2 * 16 * (512 + 64 + 512)  # absorbed attention FLOPs per token, layer and position: 16 heads, latent 512, rope 64
FIT = [("qwen3-30b-a3b", 512), ("deepseek-v3-mini", 512), ("deepseek-v3-mini", 2048), ("deepseek-v2-lite", 512)]
# The synth shapes (src/synth/shapes.cpp): MoE layers, MLA layers, routed-expert params one token multiplies by
# in a MoE layer (n_expert_used x 3 matrices x n_ff_exp x n_embd), all Q4_0.
SHAPES = {
    "qwen3-30b-a3b": (48, 0, 8 * 3 * 768 * 2048),
    "deepseek-v3-mini": (11, 12, 8 * 3 * 512 * 2048),
    "deepseek-v2-lite": (26, 27, 6 * 3 * 1408 * 2048),
}


def bench_pp(path):
    for line in open(path):
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 7 and re.match(r"pp\d+$", cells[6]):
            return float(cells[7].split()[0])
    raise SystemExit(f"no pp figure in {path}")


def current_factors():
    """c0, f, m, g of the CUDA entry, and the fractions the terms fall back on when f or g is 0."""
    src = open(os.path.join(ROOT, "src/plan/plan.cpp")).read()
    block = src[src.index("case Backend::cuda:"):src.index("case Backend::metal:")]
    compute = float(re.search(r"return \{([\d.]+), ([\d.]+),", block).group(2))
    q4_pre = float(re.search(r"GgmlType::Q4_0, [\d.]+, ([\d.]+)\}", block).group(1))
    tail = re.sub(r"//[^\n]*", "", block[block.index("false,"):])  # numbers after the kernels, no comments
    nums = [float(x) for x in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?=\s*[,}])", tail)]
    _, c0, f, _, m, g, _ = nums[:7]
    return (c0, f, m, g), q4_pre, compute


def predicted_ms(uma, model, batch):
    out = subprocess.run([uma, "plan", model, "--hw", "h100-sxm", "--batch", str(batch), "--ctx", str(batch + 128),
                          "--kv-type", "f16", "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["devices"][0]["prefill_ms"]


def terms_ms(shape, batch, k, q4_pre, compute):
    """The terms' ms in a prefill of `batch` tokens from position 0 (f or g == 0: at the dense rates)."""
    c0, f, m, g = k
    n_moe, n_mla, params = SHAPES[shape]
    expert = 2.0 * batch * n_moe * params / (INT8_TOPS * 1e12 * (f or q4_pre))
    attn = batch * n_mla * MLA_ATTN * batch / 2 / (FP32_TFLOPS * 1e12 * (g or compute))
    return batch * (n_moe * c0 + n_mla * m) / 1e3 + 1e3 * (expert + attn)


def main():
    run, uma, models = sys.argv[1:4]
    k_old, q4_pre, compute = current_factors()
    rows = {}  # (shape, batch): base ms, measured ms
    for shape in SHAPES:
        model = os.path.join(models, f"{shape}.gguf")
        for batch, log in ((512, f"{run}/moe-{shape}.log"), (2048, f"{run}/moe-{shape}-pp2048.log")):
            base = predicted_ms(uma, model, batch) - terms_ms(shape, batch, k_old, q4_pre, compute)
            rows[shape, batch] = (base, 1e3 * batch / bench_pp(log))
    # measured - base = batch x (n_moe x (c0 + a x 2E) + n_mla x (m + b x MLA_ATTN x batch / 2)), in us, for
    # c0, a (us per expert FLOP), m, b (us per attention FLOP).
    lhs, rhs = [], []
    for shape, batch in FIT:
        n_moe, n_mla, params = SHAPES[shape]
        lhs.append([n_moe, n_moe * 2.0 * params, n_mla, n_mla * MLA_ATTN * batch / 2])
        base, meas = rows[shape, batch]
        rhs.append((meas - base) * 1e3 / batch)
    c0, a, m, b = solve(lhs, rhs)
    k_new = (c0, 1e6 / (a * INT8_TOPS * 1e12), m, 1e6 / (b * FP32_TFLOPS * 1e12))
    print(f"fitted: moe_prefill_token_us {k_new[0]:.2f}, expert_prefill_compute {k_new[1]:.5f} "
          f"({1e-6 / a:.1f} TFLOP/s), mla_prefill_token_us {k_new[2]:.2f}, mla_attention_compute {k_new[3]:.4f} "
          f"({1e-6 / b:.1f} TFLOP/s); built in: {k_old}")
    print("| model | prompt | predicted before | predicted now | measured | error before | error now | |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for (shape, batch), (base, meas) in rows.items():
        tps = lambda ms: 1e3 * batch / ms
        before, now = (tps(base + terms_ms(shape, batch, k, q4_pre, compute)) for k in (k_old, k_new))
        role = "fit" if (shape, batch) in FIT else "check"
        print(f"| {shape} | pp{batch} | {before:,.0f} | {now:,.0f} | {tps(meas):,.0f} | "
              f"{(before / tps(meas) - 1) * 100:+.1f} % | {(now / tps(meas) - 1) * 100:+.1f} % | {role} |")


def solve(a, b):
    """Gaussian elimination with partial pivoting for a small square system."""
    n = len(b)
    m = [row[:] + [v] for row, v in zip(a, b)]
    for i in range(n):
        p = max(range(i, n), key=lambda r: abs(m[r][i]))
        m[i], m[p] = m[p], m[i]
        for r in range(n):
            if r != i:
                k = m[r][i] / m[i][i]
                m[r] = [x - k * y for x, y in zip(m[r], m[i])]
    return [m[i][n] / m[i][i] for i in range(n)]


if __name__ == "__main__":
    main()
