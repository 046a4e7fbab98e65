// Sampling on the GPU (CudaBackend::top_k_row, cuda_sampling.cu) against the CPU backend's default, which is
// the host reference (sampling/top_k.h): the same k (id, logit) pairs, bit for bit, at real vocabulary sizes,
// with ties, NaN, -inf, signed zeros and penalties; the row's mass for chains without top-k within its bound;
// and generate() picking the same tokens with the first stages on the GPU as with every row sampled on the
// host.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "fixtures.h"
#include "runtime/engine.h"
#include "cuda_test_support.h"
#include "test_support.h"

namespace uma {
namespace {

using test::gpu;
using Dev = test::DeviceBuffers;

// A row of N(0, 3²) logits on a coarse grid (exact ties everywhere), with a run of equal maxima, NaN, -inf and
// zeros of both signs; `near_zero`: everything <= 0 so that the signed zeros are the maxima.
std::vector<float> nasty_row(int64_t n, uint32_t seed, bool near_zero) {
  auto row = test::random_floats(size_t(n), seed, 3.0f);
  std::mt19937 rng(seed);
  for (float& v : row) {
    v = std::round(v * 4.0f) / 4.0f;
    if (near_zero) v = -std::fabs(v);
    switch (rng() % 16) {
      case 0: v = std::numeric_limits<float>::quiet_NaN(); break;
      case 1: v = -std::numeric_limits<float>::infinity(); break;
      case 2: v = 0.0f; break;
      case 3: v = -0.0f; break;
      default: break;
    }
  }
  for (int64_t i = n / 3; i < n / 3 + 5 && !near_zero; ++i) row[size_t(i)] = 20.0f;
  return row;
}

TEST(CudaSampling, TopKRowMatchesTheCpu) {
  REQUIRE_GPU();
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  for (int64_t n_cols : {260, 32000, 128256, 151936}) {
    for (int k : {1, 7, 40, 256, 300}) {  // 300: past kMaxTopK, the host default on the GPU backend
      if (k > n_cols) continue;
      for (int variant = 0; variant < 3; ++variant) {
        const bool near_zero = variant == 1;
        const auto row = nasty_row(n_cols, uint32_t(n_cols) * 31 + uint32_t(k) + uint32_t(variant), near_zero);
        // Penalties (variant 2: none): repeated tokens, one at the maxima, ids outside the row, positive and
        // negative logits.
        std::vector<int32_t> ids = {3, int32_t(n_cols / 3), 17, int32_t(n_cols - 1), -5, int32_t(n_cols + 2), 100};
        std::vector<int32_t> counts = {1, 4, 2, 1, 3, 1, 7};
        LogitPenalties pen{.ids = ids.data(), .counts = counts.data(), .n = variant == 2 ? 0 : int64_t(ids.size()),
                           .repeat = 1.3f, .frequency = 0.15f, .presence = 0.4f};
        Dev d{*cuda};
        std::vector<TokenLogit> got(static_cast<size_t>(k)), want(static_cast<size_t>(k));
        cuda->top_k_row(d.put(row), n_cols, k, pen, got.data());
        auto host = row;
        cpu->top_k_row(host.data(), n_cols, k, pen, want.data());
        for (int i = 0; i < k; ++i) {
          ASSERT_EQ(got[size_t(i)].id, want[size_t(i)].id) << n_cols << " columns, k " << k << ", variant " << variant
                                                           << ", rank " << i;
          ASSERT_EQ(std::memcmp(&got[size_t(i)].logit, &want[size_t(i)].logit, sizeof(float)), 0)
              << n_cols << " columns, k " << k << ", variant " << variant << ", rank " << i << ": "
              << got[size_t(i)].logit << " vs " << want[size_t(i)].logit;
        }
      }
    }
  }
}

// The row's mass on the GPU (chains without top-k, Sampler::sample_head) against the exact sums (double
// exponentials) of the same penalised row: within a tenth of the error the sampler allows for.
TEST(CudaSampling, RowMassIsWithinItsBound) {
  REQUIRE_GPU();
  auto cuda = gpu();
  for (int64_t n_cols : {260, 32000, 128256}) {
    for (double inv_t : {1.0, 1.0 / 0.7, 1.0 / 2.5, 50.0}) {
      const auto row = nasty_row(n_cols, uint32_t(n_cols) + uint32_t(inv_t * 10), false);
      float mx = -std::numeric_limits<float>::infinity();
      for (float l : row) mx = std::max(mx, ranking_logit(l));
      const RowMass e = test::exact_row_mass(row, mx, inv_t);
      Dev d{*cuda};
      const RowMass m = cuda->row_mass(d.put(row), n_cols, mx, inv_t);
      EXPECT_LE(std::abs(m.sum1 - e.sum1), kRowMassError / 10 * e.sum1) << n_cols << " columns, 1 / T " << inv_t;
      EXPECT_LE(std::abs(m.sum_t - e.sum_t), kRowMassError / 10 * e.sum_t) << n_cols << " columns, 1 / T " << inv_t;
    }
  }
}

// The engine on the GPU: generate() with penalties + top-k on the device (Model::forward_top_k) and with every
// logits row downloaded and sampled on the host, same seed: the same tokens. Both runs read the same logits
// (one engine), so any difference is the sampling path's.
TEST(CudaSampling, GenerateOnTheDeviceEqualsHostSampling) {
  REQUIRE_GPU();
  const auto models = test::sampling_models();
  if (models.empty()) GTEST_SKIP() << "no model present";
  for (const auto& path : models) {
    EngineOptions eo;
    eo.device = "cuda";
    auto engine = Engine::load(path, eo);
    const auto prompt = engine->tokenizer().encode("Once upon a time", true, true);
    for (const SamplerParams& sp : test::sampling_settings()) {
      const auto r = test::sample_both_ways(*engine, prompt, sp, 64);
      EXPECT_EQ(r.on_backend, r.on_host) << path.filename() << ", temperature " << sp.temperature << ", top_k "
                                         << sp.top_k;
      EXPECT_EQ(r.on_backend.size(), 64u);
    }
  }
}

}  // namespace
}  // namespace uma
