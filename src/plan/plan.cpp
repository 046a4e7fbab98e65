#include "plan/plan.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "uma/error.h"

namespace uma::plan {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Everything the planner needs about one layer (or the global tensors), summed over its tensors.
struct Slice {
  uint64_t bytes = 0;             // resident weight bytes
  uint64_t decode_bytes = 0;      // bytes read per decoded token
  uint64_t expert_bytes = 0;      // routed-expert bytes (prefill reads the experts its batch touches)
  uint64_t dense_params = 0;      // params every token multiplies by
  uint64_t expert_active_params = 0;  // routed-expert params one token multiplies by
  bool shared_expert = false;     // has shared-expert tensors (a dense SwiGLU beside the routed experts)
  // Params one token multiplies by (dense + active experts) and bytes it reads, per storage type: each type has its
  // own kernel.
  std::map<std::pair<uint32_t, bool>, double> active_params_by_type, decode_bytes_by_type;
  std::map<std::pair<uint32_t, bool>, double> expert_params_by_type;  // the routed experts' share of the above
};

// Peak matrix throughput (FLOP/s) for weights stored as `type`: quantized weights use the int8 path where the
// device has one (llama.cpp-style MMQ / CPU int8 dot products), FP8 the fp8 path, floats the fp16/fp32 units.
double peak_flops(const DeviceConfig& d, StorageType type) {
  double tflops = d.fp16_tflops;
  if (type.fp8) tflops = d.fp8_tflops > 0 ? d.fp8_tflops : d.fp16_tflops;
  else if (type.ggml_id == static_cast<uint32_t>(GgmlType::F32)) tflops = d.fp32_tflops > 0 ? d.fp32_tflops : d.fp16_tflops;
  else if (!type.is_float() && d.int8_tops > 0) tflops = d.int8_tops;
  return tflops * 1e12;
}

// Activation memory of one forward pass of n_tokens over a context of n_kv, F32, without flash attention:
// the residual stream and its temporaries, q/k/v, the FFN intermediates of the widest layer, the attention score
// matrix, and (on the last device) the logits of one token. A generic engine's compute graph (GPU backends).
uint64_t compute_buffer_graph(const ModelShape& s, int64_t n_tokens, int64_t n_kv, bool has_output) {
  const int64_t ffn = std::max({s.layer_is_moe(s.n_layer - 1) ? s.n_ff_exp * s.n_expert_used + s.shexp_width() : 0,
                                s.n_layer_dense_lead > 0 || !s.is_moe() ? s.n_ff : 0});
  const int64_t qkv = s.is_mla() ? s.n_head * (s.head_dim + s.head_dim_v) + s.kv_lora_rank + s.qk_rope_head_dim
                                 : s.n_head * s.head_dim + 2 * s.n_head_kv * s.head_dim;
  const double floats = static_cast<double>(n_tokens) * (4.0 * s.n_embd + qkv + 2.0 * ffn) +
                        static_cast<double>(s.n_head) * n_tokens * n_kv + (has_output ? s.n_vocab : 0);
  return static_cast<uint64_t>(4.0 * floats);
}

// What uma's CPU backend keeps resident for a forward pass of n_tokens (DecoderModel::ensure_scratch, F32):
// five n_embd-wide rows (residual x, its norm, the block output, the gathered output rows, the shared-expert
// sum), q/k/v and the attention output, gate and up of the widest dense FFN (or the shared experts), the MLA
// projections (q_a, latent, rope part) and, for MoE layers, the n_expert_used expert outputs per token. The logits
// buffer is n_tokens x n_vocab but only the rows of tokens that want logits are written, and untouched pages of
// a large allocation never become resident: one row is counted.
uint64_t compute_buffer_cpu(const ModelShape& s, int64_t n_tokens, bool has_output) {
  const int64_t ff = std::max(s.n_ff, s.n_ff_exp * std::max<int64_t>(1, s.n_expert_shared));
  const int64_t hd_k = s.is_mla() ? s.qk_nope_head_dim + s.qk_rope_head_dim : s.head_dim;
  const int64_t hd_v = s.is_mla() ? s.v_head_dim : s.head_dim_v;
  const int64_t n_kv_head = s.is_mla() ? s.n_head : s.n_head_kv;
  int64_t per_token = 5 * s.n_embd + s.n_head * hd_k + n_kv_head * (hd_k + hd_v) + s.n_head * hd_v + 2 * ff;
  if (s.is_mla()) per_token += std::max<int64_t>(1, s.q_lora_rank) + s.kv_lora_rank + s.qk_rope_head_dim;
  if (s.is_moe()) per_token += s.n_expert_used * s.n_embd;
  return 4 * static_cast<uint64_t>(n_tokens * per_token + (has_output ? s.n_vocab : 0));
}

uint64_t compute_buffer(Backend backend, const ModelShape& s, int64_t n_tokens, int64_t n_kv, bool has_output) {
  return backend == Backend::cpu ? compute_buffer_cpu(s, n_tokens, has_output)
                                 : compute_buffer_graph(s, n_tokens, n_kv, has_output);
}

// Host memory of the tokenizer: per vocabulary entry the mapped token string, GGUF's string_view index over it,
// the Vocab's own copy, score, type and lookup-map node; byte-level BPE adds about two merges per token and a
// fixed cost for its compiled pre-tokenizer regexes. Fitted from `uma run` peak RSS: SentencePiece llama-7b
// (32,000 tokens) and stories260K, BPE llama3-8b (128,256 tokens, 280,147 merges) and the BPE fixtures.
uint64_t tokenizer_bytes(const ModelShape& s) {
  const bool spm = s.tokenizer == "llama";  // unknown: assume BPE, the larger
  return static_cast<uint64_t>((spm ? 100.0 : 290.0) * static_cast<double>(s.n_vocab) + (spm ? 0 : 400e3));
}

// uma's CPU KV cache hands out cells in pages of 16 tokens (KvCache::kPageSize), so n_ctx is rounded up.
int64_t kv_cells(Backend backend, int64_t n_ctx) { return backend == Backend::cpu ? (n_ctx + 15) / 16 * 16 : n_ctx; }

// FLOPs of attention for one token at context position pos, one layer: scores (q·k) and the weighted sum of v.
// MLA attends the cached latent directly (the absorbed form: q_nope is projected into latent space first, the
// per-head products of attn_k_b/attn_v_b count as weights), so each head's score is a (kv_lora + rope)-wide dot
// product and its output a kv_lora-wide sum. uma runs this form for prefill and decode alike, as llama.cpp does
// (docs/MOE.md); the decompressed form (head_dim + head_dim_v per head, 3.4x fewer FLOPs on DeepSeek-V3) would need
// K and V materialised per head.
double attention_flops(const ModelShape& s, double pos) {
  double dk = static_cast<double>(s.head_dim), dv = static_cast<double>(s.head_dim_v);
  if (s.is_mla()) {
    dk = static_cast<double>(s.kv_lora_rank + s.qk_rope_head_dim);
    dv = static_cast<double>(s.kv_lora_rank);
  }
  return 2.0 * static_cast<double>(s.n_head) * pos * (dk + dv);
}

std::string fmt_gb(uint64_t b) { return format_bytes(b); }

}  // namespace

