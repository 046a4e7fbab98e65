// The AVX512-VNNI decode path against the scalar reference (skipped on CPUs without it).
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/matmul_vnni.h"
#include "quant/quant.h"
#include "runtime/thread_pool.h"
#include "test_support.h"

namespace uma {
namespace {

TEST(MatmulVnni, DecodeMatchesScalarReference) {
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0}) {
    for (int64_t cols : {64, 192, 512, 4096}) {
      const int64_t rows = 37;
      std::mt19937 rng(static_cast<uint32_t>(cols));
      std::normal_distribution<float> nd;
      std::vector<float> wf(cols), x(cols);
      std::vector<uint8_t> w(row_bytes(type, cols) * rows);
      for (int64_t r = 0; r < rows; ++r) {
        for (auto& v : wf) v = nd(rng);
        quantize_row(type, wf.data(), w.data() + r * row_bytes(type, cols), cols);
      }
      for (auto& v : x) v = nd(rng);
      x[3] = 40.0f;  // an outlier channel, as real activations have
      const WeightView wv{type, w.data(), rows, cols};
      if (!cpu::vnni_decode_supported(wv)) GTEST_SKIP() << "this CPU has no AVX512-VNNI";
      std::vector<float> fast(rows), ref(rows);
      ThreadPool pool(2);
      cpu::matmul_vnni_decode(wv, x.data(), fast.data(), pool);
      matmul_reference(wv, x.data(), 1, ref.data());
      // Same Q8_0 activation quantization as the generic path: its error (~0.5 % rms of the activations,
      // more with the outlier) is the whole difference from the f32 reference.
      EXPECT_LE(test::rel_l2(fast, ref), 0.02) << type_name(type) << " cols " << cols;
      // And the generic integer path gives the same numbers up to f32 summation order.
      // (two identical tokens take the generic prefill kernels)
      std::vector<float> x2(2 * cols);
      std::copy(x.begin(), x.end(), x2.begin());
      std::copy(x.begin(), x.end(), x2.begin() + cols);
      std::vector<float> y2(2 * rows);
      matmul(wv, x2.data(), 2, y2.data(), pool);
      const std::vector<float> generic(y2.begin(), y2.begin() + rows);
      EXPECT_LE(test::rel_l2(fast, generic), 1e-5) << type_name(type) << " cols " << cols;
    }
  }
}

}  // namespace
}  // namespace uma
