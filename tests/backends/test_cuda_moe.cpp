// The CUDA backend's composite ops moe_ffn and attention_mla against the CPU backend on random inputs:
// every expert-weight type the MoE fixtures use (and the plain types), odd shapes, 1/3/17/64 tokens, softmax
// and grouped-sigmoid routing, MLA over interleaved pages of several sequences (prefill, decode, the split
// path), and decode steps recorded as CUDA graphs and replayed with new data. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"
#include "kv/kv_cache.h"
#include "quant/quant.h"
#include "cuda_test_support.h"
#include "test_support.h"

namespace uma {
namespace {

using test::gpu;

using test::TestWeight;
using Dev = test::DeviceBuffers;

bool plain_type(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }

// Both backends on the same routes: f32 activations on plain weights differ only in summation order (1e-5);
// quantized weights read 8-bit activations on both, quantized by each backend its own way (Q8_0/Q8_K blocks
// on the CPU, int8 per 32 values here), each ~1 % from the f32 product: 3e-2 between them. Types without a
// CUDA kernel (Q5_0 here) are f16 on the device with f32 activations, the CPU's Q8 activations: 3e-2.
double budget(GgmlType t) { return plain_type(t) ? 1e-5 : 3e-2; }

struct MoeCase {
  const char* name;
  MoeParams p;
  bool bias;
};

const MoeCase kRoutings[] = {
    {"softmax top-2 of 8, renormalised (mixtral, qwen3moe)", {.n_expert = 8, .n_expert_used = 2, .norm_weights = true}, false},
    {"sigmoid + bias + 2 of 4 groups, top-4 of 16, x2.5 (deepseek-v3)",
     {.n_expert = 16, .n_expert_used = 4, .gating = MoeGating::sigmoid, .norm_weights = true, .weights_scale = 2.5f,
      .n_group = 4, .n_group_used = 2},
     true},
    {"softmax top-3 of 12, x1.5, not renormalised (deepseek-v2)",
     {.n_expert = 12, .n_expert_used = 3, .weights_scale = 1.5f}, false},
};

// moe_ffn on both backends for one type triple; returns nothing, expects inside.
void check_moe(GgmlType tg, GgmlType tu, GgmlType td, int64_t E, int64_t F, const MoeCase& c, uint32_t seed) {
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  const int NE = c.p.n_expert;
  TestWeight router(GgmlType::F32, NE, E, seed, 1);
  TestWeight gate(tg, F, E, seed + 1, NE), up(tu, F, E, seed + 2, NE), down(td, E, F, seed + 3, NE);
  TestWeight bias(GgmlType::F32, 1, NE, seed + 4, 1, 0.3f);
  MoeWeights w{&router.w, c.bias ? &bias.w : nullptr, &gate.w, &up.w, &down.w};
  const double tol = std::max({budget(tg), budget(tu), budget(td)});
  for (int64_t n : {1, 3, 17, 64}) {
    const auto x = test::random_floats(size_t(n * E), seed + 10 + uint32_t(n), 1.0f);
    std::vector<float> want(size_t(n * E));
    cpu->moe_ffn(w, c.p, x.data(), n, want.data());
    Dev d{*cuda};
    float* out = d.make(want.size());
    cuda->moe_ffn(w, c.p, d.put(x), n, out);
    const double err = test::rel_l2(d.get(out, want.size()), want);
    EXPECT_LE(err, tol) << type_name(tg) << "/" << type_name(tu) << "/" << type_name(td) << " " << E << "x" << F
                        << ", " << c.name << ", " << n << " tokens";
  }
}

class CudaMoe : public ::testing::TestWithParam<GgmlType> {};

TEST_P(CudaMoe, MatchesCpuBackend) {
  REQUIRE_GPU();
  const GgmlType t = GetParam();
  const bool k_quant = traits(t).block_size == QK_K;
  // Odd multiples of the block: rows/cols that fill no power of two.
  const int64_t E = k_quant ? 512 : 96, F = k_quant ? 256 : 160;
  uint32_t seed = 100;
  for (const MoeCase& c : kRoutings) check_moe(t, t, t, E, F, c, seed += 20);
}

INSTANTIATE_TEST_SUITE_P(Types, CudaMoe,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q8_0,
                                           GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0),
                         [](const auto& info) { return std::string(type_name(info.param)); });

TEST(CudaMoeShapes, MixedTypesAndOddWidths) {
  REQUIRE_GPU();
  // Q4_K_M files mix types inside one block: gate and up of different types take the unfused path.
  check_moe(GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0, 256, 512, kRoutings[1], 7);
  check_moe(GgmlType::Q4_0, GgmlType::Q4_0, GgmlType::Q6_K, 256, 256, kRoutings[0], 8);
  // Widths that are no multiple of 16 bytes: the generic reader.
  check_moe(GgmlType::F32, GgmlType::F32, GgmlType::F32, 37, 21, kRoutings[0], 9);
  check_moe(GgmlType::F16, GgmlType::F16, GgmlType::F16, 36, 44, kRoutings[2], 10);
  // Many experts (qwen3moe: 128, top-8).
  check_moe(GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0, 64, 32,
            MoeCase{"softmax top-8 of 128", {.n_expert = 128, .n_expert_used = 8, .norm_weights = true}, false}, 11);
}

// A decode step recorded and replayed as a CUDA graph: the routing lives on the device, so a new input
// (other experts) through the same graph must still match the CPU.
TEST(CudaMoeShapes, DecodeStepGraphReplaysWithNewRoutes) {
  REQUIRE_GPU();
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  const MoeCase& c = kRoutings[1];
  const int64_t E = 256, F = 256, NE = c.p.n_expert;
  TestWeight router(GgmlType::F32, NE, E, 1, 1);
  TestWeight gate(GgmlType::Q4_0, F, E, 2, NE), up(GgmlType::Q4_0, F, E, 3, NE), down(GgmlType::Q4_0, E, F, 4, NE);
  TestWeight bias(GgmlType::F32, 1, NE, 5, 1, 0.3f);
  MoeWeights w{&router.w, &bias.w, &gate.w, &up.w, &down.w};
  KvCacheOptions o;
  o.n_layer = 1, o.n_cells = 64, o.k_width = 4, o.v_width = 4, o.n_seq = 1;
  KvCache kv(*cuda, o);
  kv.reserve(0, 8);
  Dev d{*cuda};
  float* x = d.make(size_t(2 * E));
  float* out = d.make(size_t(2 * E));
  for (int step = 0; step < 4; ++step) {
    const int64_t n = 2;
    const std::vector<int32_t> pos = {2 * step, 2 * step + 1}, seq = {0, 0};
    const BatchLayout layout{pos.data(), seq.data(), n};
    const auto xv = test::random_floats(size_t(n * E), 50 + uint32_t(step), 1.0f);
    std::vector<float> want(size_t(n * E));
    cpu->moe_ffn(w, c.p, xv.data(), n, want.data());
    cuda->upload(x, xv.data(), xv.size());
    cuda->begin_step(layout, kv);
    cuda->moe_ffn(w, c.p, x, n, out);
    cuda->end_step();
    EXPECT_LE(test::rel_l2(d.get(out, want.size()), want), 3e-2) << "step " << step;
  }
}

// The int8 expert path computes exactly what it says: on the routes the CPU picks from the same router
// logits, the dequantized experts times the activations after the device's quantization (per 32 values
// d = amax / 127, q = round-to-even(x / d)), h = silu(g) * u quantized the same way, down, weighted sum, all
// in double here. Only f32 rounding remains, plus an h whose f32 value lands on the other side of a rounding
// boundary than the host's (measured 1.7e-4 at Q4_0, 17 tokens, where Σ n x - 8 Σ x also cancels): 5e-4.
// This catches indexing errors (expert, row, pair, tile: O(1)) that the 3 % budget above would hide.
std::vector<double> device_q8(const float* x, int64_t n) {
  std::vector<double> out(size_t(n), 0.0);
  for (int64_t b = 0; b < n / 32; ++b) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
    const float d = amax / 127.0f;
    for (int i = 0; i < 32; ++i) out[b * 32 + i] = d > 0 ? double(d) * std::nearbyint(x[b * 32 + i] / d) : 0.0;
  }
  return out;
}

