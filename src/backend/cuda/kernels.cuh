// Device code shared by the CUDA backend: reading GGUF blocks (quant/types.h layouts) and the per-type
// pieces of the decode GEMV. Every reader here has a scalar twin in src/quant (dequantize_row); the tests
// in tests/backends compare the two.
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

// Four bytes from a 2-byte aligned address (Q4_0, Q8_0 and Q6_K blocks are only 2-byte aligned).
__device__ __forceinline__ uint32_t load_u32_a2(const uint8_t* p) {
  const auto* h = reinterpret_cast<const uint16_t*>(p);
  return uint32_t(h[0]) | (uint32_t(h[1]) << 16);
}

// Byte i (0..3) of w as a float, for bytes 0..255, without an int-to-float conversion (a quarter-rate
// instruction on Hopper that bound the quantized GEMVs): 0x4B0000nn is the float 2^23 + nn exactly, so
// subtracting 2^23 + bias yields nn - bias exactly (one byte permute and one add).
template <int kBias>
__device__ __forceinline__ float byte_f(uint32_t w, int i) {
  return __int_as_float(__byte_perm(w, 0x4B000000u, 0x7540u | unsigned(i))) - float(8388608 + kBias);
}

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

// Value `col` of a row of `type` (the slow, general reader: get_rows, prefill dequantization, odd shapes).
__device__ __forceinline__ float dequant_one(GgmlType type, const uint8_t* row, int64_t col) {
  switch (type) {
    case GgmlType::F32: return reinterpret_cast<const float*>(row)[col];
    case GgmlType::F16: return f16(row + 2 * col);
    case GgmlType::BF16: return bf16(reinterpret_cast<const uint16_t*>(row)[col]);
    case GgmlType::Q4_0: {
      const uint8_t* b = row + (col / 32) * sizeof(BlockQ4_0);
      const int j = col % 32;
      const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
      return f16(b) * float(q - 8);
    }
    case GgmlType::Q8_0: {
      const uint8_t* b = row + (col / 32) * sizeof(BlockQ8_0);
      return f16(b) * float(int8_t(b[2 + col % 32]));
    }
    case GgmlType::Q4_K: {
      const uint8_t* b = row + (col / QK_K) * sizeof(BlockQ4_K);
      const int e = col % QK_K, c = e / 64, h = (e % 64) / 32, l = e % 32;
      float sc, mn;
      k4_scale_min(2 * c + h, b + 4, sc, mn);
      const int q = (b[16 + 32 * c + l] >> (4 * h)) & 0xF;
      return f16(b) * sc * float(q) - f16(b + 2) * mn;
    }
    case GgmlType::Q5_K: {
      const uint8_t* b = row + (col / QK_K) * sizeof(BlockQ5_K);
      const int e = col % QK_K, c = e / 64, h = (e % 64) / 32, l = e % 32;
      float sc, mn;
      k4_scale_min(2 * c + h, b + 4, sc, mn);
      const int q = ((b[48 + 32 * c + l] >> (4 * h)) & 0xF) | (((b[16 + l] >> (2 * c + h)) & 1) << 4);
      return f16(b) * sc * float(q) - f16(b + 2) * mn;
    }
    case GgmlType::Q6_K: {
      const uint8_t* b = row + (col / QK_K) * sizeof(BlockQ6_K);
      const int e = col % QK_K, n = e / 128, k = (e % 128) / 32, l = e % 32;
      const int low = (b[64 * n + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0xF;
      const int high = (b[128 + 32 * n + l] >> (2 * k)) & 3;
      return f16(b + 208) * float(int8_t(b[192 + e / 16])) * float((low | (high << 4)) - 32);
    }
    default: return 0.0f;  // other types are converted to F16 when uploaded
  }
}

// --- Decode GEMV pieces -------------------------------------------------------------------------------
// A row is cut into parts; lane i of a warp takes part i (mod 32), so a warp reads consecutive bytes.
// Each type says how many values a part covers (N), how to load the activations it multiplies (load_x,
// done once and reused for every row the warp handles) and how to dot the part with them.
// Sizes: kBlockValues values in kBlockBytes bytes, kParts parts per block.

struct GemvQ4_0 {
  static constexpr int kBlockValues = 32, kBlockBytes = 18, kParts = 2, N = 16;
  // part p: qs[8p..8p+8) → values 8p..8p+7 (low nibbles) and 16+8p.. (high nibbles)
  __device__ static void load_x(const float* xb, int p, float* xv) {
    const float4* a = reinterpret_cast<const float4*>(xb + 8 * p);
    const float4* b = reinterpret_cast<const float4*>(xb + 16 + 8 * p);
    float4 v[4] = {a[0], a[1], b[0], b[1]};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xv[4 * i] = v[i].x, xv[4 * i + 1] = v[i].y, xv[4 * i + 2] = v[i].z, xv[4 * i + 3] = v[i].w;
    }
  }
  __device__ static float dot(const uint8_t* blk, int p, const float* xv) {
    const uint32_t q0 = load_u32_a2(blk + 2 + 8 * p), q1 = load_u32_a2(blk + 6 + 8 * p);
    const uint32_t l0 = q0 & 0x0F0F0F0Fu, l1 = q1 & 0x0F0F0F0Fu, h0 = (q0 >> 4) & 0x0F0F0F0Fu,
                   h1 = (q1 >> 4) & 0x0F0F0F0Fu;
    float lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      lo += byte_f<8>(l0, i) * xv[i] + byte_f<8>(l1, i) * xv[4 + i];
      hi += byte_f<8>(h0, i) * xv[8 + i] + byte_f<8>(h1, i) * xv[12 + i];
    }
    return f16(blk) * (lo + hi);
  }
};

