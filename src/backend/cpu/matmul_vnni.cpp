// Decode GEMV for Q4_0/Q8_0 (Q4_K/Q6_K: see below) with AVX512-VNNI vpdpbusd (u8 x s8 -> s32, 4 products per
// lane per instruction).
//
// Why beside the Highway kernels: Highway 1.0 has no u8 x s8 dot-product op, so its portable kernels widen
// both operands to int16 and use vpdpwssd — 32 values per instruction plus the widening. That leaves one core
// compute-bound at ~15 GB/s of Q4_0, under what a core can stream from DRAM. Here two 32-value blocks go
// through one 512-bit vpdpbusd:
//   Q4_0: nibbles are already unsigned (0..15), so u8 weights x s8 activations directly; the "-8" offset is
//         folded in by starting the accumulator at -8 * (sum of each 4 activations), precomputed per token.
//   Q8_0: vpdpbusd needs one unsigned side: |w| as u8, and the activation negated where w < 0.
// Each 32-bit lane then holds a partial sum of one of the two blocks (see Layout); one FMA per pair applies
// d_w * d_a per lane. About 12 instructions per 64 weights instead of ~48. Q4_0 rows of a multiple of 128
// values go four blocks per step instead (row_q4_0_quad). Every kernel prefetches the weight stream 4 KB ahead.
//
// Q4_K and Q6_K (256-value super-blocks with integer sub-block scales) against Q8_K activations, as the generic
// k-quant path: vpmaddubsw (u8 weights x s8 activations -> s16 pair sums) then vpdpwssd (s16 x s16 sub-block
// scales -> s32, accumulated), so each 64 weights cost ~6 instructions and the scales are applied in integers
// before one FMA per super-block. The values unpack in natural order (Q4_K: 32 low nibbles = sub-block 2c,
// 32 high nibbles = sub-block 2c+1; Q6_K: 64 low nibbles of ql = values 128n..128n+63), so the activations
// are Q8_K blocks as quantize_row writes them. Offsets (Q4_K's -min, Q6_K's -32) come from the activations'
// 16-value sums.
#include "backend/cpu/matmul_vnni.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/matmul_kernels.h"
#include "quant/quant.h"
#include "runtime/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define UMA_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))
#endif

namespace uma::cpu {

// The hardware prefetchers stop at 4 KB page boundaries and run only a few lines ahead, so a core that also
// computes waits on DRAM at every new page. Prefetching 4 KB ahead took one Zen 4 core from 6.1 to 6.9 t/s of
// Q4_0 decode, 3.7-4.1 to 4.8-4.9 of Q8_0 and 5.6-6.2 to 7.7-7.9 of Q4_K_M (llama-7b); the stream is
// sequential, so the distance is not critical (4-16 KB alike).
int64_t prefetch_distance() {
  static const int64_t d = [] {
    const char* v = std::getenv("UMA_CPU_PREFETCH");
    return v && *v ? std::atoll(v) : int64_t{4096};
  }();
  return d;
}

#if defined(__x86_64__)
namespace {

// Which 32-bit lanes of a 512-bit pair product belong to the second block of the pair.
//   Natural (Q8_0): the 64 values are block i then block i+1, so lanes 0-7 | 8-15.
//   Interleaved (Q4_0): the nibbles unpack, without any cross-lane shuffle, as [lo(i) lo(i+1) hi(i) hi(i+1)]
//   (16 values each: values 0-15 and 16-31 of each block); the activations are stored in that order once per
//   token, so lanes 0-3 | 4-7 | 8-11 | 12-15 alternate between the blocks.
//   Quad (Q4_0, rows of a multiple of 4 blocks; see row_q4_0_quad): four blocks at once, unpacked as
//   [lo(i) lo(i+1) lo(i+2) lo(i+3)] and [hi(i) .. hi(i+3)]; both products land in the same lanes, 0-3 | 4-7 |
//   8-11 | 12-15 for blocks i .. i+3.
enum class Layout { natural, interleaved, quad };
constexpr __mmask16 second_block_lanes(Layout l) { return l == Layout::natural ? 0xFF00 : 0xF0F0; }

// One token's Q8_0 activations in the layout the row kernels read.
struct Activation {
  std::vector<float> x;          // the f32 activations these were made from (to reuse them for the same x)
  Layout layout = Layout::natural;
  std::vector<int8_t> q;         // [cols] quantized values, in `layout` order within each block pair (quad)
  std::vector<int32_t> neg8sum;  // [cols / 4] -8 * sum of each group of 4, same order (the Q4_0 offset);
                                 // quad: [cols / 8], each lane's lo and hi group together
  std::vector<float> dpat;       // [cols / 64 * 16] per block pair: each lane's d_a; quad: [cols / 128 * 16]
  std::vector<BlockQ8_0> blocks;
};

// quantize_row(Q8_0) with AVX-512, bit for bit: the same float operations (amax, d = amax / 127,
// id = 127 / amax, q = nearbyint(x * id)) in the same order, vcvtps2dq rounding to nearest-even as nearbyint
// does. The scalar loop is most of decode's serial time between two matmuls.
UMA_VNNI_TARGET void quantize_q8_0_fast(const float* x, BlockQ8_0* y, int64_t nb) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, a), _mm512_andnot_ps(sign, b)));
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    y[i].d = fp32_to_fp16(amax / 127.0f);
    const __m512 vid = _mm512_set1_ps(id);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].qs), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a, vid))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].qs + 16),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(b, vid))));
  }
}