std::vector<float> dequant_rows(const Weight& w, int64_t first, int64_t n) {
  std::vector<float> out(size_t(n * w.ne[0]));
  const size_t rb = row_bytes(w.type, w.ne[0]);
  for (int64_t r = 0; r < n; ++r) dequantize_row(w.type, w.host + (first + r) * rb, out.data() + r * w.ne[0], w.ne[0]);
  return out;
}

TEST(CudaMoeShapes, Int8ExpertsAreExactOnQuantizedActivations) {
  REQUIRE_GPU();
  struct T3 {
    GgmlType g, u, d;
  };
  for (const T3 t : {T3{GgmlType::Q4_0, GgmlType::Q4_0, GgmlType::Q4_0}, T3{GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0},
                     T3{GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q6_K}, T3{GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_K}}) {
    const MoeCase& c = kRoutings[1];
    const int64_t E = 256, F = 512, NE = c.p.n_expert, K = c.p.n_expert_used;
    auto cuda = gpu();
    TestWeight router(GgmlType::F32, NE, E, 1, 1);
    TestWeight gate(t.g, F, E, 2, NE), up(t.u, F, E, 3, NE), down(t.d, E, F, 4, NE);
    TestWeight bias(GgmlType::F32, 1, NE, 5, 1, 0.3f);
    const MoeWeights w{&router.w, &bias.w, &gate.w, &up.w, &down.w};
    const float* rw = reinterpret_cast<const float*>(router.w.host);
    const float* bv = reinterpret_cast<const float*>(bias.w.host);
    for (int64_t n : {1, 3, 17}) {
      const auto x = test::random_floats(size_t(n * E), 77 + uint32_t(n), 1.5f);
      std::vector<float> want(size_t(n * E), 0.0f);
      for (int64_t tk = 0; tk < n; ++tk) {
        const float* xt = x.data() + tk * E;
        std::vector<float> logits(NE);
        for (int64_t e = 0; e < NE; ++e) {
          double a = 0;
          for (int64_t i = 0; i < E; ++i) a += double(rw[e * E + i]) * xt[i];
          logits[e] = float(a);
        }
        const MoeRoute r = moe_route(logits.data(), bv, c.p);
        const auto xq = device_q8(xt, E);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t e = r.expert[k];
          const auto wg = dequant_rows(gate.w, e * F, F), wu = dequant_rows(up.w, e * F, F),
                     wd = dequant_rows(down.w, e * E, E);
          std::vector<float> h(F);
          for (int64_t f = 0; f < F; ++f) {
            double g = 0, u = 0;
            for (int64_t i = 0; i < E; ++i) g += wg[f * E + i] * xq[i], u += wu[f * E + i] * xq[i];
            h[f] = float(g / (1.0 + std::exp(-g)) * u);
          }
          const auto hq = device_q8(h.data(), F);
          for (int64_t o = 0; o < E; ++o) {
            double y = 0;
            for (int64_t f = 0; f < F; ++f) y += wd[o * F + f] * hq[f];
            want[tk * E + o] += float(y * r.weight[k]);
          }
        }
      }
      Dev d{*cuda};
      float* out = d.make(want.size());
      cuda->moe_ffn(w, c.p, d.put(x), n, out);
      EXPECT_LE(test::rel_l2(d.get(out, want.size()), want), 5e-4)
          << type_name(t.g) << "/" << type_name(t.u) << "/" << type_name(t.d) << ", " << n << " tokens";
    }
  }
}

