// Every op of the CUDA backend against the CPU backend (and the scalar matmul reference) on random inputs
// of odd shapes, for every weight type. Skips when uma was built without CUDA or no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "backend/backend.h"
#include "backend/cpu/matmul.h"
#include "kv/kv_cache.h"
#include "quant/quant.h"
#include "cuda_test_support.h"
#include "test_support.h"

namespace uma {
namespace {

using test::gpu;
using test::have_gpu;


using test::random_floats;
using test::TestWeight;
using Dev = test::DeviceBuffers;

double rel(const std::vector<float>& a, const std::vector<float>& b) { return test::rel_l2(a, b); }

const GgmlType kAllTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                              GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K,
                              GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

// Types the CUDA kernels read natively (the quantized ones repacked at upload); the others are dequantized
// to f16 when uploaded.
bool native(GgmlType t) {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 || t == GgmlType::Q4_0 ||
         t == GgmlType::Q8_0 || t == GgmlType::Q4_K || t == GgmlType::Q5_K || t == GgmlType::Q6_K;
}
bool int8_gemv(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q8_0 || t == GgmlType::Q4_K || t == GgmlType::Q5_K ||
         t == GgmlType::Q6_K;
}

class CudaMatmul : public ::testing::TestWithParam<GgmlType> {};

// Against the scalar reference in f32 (relative L2 over the output):
// - GEMV (<= 4 tokens) of F32/F16/BF16: f32 activations, only the summation order differs: 2e-5.
// - GEMV of Q4_0/Q8_0/Q4_K/Q5_K/Q6_K: the activations are quantized to int8 per 32 values (scale amax/127)
//   and multiplied with dp4a, as the CPU backend quantizes them to Q8_0/Q8_K for these types: an output's
//   relative error is about the activations' relative rounding error, ~0.5-1 % for Gaussian activations.
//   Budget: the CPU's for 32-value activation blocks, 2 % (tests/kernels/test_matmul.cpp).
// - the f16 tensor-core GEMM (activations rounded to f16: ~1e-3; f32 weights take an f32 SGEMM): 3e-3.
TEST_P(CudaMatmul, MatchesScalarReference) {
  REQUIRE_GPU();
  const GgmlType type = GetParam();
  auto cuda = gpu();
  const int64_t bs = traits(type).block_size;
  struct Shape {
    int64_t rows, cols;
  };
  std::vector<Shape> shapes = {{1, bs * 3}, {7, bs * 5}, {33, bs * 16}, {257, bs * 2}, {130, 4096}};
  if (bs == 1) shapes.push_back({19, 13});  // a width with no vector tail: the generic kernel
  uint32_t seed = 1;
  for (const Shape& s : shapes) {
    if (s.cols % bs) continue;
    TestWeight tw(type, s.rows, s.cols, seed++);
    cuda->prepare_weight(tw.w);
    const auto bias_v = random_floats(size_t(s.rows), seed++);
    std::vector<uint8_t> bias_bytes(s.rows * 4);
    std::memcpy(bias_bytes.data(), bias_v.data(), bias_bytes.size());
    for (int64_t n_tok : {1, 3, 17}) {
      Dev d{*cuda};
      const auto x = random_floats(size_t(n_tok * s.cols), seed++);
      std::vector<float> want(size_t(n_tok * s.rows));
      matmul_reference(WeightView{type, tw.w.host, s.rows, s.cols}, x.data(), n_tok, want.data());
      float* y = d.make(want.size());
      cuda->matmul(tw.w, d.put(x), n_tok, y);
      const double err = rel(d.get(y, want.size()), want);
      double budget = (n_tok <= 4 || type == GgmlType::F32) ? 2e-5 : 3e-3;
      if (n_tok <= 4 && int8_gemv(type)) budget = 2e-2;
      if (!native(type)) budget = 3e-3;  // f16 rounding of the dequantized weights
      EXPECT_LE(err, budget) << type_name(type) << " " << s.rows << "x" << s.cols << " tokens " << n_tok;
      // With a bias (its bytes live as long as the weight: the backend caches uploads by host address).
      Weight bias;
      bias.name = "bias";
      bias.ne[0] = s.rows;
      bias.host = bias_bytes.data();
      bias.nbytes = bias_bytes.size();
      cuda->matmul(tw.w, d.put(x), n_tok, y, &bias);
      // The bias adds exactly, so the error is measured against the product's size: relative to W x + b, a
      // single output (1 row) whose bias cancels most of W x turned the f16 rounding of Q3_K's converted
      // weights (~1e-3 of W x) into a 2 % "error".
      const std::vector<float> product = want;
      for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t r = 0; r < s.rows; ++r) want[t * s.rows + r] += bias_v[r];
      const auto got = d.get(y, want.size());
      double diff2 = 0, norm2 = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        diff2 += double(got[i] - want[i]) * (got[i] - want[i]);
        norm2 += double(product[i]) * product[i];
      }
      EXPECT_LE(std::sqrt(diff2 / norm2), budget)
          << "with bias: " << type_name(type) << " " << s.rows << "x" << s.cols << " tokens " << n_tok;
    }
  }
}

