// SIMD matmul kernels (Google Highway, runtime dispatch: one binary runs SSE4/AVX2/AVX-512/NEON code).
//
// Work split. Threads take contiguous ranges of output rows. Inside a range the loop is row-outer,
// token-tile-inner: a weight row (2.3 KB for 4096 Q4_0 values) is read from DRAM once and stays in L1 while
// it is multiplied against every tile of kTileTokens tokens; the activations of all tokens (int16, 8 KB
// per 4096-wide token) stay in L2. Decode (one token) is then a pure stream over the weights.
//
// Register tile: 1 row x 4 tokens. Each weight vector is unpacked (nibbles -> int16) once and multiplied
// against 4 tokens, cutting the unpack cost per multiply-add by 4. Live registers per tile: 4 f32
// accumulators + 4 int32 partial sums + 2-4 unpacked weight vectors + activation loads ~ 14, which fits
// AVX2's 16 vector registers without spills; 2 rows x 4 tokens would need ~24 and spill (AVX-512 and
// NEON have 32 registers, but one tile shape keeps the code small and results target-independent).
//
// Activation quantization (quantized weights only). Each activation row is quantized once per call:
// Q8_0 (32 values per f16 scale) for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights, Q8_K (256 values per f32 scale) for
// the k-quants, as llama.cpp does. Rounding to the grid amax/127 adds an rms error of amax/(127*sqrt(12)),
// i.e. ~0.5% of the rms activation for Gaussian blocks and more for blocks holding an outlier channel;
// outputs inherit about the same relative error (it averages over the dot product). That is well below
// the weights' own quantization error (Q4: ~8%, Q6_K: ~2%), and it makes every product an exact integer
// multiply-add. F32/F16/BF16 weights keep f32 activations: no quantization, f32 FMA.
//
// Integer dot products widen both operands to int16 and use ReorderWidenMulAccumulate (pmaddwd on x86,
// smlal on NEON): |w| <= 32 and |a| <= 127, so the pairwise sums never overflow, and the int16 activations
// are prepared once per call rather than widened once per weight block.
// Also compile the AVX3_DL target (Ice Lake / Zen 4 and later), where madd() uses AVX512-VNNI vpdpwssd.
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
// SVE targets are left out: the register tiles below are arrays of vectors, which SVE's sizeless vector
// types cannot form. NEON covers Apple M-series and Graviton; it is tested under qemu (tools/ci_aarch64.sh).
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128)
#endif
#include <hwy/aligned_allocator.h>
#include <hwy/cache_control.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/matmul_kernels.h"
#include "quant/quant.h"
#include "quant/quant_internal.h"
#include "runtime/thread_pool.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/matmul_hwy.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#ifndef UMA_MATMUL_JOB_ONCE
#define UMA_MATMUL_JOB_ONCE
namespace uma::cpu {

constexpr int kTileTokens = 4;

// Activations prepared once per matmul call. For token t (row stride `cols` or the per-block count):
//   q: int16 quantized values, d: per-block scale, s: Q8_0 only, d * sum(q) per block (for the +m terms of
//   Q4_1/Q5_1), bsums: Q8_K only, sum of each 16 quants (for the -min terms of the k-quants).
struct MatmulJob {
  WeightView w;
  const float* x;  // f32 activations (F32/F16/BF16 weights)
  const int16_t* q;
  const float* d;
  const float* s;
  const int16_t* bsums;
  int64_t n_tokens;
  float* y;
};

}  // namespace uma::cpu
#endif

HWY_BEFORE_NAMESPACE();
#if HWY_TARGET == HWY_AVX3_DL
// Highway chooses AVX3_DL only on CPUs with AVX512-VNNI; its target string names only AVX-VNNI.
#pragma GCC target("avx512vnni")
#endif
namespace uma::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using D16 = hn::CappedTag<int16_t, 16>;  // 16 lanes on 256/512-bit targets, 8 on 128-bit ones
using D32 = hn::Repartition<int32_t, D16>;
using DF32 = hn::Repartition<float, D16>;
using DU8 = hn::Rebind<uint8_t, D16>;
using DI8 = hn::Rebind<int8_t, D16>;
using V16 = hn::Vec<D16>;
using V32 = hn::Vec<D32>;
using VF = hn::Vec<DF32>;

