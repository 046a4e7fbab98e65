// CPU matrix products against weights stored in any supported type, used in place from the mmap.
// Model code only ever calls matmul(); the scalar path and the SIMD (Highway) paths live behind it.
#pragma once
#include <cstdint>

#include "quant/types.h"

namespace uma {
class ThreadPool;

struct WeightView {
  GgmlType type;
  const uint8_t* data;  // rows of `cols` values each, row-major
  int64_t rows;         // output features (GGUF ne[1])
  int64_t cols;         // input features  (GGUF ne[0])
};

// Y[t, r] = sum_k W[r, k] * X[t, k] for t < n_tokens, r < rows.
// X is [n_tokens, cols] f32 row-major, Y is [n_tokens, rows] f32 row-major.
// Rows are split across the pool's threads; n_tokens > 1 uses blocked matrix-matrix code.
void matmul(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// Plain scalar reference: dequantize each row to f32 and accumulate in double-free f32 order.
// Tests compare matmul() against it.
void matmul_reference(const WeightView& w, const float* x, int64_t n_tokens, float* y);

}  // namespace uma