TEST_P(CudaMatmul, GetRowsDequantizesLikeTheCpu) {
  REQUIRE_GPU();
  const GgmlType type = GetParam();
  auto cuda = gpu();
  const int64_t cols = traits(type).block_size == 1 ? 37 : traits(type).block_size * 3;
  TestWeight tw(type, 50, cols, 99);
  cuda->prepare_weight(tw.w);
  const std::vector<int32_t> ids = {0, 49, 7, 7, 23};
  std::vector<float> want(ids.size() * cols);
  for (size_t i = 0; i < ids.size(); ++i)
    dequantize_row(type, tw.w.host + row_bytes(type, cols) * ids[i], want.data() + i * cols, cols);
  Dev d{*cuda};
  float* out = d.make(want.size());
  cuda->get_rows(tw.w, ids.data(), int64_t(ids.size()), out);
  // Types without a kernel are kept as f16 on the device: f16 rounding of the dequantized values.
  EXPECT_LE(rel(d.get(out, want.size()), want), native(type) ? 1e-7 : 1e-3) << type_name(type);
  const int32_t bad = 50;
  EXPECT_THROW(cuda->get_rows(tw.w, &bad, 1, out), Error);
}

// The int8 GEMV computes exactly what it says: the dequantized weights times the activations after the
// device's quantization (per 32 values d = amax / 127, q = round-to-even(x / d), reproduced here), summed in
// double. Only f32 rounding of the per-block products remains (and Q4_0's Σ n x - 8 Σ x): 1e-4. This catches
// indexing errors the 2 % budget above would hide. Q4_0, Q4_K and Q5_K have two GEMVs (32- and 64-value
// chunks, UMA_CUDA_GEMV_PAIR); both are checked, on rows narrow and wide enough for the wide block shape,
// for one token and for steps of 3, 4 and 7 tokens (a block for all of them: gemv_q8_tokens_kernel; the 7 as a
// step of 7 sequences, as the server decodes them).
TEST_P(CudaMatmul, Int8GemvIsExactOnQuantizedActivations) {
  REQUIRE_GPU();
  const GgmlType type = GetParam();
  if (!int8_gemv(type)) GTEST_SKIP() << "f32 activations";
  for (const char* pair : {"1", "0"}) {
    test::EnvGuard env("UMA_CUDA_GEMV_PAIR", std::string(pair));
    auto cuda = gpu();
    const int64_t bs = traits(type).block_size;
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{5, bs}, {67, bs * 7}, {2200, 4096}, {2200, bs * 43}}) {
      TestWeight tw(type, rows, cols, 11);
      cuda->prepare_weight(tw.w);
      for (int64_t n_tok : {1, 3, 4, 7}) {
        const auto x = random_floats(size_t(n_tok * cols), 12 + uint32_t(n_tok), 2.0f);
        std::vector<float> xq(x.size());
        for (int64_t b = 0; b < n_tok * cols / 32; ++b) {
          float amax = 0;
          for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
          const float d = amax / 127.0f;
          for (int i = 0; i < 32; ++i) xq[b * 32 + i] = d > 0 ? d * std::nearbyint(x[b * 32 + i] / d) : 0.0f;
        }
        std::vector<float> row(cols), want(size_t(n_tok * rows));
        for (int64_t r = 0; r < rows; ++r) {
          dequantize_row(type, tw.w.host + r * row_bytes(type, cols), row.data(), cols);
          for (int64_t t = 0; t < n_tok; ++t) {
            double acc = 0;
            for (int64_t c = 0; c < cols; ++c) acc += double(row[c]) * xq[t * cols + c];
            want[t * rows + r] = float(acc);
          }
        }
        Dev d{*cuda};
        float* y = d.make(want.size());
        float* dx = d.put(x);
        // 5-8 tokens take the GEMV only as a step whose tokens come from distinct sequences (decode_sized).
        std::unique_ptr<KvCache> kv;
        std::vector<int32_t> pos(static_cast<size_t>(n_tok), 0), seq(static_cast<size_t>(n_tok), 0);
        if (n_tok > 4) {
          KvCacheOptions o;
          o.n_layer = 1, o.n_seq = int(n_tok), o.k_width = 32, o.v_width = 32, o.n_cells = 16 * n_tok;
          kv = std::make_unique<KvCache>(*cuda, o);
          for (int32_t sq = 0; sq < int32_t(n_tok); ++sq) seq[size_t(sq)] = sq, kv->reserve(sq, 1);
          cuda->begin_step(BatchLayout{pos.data(), seq.data(), n_tok}, *kv);
        }
        cuda->matmul(tw.w, dx, n_tok, y);
        if (kv) cuda->end_step();
        EXPECT_LE(rel(d.get(y, want.size()), want), 1e-4) << type_name(type) << " " << rows << "x" << cols
                                                           << " tokens " << n_tok << " UMA_CUDA_GEMV_PAIR=" << pair;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaMatmul, ::testing::ValuesIn(kAllTypes),
                         [](const auto& info) { return std::string(type_name(info.param)); });

TEST(CudaOps, RmsNormAddSwigluGather) {
  REQUIRE_GPU();
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  // Rows of up to 4 tokens with dims a multiple of 32 take the decode kernel that also writes int8 blocks;
  // 5 rows or odd dims the general one.
  for (auto [dim, rows] : {std::pair<int64_t, int64_t>{1, 5}, {31, 5}, {64, 5}, {4097, 5}, {32, 1}, {96, 2},
                           {4096, 1}, {4096, 4}, {8192, 2}, {16384, 1}}) {
    auto x = random_floats(size_t(rows * dim), 3, 2.0f);
    auto g = random_floats(size_t(dim), 4);
    std::vector<uint8_t> gb(dim * 4);
    std::memcpy(gb.data(), g.data(), gb.size());
    Weight w;
    w.name = "norm";
    w.ne[0] = dim;
    w.host = gb.data();
    w.nbytes = gb.size();
    std::vector<float> want(x.size());
    cpu->rms_norm(x.data(), w, rows, dim, 1e-5f, want.data());
    Dev d{*cuda};
    float* dx = d.put(x);
    float* out = d.make(x.size());
    cuda->rms_norm(dx, w, rows, dim, 1e-5f, out);
    EXPECT_LE(rel(d.get(out, x.size()), want), 1e-6) << "rms_norm dim " << dim;
    cuda->rms_norm(dx, w, rows, dim, 1e-5f, dx);  // in place
    EXPECT_LE(rel(d.get(dx, x.size()), want), 1e-6) << "rms_norm in place, dim " << dim;
    // x += y, then the norm (the residual add fused into the norm).
    auto y = random_floats(size_t(rows * dim), 8);
    std::vector<float> want_x = x, want_n(x.size());
    cpu->add_rms_norm(want_x.data(), y.data(), w, rows, dim, 1e-5f, want_n.data());
    dx = d.put(x);
    cuda->add_rms_norm(dx, d.put(y), w, rows, dim, 1e-5f, out);
    EXPECT_LE(rel(d.get(dx, x.size()), want_x), 1e-6) << "add_rms_norm sum, dim " << dim;
    EXPECT_LE(rel(d.get(out, x.size()), want_n), 1e-6) << "add_rms_norm, dim " << dim << ", rows " << rows;
  }
  for (int64_t n : {1, 1000, 100003}) {
    auto a = random_floats(size_t(n), 5, 3.0f), b = random_floats(size_t(n), 6);
    Dev d{*cuda};
    float* da = d.put(a);
    float* db = d.put(b);
    std::vector<float> want_add = a;
    std::vector<float> want_sw(static_cast<size_t>(n));
    cpu->add(want_add.data(), b.data(), n);
    cpu->swiglu(a.data(), b.data(), n, want_sw.data());
    float* out = d.make(size_t(n));
    cuda->swiglu(da, db, n, out);
    EXPECT_LE(rel(d.get(out, size_t(n)), want_sw), 1e-6) << "swiglu " << n;
    cuda->swiglu(da, db, n, da);  // in place, as the model calls it
    EXPECT_LE(rel(d.get(da, size_t(n)), want_sw), 1e-6) << "swiglu in place " << n;
    da = d.put(a);
    cuda->add(da, db, n);
    EXPECT_EQ(d.get(da, size_t(n)), want_add) << "add " << n;
  }
  {
    const int64_t dim = 37;
    auto src = random_floats(size_t(10 * dim), 7);
    const std::vector<int32_t> rows = {9, 0, 3, 3};
    std::vector<float> want(rows.size() * dim);
    cpu->gather_rows(src.data(), dim, rows.data(), int64_t(rows.size()), want.data());
    Dev d{*cuda};
    float* out = d.make(want.size());
    cuda->gather_rows(d.put(src), dim, rows.data(), int64_t(rows.size()), out);
    EXPECT_EQ(d.get(out, want.size()), want);
  }
}

// The decode norm in its parallel form (CudaBackend::PendingNorm): the int8 GEMV that reads its output
// applies 1 / RMS and scales the f32 output in place; an F32 GEMV reading it instead settles it first. The
// GEMV outputs must match the single-block norm's (UMA_CUDA_NORM_PARALLEL=0) up to where the scale is
// rounded in, and the norm's outputs the CPU's. 3000 rows take the bulk-copy GEMV on a Hopper GPU, whose
// producer warp computes the scale (mode 2) unless UMA_CUDA_BULK_LATE_SCALE=0 (mode 1).
TEST(CudaOps, ParallelDecodeNormFeedsTheGemv) {
  REQUIRE_GPU();
  auto cpu = make_cpu_backend(2);
  for (auto [dim, rows] : {std::pair<int64_t, int64_t>{4096, 1}, {4096, 3}, {256, 2}, {8192, 1}}) {
    for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F32}) {
      auto x = random_floats(size_t(rows * dim), 3, 2.0f), y = random_floats(size_t(rows * dim), 8);
      auto g = random_floats(size_t(dim), 4);
      Weight w;
      w.name = "norm";
      w.ne[0] = dim;
      w.host = reinterpret_cast<const uint8_t*>(g.data());
      w.nbytes = g.size() * 4;
      const int64_t n_out = 3000;
      TestWeight mat(type, n_out, dim, 5);
      std::vector<float> want_x = x, want_n(x.size());
      cpu->add_rms_norm(want_x.data(), y.data(), w, rows, dim, 1e-5f, want_n.data());
      std::vector<float> outs[3];
      for (int mode : {2, 1, 0}) {  // parallel with the producer's scale, parallel, single-block
        test::EnvGuard env("UMA_CUDA_NORM_PARALLEL", std::to_string(mode > 0));
        test::EnvGuard env_scale("UMA_CUDA_BULK_LATE_SCALE", std::to_string(mode == 2));
        auto cuda = gpu();
        Dev d{*cuda};
        float* dx = d.put(x);
        float* xn = d.make(x.size());
        float* out = d.make(size_t(rows * n_out));
        cuda->add_rms_norm(dx, d.put(y), w, rows, dim, 1e-5f, xn);
        cuda->matmul(mat.w, xn, rows, out);
        outs[mode] = d.get(out, size_t(rows * n_out));
        const std::string what = std::string(type_name(type)) + " dim " + std::to_string(dim) + " rows " +
                                 std::to_string(rows) + " mode " + std::to_string(mode);
        EXPECT_LE(rel(d.get(dx, x.size()), want_x), 1e-6) << what;
        EXPECT_LE(rel(d.get(xn, x.size()), want_n), 1e-6) << what;
      }
      const std::string what = std::string(type_name(type)) + " dim " + std::to_string(dim) + " rows " +
                               std::to_string(rows);
      EXPECT_LE(rel(outs[1], outs[0]), 1e-5) << what;
      EXPECT_EQ(outs[2], outs[1]) << what;  // the same scale, computed by other threads: bit for bit
    }
  }
}

