// Device code shared by the CUDA backend: the device layout of weights (GGUF rows, or the repacked
// quantized types), reading their values, and the per-type pieces of the decode GEMV. Every reader here has
// a scalar twin in src/quant (dequantize_row); the tests in tests/backends compare the two.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "quant/types.h"

namespace uma::cuda {

__device__ __forceinline__ float f16(const uint8_t* p) {
  return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}
__device__ __forceinline__ float bf16(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }

// The 6-bit scale and min of 32-value group j (0..7) of a Q4_K/Q5_K super-block (12 packed bytes).
__device__ __forceinline__ void k4_scale_min(int j, const uint8_t* s, float& sc, float& mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// The same from the super-block's 16 bytes held in registers (meta.y, .z, .w = the 12 scale bytes).
__device__ __forceinline__ void k4_scale_min_reg(int j, const uint4& meta, float& sc, float& mn) {
  const int sh = 8 * (j & 3);
  const uint32_t b1 = (meta.y >> sh) & 0xFF, b2 = (meta.z >> sh) & 0xFF, b3 = (meta.w >> sh) & 0xFF;
  if (j < 4) {
    sc = float(b1 & 63);
    mn = float(b2 & 63);
  } else {
    sc = float((b3 & 0xF) | ((b1 >> 6) << 4));
    mn = float((b3 >> 4) | ((b2 >> 6) << 4));
  }
}

// ---- Weights on the device ---------------------------------------------------------------------------
// F32/F16/BF16 (and the types converted to F16 at upload) keep their rows as they are: `q`, `q_row` bytes a
// row. Q4_0, Q8_0, Q4_K, Q5_K and Q6_K are repacked at upload into up to three row-major regions, so that
// the GEMV reads quants with aligned 16-byte loads (a GGUF Q4_0/Q8_0/Q6_K block is only 2-byte aligned):
//   q: the quant bytes of every block of the row, back to back (16, 32, 128, 160, 192 bytes a block: a row
//      of quants starts 16-byte aligned and holds no scales);
//   m: the 16 bytes of per-group scales of a k-quant super-block (Q4_K/Q5_K: d, dmin, 12 packed 6-bit
//      scales/mins; Q6_K: 16 int8 scales);
//   d: the f16 block scale where it is not in m (Q4_0, Q8_0, Q6_K).
// Inside each piece the bytes keep their GGUF order, so the block formulas of src/quant still apply.
struct WView {
  GgmlType type;
  const uint8_t *q, *m, *d;
  int64_t q_row, m_row, d_row;  // bytes a row in each region
};

// Where the pieces of a repacked type lie in its GGUF block (offset, length); q_len == 0: not repacked.
struct SoaSplit {
  int q_off, q_len, m_off, m_len, d_off, d_len;
};
__host__ __device__ constexpr SoaSplit soa_split(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: return {2, 16, 0, 0, 0, 2};
    case GgmlType::Q8_0: return {2, 32, 0, 0, 0, 2};
    case GgmlType::Q4_K: return {16, 128, 0, 16, 0, 0};
    case GgmlType::Q5_K: return {16, 160, 0, 16, 0, 0};  // qh (32) then qs (128)
    case GgmlType::Q6_K: return {0, 192, 192, 16, 208, 2};  // ql (128) then qh (64)
    default: return {0, 0, 0, 0, 0, 0};
  }
}

// Value (r, c) of a weight (the slow, general reader: get_rows and the prefill dequantization).
__device__ __forceinline__ float weight_value(const WView& w, int64_t r, int64_t c) {
  switch (w.type) {
    case GgmlType::F32: return reinterpret_cast<const float*>(w.q + r * w.q_row)[c];
    case GgmlType::F16: return f16(w.q + r * w.q_row + 2 * c);
    case GgmlType::BF16: return bf16(reinterpret_cast<const uint16_t*>(w.q + r * w.q_row)[c]);
    case GgmlType::Q4_0: {
      const uint8_t* q = w.q + r * w.q_row + 16 * (c / 32);
      const int j = c % 32;
      const int n = j < 16 ? (q[j] & 0xF) : (q[j - 16] >> 4);
      return f16(w.d + r * w.d_row + 2 * (c / 32)) * float(n - 8);
    }
    case GgmlType::Q8_0:
      return f16(w.d + r * w.d_row + 2 * (c / 32)) * float(int8_t(w.q[r * w.q_row + c]));
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool q5 = w.type == GgmlType::Q5_K;
      const int64_t sb = c / QK_K;
      const int e = c % QK_K, cc = e / 64, h = (e % 64) / 32, l = e % 32;
      const uint8_t* q = w.q + r * w.q_row + sb * (q5 ? 160 : 128);
      const uint8_t* meta = w.m + r * w.m_row + 16 * sb;
      float sc, mn;
      k4_scale_min(2 * cc + h, meta + 4, sc, mn);
      int n = (q[(q5 ? 32 : 0) + 32 * cc + l] >> (4 * h)) & 0xF;
      if (q5) n |= ((q[l] >> (2 * cc + h)) & 1) << 4;
      return f16(meta) * sc * float(n) - f16(meta + 2) * mn;
    }
    case GgmlType::Q6_K: {
      const int64_t sb = c / QK_K;
      const int e = c % QK_K, n = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t* q = w.q + r * w.q_row + 192 * sb;
      const int low = (q[64 * n + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0xF;
      const int high = (q[128 + 32 * n + l] >> (2 * k)) & 3;
      const float sc = float(int8_t(w.m[r * w.m_row + 16 * sb + e / 16]));
      return f16(w.d + r * w.d_row + 2 * sb) * sc * float((low | (high << 4)) - 32);
    }
    default: return 0.0f;  // other types are converted to F16 when uploaded
  }
}

// ---- Quantized GEMV on int8 activations ---------------------------------------------------------------
// The activation vector is quantized once per matmul (quantize_q8_kernel): per 32 values an int8 quant and a
// float4 {d, d·Σq over the first 16, d·Σq over the last 16, 0}. A GEMV thread takes one 16- or 32-byte
// chunk of quants of a row (aligned 16-byte loads), the matching 16-byte pieces of int8 activations (loaded
// once and reused for every row the thread handles) and multiplies them with __dp4a (4 int8 products a
// instruction); the scales are applied once per 16 or 32 values. Weight offsets (Q4_0's -8, Q4_K's mins)
// go through the stored activation sums; Q6_K's -32 is taken from each byte before the dot.
// A type says: chunks a row has, how to load the activations of chunk i (X), and dot(chunk of a row, X).

__device__ __forceinline__ int dot4(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, const int4& x, int acc) {
  acc = __dp4a(int(a0), x.x, acc);
  acc = __dp4a(int(a1), x.y, acc);
  acc = __dp4a(int(a2), x.z, acc);
  return __dp4a(int(a3), x.w, acc);
}
constexpr uint32_t kLow4 = 0x0F0F0F0Fu;

// Σ n·x over a Q4_0 block's 16 quant bytes (value j: low nibble of byte j, value 16 + j: its high nibble)
// against the block's int8 activations (lo: values 0-15, hi: 16-31).
__device__ __forceinline__ int q4_block_dot(const uint4& w, const int4& lo, const int4& hi) {
  const int s = dot4(w.x & kLow4, w.y & kLow4, w.z & kLow4, w.w & kLow4, lo, 0);
  return dot4((w.x >> 4) & kLow4, (w.y >> 4) & kLow4, (w.z >> 4) & kLow4, (w.w >> 4) & kLow4, hi, s);
}

// Q5_K's fifth bits: for the groups 2c (low nibbles) and 2c + 1 (high nibbles), bits 2c and 2c + 1 of the qh
// words that cover the same values.
template <int kWords>
__device__ __forceinline__ void q5_add_high_bits(uint32_t (&lo)[kWords], uint32_t (&hi)[kWords],
                                                 const uint32_t (&qh)[kWords], int c) {
#pragma unroll
  for (int k = 0; k < kWords; ++k) {
    lo[k] |= ((qh[k] >> (2 * c)) & 0x01010101u) << 4;
    hi[k] |= ((qh[k] >> (2 * c + 1)) & 0x01010101u) << 4;
  }
}

// A Q4_K/Q5_K group pair 2c, 2c + 1 of a super-block from its integer dots s0, s1 and the activations' block
// scales d0, d1 and sums m0, m1: d·(sc0·d0·s0 + sc1·d1·s1) − dmin·(mn0·m0 + mn1·m1). `meta` is the
// super-block's 16 bytes of d, dmin and 6-bit scales/mins, loaded once (k4_scale_min_reg picks them out).
__device__ __forceinline__ float k4_pair_sum(const uint4& meta, int c, int s0, int s1, float d0, float d1, float m0,
                                             float m1) {
  float sc0, mn0, sc1, mn1;
  k4_scale_min_reg(2 * c, meta, sc0, mn0);
  k4_scale_min_reg(2 * c + 1, meta, sc1, mn1);
  const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&meta.x));
  return dm.x * (sc0 * d0 * float(s0) + sc1 * d1 * float(s1)) - dm.y * (mn0 * m0 + mn1 * m1);
}

