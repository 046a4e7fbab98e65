#include "backend/rope_tables.h"

#include <algorithm>
#include <cmath>

#include "quant/quant.h"

namespace uma {

RopeTables rope_tables(const RopeParams& p) {
  const int half = p.n_rot / 2;
  RopeTables t;
  t.inv_freq.resize(half);
  t.ramp_mix.assign(half, 0.0f);
  for (int i = 0; i < half; ++i) {
    float f = static_cast<float>(1.0 / std::pow(double(p.freq_base), double(2 * i) / p.n_rot));
    if (!p.freq_factors.empty()) f = f / p.freq_factors[i];
    if (p.freq_bf16) f = bf16_to_fp32(fp32_to_bf16(f));
    t.inv_freq[i] = f;
  }
  if (p.ext_factor > 0) {
    // The dims whose wavelength completes n turns within the original context.
    auto corr_dim = [&](float n_rot_turns) {
      return p.n_rot * std::log(p.n_ctx_orig / (n_rot_turns * 2 * float(M_PI))) / (2 * std::log(p.freq_base));
    };
    const float lo = std::max(0.0f, std::floor(corr_dim(p.beta_fast)));
    const float hi = std::min(float(p.n_rot - 1), std::ceil(corr_dim(p.beta_slow)));
    for (int i = 0; i < half; ++i) {
      const float y = (i - lo) / std::max(0.001f, hi - lo);
      t.ramp_mix[i] = (1.0f - std::min(1.0f, std::max(0.0f, y))) * p.ext_factor;
    }
  }
  return t;
}

}  // namespace uma