// The weight arena (weight_arena.cpp) maps physical memory into one virtual range as tensors arrive; without
// the driver's virtual memory (UMA_CUDA_VMM=0 forces it) every tensor is a cudaMalloc of its own. Many
// tensors of odd sizes, uploaded one after another across several 2 MiB granules, must read back the same
// either way.
TEST(CudaOps, WeightsReadTheSameWithAndWithoutVirtualMemory) {
  REQUIRE_GPU();
  std::vector<TestWeight> weights;
  for (int i = 0; i < 24; ++i)
    weights.emplace_back(i % 2 ? GgmlType::Q4_0 : GgmlType::Q8_0, 300 + 97 * i, 4096, 50 + uint32_t(i));
  const auto x = random_floats(4096, 7);
  std::vector<float> got[2];
  for (int vmm : {1, 0}) {
    test::EnvGuard env("UMA_CUDA_VMM", std::to_string(vmm));
    auto cuda = gpu();
    Dev d{*cuda};
    float* dx = d.put(x);
    for (auto& w : weights) {
      float* y = d.make(size_t(w.w.rows()));
      cuda->matmul(w.w, dx, 1, y);
      const auto out = d.get(y, size_t(w.w.rows()));
      got[vmm].insert(got[vmm].end(), out.begin(), out.end());
    }
  }
  ASSERT_EQ(got[1].size(), got[0].size());
  EXPECT_EQ(got[1], got[0]);  // the same kernels on the same bytes: bit for bit
}

