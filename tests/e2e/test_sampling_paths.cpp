// generate() with the sampler's first stages on the backend (Model::forward_top_k -> Backend::top_k_row,
// here the CPU backend's default) and with every logits row sampled on the host (Sampler::sample): the same
// seed must give the same tokens. tests/backends/test_cuda_sampling.cpp does the same through the GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <set>

#include "fixtures.h"
#include "runtime/engine.h"

namespace uma {
namespace {

TEST(SamplingPaths, BackendAndHostGiveTheSameTokens) {
  const auto models = test::sampling_models();
  if (models.empty()) GTEST_SKIP() << "no model present";
  for (const auto& path : models) {
    EngineOptions eo;
    eo.n_threads = 2;
    eo.device = "cpu";
    auto engine = Engine::load(path, eo);
    const auto prompt = engine->tokenizer().encode("Once upon a time", true, true);
    for (const SamplerParams& sp : test::sampling_settings()) {
      const auto r = test::sample_both_ways(*engine, prompt, sp, 64);
      std::printf("  %s, temperature %.1f, top_k %d: %zu distinct of %zu tokens\n", path.filename().c_str(),
                  sp.temperature, sp.top_k, std::set<int32_t>(r.on_backend.begin(), r.on_backend.end()).size(),
                  r.on_backend.size());
      EXPECT_EQ(r.on_backend, r.on_host) << path.filename() << ", temperature " << sp.temperature << ", top_k "
                                         << sp.top_k;
      EXPECT_EQ(r.on_backend.size(), 64u);
    }
  }
}

}  // namespace
}  // namespace uma
