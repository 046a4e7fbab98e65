// CPU matrix products against weights stored in any supported type, used in place from the mmap.
// Model code only ever calls matmul(); the scalar path and the SIMD (Highway) paths live behind it.
#pragma once
#include <cstddef>
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

// y[i] = W_i x for n weights sharing the input x (all with the same cols). One token on an AVX512-VNNI CPU with
// supported types: one parallel region for all of them (q/k/v, gate/up); otherwise n matmul() calls.
void matmul_many(const WeightView* w, float* const* y, size_t n, const float* x, int64_t n_tokens, ThreadPool& pool);

// Plain scalar reference: dequantize each row to f32 and accumulate in double-free f32 order.
// Tests compare matmul() against it.
void matmul_reference(const WeightView& w, const float* x, int64_t n_tokens, float* y);

}  // namespace uma
