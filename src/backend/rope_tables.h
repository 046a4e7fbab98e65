// The per-pair RoPE tables every backend uses, computed once on the host so that the CPU and GPU rotate by
// exactly the same f32 frequencies.
#pragma once
#include <vector>

#include "backend/backend.h"

namespace uma {

struct RopeTables {
  // Frequency of rotated pair i: base^(-2i/n_rot) / freq_factors[i], optionally rounded to bf16 (RopeParams).
  std::vector<float> inv_freq;
  // YaRN: weight of the extrapolated (original) angle against the interpolated one, per pair; all 0 without YaRN.
  std::vector<float> ramp_mix;
};

RopeTables rope_tables(const RopeParams& p);

}  // namespace uma
