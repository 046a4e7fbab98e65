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
};

StorageType dominant_type(const std::vector<TensorSpec>& tensors, const std::vector<StorageType>& types) {
  std::map<std::pair<uint32_t, bool>, uint64_t> bytes;
  for (size_t i = 0; i < tensors.size(); ++i) bytes[{types[i].ggml_id, types[i].fp8}] += tensor_bytes(tensors[i], types[i]);
  auto best = std::max_element(bytes.begin(), bytes.end(), [](auto& a, auto& b) { return a.second < b.second; });
  return StorageType{best->first.first, best->first.second};
}

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
// matrix, and (on the last device) the logits of one token.
uint64_t compute_buffer(const ModelShape& s, int64_t n_tokens, int64_t n_kv, bool has_output) {
  const int64_t ffn = std::max({s.layer_is_moe(s.n_layer - 1) ? s.n_ff_exp * s.n_expert_used + s.shexp_width() : 0,
                                s.n_layer_dense_lead > 0 || !s.is_moe() ? s.n_ff : 0});
  const int64_t qkv = s.is_mla() ? s.n_head * (s.head_dim + s.head_dim_v) + s.kv_lora_rank + s.qk_rope_head_dim
                                 : s.n_head * s.head_dim + 2 * s.n_head_kv * s.head_dim;
  const double floats = static_cast<double>(n_tokens) * (4.0 * s.n_embd + qkv + 2.0 * ffn) +
                        static_cast<double>(s.n_head) * n_tokens * n_kv + (has_output ? s.n_vocab : 0);
  return static_cast<uint64_t>(4.0 * floats);
}

// FLOPs of attention for one token at context position pos, one layer: scores (q·k) and the weighted sum of v.
double attention_flops(const ModelShape& s, double pos, bool absorbed_mla) {
  double dk = s.head_dim, dv = s.head_dim_v;
  if (s.is_mla() && absorbed_mla) {  // decode attends the latent directly
    dk = static_cast<double>(s.kv_lora_rank + s.qk_rope_head_dim);
    dv = static_cast<double>(s.kv_lora_rank);
  }
  return 2.0 * s.n_head * pos * (dk + dv);
}

std::string fmt_gb(uint64_t b) { return format_bytes(b); }

}  // namespace

Efficiency default_efficiency(Backend backend) {
  // Placeholders until fitted against `uma bench` (docs/PLAN.md, "Calibration"). Decode fractions are in the range
  // published llama.cpp results reach on each kind of device; they are not measurements of uma.
  switch (backend) {
    case Backend::cuda:
      return {0.70, 0.40, 15.0, static_cast<uint64_t>(512 * kMiB), false, "uncalibrated placeholder"};
    case Backend::metal:
      return {0.60, 0.55, 25.0, static_cast<uint64_t>(256 * kMiB), false, "uncalibrated placeholder"};
    case Backend::cpu:
      return {0.80, 0.50, 5.0, static_cast<uint64_t>(64 * kMiB), false, "uncalibrated placeholder"};
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
    fail("KV type {} needs head_dim ({}) to be a multiple of {}; use f16", type_name(in.kv_type), s.head_dim,
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
  const StorageType main_type = dominant_type(tensors, types);

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
    if (t.role == TensorRole::expert) {
      sl->expert_bytes += b;
      sl->decode_bytes += b / s.n_expert * s.n_expert_used;
      sl->expert_active_params += p / s.n_expert * s.n_expert_used;
    } else if (sl == &embd) {
      sl->decode_bytes += b / t.ne[1];
    } else {
      sl->decode_bytes += b;
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

  // Layer split: proportional to what each device has left after its fixed costs (like llama.cpp's default
  // tensor split by free memory), layers in order.
  const auto& devs = in.machine.devices;
  const size_t nd = devs.size();
  const int64_t B = plan.n_batch;
  auto eff_of = [&](const DeviceConfig& d) { return in.efficiency_override.value_or(default_efficiency(d.backend)); };
  std::vector<double> budget(nd);
  for (size_t d = 0; d < nd; ++d) {
    double fixed = static_cast<double>(eff_of(devs[d]).runtime_overhead + compute_buffer(s, B, in.n_ctx, d == nd - 1));
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

    double dec_bytes = 0, dec_flops = 0, pre_bytes = 0, pre_flops = 0;
    auto add = [&](const Slice& sl, bool is_layer) {
      dp.weights += sl.bytes;
      dec_bytes += static_cast<double>(sl.decode_bytes);
      dec_flops += 2.0 * static_cast<double>(sl.dense_params + sl.expert_active_params);
      pre_bytes += static_cast<double>(sl.bytes - sl.expert_bytes) + touched * static_cast<double>(sl.expert_bytes);
      // A prompt batch needs logits for its last token only, so the LM head runs once per batch.
      const double tokens = is_layer ? static_cast<double>(B) : 1.0;
      pre_flops += 2.0 * tokens * static_cast<double>(sl.dense_params + sl.expert_active_params);
      if (is_layer) {
        dec_bytes += static_cast<double>(kv_layer) * depth;  // decode reads the whole cached context
        dec_flops += attention_flops(s, depth, true);
        pre_flops += static_cast<double>(B) * attention_flops(s, prefill_pos, false);
        pre_bytes += static_cast<double>(kv_layer) * depth;
      }
    };
    if (dp.has_token_embd) add(embd, false);
    for (int il = dp.layer_begin; il < dp.layer_end; ++il) add(layers[static_cast<size_t>(il)], true);
    if (dp.has_output) add(head, false);
    dp.kv_cache = kv_layer * static_cast<uint64_t>(in.n_ctx) * static_cast<uint64_t>(n_layers_here);
    dp.compute = compute_buffer(s, B, in.n_ctx, dp.has_output);
    dp.overhead = eff.runtime_overhead;

    const double bw = dev.bandwidth_gbs * 1e9 * eff.decode_bandwidth;
    const double fl = peak_flops(dev, main_type) * eff.compute;
    const double fixed = n_layers_here * eff.layer_overhead_us * 1e-6;
    // A hop to the next device carries one hidden state (F32) per token.
    double hop = 0;
    if (d + 1 < nd) {
      const double link = dev.link_gbs > 0 ? dev.link_gbs : dev.pcie_gen >= 5 ? 50 : dev.pcie_gen >= 4 ? 25 : 12;
      hop = 10e-6 + 4.0 * s.n_embd / (link * 1e9);
    }
    const double t_dec_mem = bw > 0 ? dec_bytes / bw : 0, t_dec_cmp = fl > 0 ? dec_flops / fl : 0;
    dp.bandwidth_bound = t_dec_mem >= t_dec_cmp;
    dp.decode_ms = 1e3 * (std::max(t_dec_mem, t_dec_cmp) + fixed + hop);
    const double t_pre = std::max(bw > 0 ? pre_bytes / bw : 0, fl > 0 ? pre_flops / fl : 0);
    dp.prefill_ms = 1e3 * (t_pre + fixed + hop * static_cast<double>(B));
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