Efficiency efficiency_for(const DeviceConfig& d) {
  Efficiency e = default_efficiency(d.backend);
  if (d.backend != Backend::cuda || !(d.id == "h200" || d.label.find("H200") != std::string::npos)) return e;
  // CUDA_H200_BEGIN (tools/device/fit_cuda.py h200 refits these; the MoE and MLA terms stay the H100's)
  // Fitted 2026-11-22 on an H200 SXM (device tool `nvidia-h200`) by `tools/device/fit_cuda.py RUN h200` from one
  // run of `PLAN_HW=h200 build_and_test.sh bench llama3 plan`: llama-7b tg128 Q4_0 488.6, Q8_0 319.1, F16 238.6,
  // Q4_K_M 421.5 t/s; pp512 20,780 / 20,748 / 32,316 / 20,842 (docs/PLAN.md, "H200"). Its F16 decode streams at
  // 0.711 of the catalog's 4,800 GB/s; its quantized GEMVs and prefill ran 8-19 % faster than the H100's at the
  // same peaks. Sixth session, with the bulk-copy GEMV (one run of the same steps): Q8_0 tg128 377.2 t/s (its
  // decode fraction refitted from 0.002373); Q4_0 529.6 against 488.6 predicted (-7.7 %, kept: llama3-8b Q4_0
  // did not move, 468.0, and the MoE models' small matrices keep the register GEMV), the rest within 2 %.
  const Efficiency h200 = {0.711, 0.507, 10.0, static_cast<uint64_t>(595 * kMiB), true, "calibrated on H200 SXM (2026-11-22)",
              {{GgmlType::Q4_0, 0.003867, 0.1504},
               {GgmlType::Q8_0, 0.002864, 0.1501},
               {GgmlType::F16, 0.175, 0.4968},
               {GgmlType::Q4_K, 0.003253, 0.1509},
               {GgmlType::Q6_K, 0.003253, 0.1509}}};
  // CUDA_H200_END
  e.decode_bandwidth = h200.decode_bandwidth, e.compute = h200.compute, e.layer_overhead_us = h200.layer_overhead_us;
  e.kernels = h200.kernels, e.note = h200.note;
  // MoE decode is bound by its launches, which the H200 does not speed up while its dense factors make the
  // GEMVs faster: the per-MoE-layer term, fitted on the tg128 of qwen3-30b-a3b, deepseek-v3-mini and
  // deepseek-v2-lite on that H200 for the smallest largest error (+7 %, +1 %, -9 %; docs/PLAN.md, "H200").
  e.moe_layer_overhead_us = 32.3;
  return e;
}