// quantize_row(Q8_K), likewise bit for bit: the signed extreme is the first value of largest magnitude,
// iscale = -127 / max, q = min(127, nearbyint(iscale * x)), plus the 16-value sums.
UMA_VNNI_TARGET void quantize_q8_k_fast(const float* x, BlockQ8_K* y, int64_t nb) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    __m512 m = _mm512_setzero_ps();
    for (int j = 0; j < QK_K; j += 16) m = _mm512_max_ps(m, _mm512_andnot_ps(sign, _mm512_loadu_ps(x + j)));
    const float amax = _mm512_reduce_max_ps(m);
    if (amax == 0) {
      y[i] = BlockQ8_K{};
      continue;
    }
    float max = 0;
    for (int j = 0; j < QK_K; j += 16) {
      const __mmask16 hit =
          _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, _mm512_loadu_ps(x + j)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
      if (hit) {
        max = x[j + __builtin_ctz(hit)];
        break;
      }
    }
    const float iscale = -127.0f / max;
    y[i].d = 1.0f / iscale;
    const __m512 vs = _mm512_set1_ps(iscale);
    const __m512i hi = _mm512_set1_epi32(127);
    for (int j = 0; j < QK_K; j += 16) {
      const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(vs, _mm512_loadu_ps(x + j))), hi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].qs + j), _mm512_cvtsepi32_epi8(q));
      y[i].bsums[j / 16] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
  }
}

UMA_VNNI_TARGET void prepare_quad(Activation& a, int64_t cols) {
  const BlockQ8_0* blocks = a.blocks.data();
  a.neg8sum.resize(cols / 8);
  a.dpat.resize(cols / 8);
  const __m512i ones = _mm512_set1_epi8(1);
  const __m512i lane_block = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  for (int64_t i = 0; i < cols / 32; i += 4) {
    int8_t* q = a.q.data() + i * 32;
    for (int k = 0; k < 4; ++k) {
      std::memcpy(q + 16 * k, blocks[i + k].qs, 16);
      std::memcpy(q + 64 + 16 * k, blocks[i + k].qs + 16, 16);
    }
    // Lane j: -8 * (sum of its 4 lo and 4 hi values), via vpdpbusd with ones; d_a of block j / 4.
    __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(q));
    sum = _mm512_dpbusd_epi32(sum, ones, _mm512_loadu_si512(q + 64));
    _mm512_storeu_si512(a.neg8sum.data() + i * 4, _mm512_slli_epi32(_mm512_sub_epi32(_mm512_setzero_si512(), sum), 3));
    const __m128 d4 = _mm_setr_ps(fp16_to_fp32(blocks[i].d), fp16_to_fp32(blocks[i + 1].d),
                                  fp16_to_fp32(blocks[i + 2].d), fp16_to_fp32(blocks[i + 3].d));
    _mm512_storeu_ps(a.dpat.data() + i * 4, _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(d4)));
  }
}

