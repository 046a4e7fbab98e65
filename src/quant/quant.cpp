// fp16/bf16 conversion, the type dispatch of dequantize_row()/quantize_row(), and the 32-value block types
// (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0). The k-quants live in quant_k.cpp.
#include "quant/quant.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "quant/quant_internal.h"
#include "uma/error.h"

namespace uma {

float fp16_to_fp32(f16_bits h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in f32.
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return std::bit_cast<float>(std::bit_cast<uint32_t>(v) | sign);
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

f16_bits fp32_to_fp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000, abs = x & 0x7FFFFFFF;
  if (abs > 0x7F800000) return static_cast<f16_bits>(sign | 0x7E00 | (abs >> 13));  // NaN stays NaN
  if (abs >= 0x477FF000) return static_cast<f16_bits>(sign | 0x7C00);  // >= 65520 rounds to inf
  if (abs < 0x38800000) {
    // Below the smallest normal half (2^-14): the result is round(|f| * 2^24) units of 2^-24; the
    // multiplication is exact and nearbyint rounds half to even. 1024 carries into the smallest normal.
    const float units = std::nearbyint(std::bit_cast<float>(abs) * 16777216.0f);
    return static_cast<f16_bits>(sign | static_cast<uint32_t>(units));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits half to even.
  const uint32_t rounded = abs - (112u << 23) + 0xFFF + ((abs >> 13) & 1);
  return static_cast<f16_bits>(sign | (rounded >> 13));
}

float bf16_to_fp32(bf16_bits h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

bf16_bits fp32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<bf16_bits>((x >> 16) | 0x40);  // quiet NaN
  return static_cast<bf16_bits>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

namespace quant_detail {
namespace {

void min_max(const float* x, int n, float& lo, float& hi) {
  lo = x[0];
  hi = x[0];
  for (int j = 1; j < n; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
}

}  // namespace

// Q4_0: value = d * (q - 8); byte j holds element j (low nibble) and element j + 16 (high nibble).
void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((x[i].qs[j] & 0xF) - 8) * d;
      y[j + 16] = static_cast<float>((x[i].qs[j] >> 4) - 8) * d;
    }
  }
}

// Q4_1: value = d * q + m, same nibble order as Q4_0.
void dequantize_q4_1(const BlockQ4_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(x[i].qs[j] & 0xF) * d + m;
      y[j + 16] = static_cast<float>(x[i].qs[j] >> 4) * d + m;
    }
  }
}

// Q5_0/Q5_1: as Q4_0/Q4_1 with a fifth bit per value: bit j of the little-endian u32 qh for element j.
static inline int q5_high(uint32_t qh, int j) { return ((qh >> j) & 1) << 4; }

void dequantize_q5_0(const BlockQ5_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(((x[i].qs[j] & 0xF) | q5_high(qh, j)) - 16) * d;
      y[j + 16] = static_cast<float>(((x[i].qs[j] >> 4) | q5_high(qh, j + 16)) - 16) * d;
    }
  }
}

void dequantize_q5_1(const BlockQ5_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((x[i].qs[j] & 0xF) | q5_high(qh, j)) * d + m;
      y[j + 16] = static_cast<float>((x[i].qs[j] >> 4) | q5_high(qh, j + 16)) * d + m;
    }
  }
}

void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

// Symmetric types put the signed extreme at code 0 (d = max / -8), so the extreme is exact and the
// positive side gets one extra level.
void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    const float d = signed_absmax(x, 32) / -8.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::clamp(static_cast<int>(std::floor(x[j] * id + 8.5f)), 0, 15);
      const int q1 = std::clamp(static_cast<int>(std::floor(x[j + 16] * id + 8.5f)), 0, 15);
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_q4_1(const float* x, BlockQ4_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    float lo, hi;
    min_max(x, 32, lo, hi);
    const float d = (hi - lo) / 15.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].m = fp32_to_fp16(lo);
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::clamp(static_cast<int>((x[j] - lo) * id + 0.5f), 0, 15);
      const int q1 = std::clamp(static_cast<int>((x[j + 16] - lo) * id + 0.5f), 0, 15);
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_q5_0(const float* x, BlockQ5_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    const float d = signed_absmax(x, 32) / -16.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::clamp(static_cast<int>(std::floor(x[j] * id + 16.5f)), 0, 31);
      const int q1 = std::clamp(static_cast<int>(std::floor(x[j + 16] * id + 16.5f)), 0, 31);
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0xF) | ((q1 & 0xF) << 4));
      qh |= static_cast<uint32_t>(q0 >> 4) << j;
      qh |= static_cast<uint32_t>(q1 >> 4) << (j + 16);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void quantize_q5_1(const float* x, BlockQ5_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    float lo, hi;
    min_max(x, 32, lo, hi);
    const float d = (hi - lo) / 31.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].m = fp32_to_fp16(lo);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::clamp(static_cast<int>((x[j] - lo) * id + 0.5f), 0, 31);
      const int q1 = std::clamp(static_cast<int>((x[j + 16] - lo) * id + 0.5f), 0, 31);
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0xF) | ((q1 & 0xF) << 4));
      qh |= static_cast<uint32_t>(q0 >> 4) << j;
      qh |= static_cast<uint32_t>(q1 >> 4) << (j + 16);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    // id = 127/amax (not 1/d): the same float arithmetic as llama.cpp's x86 activation quantizer, so
    // both engines round every activation identically and quantized logits agree to ~1e-7.
    const float d = amax / 127.0f;
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < 32; ++j) y[i].qs[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
  }
}

}  // namespace quant_detail

