// Per-type scalar kernels behind dequantize_row()/quantize_row(); shared by quant_*.cpp and the CPU matmul.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

#include "quant/types.h"

namespace uma::quant_detail {

void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t nb);
void dequantize_q4_1(const BlockQ4_1* x, float* y, int64_t nb);
void dequantize_q5_0(const BlockQ5_0* x, float* y, int64_t nb);
void dequantize_q5_1(const BlockQ5_1* x, float* y, int64_t nb);
void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t nb);
void dequantize_q2_k(const BlockQ2_K* x, float* y, int64_t nb);
void dequantize_q3_k(const BlockQ3_K* x, float* y, int64_t nb);
void dequantize_q4_k(const BlockQ4_K* x, float* y, int64_t nb);
void dequantize_q5_k(const BlockQ5_K* x, float* y, int64_t nb);
void dequantize_q6_k(const BlockQ6_K* x, float* y, int64_t nb);
void dequantize_q8_k(const BlockQ8_K* x, float* y, int64_t nb);

void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t nb);
void quantize_q4_1(const float* x, BlockQ4_1* y, int64_t nb);
void quantize_q5_0(const float* x, BlockQ5_0* y, int64_t nb);
void quantize_q5_1(const float* x, BlockQ5_1* y, int64_t nb);
void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb);
void quantize_q2_k(const float* x, BlockQ2_K* y, int64_t nb);
void quantize_q3_k(const float* x, BlockQ3_K* y, int64_t nb);
void quantize_q4_k(const float* x, BlockQ4_K* y, int64_t nb);
void quantize_q5_k(const float* x, BlockQ5_K* y, int64_t nb);
void quantize_q6_k(const float* x, BlockQ6_K* y, int64_t nb);
void quantize_q8_k(const float* x, BlockQ8_K* y, int64_t nb);

// The value of largest magnitude, with its sign (0 for an all-zero block): ggml-style quantizers scale by it so
// that the extreme value lands exactly on the grid's most negative level.
inline float signed_absmax(const float* x, int n) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  return max;
}

// fp16 -> f32 for block scales in hot loops: shift the 15 magnitude bits into f32 position and rescale the
// exponent bias (15 -> 127) with one multiply by 2^112, which also normalises subnormal halves. Exact for
// every finite half; inf/NaN scales (which no valid file has) come out as large finite values.
inline float fp16_to_fp32_fast(f16_bits h) {
  const float mag = std::bit_cast<float>(static_cast<uint32_t>(h & 0x7FFF) << 13) * 0x1p112f;
  return std::bit_cast<float>(std::bit_cast<uint32_t>(mag) | (static_cast<uint32_t>(h & 0x8000) << 16));
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block, from the 12 packed bytes:
// sub-blocks 0-3 keep them in the low 6 bits of bytes j and j+4; sub-blocks 4-7 keep the low 4 bits in
// byte j+4 (scale low nibble, min high nibble) and the top 2 bits in the spare top bits of bytes j-4 / j.
inline void k4_scale_min(int j, const uint8_t* s, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = s[j] & 63;
    min = s[j + 4] & 63;
  } else {
    scale = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    min = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// The 6-bit biased scale (0..63, subtract 32) of 16-value group j (0..15) of a Q3_K super-block: the low 4
// bits are nibbles of bytes 0..7 (low nibbles for j < 8, high for j >= 8), the top 2 bits are 2-bit fields
// of bytes 8..11 (byte 8 + j%4, field j/4).
inline int q3k_scale(int j, const uint8_t* s) {
  const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
  const int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

}  // namespace uma::quant_detail