// The pair layouts (natural: Q8_0, interleaved: Q4_0 rows of an odd number of 64-value pairs). neg8sum only
// for Q4_0.
UMA_VNNI_TARGET void prepare_pairs(Activation& a, int64_t cols, Layout layout) {
  const BlockQ8_0* blocks = a.blocks.data();
  const int64_t nb = cols / 32;
  const bool q4 = layout == Layout::interleaved;
  a.neg8sum.resize(q4 ? cols / 4 : 0);
  a.dpat.resize(nb / 2 * 16);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t i = 0; i < nb; i += 2) {
    int8_t* q = a.q.data() + i * 32;
    if (!q4) {
      std::memcpy(q, blocks[i].qs, 32);
      std::memcpy(q + 32, blocks[i + 1].qs, 32);
    } else {
      std::memcpy(q, blocks[i].qs, 16);
      std::memcpy(q + 16, blocks[i + 1].qs, 16);
      std::memcpy(q + 32, blocks[i].qs + 16, 16);
      std::memcpy(q + 48, blocks[i + 1].qs + 16, 16);
      const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(q));
      _mm512_storeu_si512(a.neg8sum.data() + i * 8, _mm512_slli_epi32(_mm512_sub_epi32(_mm512_setzero_si512(), sum), 3));
    }
    _mm512_storeu_ps(a.dpat.data() + i * 8, _mm512_mask_blend_ps(second_block_lanes(layout),
                                                                  _mm512_set1_ps(fp16_to_fp32(blocks[i].d)),
                                                                  _mm512_set1_ps(fp16_to_fp32(blocks[i + 1].d))));
  }
}

void prepare(const float* x, int64_t cols, Layout layout, Activation& a) {
  // q, k and v (gate and up) are products with the same activations: quantize them once.
  if (a.layout == layout && a.x.size() == size_t(cols) && std::memcmp(a.x.data(), x, cols * sizeof(float)) == 0)
    return;
  a.layout = layout;
  a.x.assign(x, x + cols);
  const int64_t nb = cols / 32;
  a.blocks.resize(nb);
  quantize_q8_0_fast(x, a.blocks.data(), nb);
  a.q.resize(cols);
  if (layout == Layout::quad) return prepare_quad(a, cols);
  prepare_pairs(a, cols, layout);
}

UMA_VNNI_TARGET inline __m512i q4_0_pair(const BlockQ4_0& b0, const BlockQ4_0& b1) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i v = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b1.qs)),
                                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0.qs)));
  const __m256i lo = _mm256_and_si256(v, m4);                       // [lo0 | lo1]
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);  // [hi0 | hi1]
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);     // the interleaved layout
}

// The f16 scales of 8 consecutive blocks as f32, and lane patterns that spread block 2p / 2p+1 over the
// lanes of pair p (one permute per pair instead of two scalar conversions, two broadcasts and a blend).
template <class Block>
UMA_VNNI_TARGET inline __m512 scales8(const Block* b) {
  const __m128i h = _mm_setr_epi16(b[0].d, b[1].d, b[2].d, b[3].d, b[4].d, b[5].d, b[6].d, b[7].d);
  return _mm512_castps256_ps512(_mm256_cvtph_ps(h));
}
template <Layout L>
UMA_VNNI_TARGET inline __m512 spread(__m512 d8, int p, const float* dpat) {
  const __m512i idx =
      _mm512_mask_blend_epi32(second_block_lanes(L), _mm512_set1_epi32(2 * p), _mm512_set1_epi32(2 * p + 1));
  return _mm512_mul_ps(_mm512_permutexvar_ps(idx, d8), _mm512_loadu_ps(dpat));
}

// Generic row loop: PairDot(blocks, i, act) gives the int32 lanes of blocks i and i+1 in layout L.
template <Layout L, class Block, class PairDot>
UMA_VNNI_TARGET inline float row_pairs(const Block* b, const Activation& a, int64_t nb, PairDot dot) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  const int64_t pf = prefetch_distance();
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {  // 4 pairs into 4 accumulators: no FMA latency chain
    if (pf)
      for (size_t o = 0; o < 8 * sizeof(Block); o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(b + i) + pf + o, _MM_HINT_T0);
    const __m512 d8 = scales8(b + i);
    for (int p = 0; p < 4; ++p)
      acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot(b, i + 2 * p, a)),
                               spread<L>(d8, p, a.dpat.data() + (i + 2 * p) * 8), acc[p]);
  }
  for (; i < nb; i += 2) {
    const __m512 dw = _mm512_mask_blend_ps(second_block_lanes(L), _mm512_set1_ps(_cvtsh_ss(b[i].d)),
                                           _mm512_set1_ps(_cvtsh_ss(b[i + 1].d)));
    acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot(b, i, a)), _mm512_mul_ps(dw, _mm512_loadu_ps(a.dpat.data() + i * 8)),
                             acc[0]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