HWY_INLINE V16 load_u8(const uint8_t* p) { return hn::PromoteTo(D16(), hn::LoadU(DU8(), p)); }
HWY_INLINE V16 load_i8(const int8_t* p) { return hn::PromoteTo(D16(), hn::LoadU(DI8(), p)); }

// acc += pairwise products of w and the activations at a (int16 x int16 -> int32).
HWY_INLINE V32 madd(V16 w, const int16_t* a, V32 acc) {
#if HWY_TARGET == HWY_AVX3_DL && HWY_COMPILER_GCC
  if constexpr (sizeof(V16) == 32) {  // one fused vpdpwssd instead of vpmaddwd + vpaddd
    return V32{_mm256_dpwssd_epi32(acc.raw, w.raw, hn::LoadU(D16(), a).raw)};
  }
#endif
  const D32 d32;
  V32 odd = hn::Zero(d32);
  acc = hn::ReorderWidenMulAccumulate(d32, w, hn::LoadU(D16(), a), acc, odd);
  return hn::Add(acc, odd);  // NEON splits lanes over the two sums; x86 leaves `odd` zero
}

HWY_INLINE float reduce(VF v) { return hn::GetLane(hn::SumOfLanes(DF32(), v)); }

// ---------------------------------------------------------------------------------------------------
// 32-value block types against Q8_0 activations. Unpack yields the block's values 0..15 (lo) and
// 16..31 (hi) as int16, `h` lanes at a time (h steps by Lanes(D16) through 0..15).
struct UnpackQ4_0 {
  using Block = BlockQ4_0;
  static constexpr bool kHasMin = false;
  HWY_INLINE static void unpack(const Block& b, size_t h, V16& lo, V16& hi) {
    const D16 d;
    const V16 v = load_u8(b.qs + h);
    lo = hn::Sub(hn::And(v, hn::Set(d, 0xF)), hn::Set(d, 8));
    hi = hn::Sub(hn::ShiftRight<4>(v), hn::Set(d, 8));
  }
};
struct UnpackQ4_1 {
  using Block = BlockQ4_1;
  static constexpr bool kHasMin = true;
  HWY_INLINE static void unpack(const Block& b, size_t h, V16& lo, V16& hi) {
    const V16 v = load_u8(b.qs + h);
    lo = hn::And(v, hn::Set(D16(), 0xF));
    hi = hn::ShiftRight<4>(v);
  }
};
// The fifth bit of element j is bit j of qh: test lane bit (1 << j) of the broadcast half-word.
HWY_INLINE V16 q5_high(uint32_t qh, int shift, size_t h) {
  alignas(64) static constexpr uint16_t kBits[16] = {1,     2,     4,     8,      16,     32,     64,     128,
                                                     256,   512,   1024,  2048,   4096,   8192,   16384,  32768};
  const D16 d;
  const V16 bits = hn::BitCast(d, hn::LoadU(hn::RebindToUnsigned<D16>(), kBits + h));
  const V16 word = hn::Set(d, static_cast<int16_t>(static_cast<uint16_t>(qh >> shift)));
  return hn::IfThenElseZero(hn::TestBit(word, bits), hn::Set(d, 16));
}
struct UnpackQ5_0 {
  using Block = BlockQ5_0;
  static constexpr bool kHasMin = false;
  HWY_INLINE static void unpack(const Block& b, size_t h, V16& lo, V16& hi) {
    const D16 d;
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    const V16 v = load_u8(b.qs + h);
    lo = hn::Sub(hn::Or(hn::And(v, hn::Set(d, 0xF)), q5_high(qh, 0, h)), hn::Set(d, 16));
    hi = hn::Sub(hn::Or(hn::ShiftRight<4>(v), q5_high(qh, 16, h)), hn::Set(d, 16));
  }
};
struct UnpackQ5_1 {
  using Block = BlockQ5_1;
  static constexpr bool kHasMin = true;
  HWY_INLINE static void unpack(const Block& b, size_t h, V16& lo, V16& hi) {
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    const V16 v = load_u8(b.qs + h);
    lo = hn::Or(hn::And(v, hn::Set(D16(), 0xF)), q5_high(qh, 0, h));
    hi = hn::Or(hn::ShiftRight<4>(v), q5_high(qh, 16, h));
  }
};
struct UnpackQ8_0 {
  using Block = BlockQ8_0;
  static constexpr bool kHasMin = false;
  HWY_INLINE static void unpack(const Block& b, size_t h, V16& lo, V16& hi) {
    lo = load_i8(b.qs + h);
    hi = load_i8(b.qs + 16 + h);
  }
};