Efficiency default_efficiency(Backend backend) {
  // The one table of efficiency factors (docs/PLAN.md, "Efficiency table"). CPU and CUDA are fitted against
  // `uma bench` on synthetic llama-7b files (tools/calibrate_cpu.sh prints the CPU fit); Metal is a placeholder.
  switch (backend) {
    case Backend::cuda:
      // CUDA_H100_BEGIN (tools/device/fit_cuda.py and fit_cuda_moe.py read and refit this entry)
      // Fitted 2026-11-22 on an H100 SXM5 (device tool `nvidia-h100-x1`; docs/PERFORMANCE.md "CUDA", docs/PLAN.md)
      // by tools/device/fit_cuda.py from one run of `build_and_test.sh bench llama3 plan`: llama-7b tg128 Q4_0
      // 454.4, Q8_0 270.3, F16 183.6, Q4_K_M 362.5 t/s; pp512 18,229 / 18,915 / 30,432 / 18,442 t/s, against
      // the catalog's 3,350 GB/s, 1,979 int8 TOPS, 989 fp16 and 67 fp32 TFLOPS. ~10 us per layer of small
      // kernels (norms, rope, attention, swiglu) add to every forward pass. Decode: F16 streams at 0.769 of the
      // catalog bandwidth; the quantized GEMVs are slower than their bytes (bound per value and by latency), so
      // each type gets a decode compute fraction of the int8 peak that reproduces its time. Prefill: f16
      // tensor-core GEMMs (quantized weights dequantized first) over the int8 or fp16 peak, after attention (TF32
      // products, softmax, gathers: 2.28 ms of an F16 pp512 pass) at 0.450 of the fp32 peak. Checked on
      // llama3-8b Q4_0. Runtime overhead: the CUDA context (526.8 MiB) and cuBLAS's handle (68.0 MiB) as
      // cudaMemGetInfo saw them on the H100 with CUDA 13 (UMA_CUDA_MEMLOG=1; docs/PLAN.md, GPU memory).
      // Sixth session: the bulk-copy GEMV (cuda_gemv_bulk.cu) sped up Q8_0 and Q4_K_M decode, so their decode
      // fractions were refitted (fit_cuda.py, one run: Q8_0 tg128 306.0, Q4_K_M 385.0 t/s); the other factors
      // reproduced that run within 1 % and were kept.
      return {0.769, 0.450, 10.0, static_cast<uint64_t>(595 * kMiB), true, "calibrated on H100 SXM (2026-11-22)",
              {{GgmlType::Q4_0, 0.003550, 0.1315},
               {GgmlType::Q8_0, 0.002265, 0.1370},
               {GgmlType::F16, 0.175, 0.4716},
               {GgmlType::Q4_K, 0.002932, 0.1332},
               {GgmlType::Q6_K, 0.002932, 0.1332}},
              false,
              // MoE (cuda_moe.cu): per MoE layer and forward pass (launches), per prompt token, and the prompt's
              // routed-expert FLOPs in the tile GEMV at 0.0156 of the int8 peak (tools/device/fit_cuda_moe.py).
              30.1, 1.86, 0.01561,
              // MLA and shared experts: per-pass terms fitted on deepseek-v3-mini Q4_0 (tg128 792; docs/PLAN.md "MLA
              // and shared experts on CUDA"): decode ran 589 us a token slower than predicted without them, split by
              // the extra launches each adds over a llama layer (an MLA block ~11: q_a, norm, q_b, rope, kv_a latent,
              // norm, kv_a rope part, rope, store, gather, per-head latent GEMVs, attention, split merge; shared
              // experts 5: gate, up, swiglu, down, add), 12 x 11 + 11 x 5 launches at 3.15 us. Prefill: per prompt
              // token and MLA layer, and the absorbed attention (mla_attention_kernel, CUDA cores) at 0.104 of the
              // fp32 peak, fitted with the MoE terms by fit_cuda_moe.py.
              34.6, 1.26, 0.1041, 15.8};
      // CUDA_H100_END
    case Backend::metal:
      return {0.60, 0.55, 25.0, static_cast<uint64_t>(256 * kMiB), false, "uncalibrated placeholder"};
    case Backend::cpu:
      // CPU_CALIBRATION_BEGIN (tools/calibrate_cpu.sh prints a replacement for this block)
      // Fitted 2026-11-22 00:25-00:33 UTC on the shared 2-vCPU AMD EPYC (AVX-512 VNNI) VM over two runs:
      // `KEEP=/tmp/cal-A TG=16 tools/calibrate_cpu.sh build`, then `KEEP=/tmp/cal-B FIT_FROM=/tmp/cal-A ...`
      // (llama-7b pp64 and 14 tg16 rounds per type, 2 threads). The decode fractions are of the read probe of
      // runtime/membw.h (prefetching as the kernels do) taken around each round, the median over the rounds (all
      // four types 0.97-0.99; the cache at their median); compute fractions are of the local peak (cores x 32 FLOP
      // x 3 GHz, int8 x2), decode's from each type's fastest round. Runtime base: `uma run` peak RSS on
      // stories260K and the fixtures (tests/e2e/test_plan_memory.cpp).
      return {0.976, 0.10, 12.1, static_cast<uint64_t>(14.4e6), true, "calibrated on a 2-core EPYC (2026-11-22)",
              {{GgmlType::Q4_0, 0.4727, 0.4046, 0.976},
               {GgmlType::Q8_0, 0.3142, 0.4149, 0.989},
               {GgmlType::F16, 0.3317, 0.5292, 0.977},
               {GgmlType::Q4_K, 0.5181, 0.2681, 0.969},
               {GgmlType::Q6_K, 0.5181, 0.2681, 0.969}},
              false};
      // CPU_CALIBRATION_END
  }
  return {0.5, 0.3, 10.0, static_cast<uint64_t>(256 * kMiB), false, "uncalibrated placeholder"};
}