UMA_VNNI_TARGET float row_q4_0(const BlockQ4_0* b, const Activation& a, int64_t nb) {
  return row_pairs<Layout::interleaved>(b, a, nb, [](const BlockQ4_0* blk, int64_t i, const Activation& act) UMA_VNNI_TARGET {
    return _mm512_dpbusd_epi32(_mm512_loadu_si512(act.neg8sum.data() + i * 8), q4_0_pair(blk[i], blk[i + 1]),
                               _mm512_loadu_si512(act.q.data() + i * 32));
  });
}

// Four Q4_0 blocks (72 bytes, 128 values) per step. The blocks are 18 bytes, so every field sits at an even
// offset: one vpermt2w gathers the 4 x 16 nibble bytes from two loads (64 + 8 bytes), one vpermw spreads
// the 4 f16 scales over their lanes. ~13 instructions per 128 weights, half of the pair kernel's.
constexpr std::array<int16_t, 32> quad_qs_index() {
  std::array<int16_t, 32> a{};
  for (int m = 0; m < 32; ++m) a[m] = static_cast<int16_t>(9 * (m / 8) + 1 + m % 8);  // block m/8, qs word m%8
  return a;
}
constexpr std::array<int16_t, 32> quad_d_index() {
  std::array<int16_t, 32> a{};
  for (int j = 0; j < 16; ++j) a[j] = static_cast<int16_t>(9 * (j / 4));  // lane j: d of block j/4
  return a;
}
alignas(64) constexpr std::array<int16_t, 32> kQuadQs = quad_qs_index(), kQuadD = quad_d_index();

UMA_VNNI_TARGET float row_q4_0_quad(const BlockQ4_0* b, const Activation& a, int64_t nb) {
  const int64_t pf = prefetch_distance();
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i qs_idx = _mm512_load_si512(kQuadQs.data()), d_idx = _mm512_load_si512(kQuadD.data());
  __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  const auto* p = reinterpret_cast<const uint8_t*>(b);
  for (int64_t i = 0; i < nb; i += 4) {
    const uint8_t* g = p + i * sizeof(BlockQ4_0);
    if (pf) _mm_prefetch(reinterpret_cast<const char*>(g + pf), _MM_HINT_T0);
    // Bytes 64-71 of the group: a plain 16-byte load except for the row's last group, where a masked one
    // keeps the last row from reading past the tensor (a masked load in every step streams ~35 % slower
    // from DRAM on Zen 4).
    const __m512i w0 = _mm512_loadu_si512(g);
    const __m512i w1 = i + 4 < nb ? _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 64)))
                                  : _mm512_maskz_loadu_epi16(0x000F, g + 64);
    const __m512i v = _mm512_permutex2var_epi16(w0, qs_idx, w1);
    const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    const int8_t* q = a.q.data() + i * 32;
    __m512i isum = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.neg8sum.data() + i * 4), lo, _mm512_loadu_si512(q));
    isum = _mm512_dpbusd_epi32(isum, hi, _mm512_loadu_si512(q + 64));
    const __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(d_idx, w0)));
    const __m512 scale = _mm512_mul_ps(dw, _mm512_loadu_ps(a.dpat.data() + i * 4));
    acc[(i >> 2) & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[(i >> 2) & 1]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
}

UMA_VNNI_TARGET inline __m512i q8_0_pair_dot(const BlockQ8_0& b0, const BlockQ8_0& b1, const int8_t* x) {
  const __m512i w = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0.qs))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b1.qs)), 1);
  const __m512i a = _mm512_loadu_si512(x);
  const __m512i a_signed = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(w), _mm512_setzero_si512(), a);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), a_signed);
}

UMA_VNNI_TARGET float row_q8_0(const BlockQ8_0* b, const Activation& a, int64_t nb) {
  return row_pairs<Layout::natural>(b, a, nb, [](const BlockQ8_0* blk, int64_t i, const Activation& act) UMA_VNNI_TARGET {
    return q8_0_pair_dot(blk[i], blk[i + 1], act.q.data() + i * 32);
  });
}

// ---------------------------------------------------------------------------------------------------
// k-quants against Q8_K activations.
struct ActivationK {
  std::vector<float> x;  // as Activation::x
  std::vector<BlockQ8_K> b;
};