TEST(CudaOps, RopeEveryVariant) {
  REQUIRE_GPU();
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  const int64_t n_tok = 6;
  const int n_heads = 3, head = 72;
  const std::vector<int32_t> pos = {0, 1, 2, 100, 4095, 17}, seq = {0, 0, 0, 1, 1, 2};
  const BatchLayout layout{pos.data(), seq.data(), n_tok};
  std::vector<RopeParams> variants(5);
  variants[0].n_rot = 72;
  variants[1].n_rot = 64, variants[1].neox = true, variants[1].freq_base = 500000.0f;
  variants[2].n_rot = 72, variants[2].freq_factors.assign(36, 1.0f), variants[2].freq_factors[5] = 8.0f;
  variants[2].freq_bf16 = true;
  variants[3].n_rot = 64, variants[3].neox = true, variants[3].freq_scale = 0.25f, variants[3].ext_factor = 1.0f;
  variants[3].attn_factor = 1.1f, variants[3].n_ctx_orig = 4096;
  variants[4].n_rot = 32;  // partial rotation
  for (size_t i = 0; i < variants.size(); ++i) {
    auto x = random_floats(size_t(n_tok * n_heads * head), 10 + uint32_t(i));
    std::vector<float> want = x;
    cpu->rope(want.data(), n_tok, n_heads, head, layout, variants[i]);
    Dev d{*cuda};
    float* dx = d.put(x);
    cuda->rope(dx, n_tok, n_heads, head, layout, variants[i]);
    EXPECT_LE(rel(d.get(dx, x.size()), want), 2e-6) << "variant " << i;
  }
}

