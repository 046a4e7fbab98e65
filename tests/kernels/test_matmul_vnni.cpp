// The AVX512-VNNI decode path against the scalar reference (skipped on CPUs without it).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/matmul_vnni.h"
#include "quant/quant.h"
#include "runtime/thread_pool.h"
#include "test_support.h"

namespace uma {
namespace {

TEST(MatmulVnni, DecodeMatchesScalarReference) {
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    for (int64_t cols : {64, 192, 256, 512, 4096, 11008}) {
      const int64_t bs = traits(type).block_size;
      if (cols % bs != 0 || (bs == 32 && cols % 64 != 0)) continue;
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
      // Same Q8_0 (Q8_K) activation quantization as the generic path: its error (~0.5 % rms of the activations,
      // more with the outlier, and up to ~3.5 % for Q8_K's 256-value scales) is the whole difference from the
      // f32 reference. Budgets as in test_matmul.cpp: 2 % / 5 %.
      const double budget = bs == 32 ? 0.02 : 0.05;
      EXPECT_LE(test::rel_l2(fast, ref), budget) << type_name(type) << " cols " << cols;
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

// matmul_many (one parallel region over several matrices sharing the input) gives exactly what one matmul per
// matrix gives, for groups of mixed types and row counts, on 1-3 threads.
TEST(MatmulVnni, ManyMatchesOneByOne) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  for (int64_t cols : {192, 4096}) {
    std::vector<GgmlType> types = {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_0};
    if (cols % QK_K == 0) types = {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K};
    std::vector<std::vector<uint8_t>> data;
    std::vector<WeightView> views;
    std::vector<float> wf(cols), x(cols);
    for (size_t i = 0; i < types.size(); ++i) {
      const int64_t rows = 5 + 37 * static_cast<int64_t>(i);
      data.emplace_back(row_bytes(types[i], cols) * rows);
      for (int64_t r = 0; r < rows; ++r) {
        for (auto& v : wf) v = nd(rng);
        quantize_row(types[i], wf.data(), data.back().data() + r * row_bytes(types[i], cols), cols);
      }
      views.push_back({types[i], data.back().data(), rows, cols});
    }
    if (!cpu::vnni_decode_supported(views[0])) GTEST_SKIP() << "this CPU has no AVX512-VNNI";
    for (auto& v : x) v = nd(rng);
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      std::vector<std::vector<float>> one(views.size()), many(views.size());
      std::vector<float*> ys;
      for (size_t i = 0; i < views.size(); ++i) {
        one[i].resize(views[i].rows);
        many[i].assign(views[i].rows, -1.0f);
        matmul(views[i], x.data(), 1, one[i].data(), pool);
        ys.push_back(many[i].data());
      }
      matmul_many(views.data(), ys.data(), views.size(), x.data(), 1, pool);
      for (size_t i = 0; i < views.size(); ++i)
        EXPECT_EQ(one[i], many[i]) << "matrix " << i << " cols " << cols << " threads " << threads;
    }
  }
}

// The AVX-512 activation quantizers against quantize_row, byte for byte (scales included), on Gaussian
// values with outliers, exact ties (x * id = k + 0.5), repeated extremes of both signs and zero blocks.
TEST(MatmulVnni, ActivationQuantizersMatchScalarBitForBit) {
  if (!cpu::vnni_decode_supported({GgmlType::Q8_0, nullptr, 1, 64})) GTEST_SKIP() << "this CPU has no AVX512-VNNI";
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q8_K}) {
    for (int trial = 0; trial < 50; ++trial) {
      const int64_t cols = 4096;
      std::vector<float> x(cols);
      for (auto& v : x) v = nd(rng) * (trial % 3 == 0 ? 100.0f : 1.0f);
      if (trial % 5 == 1) x[trial] = 40.0f;
      if (trial % 5 == 2) {  // extremes of equal magnitude and opposite sign: the first one wins
        x[10] = -9.0f;
        x[20] = 9.0f;
      }
      if (trial % 5 == 3)
        for (int j = 0; j < 256; ++j) x[j] = 0.0f;  // an all-zero block
      if (trial % 5 == 4)
        for (int j = 0; j < 64; ++j) x[j] = (j % 2 ? 1.0f : -1.0f) * static_cast<float>(j % 17) * 0.5f;  // ties
      std::vector<uint8_t> fast(row_bytes(type, cols)), ref(row_bytes(type, cols));
      cpu::quantize_activations_avx512(type, x.data(), fast.data(), cols);
      quantize_row(type, x.data(), ref.data(), cols);
      ASSERT_EQ(fast, ref) << type_name(type) << " trial " << trial;
    }
  }
}

}  // namespace
}  // namespace uma

namespace uma {
namespace {

// GEMV throughput per weight type (UMA_CPU_BENCH=1; skipped otherwise): one thread on a matrix that fits the
// last-level cache (the kernel's compute rate per core), and all threads streaming 1 GiB of distinct
// copies (the DRAM rate; compare with `uma bench`'s probe). UMA_CPU_VNNI=0 measures the generic kernels.
TEST(CpuGemvBench, Throughput) {
  if (!std::getenv("UMA_CPU_BENCH")) GTEST_SKIP() << "set UMA_CPU_BENCH=1";
  const int threads = static_cast<int>(std::thread::hardware_concurrency());
  auto time_loop = [](auto&& body) {  // seconds per call, best of a few batches
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      body();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16}) {
    const int64_t rows = 2048, cols = 4096;
    const size_t bytes = row_bytes(type, cols) * rows;
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    std::vector<float> wf(cols), x(cols), y(rows);
    std::vector<uint8_t> w(bytes);
    for (int64_t r = 0; r < rows; ++r) {
      for (auto& v : wf) v = nd(rng);
      quantize_row(type, wf.data(), w.data() + r * row_bytes(type, cols), cols);
    }
    for (auto& v : x) v = nd(rng);
    ThreadPool one(1);
    const WeightView wv{type, w.data(), rows, cols};
    matmul(wv, x.data(), 1, y.data(), one);
    const double t1 = time_loop([&] { for (int i = 0; i < 20; ++i) matmul(wv, x.data(), 1, y.data(), one); }) / 20;
    // DRAM: copies of the matrix totalling >= 1 GiB (3x the 300 MB L3 of a big Xeon), cycled, on all threads.
    const int copies = static_cast<int>((size_t(1) << 30) / bytes + 1);
    std::vector<uint8_t> big(bytes * copies);
    for (int c = 0; c < copies; ++c) std::copy(w.begin(), w.end(), big.begin() + c * bytes);
    ThreadPool all(threads);
    std::vector<float> yb(rows);
    const double tn = time_loop([&] {
      for (int c = 0; c < copies; ++c) matmul({type, big.data() + c * bytes, rows, cols}, x.data(), 1, yb.data(), all);
    }) / copies;
    std::printf("%-5s %s: 1 thread (cache) %6.1f GB/s %7.1f us | %d threads (DRAM) %6.1f GB/s %6.1f us\n",
                type_name(type).data(), cpu::vnni_decode_supported(wv) ? "vnni" : "hwy ", bytes / t1 / 1e9, t1 * 1e6,
                threads, bytes / tn / 1e9, tn * 1e6);
  }
}

}  // namespace
}  // namespace uma