template <class U>
HWY_INLINE float block_d(const typename U::Block& b) { return quant_detail::fp16_to_fp32_fast(b.d); }

// One 32-value block against NT tokens: acc[t] += d_w * d_a[t] * dot(block, token t).
template <class U, int NT>
HWY_INLINE void block_q8_0(const MatmulJob& job, const typename U::Block& b, int64_t i, int64_t t0, VF* acc,
                           float* min_sum) {
  const D32 d32;
  const DF32 df;
  const size_t n16 = hn::Lanes(D16());
  const int64_t cols = job.w.cols, nd = cols / 32;
  V32 isum[NT];
  for (int t = 0; t < NT; ++t) isum[t] = hn::Zero(d32);
  for (size_t h = 0; h < 16; h += n16) {
    V16 lo, hi;
    U::unpack(b, h, lo, hi);
    for (int t = 0; t < NT; ++t) {
      const int16_t* a = job.q + (t0 + t) * cols + i * 32 + h;
      isum[t] = madd(lo, a, isum[t]);
      isum[t] = madd(hi, a + 16, isum[t]);
    }
  }
  const float dw = block_d<U>(b);
  for (int t = 0; t < NT; ++t) {
    const float da = job.d[(t0 + t) * nd + i];
    acc[t] = hn::MulAdd(hn::ConvertTo(df, isum[t]), hn::Set(df, dw * da), acc[t]);
    if constexpr (U::kHasMin) min_sum[t] += quant_detail::fp16_to_fp32_fast(b.m) * job.s[(t0 + t) * nd + i];
  }
}

// One weight row against NT tokens (NT <= kTileTokens) starting at token t0. For decode, blocks alternate between
// two accumulator sets so that consecutive blocks' FMAs do not wait on each other (4-cycle FMA latency would
// otherwise bound decode, where NT = 1, at one block per 4 cycles).
template <class U, int NT>
HWY_NOINLINE void row_q8_0(const MatmulJob& job, const uint8_t* row, int64_t r, int64_t t0) {
  const DF32 df;
  const int64_t nb = job.w.cols / 32;
  const auto* blocks = reinterpret_cast<const typename U::Block*>(row);
  VF acc0[NT], acc1[NT];
  float min_sum[NT] = {};
  for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = hn::Zero(df);
  int64_t i = 0;
  if constexpr (NT == 1) {  // with NT >= 2 the tokens already give independent chains
    for (; i + 2 <= nb; i += 2) {
      block_q8_0<U, NT>(job, blocks[i], i, t0, acc0, min_sum);
      block_q8_0<U, NT>(job, blocks[i + 1], i + 1, t0, acc1, min_sum);
    }
  }
  for (; i < nb; ++i) block_q8_0<U, NT>(job, blocks[i], i, t0, acc0, min_sum);
  for (int t = 0; t < NT; ++t) job.y[(t0 + t) * job.w.rows + r] = reduce(hn::Add(acc0[t], acc1[t])) + min_sum[t];
}

// ---------------------------------------------------------------------------------------------------
// k-quants against Q8_K activations. Per super-block: int32 sums of (sub-scale * dot of a 16- or 32-value
// group), one f32 FMA by d_w * d_a at the end; the -min terms come from the activations' 16-value sums.
template <int NT>
struct KTile {
  V32 isum[NT];
  const int16_t* a[NT];  // this super-block's activations of each token
};