// ---- MLA ----------------------------------------------------------------------------------------------
struct MlaCase {
  int n_head, lat, rot, nope, v;
  GgmlType tk, tv;
};

// Latents and rope keys of every position of each sequence (pages interleaved), then queries of every
// token (prefill) or of each sequence's last token (decode).
void check_mla(const MlaCase& c, const std::vector<int64_t>& seq_lens, bool decode_only, uint32_t seed) {
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  KvCacheOptions o;
  o.n_layer = 2, o.n_seq = int(seq_lens.size()), o.k_width = c.lat, o.v_width = c.rot;
  for (int64_t l : seq_lens) o.n_cells += (l + 15) / 16 * 16 + 16;
  KvCache kv_cpu(*cpu, o), kv_gpu(*cuda, o);
  for (int64_t step = 0; step < 4096; step += 16)
    for (int s = 0; s < o.n_seq; ++s)
      if (step < seq_lens[s]) {
        kv_cpu.reserve(s, std::min<int64_t>(seq_lens[s], step + 16));
        kv_gpu.reserve(s, std::min<int64_t>(seq_lens[s], step + 16));
      }
  std::vector<int32_t> pos, seq;
  for (int s = 0; s < o.n_seq; ++s)
    for (int64_t p = 0; p < seq_lens[s]; ++p) pos.push_back(int32_t(p)), seq.push_back(s);
  const int64_t n = int64_t(pos.size());
  const BatchLayout all{pos.data(), seq.data(), n};
  const int layer = 1;
  const auto lat = test::random_floats(size_t(n * c.lat), seed, 1.0f), rot = test::random_floats(size_t(n * c.rot), seed + 1, 1.0f);
  Dev d{*cuda};
  cpu->store_kv(kv_cpu, layer, lat.data(), rot.data(), all);
  cuda->store_kv(kv_gpu, layer, d.put(lat), d.put(rot), all);
  std::vector<int32_t> qpos, qseq;
  for (int64_t t = 0; t < n; ++t)
    if (!decode_only || t + 1 == n || seq[t + 1] != seq[t]) qpos.push_back(pos[t]), qseq.push_back(seq[t]);
  const BatchLayout ql{qpos.data(), qseq.data(), int64_t(qpos.size())};
  TestWeight wk(c.tk, c.lat, c.nope, seed + 2, c.n_head, 0.2f), wv(c.tv, c.v, c.lat, seed + 3, c.n_head, 0.2f);
  const MlaShape shape{c.n_head, c.lat, c.rot, c.nope, c.v, 1.0f / std::sqrt(float(c.nope + c.rot))};
  const auto q = test::random_floats(qpos.size() * c.n_head * (c.nope + c.rot), seed + 4, 1.0f);
  std::vector<float> want(qpos.size() * c.n_head * c.v);
  cpu->attention_mla(kv_cpu, layer, q.data(), wk.w, wv.w, ql, shape, want.data());
  float* out = d.make(want.size());
  cuda->attention_mla(kv_gpu, layer, d.put(q), wk.w, wv.w, ql, shape, out);
  const double tol = std::max(budget(c.tk), budget(c.tv));
  EXPECT_LE(test::rel_l2(d.get(out, want.size()), want), tol)
      << c.n_head << " heads, latent " << c.lat << " + rope " << c.rot << ", nope " << c.nope << ", v " << c.v << ", "
      << type_name(c.tk) << "/" << type_name(c.tv) << (decode_only ? ", decode" : ", prefill") << ", "
      << qpos.size() << " queries";
}