// store_kv + attention over a paged cache with several sequences, GQA, and contexts long enough to take
// the split (flash-decoding) path.
// Prefill attention (more than 4 query tokens) multiplies on TF32 tensor cores unless UMA_CUDA_ATTN_TF32=0
// (exact_f32) or the model has f32 matrices; TF32 keeps 10 mantissa bits of each product's inputs.
// cache: the GPU's cells, f32, f16 (KvCacheOptions::f16) or 8-bit (KvCacheOptions::q8), compared with the
// CPU's f32 cells.
enum class Cells { F32, F16, Q8 };
void check_attention(int n_head, int n_head_kv, int hdk, int hdv, const std::vector<int64_t>& seq_lens,
                     bool decode_only, bool exact_f32 = false, Cells cache = Cells::F32) {
  const bool f16_cache = cache == Cells::F16, q8_cache = cache == Cells::Q8;
  test::EnvGuard env("UMA_CUDA_ATTN_TF32", exact_f32 ? std::optional<std::string>("0") : std::nullopt);
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  KvCacheOptions o;
  o.n_layer = 2;
  o.n_seq = int(seq_lens.size());
  o.k_width = n_head_kv * hdk;
  o.v_width = n_head_kv * hdv;
  for (int64_t l : seq_lens) o.n_cells += (l + 15) / 16 * 16 + 16;
  KvCacheOptions og = o;
  og.f16 = f16_cache, og.q8 = q8_cache;
  KvCache kv_cpu(*cpu, o), kv_gpu(*cuda, og);
  // Interleave the sequences' pages: reserve in steps.
  std::vector<int32_t> pos, seq;
  for (int64_t step = 0; step < 4096; step += 16)
    for (int s = 0; s < o.n_seq; ++s)
      if (step < seq_lens[s]) {
        const int64_t n = std::min<int64_t>(seq_lens[s], step + 16);
        kv_cpu.reserve(s, n);
        kv_gpu.reserve(s, n);
      }
  for (int s = 0; s < o.n_seq; ++s)
    for (int64_t p = 0; p < seq_lens[s]; ++p) pos.push_back(int32_t(p)), seq.push_back(s);
  const int64_t n = int64_t(pos.size());
  const BatchLayout all{pos.data(), seq.data(), n};
  const int layer = 1;
  auto k = random_floats(size_t(n * o.k_width), 21), v = random_floats(size_t(n * o.v_width), 22);
  Dev d{*cuda};
  cpu->store_kv(kv_cpu, layer, k.data(), v.data(), all);
  cuda->store_kv(kv_gpu, layer, d.put(k), d.put(v), all);
  // Queries: every token (prefill) or the last token of each sequence (decode).
  std::vector<int32_t> qpos, qseq;
  for (int64_t t = 0; t < n; ++t)
    if (!decode_only || t + 1 == n || seq[t + 1] != seq[t]) qpos.push_back(pos[t]), qseq.push_back(seq[t]);
  const BatchLayout qlayout{qpos.data(), qseq.data(), int64_t(qpos.size())};
  const AttentionShape shape{n_head, n_head_kv, hdk, hdv, 1.0f / std::sqrt(float(hdk))};
  auto q = random_floats(qpos.size() * n_head * hdk, 23, 2.0f);
  std::vector<float> want(qpos.size() * n_head * hdv);
  cpu->attention(kv_cpu, layer, q.data(), qlayout, shape, want.data());
  float* out = d.make(want.size());
  cuda->attention(kv_gpu, layer, d.put(q), qlayout, shape, out);
  // f16 cells: keys and values rounded to 11 significant bits (~2.4e-4 relative each). 8-bit cells: each value
  // within amax / 254 of its block (~0.6 % rms for normal values), in the scores and in the values.
  const double tol = q8_cache ? 3e-2 : f16_cache ? 2e-3 : decode_only || exact_f32 ? 1e-5 : 3e-3;
  EXPECT_LE(rel(d.get(out, want.size()), want), tol)
      << n_head << "/" << n_head_kv << " heads, dims " << hdk << "/" << hdv << (decode_only ? " decode" : " prefill")
      << (exact_f32 ? ", f32" : "") << (f16_cache ? ", f16 cache" : "") << (q8_cache ? ", 8-bit cache" : "");
}