// Adds scale * dot(w, a[offset..]) for every token. The scale multiplies the int16 weights once (shared by
// all tokens of the tile): |q * scale| <= 32 * 128 = 4096 (Q6_K) fits int16, and the products with
// |a| <= 127 summed over a super-block stay far inside int32.
template <int NT>
HWY_INLINE void k_group(KTile<NT>& k, V16 w, int64_t offset, int32_t scale) {
  const V16 ws = hn::Mul(w, hn::Set(D16(), static_cast<int16_t>(scale)));
  for (int t = 0; t < NT; ++t) k.isum[t] = madd(ws, k.a[t] + offset, k.isum[t]);
}

template <int NT>
struct KRow {
  VF acc[NT];
  float min_sum[NT];
};

// Q4_K / Q5_K: 32-value sub-blocks with 6-bit scales and mins.
template <int NT, bool kFive>
HWY_INLINE void super_q45k(const uint8_t* scales_packed, f16_bits d_bits, f16_bits dmin_bits, const uint8_t* qs,
                           const uint8_t* qh, KTile<NT>& k, const int16_t* const* bsums, const float* da,
                           KRow<NT>& out) {
  const D16 d16;
  const size_t n16 = hn::Lanes(d16);
  uint8_t sc[8], mn[8];
  for (int j = 0; j < 8; ++j) quant_detail::k4_scale_min(j, scales_packed, sc[j], mn[j]);
  for (int c = 0; c < 4; ++c) {
    for (size_t l = 0; l < 32; l += n16) {
      const V16 v = load_u8(qs + 32 * c + l);
      V16 lo = hn::And(v, hn::Set(d16, 0xF)), hi = hn::ShiftRight<4>(v);
      if constexpr (kFive) {
        const V16 hb = load_u8(qh + l);
        lo = hn::Or(lo, hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(hb, 2 * c), hn::Set(d16, 1))));
        hi = hn::Or(hi, hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(hb, 2 * c + 1), hn::Set(d16, 1))));
      }
      k_group<NT>(k, lo, 64 * c + l, sc[2 * c]);
      k_group<NT>(k, hi, 64 * c + 32 + l, sc[2 * c + 1]);
    }
  }
  const float d = quant_detail::fp16_to_fp32_fast(d_bits), dmin = quant_detail::fp16_to_fp32_fast(dmin_bits);
  const DF32 df;
  for (int t = 0; t < NT; ++t) {
    int32_t m = 0;
    for (int j = 0; j < 8; ++j) m += mn[j] * (bsums[t][2 * j] + bsums[t][2 * j + 1]);
    out.acc[t] = hn::MulAdd(hn::ConvertTo(df, k.isum[t]), hn::Set(df, d * da[t]), out.acc[t]);
    out.min_sum[t] -= dmin * da[t] * static_cast<float>(m);
  }
}

template <int NT, class Block>
HWY_INLINE void super_block(const Block& b, KTile<NT>& k, const int16_t* const* bsums, const float* da,
                            KRow<NT>& out);

template <int NT>
HWY_INLINE void super_block(const BlockQ4_K& b, KTile<NT>& k, const int16_t* const* bsums, const float* da,
                            KRow<NT>& out) {
  super_q45k<NT, false>(b.scales, b.d, b.dmin, b.qs, nullptr, k, bsums, da, out);
}
template <int NT>
HWY_INLINE void super_block(const BlockQ5_K& b, KTile<NT>& k, const int16_t* const* bsums, const float* da,
                            KRow<NT>& out) {
  super_q45k<NT, true>(b.scales, b.d, b.dmin, b.qs, b.qh, k, bsums, da, out);
}

// Q2_K: 16-value groups, 4-bit scale and min; 2-bit values at qs[32n + l] >> 2s for element 128n + 32s + l.
template <int NT>
HWY_INLINE void super_block(const BlockQ2_K& b, KTile<NT>& k, const int16_t* const* bsums, const float* da,
                            KRow<NT>& out) {
  const D16 d16;
  const size_t n16 = hn::Lanes(d16);
  for (int n = 0; n < 2; ++n)
    for (size_t l = 0; l < 32; l += n16) {
      const V16 v = load_u8(b.qs + 32 * n + l);
      for (int s = 0; s < 4; ++s) {
        const V16 q = hn::And(hn::ShiftRightSame(v, 2 * s), hn::Set(d16, 3));
        const int g = 8 * n + 2 * s + static_cast<int>(l / 16);
        k_group<NT>(k, q, 128 * n + 32 * s + l, b.scales[g] & 0xF);
      }
    }
  const float d = quant_detail::fp16_to_fp32_fast(b.d), dmin = quant_detail::fp16_to_fp32_fast(b.dmin);
  const DF32 df;
  for (int t = 0; t < NT; ++t) {
    int32_t m = 0;
    for (int g = 0; g < 16; ++g) m += (b.scales[g] >> 4) * bsums[t][g];
    out.acc[t] = hn::MulAdd(hn::ConvertTo(df, k.isum[t]), hn::Set(df, d * da[t]), out.acc[t]);
    out.min_sum[t] -= dmin * da[t] * static_cast<float>(m);
  }
}

