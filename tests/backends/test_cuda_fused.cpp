// The CUDA backend's fused decode ops against the same ops unfused and against the CPU: matmul_many (q/k/v and
// gate/up in one GEMV launch), add_rms_norm, rms_norm / swiglu / attention writing the int8 blocks of their
// output for the next GEMV, and rope_store_kv. A backend made with UMA_CUDA_MERGE=0 / UMA_CUDA_FUSE=0 runs
// every op on its own; the fused path must compute the same numbers (same arithmetic per value, so the
// tolerance is 1e-6 or exact) and both must stay within the CPU budgets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "quant/quant.h"
#include "cuda_test_support.h"
#include "test_support.h"

namespace uma {
namespace {

using test::gpu;

using test::random_floats;
using test::TestWeight;
using Buf = test::DeviceBuffers;

std::unique_ptr<Backend> gpu_with(const char* var, const char* value) {
  setenv(var, value, 1);
  auto b = gpu();
  unsetenv(var);
  return b;
}

bool int8_gemv(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q8_0 || t == GgmlType::Q4_K || t == GgmlType::Q5_K ||
         t == GgmlType::Q6_K;
}

// q/k/v-like groups: one type for all three, or the Q4_K_M mix (v in Q6_K: two launches), GQA-sized k/v,
// biases on some; 1 and 3 tokens; small (one row a block) and large (four rows a block) matrices.
TEST(CudaFused, MatmulManyMatchesSeparateLaunchesAndTheCpu) {
  REQUIRE_GPU();
  auto merged = gpu();
  auto separate = gpu_with("UMA_CUDA_MERGE", "0");
  auto cpu = make_cpu_backend(2);
  struct Case {
    GgmlType q, k, v;
    int64_t rows_q, rows_kv, cols;
  };
  const Case cases[] = {
      {GgmlType::Q4_0, GgmlType::Q4_0, GgmlType::Q4_0, 300, 77, 256},
      {GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0, 4096, 1024, 512},
      {GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q6_K, 2048, 512, 512},
      {GgmlType::Q5_K, GgmlType::Q5_K, GgmlType::Q5_K, 64, 64, 256},
      {GgmlType::F16, GgmlType::F16, GgmlType::F16, 3000, 1000, 264},
      {GgmlType::F32, GgmlType::F32, GgmlType::F32, 100, 20, 68},
      {GgmlType::BF16, GgmlType::BF16, GgmlType::BF16, 40, 40, 64},
  };
  uint32_t seed = 100;
  for (const Case& c : cases) {
    TestWeight wq(c.q, c.rows_q, c.cols, ++seed), wk(c.k, c.rows_kv, c.cols, ++seed), wv(c.v, c.rows_kv, c.cols, ++seed);
    TestWeight bq(GgmlType::F32, 1, c.rows_q, ++seed), bv(GgmlType::F32, 1, c.rows_kv, ++seed);
    for (int64_t n_tok : {1, 3}) {
      const auto x = random_floats(size_t(n_tok * c.cols), ++seed);
      std::vector<float> want[3];
      const Weight* ws[3] = {&wq.w, &wk.w, &wv.w};
      const Weight* bs[3] = {&bq.w, nullptr, &bv.w};
      for (int i = 0; i < 3; ++i) {
        want[i].resize(size_t(n_tok * ws[i]->rows()));
        cpu->matmul(*ws[i], x.data(), n_tok, want[i].data(), bs[i]);
      }
      std::vector<float> got[2][3];
      Backend* backends[2] = {merged.get(), separate.get()};
      for (int b = 0; b < 2; ++b) {
        Buf d{*backends[b]};
        float* dx = d.put(x);
        float* ys[3];
        MatmulTarget t[3];
        for (int i = 0; i < 3; ++i) {
          ys[i] = d.make(want[i].size());
          t[i] = {ws[i], ys[i], bs[i]};
        }
        backends[b]->matmul_many(dx, n_tok, t, 3);
        for (int i = 0; i < 3; ++i) got[b][i] = d.get(ys[i], want[i].size());
      }
      for (int i = 0; i < 3; ++i) {
        const std::string what = std::string(type_name(ws[i]->type)) + " target " + std::to_string(i) + ", " +
                                 std::to_string(n_tok) + " tokens";
        // Same arithmetic per row; only the rows per block (and so the reduction order) may differ.
        EXPECT_LE(test::rel_l2(got[0][i], got[1][i]), 1e-6) << what;
        // The CPU quantizes activations to 8 bits for these types as well; budgets of tests/kernels.
        EXPECT_LE(test::rel_l2(got[0][i], want[i]), int8_gemv(ws[i]->type) ? 0.02 : 2e-5) << what;
      }
    }
  }
}

// The single-token GEMV through bulk copies into shared memory (gemv_bulk_kernel, sm_90) against the
// register-load kernels (UMA_CUDA_GEMV_BULK=0): the defaults (int8 types), both ways of sharing a stage's
// rows between warps, both of Q4_0's chunk widths, activations held or reloaded, every type with small
// stages in a ring that wraps many times, and stages of one or two rows split over 24 warps. Merged q/k/v-like
// groups with a bias, down-projection widths (a Q6_K row of 11008 values: its scale row padded to 16-byte units),
// partial last stages (row counts that are no multiple of a stage).
TEST(CudaFused, BulkCopyGemvMatchesTheRegisterKernel) {
  REQUIRE_GPU();
  struct Case {
    GgmlType type;
    int64_t rows_q, rows_kv, cols;
  };
  const Case cases[] = {
      {GgmlType::Q4_0, 4096, 1024, 4096}, {GgmlType::Q4_0, 1000, 8, 11008}, {GgmlType::Q8_0, 4096, 1024, 4096},
      {GgmlType::Q4_K, 2048, 512, 4096},  {GgmlType::Q4_K, 700, 100, 11008}, {GgmlType::Q5_K, 1500, 300, 2048},
      {GgmlType::Q6_K, 3000, 77, 4096},   {GgmlType::Q6_K, 1200, 40, 11008}, {GgmlType::F16, 2000, 500, 4096},
      {GgmlType::BF16, 1000, 250, 1024},
      {GgmlType::F32, 1000, 250, 1024},
  };
  uint32_t seed = 300;
  for (const Case& c : cases) {
    TestWeight wq(c.type, c.rows_q, c.cols, ++seed), wk(c.type, c.rows_kv, c.cols, ++seed),
        wv(c.type, c.rows_kv, c.cols, ++seed), bq(GgmlType::F32, 1, c.rows_q, ++seed);
    const auto x = random_floats(size_t(c.cols), ++seed);
    const Weight* ws[3] = {&wq.w, &wk.w, &wv.w};
    auto run = [&](Backend& b) {
      Buf d{b};
      float* dx = d.put(x);
      float* ys[3];
      MatmulTarget t[3];
      for (int i = 0; i < 3; ++i) {
        ys[i] = d.make(size_t(ws[i]->rows()));
        t[i] = {ws[i], ys[i], i == 0 ? &bq.w : nullptr};
      }
      b.matmul_many(dx, 1, t, 3);
      std::vector<float> out;
      for (int i = 0; i < 3; ++i) {
        const auto y = d.get(ys[i], size_t(ws[i]->rows()));
        out.insert(out.end(), y.begin(), y.end());
      }
      return out;
    };
    // A backend per case: it keeps its device copy of a weight under the host address, which the next case's
    // weights may reuse.
    const auto want = run(*gpu_with("UMA_CUDA_GEMV_BULK", "0"));
    // Settings (UMA_CUDA_GEMV_BULK, UMA_CUDA_BULK_ROWS, UMA_CUDA_BULK_PAIR, UMA_CUDA_BULK_HELD): the defaults
    // (whole rows a warp; Q4_0 on 32-value chunks; Q4_0/Q8_0 activations held in registers), activations
    // reloaded every stage, 4-row items summed after a barrier, Q4_0 on 64-value chunks, other stages.
    const char* configs[][4] = {
        {"", "1", "0", "1"},         {"", "1", "0", "0"},         {"", "0", "0", "1"},
        {"", "1", "1", "1"},         {"", "0", "1", "1"},         {"32,3,1,8", "1", "0", "1"},
        {"4,2,1,24", "1", "0", "1"}, {"96,2,1,16", "1", "0", "1"}, {"96,2,1,16", "0", "1", "1"},
    };
    for (const auto& config : configs) {
      std::unique_ptr<Backend> bulk;
      {
        test::EnvGuard env("UMA_CUDA_GEMV_BULK", *config[0] ? std::optional<std::string>(config[0]) : std::nullopt);
        test::EnvGuard rows("UMA_CUDA_BULK_ROWS", std::string(config[1]));
        test::EnvGuard pair("UMA_CUDA_BULK_PAIR", std::string(config[2]));
        test::EnvGuard held("UMA_CUDA_BULK_HELD", std::string(config[3]));
        bulk = gpu();
      }
      // The same products per row; only how a row's sum is split between threads differs.
      EXPECT_LE(test::rel_l2(run(*bulk), want), 1e-6)
          << type_name(c.type) << " " << c.rows_q << "x" << c.cols << " UMA_CUDA_GEMV_BULK=" << config[0]
          << " UMA_CUDA_BULK_ROWS=" << config[1] << " UMA_CUDA_BULK_PAIR=" << config[2]
          << " UMA_CUDA_BULK_HELD=" << config[3];
    }
  }
}

// One decode layer's small ops, fused and unfused, each followed by the GEMV that consumes its output (which
// then reads the int8 blocks the fused op wrote instead of quantizing again).
TEST(CudaFused, DecodeChainMatchesUnfusedAndTheCpu) {
  REQUIRE_GPU();
  auto fused = gpu();
  auto plain = gpu_with("UMA_CUDA_FUSE", "0");
  auto cpu = make_cpu_backend(2);
  const int n_head = 8, n_head_kv = 2, hd = 64, n_embd = n_head * hd, n_ff = 768;
  TestWeight norm(GgmlType::F32, 1, n_embd, 1), wq(GgmlType::Q4_0, n_embd, n_embd, 2),
      wk(GgmlType::Q4_0, n_head_kv * hd, n_embd, 3), wv(GgmlType::Q4_0, n_head_kv * hd, n_embd, 4),
      wo(GgmlType::Q8_0, n_embd, n_embd, 5), wdown(GgmlType::Q4_K, n_embd, n_ff, 6);
  RopeParams rope;
  rope.n_rot = hd;
  rope.freq_base = 10000.0f;
  const AttentionShape shape{n_head, n_head_kv, hd, hd, 1.0f / std::sqrt(float(hd))};
  for (int64_t n_tok : {1, 3}) {
    // Three sequences with 40 cached tokens each; the step holds the next token (position 40) of the first
    // n_tok of them.
    KvCacheOptions o;
    o.n_layer = 1, o.n_cells = 256, o.n_seq = 3, o.k_width = n_head_kv * hd, o.v_width = n_head_kv * hd;
    std::vector<int32_t> pos, seq;
    for (int64_t t = 0; t < n_tok; ++t) pos.push_back(40), seq.push_back(int32_t(t));
    const BatchLayout step{pos.data(), seq.data(), n_tok};
    const auto x0 = random_floats(size_t(n_tok * n_embd), 10), y0 = random_floats(size_t(n_tok * n_embd), 11);
    const auto gate = random_floats(size_t(n_tok * n_ff), 12), up = random_floats(size_t(n_tok * n_ff), 13);
    const auto kv_k = random_floats(size_t(40 * 3 * o.k_width), 14), kv_v = random_floats(size_t(40 * 3 * o.v_width), 15);
    std::vector<int32_t> fill_pos, fill_seq;
    for (int s = 0; s < 3; ++s)
      for (int p = 0; p < 40; ++p) fill_pos.push_back(p), fill_seq.push_back(s);
    const BatchLayout fill{fill_pos.data(), fill_seq.data(), int64_t(fill_pos.size())};

    struct Result {
      std::vector<float> x, xn, q, attn, o, sw, down;
    };
    auto run = [&](Backend& b, bool device, bool q8 = false) {
      KvCacheOptions oc = o;
      oc.q8 = q8;  // 8-bit cells (the GPU only): rope_store_kv quantizes the rotated keys itself
      KvCache kv(b, oc);
      for (int s = 0; s < 3; ++s) kv.reserve(s, 48);
      Buf d{b};
      auto put = [&](const std::vector<float>& v) { return device ? d.put(v) : const_cast<float*>(v.data()); };
      std::vector<std::vector<float>> host_bufs;
      auto make = [&](size_t n) {
        if (device) return d.make(n);
        host_bufs.emplace_back(n);
        return host_bufs.back().data();
      };
      host_bufs.reserve(16);
      std::vector<float> x_host = x0;
      float* x = device ? d.put(x0) : x_host.data();
      float* xn = make(x0.size());
      float* q = make(size_t(n_tok * n_embd));
      float* k = make(size_t(n_tok * o.k_width));
      float* v = make(size_t(n_tok * o.v_width));
      float* attn = make(size_t(n_tok * n_embd));
      float* out = make(size_t(n_tok * n_embd));
      float* sw = make(gate.size());
      float* down = make(size_t(n_tok * n_embd));
      b.store_kv(kv, 0, put(kv_k), put(kv_v), fill);
      b.begin_step(step, kv);
      b.add_rms_norm(x, put(y0), norm.w, n_tok, n_embd, 1e-5f, xn);
      const MatmulTarget qkv[] = {{&wq.w, q}, {&wk.w, k}, {&wv.w, v}};
      b.matmul_many(xn, n_tok, qkv, 3);
      b.rope_store_kv(kv, 0, q, k, v, n_head, n_head_kv, hd, step, rope);
      b.attention(kv, 0, q, step, shape, attn);
      b.matmul(wo.w, attn, n_tok, out);
      b.swiglu(put(gate), put(up), int64_t(gate.size()), sw);
      b.matmul(wdown.w, sw, n_tok, down);
      b.end_step();
      auto get = [&](const float* p, size_t n) {
        if (!device) return std::vector<float>(p, p + n);
        return d.get(p, n);
      };
      return Result{get(x, x0.size()), get(xn, x0.size()), get(q, size_t(n_tok * n_embd)),
                    get(attn, size_t(n_tok * n_embd)), get(out, size_t(n_tok * n_embd)), get(sw, gate.size()),
                    get(down, size_t(n_tok * n_embd))};
    };
    const Result f = run(*fused, true), p = run(*plain, true), c = run(*cpu, false);
    const std::string at = std::to_string(n_tok) + " tokens";
    EXPECT_EQ(f.x, p.x) << "residual " << at;
    EXPECT_LE(test::rel_l2(f.xn, p.xn), 1e-6) << "add_rms_norm " << at;
    EXPECT_LE(test::rel_l2(f.q, p.q), 1e-6) << "q after rope " << at;
    EXPECT_LE(test::rel_l2(f.attn, p.attn), 1e-6) << "attention " << at;
    EXPECT_LE(test::rel_l2(f.o, p.o), 1e-5) << "output projection on the attention's int8 blocks " << at;
    EXPECT_LE(test::rel_l2(f.sw, p.sw), 1e-6) << "swiglu " << at;
    EXPECT_LE(test::rel_l2(f.down, p.down), 1e-5) << "down projection on swiglu's int8 blocks " << at;
    // Against the CPU: f32 ops ~1e-6, GEMVs within the 8-bit activation budget.
    EXPECT_LE(test::rel_l2(f.x, c.x), 1e-6) << at;
    EXPECT_LE(test::rel_l2(f.xn, c.xn), 1e-5) << at;
    EXPECT_LE(test::rel_l2(f.q, c.q), 0.02) << at;
    EXPECT_LE(test::rel_l2(f.attn, c.attn), 0.05) << at;
    EXPECT_LE(test::rel_l2(f.o, c.o), 0.05) << at;
    EXPECT_LE(test::rel_l2(f.down, c.down), 0.02) << at;
    // 8-bit cells, fused (rope_store_kv quantizes in its kernel) and unfused (rope, then store_kv): the same
    // rotated keys quantized the same way; against the CPU's f32 cells within the 8-bit budget.
    const Result fq = run(*fused, true, true), pq = run(*plain, true, true);
    EXPECT_LE(test::rel_l2(fq.attn, pq.attn), 1e-4) << "attention on 8-bit cells " << at;
    EXPECT_LE(test::rel_l2(fq.attn, c.attn), 0.05) << "attention on 8-bit cells " << at;
  }
}

}  // namespace
}  // namespace uma
