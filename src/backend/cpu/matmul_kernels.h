// Internal interface between matmul() and its SIMD implementation (matmul_hwy.cpp).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/cpu/matmul.h"

namespace uma::cpu {

// Runs the best kernel for the CPU (Highway runtime dispatch). Arguments are already validated.
void matmul_dispatch(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// The Highway targets compiled into matmul_hwy.cpp that this CPU supports (tests run each of them through
// hwy::SetSupportedTargetsForTest). Computed there because that file also enables AVX3_DL.
std::vector<int64_t> kernel_targets();

// How far ahead (bytes) decode kernels prefetch the weight stream; UMA_CPU_PREFETCH overrides, 0 = off.
int64_t prefetch_distance();

// Activation format a weight type is multiplied against: Q8_0, Q8_K, or F32 (no quantization).
GgmlType activation_type(GgmlType weight_type);

}  // namespace uma::cpu