// Q3_K: as Q2_K's low bits, plus hmask[l] bit (4n + s) (clear = -4); 6-bit signed group scales.
template <int NT>
HWY_INLINE void super_block(const BlockQ3_K& b, KTile<NT>& k, const int16_t* const*, const float* da,
                            KRow<NT>& out) {
  const D16 d16;
  const size_t n16 = hn::Lanes(d16);
  int sc[16];
  for (int g = 0; g < 16; ++g) sc[g] = quant_detail::q3k_scale(g, b.scales);
  for (size_t l = 0; l < 32; l += n16) {
    const V16 hm = load_u8(b.hmask + l);
    for (int n = 0; n < 2; ++n) {
      const V16 v = load_u8(b.qs + 32 * n + l);
      for (int s = 0; s < 4; ++s) {
        const V16 low = hn::And(hn::ShiftRightSame(v, 2 * s), hn::Set(d16, 3));
        const V16 high = hn::ShiftLeft<2>(hn::And(hn::ShiftRightSame(hm, 4 * n + s), hn::Set(d16, 1)));
        const V16 q = hn::Sub(hn::Add(low, high), hn::Set(d16, 4));
        const int g = 8 * n + 2 * s + static_cast<int>(l / 16);
        k_group<NT>(k, q, 128 * n + 32 * s + l, sc[g]);
      }
    }
  }
  const float d = quant_detail::fp16_to_fp32_fast(b.d);
  const DF32 df;
  for (int t = 0; t < NT; ++t)
    out.acc[t] = hn::MulAdd(hn::ConvertTo(df, k.isum[t]), hn::Set(df, d * da[t]), out.acc[t]);
}

// Q6_K: element 128n + 32k + l = low nibble (k>>1) of ql[64n + l + 32(k&1)] | 2 bits of qh[32n + l] >> 2k,
// minus 32, times the int8 scale of its 16-group.
template <int NT>
HWY_INLINE void super_block(const BlockQ6_K& b, KTile<NT>& k, const int16_t* const*, const float* da,
                            KRow<NT>& out) {
  const D16 d16;
  const size_t n16 = hn::Lanes(d16);
  const V16 k32 = hn::Set(d16, 32), k15 = hn::Set(d16, 0xF), k3 = hn::Set(d16, 3);
  for (int n = 0; n < 2; ++n)
    for (size_t l = 0; l < 32; l += n16) {
      const V16 qa = load_u8(b.ql + 64 * n + l), qb = load_u8(b.ql + 64 * n + 32 + l);
      const V16 qh = load_u8(b.qh + 32 * n + l);
      const V16 q0 = hn::Sub(hn::Or(hn::And(qa, k15), hn::ShiftLeft<4>(hn::And(qh, k3))), k32);
      const V16 q1 = hn::Sub(hn::Or(hn::And(qb, k15), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(qh), k3))), k32);
      const V16 q2 = hn::Sub(hn::Or(hn::ShiftRight<4>(qa), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(qh), k3))), k32);
      const V16 q3 = hn::Sub(hn::Or(hn::ShiftRight<4>(qb), hn::ShiftLeft<4>(hn::ShiftRight<6>(qh))), k32);
      const int g = 8 * n + static_cast<int>(l / 16);
      const int64_t e = 128 * n + static_cast<int64_t>(l);
      k_group<NT>(k, q0, e, b.scales[g]);
      k_group<NT>(k, q1, e + 32, b.scales[g + 2]);
      k_group<NT>(k, q2, e + 64, b.scales[g + 4]);
      k_group<NT>(k, q3, e + 96, b.scales[g + 6]);
    }
  const float d = quant_detail::fp16_to_fp32_fast(b.d);
  const DF32 df;
  for (int t = 0; t < NT; ++t)
    out.acc[t] = hn::MulAdd(hn::ConvertTo(df, k.isum[t]), hn::Set(df, d * da[t]), out.acc[t]);
}