uint64_t kv_bytes_per_token_layer(const ModelShape& s, GgmlType kv_type) {
  if (s.is_mla()) return row_bytes(kv_type, s.kv_lora_rank + s.qk_rope_head_dim);
  return row_bytes(kv_type, s.n_head_kv * s.head_dim) + row_bytes(kv_type, s.n_head_kv * s.head_dim_v);
}

uint64_t kv_bytes_per_token_layer_full(const ModelShape& s, GgmlType kv_type) {
  return row_bytes(kv_type, s.n_head_kv * s.head_dim) + row_bytes(kv_type, s.n_head_kv * s.head_dim_v);
}

std::string format_bytes(uint64_t b) {
  const double v = static_cast<double>(b);
  if (v >= 1e12) return fmt::format("{:.2f} TB", v / 1e12);
  if (v >= 1e9) return fmt::format("{:.1f} GB", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.1f} MB", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f} KB", v / 1e3);
  return fmt::format("{} B", b);
}

Plan make_plan(const PlanInputs& in) {
  const ModelShape& s = in.model;
  if (in.machine.devices.empty()) fail("no device to plan for; pass --hw with at least one device");
  if (in.n_ctx <= 0 || in.n_batch <= 0) fail("context ({}) and batch ({}) must be positive", in.n_ctx, in.n_batch);
  const bool kv_quantized = traits(in.kv_type).block_size > 1;
  if (kv_quantized && (s.head_dim % traits(in.kv_type).block_size != 0))
    fail("KV type {} needs head_dim ({}) to be a multiple of {}; use f16 or f32", type_name(in.kv_type), s.head_dim,
         traits(in.kv_type).block_size);

  // Tensors and their storage types.
  std::vector<TensorSpec> tensors;
  std::vector<StorageType> types;
  std::string quant_name;
  if (!in.file_tensors.empty()) {
    tensors = in.file_tensors;
    types = in.file_types;
    if (types.size() != tensors.size()) fail("internal error: {} file tensors but {} types", tensors.size(), types.size());
    quant_name = in.quant_label.empty() ? "file" : in.quant_label;
  } else {
    if (!in.quant) fail("no quantization given for {}; pass --quant (e.g. Q4_K_M, Q8_0, F16)", s.name);
    tensors = tensor_table(s);
    for (const auto& t : tensors) types.push_back(tensor_type(t, *in.quant, s));
    quant_name = in.quant->name;
  }

  // Per-layer and global slices.
  std::vector<Slice> layers(static_cast<size_t>(s.n_layer));
  Slice embd, head;  // token_embd (first device); output_norm + output + rope_freqs (last device)
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const uint64_t b = tensor_bytes(t, types[i]);
    const uint64_t p = static_cast<uint64_t>(t.n_elements());
    Slice* sl = t.layer >= 0 && t.layer < s.n_layer ? &layers[static_cast<size_t>(t.layer)] : &head;
    if (t.role == TensorRole::token_embd && !s.tied_embeddings) sl = &embd;
    sl->bytes += b;
    const std::pair<uint32_t, bool> key{types[i].ggml_id, types[i].fp8};
    if (t.role == TensorRole::expert) {
      sl->active_params_by_type[key] += static_cast<double>(p / s.n_expert * s.n_expert_used);
      sl->expert_params_by_type[key] += static_cast<double>(p / s.n_expert * s.n_expert_used);
    } else if (sl != &embd)
      sl->active_params_by_type[key] += static_cast<double>(p);
    if (t.role == TensorRole::shared_expert) sl->shared_expert = true;
    const uint64_t decode_bytes = t.role == TensorRole::expert ? b / s.n_expert * s.n_expert_used
                                  : sl == &embd                    ? b / t.ne[1]
                                                                   : b;
    sl->decode_bytes += decode_bytes;
    sl->decode_bytes_by_type[key] += static_cast<double>(decode_bytes);
    if (t.role == TensorRole::expert) {
      sl->expert_bytes += b;
      sl->expert_active_params += p / s.n_expert * s.n_expert_used;
    } else if (sl != &embd) {
      sl->dense_params += p;
    }
  }
  const WeightTotals totals = weight_totals(tensors, types, s);
  const uint64_t kv_layer = kv_bytes_per_token_layer(s, in.kv_type);

  Plan plan;
  plan.model_name = s.name;
  plan.quant_name = quant_name;
  plan.machine_label = in.machine.label;
  plan.n_ctx = in.n_ctx;
  plan.n_batch = std::min(in.n_batch, in.n_ctx);
  plan.depth = std::min(in.depth, in.n_ctx - 1);
  plan.kv_type = std::string(type_name(in.kv_type));
  plan.params = totals.params;
  plan.active_params = totals.active_params;
  plan.weight_bytes = totals.bytes;
  plan.active_bytes = totals.active_bytes;
  plan.kv_bytes_per_token = kv_layer * static_cast<uint64_t>(s.n_layer);
  plan.kv_bytes_per_token_full = kv_bytes_per_token_layer_full(s, in.kv_type) * static_cast<uint64_t>(s.n_layer);

  // The CUDA backend's device copies: types without a CUDA kernel are kept as F16 (CudaBackend::device_weight),
  // and a prompt of more than 4 tokens dequantizes each quantized layer matrix to f16 for cuBLAS, into two
  // buffers the size of the largest (gemm_many; routed experts and per-head MLA matrices take the expert GEMV).
  uint64_t cuda_prefill_f16 = 0;
  std::vector<uint64_t> cuda_f16_extra(static_cast<size_t>(s.n_layer) + 2);  // per layer, then embd and head
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const auto ty = static_cast<GgmlType>(types[i].ggml_id);
    const bool kernel = types[i].fp8 || ty == GgmlType::F32 || ty == GgmlType::F16 || ty == GgmlType::BF16 ||
                        ty == GgmlType::Q4_0 || ty == GgmlType::Q8_0 || ty == GgmlType::Q4_K ||
                        ty == GgmlType::Q5_K || ty == GgmlType::Q6_K;
    const uint64_t f16 = 2 * static_cast<uint64_t>(t.n_elements()), bytes = tensor_bytes(t, types[i]);
    if (!kernel && f16 > bytes) {
      const size_t slot = t.layer >= 0 && t.layer < s.n_layer ? static_cast<size_t>(t.layer)
                          : t.role == TensorRole::token_embd && !s.tied_embeddings ? static_cast<size_t>(s.n_layer)
                                                                                    : static_cast<size_t>(s.n_layer) + 1;
      cuda_f16_extra[slot] += f16 - bytes;
    }
    const bool gemm = t.layer >= 0 && t.n_dims >= 2 && t.ne[2] == 1 && t.role != TensorRole::expert &&
                      t.role != TensorRole::router && t.role != TensorRole::norm;
    if (gemm && kernel && ty != GgmlType::F16 && ty != GgmlType::F32) cuda_prefill_f16 = std::max(cuda_prefill_f16, f16);
  }
  cuda_prefill_f16 *= 2;

  // Layer split: proportional to what each device has left after its fixed costs (like llama.cpp's default
  // tensor split by free memory), layers in order.
  const auto& devs = in.machine.devices;
  const size_t nd = devs.size();
  const int64_t B = plan.n_batch;
  auto eff_of = [&](const DeviceConfig& d) { return in.efficiency_override.value_or(efficiency_for(d)); };
  std::vector<double> budget(nd);
  for (size_t d = 0; d < nd; ++d) {
    double fixed = static_cast<double>(eff_of(devs[d]).runtime_overhead +
                                       compute_buffer(devs[d].backend, s, B, in.n_ctx, d == nd - 1));
    if (devs[d].backend == Backend::cuda && B > 4) fixed += static_cast<double>(cuda_prefill_f16);
    if (d == 0) fixed += static_cast<double>(embd.bytes);
    if (d == nd - 1) fixed += static_cast<double>(head.bytes);
    budget[d] = std::max(0.0, static_cast<double>(devs[d].usable_bytes) - fixed);
  }
  double budget_sum = 0;
  for (double b : budget) budget_sum += b;
  if (budget_sum <= 0) {
    for (size_t d = 0; d < nd; ++d) budget[d] = static_cast<double>(devs[d].usable_bytes) + 1;
    budget_sum = 0;
    for (double b : budget) budget_sum += b;
  }
  std::vector<double> layer_cost(layers.size());
  double cost_sum = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    layer_cost[i] = static_cast<double>(layers[i].bytes + kv_layer * static_cast<uint64_t>(in.n_ctx));
    cost_sum += layer_cost[i];
  }
  std::vector<int> owner(layers.size(), static_cast<int>(nd) - 1);
  {
    double cum = 0, target = 0;
    size_t d = 0;
    target = budget[0] / budget_sum * cost_sum;
    for (size_t i = 0; i < layers.size(); ++i) {
      while (d + 1 < nd && cum + layer_cost[i] / 2 > target) target += budget[++d] / budget_sum * cost_sum;
      owner[i] = static_cast<int>(d);
      cum += layer_cost[i];
    }
  }

  // Per-device memory and time.
  double decode_s = 0, prefill_s = 0;
  const double depth = static_cast<double>(plan.depth);
  const double prefill_pos = depth + static_cast<double>(B) / 2;  // mean position of a prompt batch
  // Expected fraction of a layer's experts a batch of B tokens touches, each choosing k of n at random.
  const double touched = s.is_moe() ? 1.0 - std::pow(1.0 - static_cast<double>(s.n_expert_used) / s.n_expert, static_cast<double>(B)) : 0;
  for (size_t d = 0; d < nd; ++d) {
    const DeviceConfig& dev = devs[d];
    const Efficiency eff = eff_of(dev);
    DevicePlan dp;
    dp.label = dev.label;
    dp.backend = dev.backend;
    dp.usable = dev.usable_bytes;
    dp.has_token_embd = d == 0 && embd.bytes > 0;
    dp.has_output = d == nd - 1;
    dp.layer_begin = static_cast<int>(std::find(owner.begin(), owner.end(), static_cast<int>(d)) - owner.begin());
    dp.layer_end = dp.layer_begin + static_cast<int>(std::count(owner.begin(), owner.end(), static_cast<int>(d)));
    const int n_layers_here = dp.layer_end - dp.layer_begin;

    // FLOPs per weight type (attention counts as F32: activations times the cache).
    double dec_kv_bytes = 0, pre_bytes = 0;
    std::map<std::pair<uint32_t, bool>, double> dec_bytes, dec_flops, pre_flops, pre_expert_flops;
    double pre_mla_attn_flops = 0;  // at mla_attention_compute
    const std::pair<uint32_t, bool> f32_key{static_cast<uint32_t>(GgmlType::F32), false};
    auto add = [&](const Slice& sl, bool is_layer) {
      dp.weights += sl.bytes;
      for (const auto& [key, bytes] : sl.decode_bytes_by_type) dec_bytes[key] += bytes;
      pre_bytes += static_cast<double>(sl.bytes - sl.expert_bytes) + touched * static_cast<double>(sl.expert_bytes);
      // A prompt batch needs logits for its last token only, so the LM head runs once per batch.
      const double tokens = is_layer ? static_cast<double>(B) : 1.0;
      for (const auto& [key, params] : sl.active_params_by_type) {
        dec_flops[key] += 2.0 * params;
        const auto e = sl.expert_params_by_type.find(key);
        const double expert = eff.expert_prefill_compute > 0 && e != sl.expert_params_by_type.end() ? e->second : 0;
        pre_flops[key] += 2.0 * tokens * (params - expert);
        pre_expert_flops[key] += 2.0 * tokens * expert;
      }
      if (is_layer) {
        dec_kv_bytes += static_cast<double>(kv_layer) * depth;  // decode reads the whole cached context
        dec_flops[f32_key] += attention_flops(s, depth);
        const double attn = static_cast<double>(B) * attention_flops(s, prefill_pos);
        if (s.is_mla() && eff.mla_attention_compute > 0) pre_mla_attn_flops += attn;
        else pre_flops[f32_key] += attn;
        pre_bytes += static_cast<double>(kv_layer) * depth;
      }
    };
    if (dp.has_token_embd) {
      add(embd, false);
      // The CPU backend maps the file and reads one embedding row per token: at most n_ctx rows of the table
      // become resident, each touching its bytes plus (straddling) about one more page. GPUs upload all of it.
      if (dev.backend == Backend::cpu) {
        const double rows = static_cast<double>(in.n_ctx), touched_bytes = rows * (embd.decode_bytes + 4096.0);
        if (touched_bytes < static_cast<double>(embd.bytes)) dp.weights -= embd.bytes - static_cast<uint64_t>(touched_bytes);
      }
    }
    for (int il = dp.layer_begin; il < dp.layer_end; ++il) add(layers[static_cast<size_t>(il)], true);
    if (dp.has_output) add(head, false);
    dp.kv_cache = kv_layer * static_cast<uint64_t>(kv_cells(dev.backend, in.n_ctx)) * static_cast<uint64_t>(n_layers_here);
    dp.compute = compute_buffer(dev.backend, s, B, in.n_ctx, dp.has_output);
    if (dev.backend == Backend::cuda) {
      if (B > 4) dp.compute += cuda_prefill_f16;
      for (int il = dp.layer_begin; il < dp.layer_end; ++il) dp.weights += cuda_f16_extra[static_cast<size_t>(il)];
      if (dp.has_token_embd) dp.weights += cuda_f16_extra[static_cast<size_t>(s.n_layer)];
      if (dp.has_output) dp.weights += cuda_f16_extra[static_cast<size_t>(s.n_layer) + 1];
    }
    dp.overhead = eff.runtime_overhead;
    // The CPU backend also holds the tokenizer in the same memory (on a GPU it stays in host RAM).
    if (dev.backend == Backend::cpu && d == 0)
      dp.overhead += tokenizer_bytes(s);

    const double bw = dev.bandwidth_gbs * 1e9 * eff.decode_bandwidth;
    auto kernel_of = [&](const std::pair<uint32_t, bool>& key) -> const KernelEfficiency* {
      for (const auto& k : eff.kernels)
        if (!key.second && static_cast<uint32_t>(k.type) == key.first) return &k;
      return nullptr;
    };
    // Seconds the matrix kernels need for these FLOPs, each weight type at its own kernel's rate.
    auto compute_seconds = [&](const std::map<std::pair<uint32_t, bool>, double>& flops, bool decode) {
      double t = 0;
      for (const auto& [key, f] : flops) {
        const KernelEfficiency* k = kernel_of(key);
        const double frac = !k ? eff.compute : decode ? k->decode_compute : k->prefill_compute;
        const double rate = peak_flops(dev, StorageType{key.first, key.second}) * frac;
        if (rate > 0) t += f / rate;
      }
      return t;
    };
    // Seconds a decoded token's reads take: the cache at the backend's fraction of the bandwidth, each weight type
    // at its kernel's own where the table has one.
    auto decode_memory_seconds = [&] {
      if (bw <= 0) return 0.0;
      double t = dec_kv_bytes / bw;
      for (const auto& [key, bytes] : dec_bytes) {
        const KernelEfficiency* k = kernel_of(key);
        t += bytes / (k && k->decode_bandwidth > 0 ? dev.bandwidth_gbs * 1e9 * k->decode_bandwidth : bw);
      }
      return t;
    };
    // Fixed costs per forward pass (launches, wake-ups) and, for MoE and MLA, per prompt token, per kind of layer.
    int moe_layers_here = 0, shexp_layers_here = 0;
    for (int il = dp.layer_begin; il < dp.layer_end; ++il) {
      moe_layers_here += layers[static_cast<size_t>(il)].expert_bytes > 0;
      shexp_layers_here += layers[static_cast<size_t>(il)].shared_expert;
    }
    const int mla_layers_here = s.is_mla() ? n_layers_here : 0;
    const double fixed = 1e-6 * (n_layers_here * eff.layer_overhead_us + moe_layers_here * eff.moe_layer_overhead_us +
                                 mla_layers_here * eff.mla_layer_overhead_us +
                                 shexp_layers_here * eff.shexp_layer_overhead_us);
    const double per_token = 1e-6 * static_cast<double>(B) *
                             (moe_layers_here * eff.moe_prefill_token_us + mla_layers_here * eff.mla_prefill_token_us);
    // A hop to the next device carries one hidden state (F32) per token.
    double hop = 0;
    if (d + 1 < nd) {
      const double link = dev.link_gbs > 0 ? dev.link_gbs : dev.pcie_gen >= 5 ? 50 : dev.pcie_gen >= 4 ? 25 : 12;
      hop = 10e-6 + 4.0 * s.n_embd / (link * 1e9);
    }
    const double t_dec_mem = decode_memory_seconds(), t_dec_cmp = compute_seconds(dec_flops, true);
    dp.bandwidth_bound = t_dec_mem >= t_dec_cmp;
    // Routed experts and latent attention in kernels of their own (expert_prefill_compute, mla_attention_compute).
    double t_pre_own = 0;
    for (const auto& [key, f] : pre_expert_flops)
      if (f > 0) t_pre_own += f / (peak_flops(dev, StorageType{key.first, key.second}) * eff.expert_prefill_compute);
    if (pre_mla_attn_flops > 0)
      t_pre_own += pre_mla_attn_flops / (peak_flops(dev, StorageType{static_cast<uint32_t>(GgmlType::F32), false}) *
                                         eff.mla_attention_compute);
    const double t_pre =
        std::max(bw > 0 ? pre_bytes / bw : 0, compute_seconds(pre_flops, false) + t_pre_own) + per_token;
    // A synchronous backend (CPU) pays its per-layer overhead on top of the work; an asynchronous one (CUDA)
    // queues kernels while earlier ones run, so the slower of issuing and executing sets the pace.
    auto with_overhead = [&](double work) { return eff.overlapped_overhead ? std::max(work, fixed) : work + fixed; };
    dp.decode_ms = 1e3 * (with_overhead(std::max(t_dec_mem, t_dec_cmp)) + hop);
    dp.prefill_ms = 1e3 * (with_overhead(t_pre) + hop * static_cast<double>(B));
    decode_s += dp.decode_ms / 1e3;
    prefill_s += dp.prefill_ms / 1e3;

    plan.total_bytes += dp.total();
    plan.usable_bytes += dp.usable;
    if (!dp.fits()) plan.shortfall = std::max(plan.shortfall, dp.total() - dp.usable);
    plan.power_w += dev.power_w;
    plan.estimated_hardware = plan.estimated_hardware || dev.estimated;
    plan.devices.push_back(dp);
  }
  plan.fits = plan.shortfall == 0;
  plan.decode_tps = decode_s > 0 ? 1.0 / decode_s : 0;
  plan.prefill_tps = prefill_s > 0 ? static_cast<double>(B) / prefill_s : 0;
  bool price_known = true;
  for (const auto& d : devs) {
    plan.price_usd += d.price_usd;
    price_known = price_known && d.price_usd > 0;
  }
  if (!price_known) plan.price_usd = 0;
  plan.tps_per_watt = plan.power_w > 0 ? plan.decode_tps / plan.power_w : 0;
  plan.usd_per_tps = plan.price_usd > 0 && plan.decode_tps > 0 ? plan.price_usd / plan.decode_tps : 0;
  plan.calibrated = std::all_of(devs.begin(), devs.end(), [&](const DeviceConfig& d) { return eff_of(d).calibrated; });

  // Notes a reader needs to trust the numbers.
  if (s.is_moe())
    plan.notes.push_back(fmt::format("MoE: decode reads {} of the {} of weights per token ({} of {} experts active)",
                                     fmt_gb(plan.active_bytes), fmt_gb(plan.weight_bytes), s.n_expert_used, s.n_expert));
  if (s.is_mla())
    plan.notes.push_back(fmt::format("MLA: the KV cache holds the {}-wide latent, {} per token instead of {} for full K/V",
                                     s.kv_lora_rank + s.qk_rope_head_dim, fmt_gb(plan.kv_bytes_per_token),
                                     fmt_gb(plan.kv_bytes_per_token_full)));
  for (size_t d = 0; d < nd; ++d)
    if (devs[d].backend == Backend::metal && plan.devices[d].fits() &&
        plan.devices[d].total() > devs[d].memory_bytes * 3 / 4)
      plan.notes.push_back(fmt::format("{}: needs more than macOS's default GPU limit (~75 % of RAM); raise it with "
                                       "`sudo sysctl iogpu.wired_limit_mb=<MB>`", devs[d].label));
  if (in.n_ctx > s.n_ctx_train)
    plan.notes.push_back(fmt::format("context {} exceeds the model's trained context {}", in.n_ctx, s.n_ctx_train));
  return plan;
}

