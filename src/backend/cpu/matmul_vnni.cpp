// Decode GEMV for Q4_0/Q8_0 with AVX512-VNNI's vpdpbusd (u8 x s8 -> s32, 4 products per lane per instruction).
//
// Why beside the Highway kernels: Highway 1.0 has no u8 x s8 dot-product op, so its portable kernels widen
// both operands to int16 and use vpdpwssd — 32 values per instruction plus the widening. That leaves one core
// compute-bound at ~15 GB/s of Q4_0, under what a core can stream from DRAM. Here two 32-value blocks go
// through one 512-bit vpdpbusd:
//   Q4_0: nibbles are already unsigned (0..15), so u8 weights x s8 activations directly; the "-8" offset is
//         folded in by starting the accumulator at -8 * (sum of each 4 activations), precomputed per token.
//   Q8_0: vpdpbusd needs one unsigned side: |w| as u8, and the activation negated where w < 0.
// Each 32-bit lane then holds a partial sum of one of the two blocks (see Layout); one FMA per pair applies
// d_w * d_a per lane. About 12 instructions per 64 weights instead of ~48.
#include "backend/cpu/matmul_vnni.h"

#include <algorithm>
#include <vector>

#include "quant/quant.h"
#include "runtime/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define UMA_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))
#endif

namespace uma::cpu {

#if defined(__x86_64__)
namespace {

// Which 32-bit lanes of a 512-bit pair product belong to the second block of the pair.
//   Natural (Q8_0): the 64 values are block i then block i+1, so lanes 0-7 | 8-15.
//   Interleaved (Q4_0): the nibbles unpack, without any cross-lane shuffle, as [lo(i) lo(i+1) hi(i) hi(i+1)]
//   (16 values each: values 0-15 and 16-31 of each block); the activations are stored in that order once per
//   token, so lanes 0-3 | 4-7 | 8-11 | 12-15 alternate between the blocks.
enum class Layout { natural, interleaved };
constexpr __mmask16 second_block_lanes(Layout l) { return l == Layout::natural ? 0xFF00 : 0xF0F0; }

// One token's Q8_0 activations in the layout the row kernels read.
struct Activation {
  std::vector<int8_t> q;         // [cols] quantized values, in `layout` order within each block pair
  std::vector<int32_t> neg8sum;  // [cols / 4] -8 * sum of each group of 4, same order (the Q4_0 offset)
  std::vector<float> dpat;       // [cols / 64 * 16] per block pair: each lane's d_a
};

void prepare(const float* x, int64_t cols, Layout layout, Activation& a) {
  const int64_t nb = cols / 32;
  std::vector<BlockQ8_0> blocks(nb);
  quantize_row(GgmlType::Q8_0, x, blocks.data(), cols);
  a.q.resize(cols);
  a.neg8sum.resize(cols / 4);
  a.dpat.resize(nb / 2 * 16);
  for (int64_t i = 0; i < nb; i += 2) {
    int8_t* q = a.q.data() + i * 32;
    if (layout == Layout::natural) {
      std::copy(blocks[i].qs, blocks[i].qs + 32, q);
      std::copy(blocks[i + 1].qs, blocks[i + 1].qs + 32, q + 32);
    } else {
      std::copy(blocks[i].qs, blocks[i].qs + 16, q);
      std::copy(blocks[i + 1].qs, blocks[i + 1].qs + 16, q + 16);
      std::copy(blocks[i].qs + 16, blocks[i].qs + 32, q + 32);
      std::copy(blocks[i + 1].qs + 16, blocks[i + 1].qs + 32, q + 48);
    }
    for (int g = 0; g < 16; ++g) {
      a.neg8sum[i * 8 + g] = -8 * (q[4 * g] + q[4 * g + 1] + q[4 * g + 2] + q[4 * g + 3]);
      const bool second = (second_block_lanes(layout) >> g) & 1;
      a.dpat[i * 8 + g] = fp16_to_fp32(blocks[i + second].d);
    }
  }
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
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {  // 4 pairs into 4 accumulators: no FMA latency chain
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

}  // namespace

bool vnni_decode_supported(const WeightView& w) {
  static const bool cpu_ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("avx512vnni");
  // Pairs of 32-value blocks: the row must hold an even number of blocks. (No hwy::SupportedTargets()
  // here: Highway 1.0 re-runs CPUID on every call, and CPUID traps to the hypervisor in a VM — at hundreds
  // of matmuls per token that alone cost 8x on a tiny model.)
  return cpu_ok && (w.type == GgmlType::Q4_0 || w.type == GgmlType::Q8_0) && w.cols % 64 == 0;
}

void matmul_vnni_decode(const WeightView& w, const float* x, float* y, ThreadPool& pool) {
  thread_local Activation act;
  prepare(x, w.cols, w.type == GgmlType::Q4_0 ? Layout::interleaved : Layout::natural, act);
  const int64_t nb = w.cols / 32;
  const size_t stride = row_bytes(w.type, w.cols);
  // At least ~64 KB of weights per chunk, as in the generic path.
  const int64_t grain = std::max<int64_t>(16, (int64_t(64) << 10) / static_cast<int64_t>(stride));
  const Activation& a = act;
  pool.parallel_for(w.rows, grain, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint8_t* row = w.data + r * stride;
      y[r] = w.type == GgmlType::Q4_0 ? row_q4_0(reinterpret_cast<const BlockQ4_0*>(row), a, nb)
                                      : row_q8_0(reinterpret_cast<const BlockQ8_0*>(row), a, nb);
    }
  });
}

#else
bool vnni_decode_supported(const WeightView&) { return false; }
void matmul_vnni_decode(const WeightView&, const float*, float*, ThreadPool&) {}
#endif

}  // namespace uma::cpu