TEST(CudaOps, AttentionPrefillAndDecode) {
  REQUIRE_GPU();
  for (bool exact : {false, true}) {
    check_attention(4, 4, 64, 64, {1, 37}, false, exact);
    check_attention(8, 2, 128, 128, {70, 5, 33}, false, exact);
    check_attention(6, 3, 40, 24, {19}, false, exact);  // head dims that are not multiples of 32, k != v
  }
  check_attention(32, 8, 128, 128, {3000, 1, 700}, true);
  check_attention(2, 1, 256, 256, {4000}, true);
  // An f16 cache: stores, decode (head dim 128 and others, the split path) and prefill (gathered to f32).
  check_attention(8, 2, 128, 128, {70, 5, 33}, false, false, Cells::F16);
  check_attention(6, 3, 40, 24, {19}, false, true, Cells::F16);
  check_attention(32, 8, 128, 128, {3000, 1, 700}, true, false, Cells::F16);
  check_attention(4, 4, 64, 64, {1, 37}, true, false, Cells::F16);
  // An 8-bit cache: the same paths, and head dims that are not whole blocks (widths are: 4 x 40, 4 x 24).
  check_attention(8, 2, 128, 128, {70, 5, 33}, false, false, Cells::Q8);
  check_attention(8, 4, 40, 24, {19}, false, true, Cells::Q8);
  check_attention(32, 8, 128, 128, {3000, 1, 700}, true, false, Cells::Q8);
  check_attention(4, 4, 64, 64, {1, 37}, true, false, Cells::Q8);
  // Eight sequences of 32 heads at long contexts (256 blocks a split): the splits bounded by one wave of the
  // GPU's blocks rather than by the context, for each kernel.
  for (Cells cells : {Cells::F32, Cells::F16, Cells::Q8})
    check_attention(32, 8, 128, 128, {3000, 2500, 1, 700, 2048, 1500, 900, 4000}, true, false, cells);
}