template <class Block, int NT>
HWY_NOINLINE void row_q8_k(const MatmulJob& job, const uint8_t* row, int64_t r, int64_t t0) {
  const D32 d32;
  const DF32 df;
  const int64_t cols = job.w.cols, nb = cols / QK_K;
  const auto* blocks = reinterpret_cast<const Block*>(row);
  KRow<NT> out;
  for (int t = 0; t < NT; ++t) {
    out.acc[t] = hn::Zero(df);
    out.min_sum[t] = 0;
  }
  for (int64_t i = 0; i < nb; ++i) {
    KTile<NT> k;
    const int16_t* bsums[NT];
    float da[NT];
    for (int t = 0; t < NT; ++t) {
      k.isum[t] = hn::Zero(d32);
      k.a[t] = job.q + (t0 + t) * cols + i * QK_K;
      bsums[t] = job.bsums + (t0 + t) * (cols / 16) + i * 16;
      da[t] = job.d[(t0 + t) * nb + i];
    }
    super_block<NT>(blocks[i], k, bsums, da, out);
  }
  for (int t = 0; t < NT; ++t) job.y[(t0 + t) * job.w.rows + r] = reduce(out.acc[t]) + out.min_sum[t];
}

// ---------------------------------------------------------------------------------------------------
// Float weights against f32 activations: full-width f32 FMA. Two accumulators per token (8 for decode
// through the unroll below) hide the 4-cycle FMA latency; the many partial sums also keep the rounding
// error ~sqrt(cols / lanes) ulp rather than ~sqrt(cols).
using DF = hn::ScalableTag<float>;

template <GgmlType T>
HWY_INLINE hn::Vec<DF> load_weights(const uint8_t* row, int64_t k) {
  const DF df;
  if constexpr (T == GgmlType::F32) {
    return hn::LoadU(df, reinterpret_cast<const float*>(row) + k);
  } else if constexpr (T == GgmlType::F16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + k));
  } else {
    const hn::RebindToUnsigned<DF> du32;
    const hn::Rebind<uint16_t, DF> du16;
    const auto bits = hn::PromoteTo(du32, hn::LoadU(du16, reinterpret_cast<const uint16_t*>(row) + k));
    return hn::BitCast(df, hn::ShiftLeft<16>(bits));
  }
}

template <GgmlType T>
HWY_INLINE float scalar_weight(const uint8_t* row, int64_t k) {
  if constexpr (T == GgmlType::F32) return reinterpret_cast<const float*>(row)[k];
  else if constexpr (T == GgmlType::F16) return quant_detail::fp16_to_fp32_fast(reinterpret_cast<const f16_bits*>(row)[k]);
  else return bf16_to_fp32(reinterpret_cast<const bf16_bits*>(row)[k]);
}