// Q4_0: a chunk is a block (16 quant bytes: value j low nibble of byte j, value 16 + j high nibble).
struct MvQ4_0 {
  static constexpr int kChunkValues = 32;
  struct X {
    int4 lo, hi;
    float d, s;
  };
  __device__ static void load_x(const int8_t* xq, const float4* xs, int i, X& x) {
    const int4* p = reinterpret_cast<const int4*>(xq) + 2 * i;
    x.lo = p[0], x.hi = p[1];
    const float4 s = xs[i];
    x.d = s.x, x.s = s.y + s.z;
  }
  __device__ static float dot(const uint8_t* q, const uint8_t*, const uint8_t* d, int i, const X& x) {
    const int s = q4_block_dot(reinterpret_cast<const uint4*>(q)[i], x.lo, x.hi);
    return f16(d + 2 * i) * (x.d * float(s) - 8.0f * x.s);  // Σ (n - 8) x = Σ n x - 8 Σ x
  }
};

// Q8_0: a chunk is a block (32 int8 quants, two 16-byte loads).
struct MvQ8_0 {
  static constexpr int kChunkValues = 32;
  struct X {
    int4 a, b;
    float d;
  };
  __device__ static void load_x(const int8_t* xq, const float4* xs, int i, X& x) {
    const int4* p = reinterpret_cast<const int4*>(xq) + 2 * i;
    x.a = p[0], x.b = p[1];
    x.d = xs[i].x;
  }
  __device__ static float dot(const uint8_t* q, const uint8_t*, const uint8_t* d, int i, const X& x) {
    const uint4 w0 = reinterpret_cast<const uint4*>(q)[2 * i], w1 = reinterpret_cast<const uint4*>(q)[2 * i + 1];
    int s = dot4(w0.x, w0.y, w0.z, w0.w, x.a, 0);
    s = dot4(w1.x, w1.y, w1.z, w1.w, x.b, s);
    return f16(d + 2 * i) * x.d * float(s);
  }
};