// 8-bit cells need whole 32-value blocks a row, and a backend that keeps them: otherwise one sentence says so.
TEST(CudaOps, EightBitCacheRefusesWhatItCannotHold) {
  REQUIRE_GPU();
  auto cuda = gpu();
  auto cpu = make_cpu_backend(1);
  KvCacheOptions o;
  o.n_layer = 1, o.n_cells = 64, o.n_seq = 1, o.k_width = 48, o.v_width = 64, o.q8 = true;
  EXPECT_THROW(KvCache(*cuda, o), Error);
  o.k_width = 64;
  // Q8_0's 34 bytes a block of 32, as the planner counts them (row_bytes).
  EXPECT_EQ(KvCache(*cuda, o).bytes(), size_t(64) * (row_bytes(GgmlType::Q8_0, 64) + row_bytes(GgmlType::Q8_0, 64)));
  EXPECT_THROW(KvCache(*cpu, o), Error);
}

// Greedy decoding on the device: the index of each row's maximum, the lowest on ties, as the CPU picks it.
TEST(CudaOps, ArgmaxRowsMatchesTheCpu) {
  REQUIRE_GPU();
  auto cuda = gpu();
  auto cpu = make_cpu_backend(2);
  for (int64_t cols : {1, 31, 1024, 1025, 32000, 151936}) {
    const int64_t rows = 3;
    auto x = random_floats(size_t(rows * cols), 50 + uint32_t(cols));
    x[size_t(cols) - 1] = 100.0f;  // row 0: the maximum twice, at the end and (below) in the middle
    x[size_t(cols / 2)] = 100.0f;
    for (int64_t c = 0; c < cols; ++c) x[size_t(cols + c)] = -INFINITY;  // row 1: all -inf
    Dev d{*cuda};
    std::vector<int32_t> got(rows), want(rows);
    cuda->argmax_rows(d.put(x), rows, cols, got.data());
    cpu->argmax_rows(x.data(), rows, cols, want.data());
    EXPECT_EQ(got, want) << cols << " columns";
    EXPECT_EQ(got[0], int32_t(cols / 2)) << "the lowest index of equal maxima";
  }
}

// Decode attention replayed from one recorded step while the context grows: the step sizes its splits for
// the whole cache, the kernel spreads the actual context over them (one split for short contexts, the last
// split block merging the others for long ones), and the split counters must be back at zero after every
// replay.
TEST(CudaOps, AttentionInRecordedStepsFollowsTheContext) {
  REQUIRE_GPU();
  for (Cells cells : {Cells::F32, Cells::F16, Cells::Q8}) {
    const bool f16 = cells == Cells::F16, q8 = cells == Cells::Q8;
    auto cuda = gpu();
    auto cpu = make_cpu_backend(2);
    const int n_head = 8, n_head_kv = 2, hd = 128;
    KvCacheOptions o;
    o.n_layer = 1;
    o.n_seq = 1;
    o.k_width = n_head_kv * hd;
    o.v_width = n_head_kv * hd;
    o.n_cells = 8192;
    KvCacheOptions og = o;
    og.f16 = f16, og.q8 = q8;
    KvCache kv_cpu(*cpu, o), kv_gpu(*cuda, og);
    const int64_t n_max = 3000;
    kv_cpu.reserve(0, n_max);
    kv_gpu.reserve(0, n_max);
    std::vector<int32_t> pos(n_max), seq(n_max, 0);
    for (int64_t p = 0; p < n_max; ++p) pos[p] = int32_t(p);
    auto k = random_floats(size_t(n_max * o.k_width), 31), v = random_floats(size_t(n_max * o.v_width), 32);
    Dev d{*cuda};
    const BatchLayout all{pos.data(), seq.data(), n_max};
    cpu->store_kv(kv_cpu, 0, k.data(), v.data(), all);
    cuda->store_kv(kv_gpu, 0, d.put(k), d.put(v), all);
    const AttentionShape shape{n_head, n_head_kv, hd, hd, 1.0f / std::sqrt(float(hd))};
    float* q_dev = d.make(size_t(n_head * hd));
    float* out = d.make(size_t(n_head * hd));
    for (int64_t n_ctx : {1, 2, 127, 128, 129, 300, 513, 1000, 2047, 3000, 700}) {
      int32_t p = int32_t(n_ctx - 1), sq = 0;
      const BatchLayout one{&p, &sq, 1};
      auto q = random_floats(size_t(n_head * hd), 40 + uint32_t(n_ctx), 2.0f);
      std::vector<float> want(q.size());
      cpu->attention(kv_cpu, 0, q.data(), one, shape, want.data());
      cuda->upload(q_dev, q.data(), q.size());
      cuda->begin_step(one, kv_gpu);
      cuda->attention(kv_gpu, 0, q_dev, one, shape, out);
      cuda->end_step();
      EXPECT_LE(rel(d.get(out, want.size()), want), q8 ? 3e-2 : f16 ? 2e-3 : 1e-5)
          << "context " << n_ctx << (f16 ? ", f16" : "") << (q8 ? ", 8-bit" : "");
    }
  }
}

