// Temporary: multithreaded dequantize-and-dot path, replaced by the Highway kernels.
#include <vector>

#include "backend/cpu/matmul_kernels.h"
#include "quant/quant.h"
#include "runtime/thread_pool.h"

namespace uma::cpu {

GgmlType activation_type(GgmlType t) { return GgmlType::F32; }

void matmul_dispatch(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  const size_t stride = row_bytes(w.type, w.cols);
  pool.parallel_for(w.rows, 4, [&](int, int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(w.cols));
    for (int64_t r = begin; r < end; ++r) {
      dequantize_row(w.type, w.data + r * stride, row.data(), w.cols);
      for (int64_t t = 0; t < n_tokens; ++t) {
        const float* xt = x + t * w.cols;
        float s[8] = {};
        int64_t k = 0;
        for (; k + 8 <= w.cols; k += 8)
          for (int j = 0; j < 8; ++j) s[j] += row[k + j] * xt[k + j];
        float sum = 0;
        for (; k < w.cols; ++k) sum += row[k] * xt[k];
        for (float v : s) sum += v;
        y[t * w.rows + r] = sum;
      }
    }
  });
}

}  // namespace uma::cpu