namespace {

[[noreturn]] void unsupported(GgmlType type, const char* what) {
  fail("tensor type {} has no {} in uma; re-quantize the model to a supported type (F32, F16, BF16, Q4_0, "
       "Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)",
       type_name(type), what);
}

void check_multiple(GgmlType type, int64_t n) {
  const int64_t bs = traits(type).block_size;
  if (n % bs != 0) fail("row length {} is not a multiple of the {} block size {}", n, type_name(type), bs);
}

}  // namespace

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  using namespace quant_detail;
  check_multiple(type, n);
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
    case GgmlType::F16: {
      const auto* s = static_cast<const f16_bits*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
      return;
    }
    case GgmlType::BF16: {
      const auto* s = static_cast<const bf16_bits*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
      return;
    }
    case GgmlType::Q4_0: return dequantize_q4_0(static_cast<const BlockQ4_0*>(src), dst, n / 32);
    case GgmlType::Q4_1: return dequantize_q4_1(static_cast<const BlockQ4_1*>(src), dst, n / 32);
    case GgmlType::Q5_0: return dequantize_q5_0(static_cast<const BlockQ5_0*>(src), dst, n / 32);
    case GgmlType::Q5_1: return dequantize_q5_1(static_cast<const BlockQ5_1*>(src), dst, n / 32);
    case GgmlType::Q8_0: return dequantize_q8_0(static_cast<const BlockQ8_0*>(src), dst, n / 32);
    case GgmlType::Q2_K: return dequantize_q2_k(static_cast<const BlockQ2_K*>(src), dst, n / QK_K);
    case GgmlType::Q3_K: return dequantize_q3_k(static_cast<const BlockQ3_K*>(src), dst, n / QK_K);
    case GgmlType::Q4_K: return dequantize_q4_k(static_cast<const BlockQ4_K*>(src), dst, n / QK_K);
    case GgmlType::Q5_K: return dequantize_q5_k(static_cast<const BlockQ5_K*>(src), dst, n / QK_K);
    case GgmlType::Q6_K: return dequantize_q6_k(static_cast<const BlockQ6_K*>(src), dst, n / QK_K);
    case GgmlType::Q8_K: return dequantize_q8_k(static_cast<const BlockQ8_K*>(src), dst, n / QK_K);
    default: unsupported(type, "dequantizer");
  }
}

void quantize_row(GgmlType type, const float* src, void* dst, int64_t n) {
  using namespace quant_detail;
  check_multiple(type, n);
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
    case GgmlType::F16: {
      auto* d = static_cast<f16_bits*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_fp16(src[i]);
      return;
    }
    case GgmlType::BF16: {
      auto* d = static_cast<bf16_bits*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return;
    }
    case GgmlType::Q4_0: return quantize_q4_0(src, static_cast<BlockQ4_0*>(dst), n / 32);
    case GgmlType::Q4_1: return quantize_q4_1(src, static_cast<BlockQ4_1*>(dst), n / 32);
    case GgmlType::Q5_0: return quantize_q5_0(src, static_cast<BlockQ5_0*>(dst), n / 32);
    case GgmlType::Q5_1: return quantize_q5_1(src, static_cast<BlockQ5_1*>(dst), n / 32);
    case GgmlType::Q8_0: return quantize_q8_0(src, static_cast<BlockQ8_0*>(dst), n / 32);
    case GgmlType::Q2_K: return quantize_q2_k(src, static_cast<BlockQ2_K*>(dst), n / QK_K);
    case GgmlType::Q3_K: return quantize_q3_k(src, static_cast<BlockQ3_K*>(dst), n / QK_K);
    case GgmlType::Q4_K: return quantize_q4_k(src, static_cast<BlockQ4_K*>(dst), n / QK_K);
    case GgmlType::Q5_K: return quantize_q5_k(src, static_cast<BlockQ5_K*>(dst), n / QK_K);
    case GgmlType::Q6_K: return quantize_q6_k(src, static_cast<BlockQ6_K*>(dst), n / QK_K);
    case GgmlType::Q8_K: return quantize_q8_k(src, static_cast<BlockQ8_K*>(dst), n / QK_K);
    default: unsupported(type, "quantizer");
  }
}

}  // namespace uma
