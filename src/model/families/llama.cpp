// llama: Llama 1/2/3, Mistral, TinyLlama and friends.
// GQA attention with "normal" RoPE (the GGUF converter permutes q/k rows so that adjacent pairs rotate),
// optional Llama-3 frequency scaling stored as the per-pair divisors `rope_freqs.weight` [n_rot/2],
// SwiGLU feed-forward, untied output (or tied when output.weight is absent).
#include <cmath>

#include "model/decoder.h"
#include "model/registry.h"
#include "uma/error.h"

namespace uma {

std::unique_ptr<Model> make_llama(const GgufFile& file, Backend& backend, const ModelOptions& options) {
  ModelConfig c = read_config(file, options);
  if (c.n_expert > 0) return make_mixtral(file, backend, options);
  c.rope.neox = false;
  if (!options.rope_freq_factors.empty()) {
    c.rope.freq_factors = options.rope_freq_factors;
  } else if (const GgufTensor* t = file.find_tensor("rope_freqs.weight")) {
    if (t->type != GgmlType::F32 || t->n_elements() != c.rope.n_rot / 2)
      fail("{}: rope_freqs.weight must be F32 with {} values", file.path().string(), c.rope.n_rot / 2);
    const auto* f = reinterpret_cast<const float*>(t->data);
    c.rope.freq_factors.assign(f, f + c.rope.n_rot / 2);
  }
  if (!c.rope.freq_factors.empty() && static_cast<int>(c.rope.freq_factors.size()) != c.rope.n_rot / 2)
    fail("{}: {} RoPE frequency factors given but the model rotates {} pairs", file.path().string(),
         c.rope.freq_factors.size(), c.rope.n_rot / 2);
  return std::make_unique<DecoderModel>(file, backend, std::move(c), DecoderOptions{});
}

std::vector<float> llama3_rope_factors(int n_rot, float freq_base, float factor, float low_freq_factor,
                                       float high_freq_factor, float original_context) {
  // Wavelengths shorter than original_context / high_freq_factor keep their frequency, those longer than
  // original_context / low_freq_factor are divided by `factor`, and the band between blends smoothly.
  const double low_wavelen = original_context / low_freq_factor, high_wavelen = original_context / high_freq_factor;
  std::vector<float> out;
  for (int i = 0; i < n_rot / 2; ++i) {
    const double inv_freq = 1.0 / std::pow(double(freq_base), 2.0 * i / n_rot);
    const double wavelen = 2 * M_PI / inv_freq;
    double divisor = 1.0;
    if (wavelen > low_wavelen) {
      divisor = factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      divisor = 1.0 / ((1 - smooth) / factor + smooth);
    }
    out.push_back(static_cast<float>(divisor));
  }
  return out;
}

}  // namespace uma