void prepare_k(const float* x, int64_t cols, ActivationK& a) {
  if (a.x.size() == size_t(cols) && std::memcmp(a.x.data(), x, cols * sizeof(float)) == 0) return;
  a.x.assign(x, x + cols);
  a.b.resize(cols / QK_K);
  quantize_q8_k_fast(x, a.b.data(), cols / QK_K);
}

// Lane index patterns for spread16: lane i takes value i / (32 / n).
template <int n>
constexpr std::array<int16_t, 32> spread_index() {
  std::array<int16_t, 32> a{};
  for (int i = 0; i < 32; ++i) a[i] = static_cast<int16_t>(i / (32 / n));
  return a;
}
alignas(64) constexpr std::array<int16_t, 32> kSpread2 = spread_index<2>(), kSpread4 = spread_index<4>();

// Spreads the 16-bit lane values v[first], v[first+1], ... (n of them) over the 32 lanes of a 512-bit vector,
// each repeated 32 / n times (n = 2: lanes 0-15 take v[first], 16-31 v[first+1]).
template <int n>
UMA_VNNI_TARGET inline __m512i spread16(__m512i v, int first) {
  const __m512i base = _mm512_load_si512((n == 2 ? kSpread2 : kSpread4).data());
  return _mm512_permutexvar_epi16(_mm512_add_epi16(base, _mm512_set1_epi16(static_cast<int16_t>(first))), v);
}

UMA_VNNI_TARGET inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// The 8 six-bit scales and mins of a Q4_K super-block as bytes (the layout of quant_detail::k4_scale_min:
// sub-blocks 0-3 in the low 6 bits of bytes 0-3 / 4-7, sub-blocks 4-7 split over bytes 8-11 and the top
// two bits of bytes 0-7), four at a time in 32-bit words.
inline void q4_k_scales(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]) {
  uint32_t u[3];
  std::memcpy(u, s, 12);
  const uint32_t lo6 = 0x3f3f3f3f, lo4 = 0x0f0f0f0f, top2 = 0x03030303;
  const uint32_t s_lo = u[0] & lo6, m_lo = u[1] & lo6;
  const uint32_t s_hi = (u[2] & lo4) | (((u[0] >> 6) & top2) << 4);
  const uint32_t m_hi = ((u[2] >> 4) & lo4) | (((u[1] >> 6) & top2) << 4);
  std::memcpy(sc, &s_lo, 4);
  std::memcpy(sc + 4, &s_hi, 4);
  std::memcpy(mn, &m_lo, 4);
  std::memcpy(mn + 4, &m_hi, 4);
}

UMA_VNNI_TARGET float row_q4_k(const BlockQ4_K* b, const BlockQ8_K* a, int64_t nb) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc = _mm512_setzero_ps();
  __m256 acc_min = _mm256_setzero_ps();
  const int64_t pf = prefetch_distance();
  for (int64_t i = 0; i < nb; ++i) {
    if (pf) {
      _mm_prefetch(reinterpret_cast<const char*>(b + i) + pf, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b + i) + pf + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b + i) + pf + 128, _MM_HINT_T0);
    }
    uint8_t sc[8], mn[8];
    q4_k_scales(b[i].scales, sc, mn);
    uint64_t sc64;
    std::memcpy(&sc64, sc, 8);
    const __m512i sc16 = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(_mm_cvtsi64_si128(static_cast<int64_t>(sc64))));
    __m512i isum = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      // [low nibbles | high nibbles] of 32 bytes = sub-blocks 2c and 2c+1 = values 64c .. 64c+63.
      const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 32 * c)));
      const __m512i w = _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xFFFF0000, v, 4), m4);
      const __m512i p = _mm512_maddubs_epi16(w, _mm512_loadu_si512(a[i].qs + 64 * c));
      isum = _mm512_dpwssd_epi32(isum, p, spread16<2>(sc16, 2 * c));
    }
    // -min terms: mn[j] * (bsums[2j] + bsums[2j+1]), one vpmaddwd over the 16 sums with each min twice.
    uint64_t mn64;
    std::memcpy(&mn64, mn, 8);
    const __m128i mn8 = _mm_cvtsi64_si128(static_cast<int64_t>(mn64));
    const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));
    const __m256i msum = _mm256_madd_epi16(mn16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i].bsums)));
    const float d = a[i].d * _cvtsh_ss(b[i].d), dmin = a[i].d * _cvtsh_ss(b[i].dmin);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d), acc);
    acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dmin), acc_min);
  }
  return _mm512_reduce_add_ps(acc) - hsum(acc_min);
}

