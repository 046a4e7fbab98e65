// matmul() against matmul_reference() for every weight type, on every Highway target compiled into the
// binary and supported by this CPU, over odd shapes; plus thread-count invariance.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/matmul_kernels.h"
#include "quant/quant.h"
#include "runtime/thread_pool.h"
#include "test_support.h"
#include "uma/error.h"

namespace uma {
namespace {

struct Weights {
  GgmlType type;
  int64_t rows, cols;
  std::vector<uint8_t> bytes;
  WeightView view() const { return {type, bytes.data(), rows, cols}; }
};

Weights make_weights(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  Weights w{type, rows, cols, std::vector<uint8_t>(row_bytes(type, cols) * rows)};
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = dist(rng);
    quantize_row(type, row.data(), w.bytes.data() + r * row_bytes(type, cols), cols);
  }
  return w;
}

std::vector<float> make_activations(int64_t n_tokens, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n_tokens * cols);
  for (auto& v : x) v = dist(rng);
  // An outlier channel, as real residual streams have: stresses the per-block activation scales.
  for (int64_t t = 0; t < n_tokens; ++t) x[t * cols + 7] = 20.0f;
  return x;
}

// What the integer kernels compute exactly (up to f32 rounding): dequantized weights times the activations
// after quantization to the activation format, summed in double.
std::vector<float> exact_on_quantized_activations(const Weights& w, const std::vector<float>& x, int64_t n_tokens) {
  const GgmlType at = cpu::activation_type(w.type);
  std::vector<float> xq(x.size());
  std::vector<uint8_t> buf(row_bytes(at, w.cols) + 64);
  for (int64_t t = 0; t < n_tokens; ++t) {
    quantize_row(at, x.data() + t * w.cols, buf.data(), w.cols);
    dequantize_row(at, buf.data(), xq.data() + t * w.cols, w.cols);
  }
  std::vector<float> row(w.cols), y(n_tokens * w.rows);
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.bytes.data() + r * row_bytes(w.type, w.cols), row.data(), w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      double s = 0;
      for (int64_t k = 0; k < w.cols; ++k) s += static_cast<double>(row[k]) * xq[t * w.cols + k];
      y[t * w.rows + r] = static_cast<float>(s);
    }
  }
  return y;
}

// Error budgets of matmul() vs matmul_reference() (relative L2 over the output), per type.
// F32/F16/BF16 multiply f32 activations: only the summation order differs (reference: one serial f32 sum;
// fast: many SIMD partial sums), so the error is a few ulp times sqrt(cols) -> 1e-5.
// Quantized weights multiply activations quantized to 8 bits per 32 (Q8_0) or 256 (Q8_K) values with a
// per-block scale amax/127: rms error per value ~ amax/127/sqrt(12); with Gaussian activations plus one
// large outlier channel per row the 256-block scales are coarser than the 32-block ones. An output is a
// sum of independent such errors weighted by the weights, so its relative error is about the relative
// activation error: ~0.5-1% for Q8_0 and up to ~3% with the outlier for Q8_K. Budgets: 2% / 5%.
double budget(GgmlType t) {
  switch (cpu::activation_type(t)) {
    case GgmlType::F32: return 1e-5;
    case GgmlType::Q8_0: return 0.02;
    default: return 0.05;
  }
}

class MatmulTypes : public ::testing::TestWithParam<GgmlType> {};

TEST_P(MatmulTypes, MatchesReferenceOnEveryTarget) {
  const GgmlType type = GetParam();
  const int64_t block = traits(type).block_size;
  const int64_t cols = block == 256 ? 512 : 160;  // 160 = 5 blocks of 32: not a power of two
  const int64_t rows = 37;                         // not a multiple of any row tile
  const Weights w = make_weights(type, rows, cols, 11);
  ThreadPool pool(3);
  for (const int64_t target : cpu::kernel_targets()) {
    hwy::SetSupportedTargetsForTest(target);
    for (const int64_t n_tokens : {1, 2, 3, 4, 5, 17}) {
      SCOPED_TRACE(::testing::Message() << type_name(type) << " target " << hwy::TargetName(target)
                                        << " n_tokens " << n_tokens);
      const auto x = make_activations(n_tokens, cols, 100 + static_cast<uint32_t>(n_tokens));
      std::vector<float> y(n_tokens * rows, NAN), y_ref(n_tokens * rows);
      matmul(w.view(), x.data(), n_tokens, y.data(), pool);
      matmul_reference(w.view(), x.data(), n_tokens, y_ref.data());
      EXPECT_LT(test::rel_l2(y, y_ref), budget(type));
      // Against the exact product on the quantized activations, only f32 rounding remains.
      const auto y_exact = exact_on_quantized_activations(w, x, n_tokens);
      EXPECT_LT(test::rel_l2(y, y_exact), 1e-5);
    }
  }
  hwy::SetSupportedTargetsForTest(0);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulTypes,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0,
                                           GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                                           GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                                           GgmlType::Q6_K),
                         [](const auto& info) { return std::string(type_name(info.param)); });

TEST(Matmul, ThreadCountInvariant) {
  // Threads split output rows only; every output is computed by the same code path whatever the split,
  // so results must be bitwise identical.
  for (const GgmlType type : {GgmlType::F32, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    const Weights w = make_weights(type, 301, 512, 5);
    for (const int64_t n_tokens : {1, 7}) {
      const auto x = make_activations(n_tokens, 512, 9);
      std::vector<float> y1(n_tokens * 301), y4(n_tokens * 301);
      ThreadPool one(1), four(4);
      matmul(w.view(), x.data(), n_tokens, y1.data(), one);
      matmul(w.view(), x.data(), n_tokens, y4.data(), four);
      EXPECT_EQ(y1, y4) << type_name(type) << " n_tokens " << n_tokens;
    }
  }
}

TEST(Matmul, RejectsUnsupportedTypes) {
  std::vector<uint8_t> bytes(1024);
  std::vector<float> x(256), y(1);
  ThreadPool pool(1);
  EXPECT_THROW(matmul({static_cast<GgmlType>(16), bytes.data(), 1, 256}, x.data(), 1, y.data(), pool), Error);
  EXPECT_THROW(matmul({GgmlType::Q4_0, bytes.data(), 1, 48}, x.data(), 1, y.data(), pool), Error);
}

}  // namespace
}  // namespace uma