std::string check_fits_or_explain(const Plan& plan) {
  if (plan.fits) return "";
  const DevicePlan* worst = nullptr;
  for (const auto& d : plan.devices)
    if (!d.fits() && (!worst || d.total() - d.usable > worst->total() - worst->usable)) worst = &d;
  if (!worst) return "";
  const bool split = plan.devices.size() > 1;
  return fmt::format(
      "{} at {} with a {}-token context needs {} on {}{} ({} weights, {} KV cache, {} compute and runtime) but only "
      "{} is usable there, {} short; use a smaller --quant, a shorter --ctx, or more memory (see `uma plan`).",
      plan.model_name, plan.quant_name, plan.n_ctx, format_bytes(worst->total()), worst->label,
      split ? fmt::format(" (layers {}-{})", worst->layer_begin, worst->layer_end - 1) : "", format_bytes(worst->weights),
      format_bytes(worst->kv_cache), format_bytes(worst->compute + worst->overhead), format_bytes(worst->usable),
      format_bytes(worst->total() - worst->usable));
}

std::string format_plan_summary(const Plan& plan) {
  std::string out = fmt::format("plan: {} at {}, context {}, on {}: {} of {} ({}), predicted {:.1f} t/s decode, "
                                "{:.0f} t/s prefill{}\n",
                                plan.model_name, plan.quant_name, plan.n_ctx, plan.machine_label,
                                format_bytes(plan.total_bytes), format_bytes(plan.usable_bytes),
                                plan.fits ? "fits" : "does not fit", plan.decode_tps, plan.prefill_tps,
                                plan.calibrated ? "" : " (uncalibrated)");
  for (const auto& d : plan.devices)
    out += fmt::format("  {}: layers {}-{}, weights {}, KV {}, compute {}, overhead {} = {} of {}\n", d.label,
                       d.layer_begin, d.layer_end - 1, format_bytes(d.weights), format_bytes(d.kv_cache),
                       format_bytes(d.compute), format_bytes(d.overhead), format_bytes(d.total()),
                       format_bytes(d.usable));
  return out;
}

}  // namespace uma::plan