template <GgmlType T, int NT>
HWY_NOINLINE void row_float(const MatmulJob& job, const uint8_t* row, int64_t r, int64_t t0) {
  const DF df;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df)), cols = job.w.cols;
  constexpr int kU = NT == 1 ? 4 : 2;  // independent accumulators per token
  hn::Vec<DF> acc[NT][kU];
  for (int t = 0; t < NT; ++t)
    for (int u = 0; u < kU; ++u) acc[t][u] = hn::Zero(df);
  const float* x[NT];
  for (int t = 0; t < NT; ++t) x[t] = job.x + (t0 + t) * cols;
  int64_t k = 0;
  constexpr int64_t kWeightBytes = T == GgmlType::F32 ? 4 : 2;
  const int64_t pf = NT == 1 ? prefetch_distance() : 0;
  for (; k + kU * n <= cols; k += kU * n) {
    // Decode streams the row from DRAM: prefetch ahead (see prefetch_distance).
    if (pf)
      for (int64_t o = 0; o < kU * n * kWeightBytes; o += 64) hwy::Prefetch(row + k * kWeightBytes + pf + o);
    for (int u = 0; u < kU; ++u) {
      const auto w = load_weights<T>(row, k + u * n);
      for (int t = 0; t < NT; ++t) acc[t][u] = hn::MulAdd(w, hn::LoadU(df, x[t] + k + u * n), acc[t][u]);
    }
  }
  for (; k + n <= cols; k += n) {
    const auto w = load_weights<T>(row, k);
    for (int t = 0; t < NT; ++t) acc[t][0] = hn::MulAdd(w, hn::LoadU(df, x[t] + k), acc[t][0]);
  }
  for (int t = 0; t < NT; ++t) {
    for (int u = 1; u < kU; ++u) acc[t][0] = hn::Add(acc[t][0], acc[t][u]);
    float sum = hn::GetLane(hn::SumOfLanes(df, acc[t][0]));
    for (int64_t j = k; j < cols; ++j) sum += scalar_weight<T>(row, j) * x[t][j];
    job.y[(t0 + t) * job.w.rows + r] = sum;
  }
}

// ---------------------------------------------------------------------------------------------------
template <template <int> class RowFn>
HWY_INLINE void rows_loop(const MatmulJob& job, int64_t begin, int64_t end) {
  const size_t stride = row_bytes(job.w.type, job.w.cols);
  for (int64_t r = begin; r < end; ++r) {
    const uint8_t* row = job.w.data + r * stride;
    int64_t t = 0;
    for (; t + kTileTokens <= job.n_tokens; t += kTileTokens) RowFn<kTileTokens>::run(job, row, r, t);
    switch (job.n_tokens - t) {
      case 3: RowFn<3>::run(job, row, r, t); break;
      case 2: RowFn<2>::run(job, row, r, t); break;
      case 1: RowFn<1>::run(job, row, r, t); break;
      default: break;
    }
  }
}

template <class U> struct Q80Rows { template <int NT> struct F { static void run(const MatmulJob& j, const uint8_t* w, int64_t r, int64_t t) { row_q8_0<U, NT>(j, w, r, t); } }; };
template <class B> struct Q8KRows { template <int NT> struct F { static void run(const MatmulJob& j, const uint8_t* w, int64_t r, int64_t t) { row_q8_k<B, NT>(j, w, r, t); } }; };
template <GgmlType T> struct FloatRows { template <int NT> struct F { static void run(const MatmulJob& j, const uint8_t* w, int64_t r, int64_t t) { row_float<T, NT>(j, w, r, t); } }; };

void MatmulRows(const MatmulJob& job, int64_t begin, int64_t end) {
  switch (job.w.type) {
    case GgmlType::F32: return rows_loop<FloatRows<GgmlType::F32>::F>(job, begin, end);
    case GgmlType::F16: return rows_loop<FloatRows<GgmlType::F16>::F>(job, begin, end);
    case GgmlType::BF16: return rows_loop<FloatRows<GgmlType::BF16>::F>(job, begin, end);
    case GgmlType::Q4_0: return rows_loop<Q80Rows<UnpackQ4_0>::F>(job, begin, end);
    case GgmlType::Q4_1: return rows_loop<Q80Rows<UnpackQ4_1>::F>(job, begin, end);
    case GgmlType::Q5_0: return rows_loop<Q80Rows<UnpackQ5_0>::F>(job, begin, end);
    case GgmlType::Q5_1: return rows_loop<Q80Rows<UnpackQ5_1>::F>(job, begin, end);
    case GgmlType::Q8_0: return rows_loop<Q80Rows<UnpackQ8_0>::F>(job, begin, end);
    case GgmlType::Q2_K: return rows_loop<Q8KRows<BlockQ2_K>::F>(job, begin, end);
    case GgmlType::Q3_K: return rows_loop<Q8KRows<BlockQ3_K>::F>(job, begin, end);
    case GgmlType::Q4_K: return rows_loop<Q8KRows<BlockQ4_K>::F>(job, begin, end);
    case GgmlType::Q5_K: return rows_loop<Q8KRows<BlockQ5_K>::F>(job, begin, end);
    case GgmlType::Q6_K: return rows_loop<Q8KRows<BlockQ6_K>::F>(job, begin, end);
    default: return;  // rejected by matmul()
  }
}

}  // namespace uma::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace uma::cpu {