// Q4_K/Q5_K: 8 chunks a super-block; chunk ci = 2c + h holds 16 quant bytes 32c + 16h.. whose low nibbles
// are values 64c + 16h.. (group 2c) and high nibbles values 64c + 32 + 16h.. (group 2c + 1); Q5_K's fifth
// bits come from qh bytes 16h.. (bit 2c and 2c + 1).
template <bool kQ5>
struct MvQ45_K {
  static constexpr int kChunkValues = 32;
  struct X {
    int4 a, b;
    float d0, d1, s0, s1;
  };
  __device__ static void load_x(const int8_t* xq, const float4* xs, int i, X& x) {
    const int sb = i / 8, ci = i % 8, c = ci / 2, h = ci % 2, g0 = 8 * sb + 2 * c;
    x.a = *reinterpret_cast<const int4*>(xq + 32 * g0 + 16 * h);
    x.b = *reinterpret_cast<const int4*>(xq + 32 * (g0 + 1) + 16 * h);
    const float4 s0 = xs[g0], s1 = xs[g0 + 1];
    x.d0 = s0.x, x.d1 = s1.x;
    x.s0 = h ? s0.z : s0.y, x.s1 = h ? s1.z : s1.y;
  }
  __device__ static float dot(const uint8_t* q, const uint8_t* m, const uint8_t*, int i, const X& x) {
    const int sb = i / 8, ci = i % 8, c = ci / 2, h = ci % 2;
    const uint8_t* blk = q + sb * (kQ5 ? 160 : 128);
    const uint4 w = *reinterpret_cast<const uint4*>(blk + (kQ5 ? 32 : 0) + 16 * ci);
    uint32_t lo[4] = {w.x & kLow4, w.y & kLow4, w.z & kLow4, w.w & kLow4};
    uint32_t hi[4] = {(w.x >> 4) & kLow4, (w.y >> 4) & kLow4, (w.z >> 4) & kLow4, (w.w >> 4) & kLow4};
    if constexpr (kQ5) {
      const uint4 qh = *reinterpret_cast<const uint4*>(blk + 16 * h);
      q5_add_high_bits(lo, hi, {qh.x, qh.y, qh.z, qh.w}, c);
    }
    const int s0 = dot4(lo[0], lo[1], lo[2], lo[3], x.a, 0), s1 = dot4(hi[0], hi[1], hi[2], hi[3], x.b, 0);
    return k4_pair_sum(*reinterpret_cast<const uint4*>(m + 16 * sb), c, s0, s1, x.d0, x.d1, x.s0, x.s1);
  }
};