UMA_VNNI_TARGET float row_q6_k(const BlockQ6_K* b, const BlockQ8_K* a, int64_t nb) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x30);
  // Shift counts of the 2 high bits: values 128n + 32k + l take bits 2k..2k+1 of qh[32n + l].
  const __m512i sh01 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
  const __m512i sh23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
  __m512 acc = _mm512_setzero_ps();
  __m256 acc_off = _mm256_setzero_ps();
  const int64_t pf = prefetch_distance();
  for (int64_t i = 0; i < nb; ++i) {
    if (pf)
      for (int o = 0; o < int(sizeof(BlockQ6_K)); o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(b + i) + pf + o, _MM_HINT_T0);
    const __m256i sc16_256 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].scales)));
    const __m512i sc16 = _mm512_castsi256_si512(sc16_256);
    __m512i isum = _mm512_setzero_si512();
    for (int n = 0; n < 2; ++n) {
      const __m512i ql = _mm512_loadu_si512(b[i].ql + 64 * n);
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qh + 32 * n)));
      // Values 128n + 0..63 (low nibbles) and 128n + 64..127 (high nibbles), 6 bits each (0..63).
      const __m512i w0 = _mm512_or_si512(_mm512_and_si512(ql, m4),
                                         _mm512_and_si512(_mm512_slli_epi16(_mm512_srlv_epi16(qh, sh01), 4), m2));
      const __m512i w1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                         _mm512_and_si512(_mm512_slli_epi16(_mm512_srlv_epi16(qh, sh23), 4), m2));
      const __m512i p0 = _mm512_maddubs_epi16(w0, _mm512_loadu_si512(a[i].qs + 128 * n));
      const __m512i p1 = _mm512_maddubs_epi16(w1, _mm512_loadu_si512(a[i].qs + 128 * n + 64));
      isum = _mm512_dpwssd_epi32(isum, p0, spread16<4>(sc16, 8 * n));
      isum = _mm512_dpwssd_epi32(isum, p1, spread16<4>(sc16, 8 * n + 4));
    }
    // The -32 offset: 32 * sum over groups of scale * (sum of the group's 16 activations).
    const __m256i off = _mm256_madd_epi16(sc16_256, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i].bsums)));
    const float d = a[i].d * _cvtsh_ss(b[i].d);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d), acc);
    acc_off = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(32 * d), acc_off);
  }
  return _mm512_reduce_add_ps(acc) - hsum(acc_off);
}

// UMA_CPU_Q4_0_QUAD=0: the pair kernel for every Q4_0 row (to compare the two).
bool quad_off() {
  static const bool off = [] {
    const char* v = std::getenv("UMA_CPU_Q4_0_QUAD");
    return v && v[0] == '0';
  }();
  return off;
}

}  // namespace

bool vnni_decode_supported(const WeightView& w) {
  static const bool cpu_ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("avx512vnni");
  // Pairs of 32-value blocks: the row must hold an even number of blocks. (No hwy::SupportedTargets()
  // here: Highway 1.0 re-runs CPUID on every call, and CPUID traps to the hypervisor in a VM — at hundreds
  // of matmuls per token that alone cost 8x on a tiny model.)
  // UMA_CPU_VNNI=0 turns this path off (to measure the generic kernels against it).
  static const bool off = [] {
    const char* v = std::getenv("UMA_CPU_VNNI");
    return v && v[0] == '0';
  }();
  if (!cpu_ok || off) return false;
  switch (w.type) {
    case GgmlType::Q4_0: case GgmlType::Q8_0: return w.cols % 64 == 0;
    case GgmlType::Q4_K: case GgmlType::Q6_K: return w.cols % QK_K == 0;
    default: return false;
  }
}

namespace {

// One matrix of a decode call: its rows, the kernel and the activations it reads.
struct DecodeMatrix {
  enum class Kernel { q4_0_quad, q4_0_pair, q8_0, q4_k, q6_k } kernel;
  const uint8_t* data;
  size_t stride;
  int64_t nb, rows;
  float* y;
  const Activation* a = nullptr;
  const BlockQ8_K* ak = nullptr;