// Contexts past 1,024 positions take the long-context kernel (cp.async tiles; 8-bit cells only when asked): the
// same softmax in another order, so it matches the short-context kernel on the same cells to float rounding,
// in a recorded step (which is captured again as the context crosses into it) and outside one, and for
// several sequences (GQA: 4 query heads a key head).
TEST(CudaOps, LongContextAttentionMatchesTheShortContextKernel) {
  REQUIRE_GPU();
  for (Cells cells : {Cells::F16, Cells::Q8}) {
    auto run = [&](bool long_kernel) {
      test::EnvGuard env("UMA_CUDA_ATTN_LONG", std::string(long_kernel ? "all" : "0"));
      auto cuda = gpu();
      const int n_head = 16, n_head_kv = 4, hd = 128, n_seq = 3;
      KvCacheOptions o;
      o.n_layer = 1, o.n_seq = n_seq, o.k_width = n_head_kv * hd, o.v_width = n_head_kv * hd, o.n_cells = 3 * 5200;
      o.f16 = cells == Cells::F16, o.q8 = cells == Cells::Q8;
      KvCache kv(*cuda, o);
      const int64_t n_max = 5000;
      std::vector<int32_t> pos, seq;
      for (int s = 0; s < n_seq; ++s) {
        kv.reserve(s, n_max);
        for (int64_t p = 0; p < n_max; ++p) pos.push_back(int32_t(p)), seq.push_back(s);
      }
      const int64_t n = int64_t(pos.size());
      auto k = random_floats(size_t(n * o.k_width), 61), v = random_floats(size_t(n * o.v_width), 62);
      Dev d{*cuda};
      cuda->store_kv(kv, 0, d.put(k), d.put(v), BatchLayout{pos.data(), seq.data(), n});
      const AttentionShape shape{n_head, n_head_kv, hd, hd, 1.0f / std::sqrt(float(hd))};
      std::vector<float> all;
      for (int64_t n_ctx : {1000, 1025, 1090, 2000, 4999, 1500}) {
        for (int32_t n_tok : {1, 3}) {
          std::vector<int32_t> p(size_t(n_tok), int32_t(n_ctx - 1)), sq(static_cast<size_t>(n_tok));
          for (int32_t t = 0; t < n_tok; ++t) sq[size_t(t)] = t, p[size_t(t)] -= 7 * t;
          const BatchLayout step{p.data(), sq.data(), n_tok};
          auto q = random_floats(size_t(n_tok * n_head * hd), 70 + uint32_t(n_ctx), 2.0f);
          float* q_dev = d.put(q);
          float* out = d.make(q.size());
          for (bool recorded : {false, true}) {
            if (recorded) cuda->begin_step(step, kv);
            cuda->attention(kv, 0, q_dev, step, shape, out);
            if (recorded) cuda->end_step();
            const auto y = d.get(out, q.size());
            all.insert(all.end(), y.begin(), y.end());
          }
        }
      }
      return all;
    };
    const auto want = run(false), got = run(true);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LE(rel(got, want), 1e-5) << (cells == Cells::F16 ? "f16" : "8-bit") << " cells";
    // The long kernel did run: it sums each score in two halves, so some outputs differ in their last bits.
    EXPECT_NE(got, want) << (cells == Cells::F16 ? "f16" : "8-bit") << " cells";
  }
}

}  // namespace
}  // namespace uma