struct GemvQ8_0 {
  static constexpr int kBlockValues = 32, kBlockBytes = 34, kParts = 4, N = 8;
  __device__ static void load_x(const float* xb, int p, float* xv) {
    const float4* a = reinterpret_cast<const float4*>(xb + 8 * p);
    float4 v0 = a[0], v1 = a[1];
    xv[0] = v0.x, xv[1] = v0.y, xv[2] = v0.z, xv[3] = v0.w, xv[4] = v1.x, xv[5] = v1.y, xv[6] = v1.z,
    xv[7] = v1.w;
  }
  __device__ static float dot(const uint8_t* blk, int p, const float* xv) {
    // int8 q as the byte q ^ 0x80 = q + 128 in 0..255
    const uint32_t q0 = load_u32_a2(blk + 2 + 8 * p) ^ 0x80808080u, q1 = load_u32_a2(blk + 6 + 8 * p) ^ 0x80808080u;
    float s = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) s += byte_f<128>(q0, i) * xv[i] + byte_f<128>(q1, i) * xv[4 + i];
    return f16(blk) * s;
  }
};

// Q4_K/Q5_K part p (16 per super-block): c = p/4, l0 = 8(p%4): values 64c+l0.. (group 2c) and 64c+32+l0..
// (group 2c+1); the super-block is 16-byte aligned, so its bytes load as whole words.
template <bool kQ5>
struct GemvQ45_K {
  static constexpr int kBlockValues = 256, kBlockBytes = kQ5 ? 176 : 144, kParts = 16, N = 16;
  __device__ static void load_x(const float* xb, int p, float* xv) {
    const int c = p / 4, l0 = 8 * (p % 4);
    const float4* a = reinterpret_cast<const float4*>(xb + 64 * c + l0);
    const float4* b = reinterpret_cast<const float4*>(xb + 64 * c + 32 + l0);
    float4 v[4] = {a[0], a[1], b[0], b[1]};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xv[4 * i] = v[i].x, xv[4 * i + 1] = v[i].y, xv[4 * i + 2] = v[i].z, xv[4 * i + 3] = v[i].w;
    }
  }
  __device__ static float dot(const uint8_t* blk, int p, const float* xv) {
    const int c = p / 4, l0 = 8 * (p % 4);
    const uint2 q = *reinterpret_cast<const uint2*>(blk + (kQ5 ? 48 : 16) + 32 * c + l0);
    uint2 h = make_uint2(0, 0);
    if constexpr (kQ5) h = *reinterpret_cast<const uint2*>(blk + 16 + l0);
    // Four values a word: low nibbles (group 2c), high nibbles (group 2c+1), Q5's fifth bit or'ed in.
    uint32_t lw[2] = {q.x & 0x0F0F0F0Fu, q.y & 0x0F0F0F0Fu};
    uint32_t hw[2] = {(q.x >> 4) & 0x0F0F0F0Fu, (q.y >> 4) & 0x0F0F0F0Fu};
    if constexpr (kQ5) {
      lw[0] |= ((h.x >> (2 * c)) & 0x01010101u) << 4, lw[1] |= ((h.y >> (2 * c)) & 0x01010101u) << 4;
      hw[0] |= ((h.x >> (2 * c + 1)) & 0x01010101u) << 4, hw[1] |= ((h.y >> (2 * c + 1)) & 0x01010101u) << 4;
    }
    float lo = 0, hi = 0, sx_lo = 0, sx_hi = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      lo += byte_f<0>(lw[i / 4], i % 4) * xv[i];
      hi += byte_f<0>(hw[i / 4], i % 4) * xv[8 + i];
      sx_lo += xv[i];
      sx_hi += xv[8 + i];
    }
    float sc0, m0, sc1, m1;
    k4_scale_min(2 * c, blk + 4, sc0, m0);
    k4_scale_min(2 * c + 1, blk + 4, sc1, m1);
    return f16(blk) * (sc0 * lo + sc1 * hi) - f16(blk + 2) * (m0 * sx_lo + m1 * sx_hi);
  }
};

// Q6_K part p (16 per super-block): n = p/8, l0 = 4(p%8): for k = 0..3 the values 128n+32k+l0..+3.
struct GemvQ6_K {
  static constexpr int kBlockValues = 256, kBlockBytes = 210, kParts = 16, N = 16;
  __device__ static void load_x(const float* xb, int p, float* xv) {
    const int n = p / 8, l0 = 4 * (p % 8);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float4 v = *reinterpret_cast<const float4*>(xb + 128 * n + 32 * k + l0);
      xv[4 * k] = v.x, xv[4 * k + 1] = v.y, xv[4 * k + 2] = v.z, xv[4 * k + 3] = v.w;
    }
  }
  __device__ static float dot(const uint8_t* blk, int p, const float* xv) {
    const int n = p / 8, l0 = 4 * (p % 8);
    const uint32_t qa = load_u32_a2(blk + 64 * n + l0);       // k = 0 (low nibble), 2 (high nibble)
    const uint32_t qb = load_u32_a2(blk + 64 * n + 32 + l0);  // k = 1, 3
    const uint32_t qh = load_u32_a2(blk + 128 + 32 * n + l0);
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192) + 8 * n + l0 / 16;
    float s = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint32_t src = (k & 1) ? qb : qa;
      const uint32_t q = ((src >> (4 * (k >> 1))) & 0x0F0F0F0Fu) | (((qh >> (2 * k)) & 0x03030303u) << 4);
      float part = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) part += byte_f<32>(q, i) * xv[4 * k + i];
      s += float(sc[2 * k]) * part;
    }
    return f16(blk + 208) * s;
  }
};

// Plain types: one part = 16 bytes (8 halves or 4 floats). Needs cols to be a multiple of the part.
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