HWY_EXPORT(MatmulRows);

std::vector<int64_t> kernel_targets() { return hwy::SupportedAndGeneratedTargets(); }

GgmlType activation_type(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0:
      return GgmlType::Q8_0;
    case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K:
      return GgmlType::Q8_K;
    default: return GgmlType::F32;
  }
}

namespace {

// Per-call scratch, reused across calls from the same thread (decode issues hundreds of matmuls per token).
struct Scratch {
  hwy::AlignedFreeUniquePtr<int16_t[]> q;
  size_t q_cap = 0;
  std::vector<float> d, s;
  std::vector<int16_t> bsums;
};

}  // namespace

void matmul_dispatch(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  MatmulJob job{w, x, nullptr, nullptr, nullptr, nullptr, n_tokens, y};
  const GgmlType at = activation_type(w.type);
  thread_local Scratch scratch;
  if (at != GgmlType::F32) {
    const int64_t cols = w.cols, n = n_tokens * cols, qk = at == GgmlType::Q8_0 ? 32 : QK_K;
    if (scratch.q_cap < static_cast<size_t>(n)) {
      scratch.q = hwy::AllocateAligned<int16_t>(static_cast<size_t>(n));
      scratch.q_cap = static_cast<size_t>(n);
    }
    scratch.d.resize(n / qk);
    scratch.s.resize(n / qk);
    scratch.bsums.resize(n / 16);
    int16_t* q = scratch.q.get();
    float* d = scratch.d.data();
    float* s = scratch.s.data();
    int16_t* bsums = scratch.bsums.data();
    // Quantize each token's row once (tokens in parallel for prefill), then widen to int16.
    pool.parallel_for(n_tokens, 1, [&](int, int64_t t_begin, int64_t t_end) {
      std::vector<uint8_t> buf(row_bytes(at, cols));
      for (int64_t t = t_begin; t < t_end; ++t) {
        quantize_row(at, x + t * cols, buf.data(), cols);
        if (at == GgmlType::Q8_0) {
          const auto* b = reinterpret_cast<const BlockQ8_0*>(buf.data());
          for (int64_t i = 0; i < cols / 32; ++i) {
            const float db = fp16_to_fp32(b[i].d);
            int sum = 0;
            for (int j = 0; j < 32; ++j) {
              q[t * cols + i * 32 + j] = b[i].qs[j];
              sum += b[i].qs[j];
            }
            d[t * (cols / 32) + i] = db;
            s[t * (cols / 32) + i] = db * static_cast<float>(sum);
          }
        } else {
          const auto* b = reinterpret_cast<const BlockQ8_K*>(buf.data());
          for (int64_t i = 0; i < cols / QK_K; ++i) {
            for (int j = 0; j < QK_K; ++j) q[t * cols + i * QK_K + j] = b[i].qs[j];
            for (int g = 0; g < 16; ++g) bsums[t * (cols / 16) + i * 16 + g] = b[i].bsums[g];
            d[t * (cols / QK_K) + i] = b[i].d;
          }
        }
      }
    });
    job.q = q;
    job.d = d;
    job.s = s;
    job.bsums = bsums;
  }
  // Grain: enough rows per chunk that a thread's share is a long sequential weight stream, and at least
  // ~64 KB of weights x tokens per chunk: below that, waking another thread costs more than the work
  // (a tiny model's 64x64 matrices run on one thread instead of paying a synchronisation per matmul).
  const int64_t work_per_row = static_cast<int64_t>(row_bytes(w.type, w.cols)) * std::max<int64_t>(1, n_tokens);
  const int64_t grain = std::max<int64_t>(16, (int64_t(64) << 10) / std::max<int64_t>(1, work_per_row));
  pool.parallel_for(w.rows, grain, [&](int, int64_t begin, int64_t end) {
    HWY_DYNAMIC_DISPATCH(MatmulRows)(job, begin, end);
  });
}

}  // namespace uma::cpu
#endif  // HWY_ONCE