// The same types with chunks of 64 values (two Q4_0 blocks; a Q4_K/Q5_K pair of groups 2c, 2c + 1): a
// thread loads 32 quant bytes a row at once and decodes a k-quant's scales once for both groups, which
// halves the instructions a weight byte costs (the 32-value chunks left the GEMV issue-bound: ~0.6 warp
// instructions issued per scheduler cycle at 53-73 % of DRAM bandwidth, Nsight Compute). Needs cols % 64 == 0.
// The int8 activations of a 64-value chunk i (activation blocks 2i and 2i + 1): v[0..1] the first block's
// 16-value halves, v[2..3] the second's, with each block's scale and d·Σq.
struct X64 {
  int4 v[4];
  float d0, d1, s0, s1;
};
__device__ __forceinline__ void load_x64(const int8_t* xq, const float4* xs, int i, X64& x) {
  const int4* p = reinterpret_cast<const int4*>(xq) + 4 * i;
  x.v[0] = p[0], x.v[1] = p[1], x.v[2] = p[2], x.v[3] = p[3];
  const float4 a = xs[2 * i], b = xs[2 * i + 1];
  x.d0 = a.x, x.s0 = a.y + a.z, x.d1 = b.x, x.s1 = b.y + b.z;
}

struct MvQ4_0x2 {
  static constexpr int kChunkValues = 64;
  using X = X64;
  __device__ static void load_x(const int8_t* xq, const float4* xs, int i, X& x) { load_x64(xq, xs, i, x); }
  __device__ static float dot(const uint8_t* q, const uint8_t*, const uint8_t* d, int i, const X& x) {
    const int s0 = q4_block_dot(reinterpret_cast<const uint4*>(q)[2 * i], x.v[0], x.v[1]);
    const int s1 = q4_block_dot(reinterpret_cast<const uint4*>(q)[2 * i + 1], x.v[2], x.v[3]);
    // Both block scales in one 4-byte load: a row's scales start 4-byte aligned when cols % 64 == 0.
    const float2 dd = __half22float2(reinterpret_cast<const __half2*>(d)[i]);
    return dd.x * (x.d0 * float(s0) - 8.0f * x.s0) + dd.y * (x.d1 * float(s1) - 8.0f * x.s1);
  }
};

// Q4_K/Q5_K, chunk i = groups 2c and 2c + 1 of super-block sb (c = i % 4): quant bytes 32c.. (low nibbles:
// group 2c, high nibbles: group 2c + 1), activations 64 bytes from group 2c; Q5_K's fifth bits are bits 2c
// and 2c + 1 of all 32 qh bytes.
template <bool kQ5>
struct MvQ45_Kx2 {
  static constexpr int kChunkValues = 64;
  using X = X64;  // groups 2i, 2i + 1 counted over the row
  __device__ static void load_x(const int8_t* xq, const float4* xs, int i, X& x) { load_x64(xq, xs, i, x); }
  __device__ static float dot(const uint8_t* q, const uint8_t* m, const uint8_t*, int i, const X& x) {
    const int sb = i / 4, c = i % 4;
    const uint8_t* blk = q + sb * (kQ5 ? 160 : 128);
    const uint4 w0 = *reinterpret_cast<const uint4*>(blk + (kQ5 ? 32 : 0) + 32 * c);
    const uint4 w1 = *reinterpret_cast<const uint4*>(blk + (kQ5 ? 32 : 0) + 32 * c + 16);
    const uint32_t wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
    uint32_t lo[8], hi[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) lo[k] = wv[k] & kLow4, hi[k] = (wv[k] >> 4) & kLow4;
    if constexpr (kQ5) {
      const uint4 h0 = *reinterpret_cast<const uint4*>(blk), h1 = *reinterpret_cast<const uint4*>(blk + 16);
      q5_add_high_bits(lo, hi, {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w}, c);
    }
    int s0 = dot4(lo[0], lo[1], lo[2], lo[3], x.v[0], 0);
    s0 = dot4(lo[4], lo[5], lo[6], lo[7], x.v[1], s0);
    int s1 = dot4(hi[0], hi[1], hi[2], hi[3], x.v[2], 0);
    s1 = dot4(hi[4], hi[5], hi[6], hi[7], x.v[3], s1);
    return k4_pair_sum(*reinterpret_cast<const uint4*>(m + 16 * sb), c, s0, s1, x.d0, x.d1, x.s0, x.s1);
  }
};