TEST(CudaMla, MatchesCpuBackend) {
  REQUIRE_GPU();
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0}) {
    const MlaCase fixture{8, 64, 16, 32, 32, t, t};  // the deepseek_v3 fixture's shape
    check_mla(fixture, {1, 37, 70}, false, 1);
    check_mla(fixture, {1, 37, 70}, true, 2);
    check_mla(MlaCase{5, 96, 32, 64, 48, t, t}, {19, 3}, false, 3);  // a partial head group, odd widths
  }
  // DeepSeek-V3's widths (fewer heads): latent 512 + rope 64, long contexts on the split path.
  const MlaCase v3{16, 512, 64, 128, 128, GgmlType::F32, GgmlType::F32};
  check_mla(v3, {40, 20}, false, 4);
  check_mla(v3, {3000, 1, 700}, true, 5);
  check_mla(MlaCase{16, 512, 64, 128, 128, GgmlType::Q8_0, GgmlType::Q6_K}, {3000, 1, 700}, true, 6);
  check_mla(MlaCase{128, 512, 64, 128, 128, GgmlType::Q8_0, GgmlType::Q8_0}, {600}, true, 7);  // V3's 128 heads
}

// Decode steps recorded as one graph each and replayed while the context grows: attention_mla reads the
// context length from device memory, not from the graph.
TEST(CudaMla, DecodeStepGraphFollowsTheGrowingContext) {
  REQUIRE_GPU();
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  const MlaCase c{8, 64, 16, 32, 32, GgmlType::F32, GgmlType::F32};
  KvCacheOptions o;
  o.n_layer = 1, o.n_seq = 1, o.k_width = c.lat, o.v_width = c.rot, o.n_cells = 2048;
  KvCache kv_cpu(*cpu, o), kv_gpu(*cuda, o);
  const int64_t n0 = 600;
  kv_cpu.reserve(0, n0 + 8);
  kv_gpu.reserve(0, n0 + 8);
  std::vector<int32_t> pos(n0), seq(n0, 0);
  for (int64_t p = 0; p < n0; ++p) pos[p] = int32_t(p);
  const BatchLayout all{pos.data(), seq.data(), n0};
  const auto lat = test::random_floats(size_t(n0 * c.lat), 1), rot = test::random_floats(size_t(n0 * c.rot), 2);
  Dev d{*cuda};
  cpu->store_kv(kv_cpu, 0, lat.data(), rot.data(), all);
  cuda->store_kv(kv_gpu, 0, d.put(lat), d.put(rot), all);
  TestWeight wk(c.tk, c.lat, c.nope, 3, c.n_head, 0.2f), wv(c.tv, c.v, c.lat, 4, c.n_head, 0.2f);
  const MlaShape shape{c.n_head, c.lat, c.rot, c.nope, c.v, 0.1f};
  float* q = d.make(size_t(c.n_head * (c.nope + c.rot)));
  float* k = d.make(size_t(c.lat));
  float* r = d.make(size_t(c.rot));
  float* out = d.make(size_t(c.n_head * c.v));
  for (int step = 0; step < 5; ++step) {
    const std::vector<int32_t> p1 = {int32_t(n0 + step)}, s1 = {0};
    const BatchLayout one{p1.data(), s1.data(), 1};
    const auto qv = test::random_floats(size_t(c.n_head * (c.nope + c.rot)), 10 + step);
    const auto kvv = test::random_floats(size_t(c.lat), 20 + step), rv = test::random_floats(size_t(c.rot), 30 + step);
    std::vector<float> want(size_t(c.n_head * c.v));
    cpu->store_kv(kv_cpu, 0, kvv.data(), rv.data(), one);
    cpu->attention_mla(kv_cpu, 0, qv.data(), wk.w, wv.w, one, shape, want.data());
    cuda->upload(q, qv.data(), qv.size());
    cuda->upload(k, kvv.data(), kvv.size());
    cuda->upload(r, rv.data(), rv.size());
    cuda->begin_step(one, kv_gpu);
    cuda->store_kv(kv_gpu, 0, k, r, one);
    cuda->attention_mla(kv_gpu, 0, q, wk.w, wv.w, one, shape, out);
    cuda->end_step();
    EXPECT_LE(test::rel_l2(d.get(out, want.size()), want), 1e-5) << "step " << step;
  }
}

}  // namespace
}  // namespace uma