  UMA_VNNI_TARGET void row(int64_t r) const {
    const uint8_t* p = data + r * stride;
    switch (kernel) {
      case Kernel::q4_0_quad: y[r] = row_q4_0_quad(reinterpret_cast<const BlockQ4_0*>(p), *a, nb); break;
      case Kernel::q4_0_pair: y[r] = row_q4_0(reinterpret_cast<const BlockQ4_0*>(p), *a, nb); break;
      case Kernel::q8_0: y[r] = row_q8_0(reinterpret_cast<const BlockQ8_0*>(p), *a, nb); break;
      case Kernel::q4_k: y[r] = row_q4_k(reinterpret_cast<const BlockQ4_K*>(p), ak, nb); break;
      case Kernel::q6_k: y[r] = row_q6_k(reinterpret_cast<const BlockQ6_K*>(p), ak, nb); break;
    }
  }
};

}  // namespace

void matmul_vnni_decode_many(const WeightView* w, float* const* y, size_t n, const float* x, ThreadPool& pool) {
  if (n == 0) return;
  // The activations in every layout the matrices need, each quantized once (q/k/v share one, gate/up one).
  thread_local Activation act[3];  // by Layout
  thread_local ActivationK act_k;
  thread_local std::vector<DecodeMatrix> mats;
  mats.clear();
  int64_t total = 0, min_stride = INT64_MAX;
  for (size_t i = 0; i < n; ++i) {
    const WeightView& m = w[i];
    DecodeMatrix d{DecodeMatrix::Kernel::q8_0, m.data, row_bytes(m.type, m.cols), m.cols / 32, m.rows, y[i]};
    if (m.type == GgmlType::Q4_K || m.type == GgmlType::Q6_K) {
      prepare_k(x, m.cols, act_k);
      d.kernel = m.type == GgmlType::Q4_K ? DecodeMatrix::Kernel::q4_k : DecodeMatrix::Kernel::q6_k;
      d.nb = m.cols / QK_K;
      d.ak = act_k.b.data();
    } else {
      const bool quad = m.type == GgmlType::Q4_0 && m.cols % 128 == 0 && !quad_off();
      const Layout layout = m.type == GgmlType::Q8_0 ? Layout::natural : quad ? Layout::quad : Layout::interleaved;
      Activation& a = act[static_cast<int>(layout)];
      prepare(x, m.cols, layout, a);
      d.kernel = m.type == GgmlType::Q8_0 ? DecodeMatrix::Kernel::q8_0
                 : quad                   ? DecodeMatrix::Kernel::q4_0_quad
                                          : DecodeMatrix::Kernel::q4_0_pair;
      d.a = &a;
    }
    mats.push_back(d);
    total += m.rows;
    min_stride = std::min<int64_t>(min_stride, static_cast<int64_t>(d.stride));
  }
  // One parallel region over the rows of all matrices, back to back: one hand-off instead of one per matrix.
  // Units of >= 16 KB of weights: the pool's guided chunks start at many units (long streams) and end at one,
  // so a small unit only shortens the tail. A matrix under 16 KB stays on one thread.
  const int64_t grain = std::max<int64_t>(4, (int64_t(16) << 10) / min_stride);
  const DecodeMatrix* ms = mats.data();
  pool.parallel_for(total, grain, [&](int, int64_t begin, int64_t end) {
    size_t i = 0;
    int64_t base = 0;
    while (begin >= base + ms[i].rows) base += ms[i++].rows;
    for (int64_t r = begin; r < end; ++r) {
      while (r - base == ms[i].rows) base += ms[i++].rows;
      ms[i].row(r - base);
    }
  });
}

void matmul_vnni_decode(const WeightView& w, const float* x, float* y, ThreadPool& pool) {
  matmul_vnni_decode_many(&w, &y, 1, x, pool);
}

void quantize_activations_avx512(GgmlType type, const float* x, void* y, int64_t cols) {
  if (type == GgmlType::Q8_0) quantize_q8_0_fast(x, static_cast<BlockQ8_0*>(y), cols / 32);
  else quantize_q8_k_fast(x, static_cast<BlockQ8_K*>(y), cols / QK_K);
}

#else
bool vnni_decode_supported(const WeightView&) { return false; }
void matmul_vnni_decode(const WeightView&, const float*, float*, ThreadPool&) {}
void matmul_vnni_decode_many(const WeightView*, float* const*, size_t, const float*, ThreadPool&) {}
void quantize_activations_avx512(GgmlType, const float*, void*, int64_t) {}
#endif

}  // namespace uma::cpu