// Q6_K: 8 chunks a super-block; chunk ci = 4n + 2j + h holds ql bytes 64n + 32j + 16h.. (low nibbles: values
// 128n + 32j + 16h.., k = j; high nibbles: k = j + 2) and their two high bits from qh bytes 32n + 16h..
// (bits 2k). Each 16 values share one int8 scale.
struct MvQ6_K {
  static constexpr int kChunkValues = 32;
  struct X {
    int4 a, b;
    float d0, d1;
  };
  __device__ static void load_x(const int8_t* xq, const float4* xs, int i, X& x) {
    const int sb = i / 8, ci = i % 8, n = ci / 4, j = (ci / 2) % 2, h = ci % 2, g0 = 8 * sb + 4 * n + j;
    x.a = *reinterpret_cast<const int4*>(xq + 32 * g0 + 16 * h);
    x.b = *reinterpret_cast<const int4*>(xq + 32 * (g0 + 2) + 16 * h);
    x.d0 = xs[g0].x, x.d1 = xs[g0 + 2].x;
  }
  // Six-bit quants q (0..63) per byte → q - 32 as int8: q + 0x60 stays below 256 (no carry between bytes),
  // and flipping bit 7 subtracts 128 modulo 256.
  __device__ static uint32_t centered(uint32_t q) { return (q + 0x60606060u) ^ 0x80808080u; }
  __device__ static float dot(const uint8_t* q, const uint8_t* m, const uint8_t* d, int i, const X& x) {
    const int sb = i / 8, ci = i % 8, n = ci / 4, j = (ci / 2) % 2, h = ci % 2;
    const uint8_t* blk = q + 192 * sb;
    const uint4 ql = *reinterpret_cast<const uint4*>(blk + 16 * ci);
    const uint4 qh = *reinterpret_cast<const uint4*>(blk + 128 + 32 * n + 16 * h);
    const uint32_t l[4] = {ql.x, ql.y, ql.z, ql.w}, hb[4] = {qh.x, qh.y, qh.z, qh.w};
    uint32_t a[4], b[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      a[k] = centered((l[k] & kLow4) | (((hb[k] >> (2 * j)) & 0x03030303u) << 4));
      b[k] = centered(((l[k] >> 4) & kLow4) | (((hb[k] >> (2 * j + 4)) & 0x03030303u) << 4));
    }
    const int s0 = dot4(a[0], a[1], a[2], a[3], x.a, 0), s1 = dot4(b[0], b[1], b[2], b[3], x.b, 0);
    const int8_t* sc = reinterpret_cast<const int8_t*>(m + 16 * sb) + 8 * n + 2 * j + h;
    return f16(d + 2 * sb) * (float(sc[0]) * x.d0 * float(s0) + float(sc[4]) * x.d1 * float(s1));
  }
};

// ---- GEMV on f32 activations (plain types) -------------------------------------------------------------
// A row is cut into parts of 16 bytes (8 halves or 4 floats); thread i takes part i (mod the block), loads
// the activations of the part once (f32, 16-byte loads) and dots them with the part of every row it owns.
// Needs cols to be a multiple of the part.
template <GgmlType kType>
struct GemvPlain {
  static constexpr int N = kType == GgmlType::F32 ? 4 : 8;
  static constexpr int kBlockValues = N, kBlockBytes = 16, kParts = 1;
  __device__ static void load_x(const float* xb, int, float* xv) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const float4 v = reinterpret_cast<const float4*>(xb)[i];
      xv[4 * i] = v.x, xv[4 * i + 1] = v.y, xv[4 * i + 2] = v.z, xv[4 * i + 3] = v.w;
    }
  }
  __device__ static float dot(const uint8_t* blk, int, const float* xv) {
    const uint4 w = *reinterpret_cast<const uint4*>(blk);
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
    float s = 0;
    if constexpr (kType == GgmlType::F32) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s += __uint_as_float(words[i]) * xv[i];
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float a, b;
        if constexpr (kType == GgmlType::F16) {
          const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
          a = f.x, b = f.y;
        } else {
          a = bf16(words[i] & 0xFFFF), b = bf16(words[i] >> 16);
        }
        s += a * xv[2 * i] + b * xv[2 * i + 1];
      }
    }
    return s;
  }
};

}  // namespace uma::cuda
