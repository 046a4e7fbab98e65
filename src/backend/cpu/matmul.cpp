// matmul_reference (the scalar twin every fast path is tested against) and the matmul() entry point, which
// hands the work to the Highway kernels in matmul_hwy.cpp.
#include "backend/cpu/matmul.h"

#include <vector>

#include "backend/cpu/matmul_kernels.h"
#include "backend/cpu/matmul_vnni.h"
#include "quant/quant.h"
#include "uma/error.h"

namespace uma {

void matmul_reference(const WeightView& w, const float* x, int64_t n_tokens, float* y) {
  if (!traits(w.type).supported) fail("matmul: tensor type {} is not supported by uma", type_name(w.type));
  const size_t row_stride = row_bytes(w.type, w.cols);
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.data + r * row_stride, row.data(), w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * w.cols;
      float sum = 0;
      for (int64_t k = 0; k < w.cols; ++k) sum += row[k] * xt[k];
      y[t * w.rows + r] = sum;
    }
  }
}

void matmul_many(const WeightView* w, float* const* y, size_t n, const float* x, int64_t n_tokens, ThreadPool& pool) {
  bool fused = n_tokens == 1;
  for (size_t i = 0; i < n && fused; ++i)
    fused = w[i].rows > 0 && w[i].cols == w[0].cols && cpu::vnni_decode_supported(w[i]);
  if (fused) return cpu::matmul_vnni_decode_many(w, y, n, x, pool);
  for (size_t i = 0; i < n; ++i) matmul(w[i], x, n_tokens, y[i], pool);
}

void matmul(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  if (n_tokens <= 0 || w.rows <= 0) return;
  const auto& tr = traits(w.type);
  if (!tr.supported || w.type == GgmlType::Q8_K) fail("matmul: tensor type {} is not supported by uma", tr.name);
  if (w.cols % tr.block_size != 0)
    fail("matmul: {} weight has {} columns, not a multiple of its block size {}", tr.name, w.cols, tr.block_size);
  if (n_tokens == 1 && cpu::vnni_decode_supported(w)) return cpu::matmul_vnni_decode(w, x, y, pool);
  cpu::matmul_dispatch(w, x, n_tokens, y, pool);
}

}  // namespace uma
