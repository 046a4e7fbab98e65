// `uma plan`: will a model fit, how fast will it run, at what cost. make_plan is a pure function of its inputs
// (shape, quantization, context, machine, efficiency table) so every number can be unit-tested and explained.
//
// Memory per device = weights of its layers (+ token_embd on the first, output head on the last)
//                   + KV cache of its layers for n_ctx tokens + compute buffer + runtime overhead.
// Decode time/token = sum over devices of max(bytes read / (bandwidth x eff_bw), FLOPs / (peak x eff_compute))
//                   + per-layer launch overhead + link hops. MoE reads only the active experts.
// Prefill time/batch = the same with n_batch tokens: FLOPs grow with the batch, weights are read once per batch.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "plan/hardware.h"
#include "plan/model_shape.h"
#include "plan/weights.h"

namespace uma::plan {

// What one weight type's matrix kernel reaches, as a fraction of the device's peak rate for that type (the int8
// rate for quantized types, fp16 for F16/BF16, fp32 for F32; see peak_flops in plan.cpp): decode runs
// matrix-vector products (one token), prefill matrix-matrix products (a batch). decode_bandwidth, where set, is
// the fraction of the memory bandwidth this type's decode kernel streams at, in place of the backend's (CPU
// kernels of different types can stream at different fractions of the same probe: 73-95 % on a 16-core host).
struct KernelEfficiency {
  GgmlType type;
  double decode_compute;
  double prefill_compute;
  double decode_bandwidth = 0;  // 0: Efficiency::decode_bandwidth
};

// Per-backend efficiency: the fraction of peak a real engine reaches. One table (default_efficiency),
// documented in docs/PLAN.md; `calibrated` says whether it was fitted against `uma bench` on that backend.
struct Efficiency {
  double decode_bandwidth;     // fraction of peak (or, for --hw local, measured) memory bandwidth while decoding
  double compute;              // fraction of peak matrix FLOPS, for weight types without a `kernels` entry
  double layer_overhead_us;    // fixed cost per layer per forward pass (kernel launches, thread wake-ups)
  uint64_t runtime_overhead;   // bytes per device: context, code, allocator slack (CPU: uma's measured base)
  bool calibrated;
  const char* note;
  std::vector<KernelEfficiency> kernels = {};  // per weight type; overrides `compute` for that type
  // true: the per-layer overhead overlaps the work (kernels queued asynchronously), time = max(work, overhead);
  // false: it adds (a CPU backend that wakes its threads for every operation).
  bool overlapped_overhead = false;
  // Mixture-of-experts layers cost more than their bytes and FLOPs say (routing, many small expert products):
  // per MoE layer and decoded token, and per MoE layer and prompt token. 0 where not calibrated.
  double moe_layer_overhead_us = 0;
  double moe_prefill_token_us = 0;
  // Where a backend multiplies a prompt's routed experts in a kernel of their own rather than its matrix
  // kernels (CUDA: the 8-token tile GEMV of cuda_moe.cu, not cuBLAS), those FLOPs go at this fraction of the
  // weight type's peak. 0: at the type's prefill fraction, as the dense products.
  double expert_prefill_compute = 0;
  // Multi-head latent attention costs more than its bytes and FLOPs say (a dozen small kernels where standard
  // attention has four; the absorbed attention and the per-head latent products in CUDA-core kernels): per MLA
  // layer and forward pass, and per MLA layer and prompt token. Shared experts (a dense SwiGLU beside the routed
  // ones) add their own launches: per layer with shared experts and forward pass. 0 where not calibrated.
  double mla_layer_overhead_us = 0;
  double mla_prefill_token_us = 0;
  // The absorbed latent attention of a prompt (CUDA: mla_attention_kernel on CUDA cores, not the tensor-core
  // path of standard attention) at this fraction of the fp32 peak. 0: at `compute`, as standard attention.
  double mla_attention_compute = 0;
  double shexp_layer_overhead_us = 0;
};
Efficiency default_efficiency(Backend backend);
// The factors for one device: the backend's, or a GPU model's own where one was fitted (CUDA: H200).
Efficiency efficiency_for(const DeviceConfig& d);

struct PlanInputs {
  ModelShape model;
  // Either a scheme to apply to the shape, or the exact per-tensor types of a file (same order as tensor_table
  // or given explicitly in file_tensors).
  std::optional<QuantScheme> quant;
  std::vector<TensorSpec> file_tensors;       // when set, these tensors and file_types are used as-is
  std::vector<StorageType> file_types;
  std::string quant_label;                    // shown for file types, e.g. "Q4_K_M (file)"
  int64_t n_ctx = 4096;
  int64_t n_batch = 512;                      // prompt tokens per forward pass
  int64_t depth = 0;                          // context already filled when decode speed is measured
  GgmlType kv_type = GgmlType::F16;
  Machine machine;
  // Efficiency per backend; empty: default_efficiency.
  std::optional<Efficiency> efficiency_override;
};

struct DevicePlan {
  std::string label;
  Backend backend = Backend::cpu;
  int layer_begin = 0, layer_end = 0;  // [begin, end)
  bool has_token_embd = false, has_output = false;
  uint64_t weights = 0, kv_cache = 0, compute = 0, overhead = 0;  // overhead: runtime base (+ tokenizer, CPU)
  uint64_t total() const { return weights + kv_cache + compute + overhead; }
  uint64_t usable = 0;
  bool fits() const { return total() <= usable; }
  double decode_ms = 0;   // this device's share of one decoded token
  double prefill_ms = 0;  // this device's share of one n_batch prompt batch
  bool bandwidth_bound = true;  // decode limited by memory rather than compute
};

struct Plan {
  std::string model_name, quant_name, machine_label;
  int64_t n_ctx = 0, n_batch = 0, depth = 0;
  std::string kv_type;
  uint64_t params = 0, active_params = 0;
  uint64_t weight_bytes = 0, active_bytes = 0;  // active: read per decoded token
  uint64_t kv_bytes_per_token = 0;              // all layers
  uint64_t kv_bytes_per_token_full = 0;         // MLA models: what un-compressed K/V would take
  std::vector<DevicePlan> devices;
  bool fits = false;
  uint64_t total_bytes = 0, usable_bytes = 0;
  uint64_t shortfall = 0;          // worst device: bytes missing (0 when it fits)
  double decode_tps = 0, prefill_tps = 0;
  double power_w = 0, price_usd = 0;
  double tps_per_watt = 0, usd_per_tps = 0;  // 0 when unknown
  bool estimated_hardware = false;
  bool calibrated = false;
  std::vector<std::string> notes;
};

Plan make_plan(const PlanInputs& inputs);

// Empty when the plan fits; otherwise one sentence with the numbers and what to do, for `uma run` to print
// before it loads anything.
std::string check_fits_or_explain(const Plan& plan);

// A few lines describing the plan (devices, memory, predicted speed) for `uma run` to print before loading.
std::string format_plan_summary(const Plan& plan);

// KV cache bytes per token for one layer. Standard attention stores K and V for every KV head; MLA stores the
// compressed latent (kv_lora_rank) plus the shared rope key (qk_rope_head_dim) once per token.
uint64_t kv_bytes_per_token_layer(const ModelShape& shape, GgmlType kv_type);
// What MLA's K and V would take decompressed (n_head x (nope + rope) + n_head x v): the comparison point.
uint64_t kv_bytes_per_token_layer_full(const ModelShape& shape, GgmlType kv_type);

// Formatting shared by the CLI and the messages: "130.4 GB", "512 MB".
std::string format_bytes(uint64_t bytes);

}  // namespace uma::plan
