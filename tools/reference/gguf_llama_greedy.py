#!/usr/bin/env python3
"""Independent reference for uma's golden tests: run a llama-architecture F32/F16 GGUF through
transformers' LlamaForCausalLM (f32, greedy) and print the generated token ids as JSON.

Runs where torch + transformers + numpy exist (the GPU machine; see tools/device/). The GGUF is parsed
here with numpy; q/k rows are un-permuted back to HF's rotate_half layout (llama.cpp's converter
permutes them for its adjacent-pair RoPE).

usage: gguf_llama_greedy.py MODEL.gguf N_NEW "ids ids ..." ["ids ..." ...]
"""
import json
import struct
import sys

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf(path):
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    magic, version = take("<I"), take("<I")
    assert magic == 0x46554747 and version >= 2, "GGUF v2/v3 expected"
    n_tensors, n_kv = take("<Q"), take("<Q")

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("<I"), take("<Q")
            return [value(et) for _ in range(n)]
        return take(SCALAR[t])

    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("<I")
        ne = [take("<Q") for _ in range(nd)]
        t, off = take("<I"), take("<Q")
        infos.append((name, ne, t, off))
    align = meta.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    tensors = {}
    for name, ne, t, off in infos:
        count = int(np.prod(ne))
        dtype = {0: np.float32, 1: np.float16}[t]
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=base + off).astype(np.float32)
        tensors[name] = arr.reshape(list(reversed(ne)))
    return meta, tensors


def unpermute(w, n_head):
    # inverse of llama.cpp's permute: (n_head, 2, half, in) <- (n_head, half, 2, in)
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def main():
    path, n_new, prompts = sys.argv[1], int(sys.argv[2]), [list(map(int, p.split())) for p in sys.argv[3:]]
    meta, t = read_gguf(path)
    a = meta["general.architecture"]
    n_head, n_kv = meta[f"{a}.attention.head_count"], meta.get(f"{a}.attention.head_count_kv", meta[f"{a}.attention.head_count"])
    cfg = LlamaConfig(
        vocab_size=t["token_embd.weight"].shape[0], hidden_size=meta[f"{a}.embedding_length"],
        intermediate_size=meta[f"{a}.feed_forward_length"], num_hidden_layers=meta[f"{a}.block_count"],
        num_attention_heads=n_head, num_key_value_heads=n_kv,
        rms_norm_eps=meta[f"{a}.attention.layer_norm_rms_epsilon"],
        rope_theta=meta.get(f"{a}.rope.freq_base", 10000.0), max_position_embeddings=4096,
        tie_word_embeddings="output.weight" not in t, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).float().eval()
    sd = {"model.embed_tokens.weight": t["token_embd.weight"], "model.norm.weight": t["output_norm.weight"],
          "lm_head.weight": t.get("output.weight", t["token_embd.weight"])}
    for i in range(cfg.num_hidden_layers):
        p, q = f"blk.{i}.", f"model.layers.{i}."
        sd[q + "self_attn.q_proj.weight"] = unpermute(t[p + "attn_q.weight"], n_head)
        sd[q + "self_attn.k_proj.weight"] = unpermute(t[p + "attn_k.weight"], n_kv)
        sd[q + "self_attn.v_proj.weight"] = t[p + "attn_v.weight"]
        sd[q + "self_attn.o_proj.weight"] = t[p + "attn_output.weight"]
        sd[q + "mlp.gate_proj.weight"] = t[p + "ffn_gate.weight"]
        sd[q + "mlp.up_proj.weight"] = t[p + "ffn_up.weight"]
        sd[q + "mlp.down_proj.weight"] = t[p + "ffn_down.weight"]
        sd[q + "input_layernorm.weight"] = t[p + "attn_norm.weight"]
        sd[q + "post_attention_layernorm.weight"] = t[p + "ffn_norm.weight"]
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
    out = []
    with torch.no_grad():
        for ids in prompts:
            seq = list(ids)
            margins = []
            for _ in range(n_new):  # plain greedy without a cache: the simplest possible reference
                logits = model(torch.tensor([seq])).logits[0, -1]
                top2 = torch.topk(logits, 2)
                margins.append(float(top2.values[0] - top2.values[1]))
                seq.append(int(top2.indices[0]))
            out.append({"prompt": ids, "greedy": seq[len(ids):], "min_top2_margin": min(margins)})
    print(json.dumps({"model": path, "transformers_llama_f32": out}))


if __name__ == "__main__":
    main()
