// The k-quants (Q2_K..Q6_K, and Q8_K for activations): 256-value super-blocks split into sub-blocks of 16 or
// 32 values, each with its own small integer scale (and min), which a per-super-block fp16 scale multiplies.
//
// Element order inside a super-block, as ggml packs it (e = element index 0..255):
//   Q2_K  e = 128n + 32s + l (l < 32): 2 bits at qs[32n + l] >> 2s; 16-group e/16 uses scales[e/16]
//         (scale low nibble, min high nibble); value = d*scale*q - dmin*min.
//   Q3_K  same low 2 bits as Q2_K; the third bit is hmask[l] bit (4n + s), and a clear bit means -4;
//         16-group scales are 6-bit signed (see q3k_scale); value = d*scale*q, q in -4..3.
//   Q4_K  e = 64c + 32h + l: nibble h of qs[32c + l]; 32-group 2c+h has a 6-bit scale and min.
//   Q5_K  as Q4_K, fifth bit = qh[l] bit (2c + h).
//   Q6_K  e = 128n + 32k + l: ql[64n + l + 32(k&1)] nibble (k>>1), two high bits qh[32n + l] >> 2k;
//         q - 32 times the int8 scale of 16-group e/16.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/quant.h"
#include "quant/quant_internal.h"

namespace uma::quant_detail {
namespace {

int nearest(float v) { return static_cast<int>(std::nearbyint(v)); }

// Asymmetric fit of n values to d*q - m, q in 0..nmax, m >= 0 (the range always includes 0, as ggml's
// k-quants assume): returns d, sets m. A least-squares refinement of (d, m) for the chosen q follows.
float fit_scale_min(const float* x, int n, int nmax, float& m) {
  float lo = 0, hi = 0;
  for (int j = 0; j < n; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  m = -lo;
  if (hi <= lo) return 0;
  float d = (hi - lo) / static_cast<float>(nmax);
  // One least-squares step: with q fixed, minimise sum (d*q - m - x)^2 over d and m.
  double sq = 0, sqq = 0, sx = 0, sqx = 0;
  for (int j = 0; j < n; ++j) {
    const int q = std::clamp(nearest((x[j] + m) / d), 0, nmax);
    sq += q;
    sqq += static_cast<double>(q) * q;
    sx += x[j];
    sqx += q * static_cast<double>(x[j]);
  }
  const double det = n * sqq - sq * sq;
  if (det > 0) {
    const double d2 = (n * sqx - sq * sx) / det;
    const double m2 = (d2 * sq - sx) / n;
    if (d2 > 0 && m2 >= 0) {
      d = static_cast<float>(d2);
      m = static_cast<float>(m2);
    }
  }
  return d;
}

// Packs the eight 6-bit scales and mins of Q4_K/Q5_K (inverse of k4_scale_min).
void pack_k4_scales(const uint8_t* ls, const uint8_t* lm, uint8_t* s) {
  std::memset(s, 0, K_SCALE_SIZE);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] = ls[j];
      s[j + 4] = lm[j];
    } else {
      s[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      s[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      s[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
}

// Q4_K and Q5_K share everything but the number of levels: fills L[256] with 0..nmax, the scales and d/dmin.
void quantize_k4_like(const float* x, int nmax, uint8_t* L, uint8_t* scales, f16_bits& d_out, f16_bits& dmin_out) {
  float sc[8], mn[8], max_sc = 0, max_mn = 0;
  for (int j = 0; j < 8; ++j) {
    sc[j] = fit_scale_min(x + 32 * j, 32, nmax, mn[j]);
    max_sc = std::max(max_sc, sc[j]);
    max_mn = std::max(max_mn, mn[j]);
  }
  const float d = max_sc / 63.0f, dmin = max_mn / 63.0f;
  d_out = fp32_to_fp16(d);
  dmin_out = fp32_to_fp16(dmin);
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = static_cast<uint8_t>(std::clamp(d > 0 ? nearest(sc[j] / d) : 0, 0, 63));
    lm[j] = static_cast<uint8_t>(std::clamp(dmin > 0 ? nearest(mn[j] / dmin) : 0, 0, 63));
  }
  pack_k4_scales(ls, lm, scales);
  // Re-quantize against the scales as they will be decoded.
  const float dq = fp16_to_fp32(d_out), dmq = fp16_to_fp32(dmin_out);
  for (int j = 0; j < 8; ++j) {
    const float ds = dq * ls[j], dm = dmq * lm[j];
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] = static_cast<uint8_t>(ds > 0 ? std::clamp(nearest((x[32 * j + l] + dm) / ds), 0, nmax) : 0);
  }
}

}  // namespace

void dequantize_q2_k(const BlockQ2_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    for (int e = 0; e < QK_K; ++e) {
      const int n = e / 128, s = (e % 128) / 32, l = e % 32;
      const int q = (x[i].qs[32 * n + l] >> (2 * s)) & 3;
      const uint8_t sc = x[i].scales[e / 16];
      y[e] = d * static_cast<float>(sc & 0xF) * static_cast<float>(q) - dmin * static_cast<float>(sc >> 4);
    }
  }
}

void dequantize_q3_k(const BlockQ3_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d);
    for (int e = 0; e < QK_K; ++e) {
      const int n = e / 128, s = (e % 128) / 32, l = e % 32;
      const int low = (x[i].qs[32 * n + l] >> (2 * s)) & 3;
      const int q = low - (((x[i].hmask[l] >> (4 * n + s)) & 1) ? 0 : 4);
      y[e] = d * static_cast<float>(q3k_scale(e / 16, x[i].scales)) * static_cast<float>(q);
    }
  }
}

void dequantize_q4_k(const BlockQ4_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    for (int e = 0; e < QK_K; ++e) {
      const int c = e / 64, h = (e % 64) / 32, l = e % 32;
      uint8_t sc, mn;
      k4_scale_min(2 * c + h, x[i].scales, sc, mn);
      const int q = (x[i].qs[32 * c + l] >> (4 * h)) & 0xF;
      y[e] = d * sc * static_cast<float>(q) - dmin * mn;
    }
  }
}

void dequantize_q5_k(const BlockQ5_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    for (int e = 0; e < QK_K; ++e) {
      const int c = e / 64, h = (e % 64) / 32, l = e % 32;
      uint8_t sc, mn;
      k4_scale_min(2 * c + h, x[i].scales, sc, mn);
      const int q = ((x[i].qs[32 * c + l] >> (4 * h)) & 0xF) | (((x[i].qh[l] >> (2 * c + h)) & 1) << 4);
      y[e] = d * sc * static_cast<float>(q) - dmin * mn;
    }
  }
}

void dequantize_q6_k(const BlockQ6_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d);
    for (int e = 0; e < QK_K; ++e) {
      const int n = e / 128, k = (e % 128) / 32, l = e % 32;
      const int low = (x[i].ql[64 * n + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0xF;
      const int high = (x[i].qh[32 * n + l] >> (2 * k)) & 3;
      y[e] = d * static_cast<float>(x[i].scales[e / 16]) * static_cast<float>((low | (high << 4)) - 32);
    }
  }
}

void dequantize_q8_k(const BlockQ8_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK_K)
    for (int e = 0; e < QK_K; ++e) y[e] = x[i].d * static_cast<float>(x[i].qs[e]);
}

void quantize_q2_k(const float* x, BlockQ2_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float sc[16], mn[16], max_sc = 0, max_mn = 0;
    for (int j = 0; j < 16; ++j) {
      sc[j] = fit_scale_min(x + 16 * j, 16, 3, mn[j]);
      max_sc = std::max(max_sc, sc[j]);
      max_mn = std::max(max_mn, mn[j]);
    }
    const float d = max_sc / 15.0f, dmin = max_mn / 15.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].dmin = fp32_to_fp16(dmin);
    const float dq = fp16_to_fp32(y[i].d), dmq = fp16_to_fp32(y[i].dmin);
    uint8_t L[QK_K];
    for (int j = 0; j < 16; ++j) {
      const int ls = std::clamp(d > 0 ? nearest(sc[j] / d) : 0, 0, 15);
      const int lm = std::clamp(dmin > 0 ? nearest(mn[j] / dmin) : 0, 0, 15);
      y[i].scales[j] = static_cast<uint8_t>(ls | (lm << 4));
      const float ds = dq * ls, dm = dmq * lm;
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = static_cast<uint8_t>(ds > 0 ? std::clamp(nearest((x[16 * j + l] + dm) / ds), 0, 3) : 0);
    }
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    for (int e = 0; e < QK_K; ++e) {
      const int n = e / 128, s = (e % 128) / 32, l = e % 32;
      y[i].qs[32 * n + l] |= static_cast<uint8_t>(L[e] << (2 * s));
    }
  }
}

void quantize_q3_k(const float* x, BlockQ3_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    // Symmetric 16-groups: the signed extreme maps to -4 (d = max / -4), like Q4_0.
    float sc[16];
    for (int j = 0; j < 16; ++j) sc[j] = signed_absmax(x + 16 * j, 16) / -4.0f;
    const float d = signed_absmax(sc, 16) / -32.0f;
    y[i].d = fp32_to_fp16(d);
    const float dq = fp16_to_fp32(y[i].d);
    std::memset(y[i].scales, 0, 12);
    int8_t L[QK_K];
    for (int j = 0; j < 16; ++j) {
      const int ls = std::clamp(d != 0 ? nearest(sc[j] / d) : 0, -32, 31);
      const int biased = ls + 32;
      if (j < 8)
        y[i].scales[j] = static_cast<uint8_t>(biased & 0xF);
      else
        y[i].scales[j - 8] |= static_cast<uint8_t>((biased & 0xF) << 4);
      y[i].scales[8 + j % 4] |= static_cast<uint8_t>((biased >> 4) << (2 * (j / 4)));
      const float ds = dq * ls;
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = static_cast<int8_t>(ds != 0 ? std::clamp(nearest(x[16 * j + l] / ds), -4, 3) : 0);
    }
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    std::memset(y[i].hmask, 0, sizeof(y[i].hmask));
    for (int e = 0; e < QK_K; ++e) {
      const int n = e / 128, s = (e % 128) / 32, l = e % 32;
      const int u = L[e] + 4;  // 0..7: bit 2 set means "no -4"
      y[i].qs[32 * n + l] |= static_cast<uint8_t>((u & 3) << (2 * s));
      if (u & 4) y[i].hmask[l] |= static_cast<uint8_t>(1 << (4 * n + s));
    }
  }
}

void quantize_q4_k(const float* x, BlockQ4_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    uint8_t L[QK_K];
    quantize_k4_like(x, 15, L, y[i].scales, y[i].d, y[i].dmin);
    for (int e = 0; e < QK_K; ++e) {
      const int c = e / 64, h = (e % 64) / 32, l = e % 32;
      if (h == 0)
        y[i].qs[32 * c + l] = L[e];
      else
        y[i].qs[32 * c + l] |= static_cast<uint8_t>(L[e] << 4);
    }
  }
}

void quantize_q5_k(const float* x, BlockQ5_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    uint8_t L[QK_K];
    quantize_k4_like(x, 31, L, y[i].scales, y[i].d, y[i].dmin);
    std::memset(y[i].qh, 0, sizeof(y[i].qh));
    for (int e = 0; e < QK_K; ++e) {
      const int c = e / 64, h = (e % 64) / 32, l = e % 32;
      const uint8_t nib = L[e] & 0xF;
      if (h == 0)
        y[i].qs[32 * c + l] = nib;
      else
        y[i].qs[32 * c + l] |= static_cast<uint8_t>(nib << 4);
      if (L[e] & 16) y[i].qh[l] |= static_cast<uint8_t>(1 << (2 * c + h));
    }
  }
}

void quantize_q6_k(const float* x, BlockQ6_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float sc[16];
    for (int j = 0; j < 16; ++j) sc[j] = signed_absmax(x + 16 * j, 16) / -32.0f;
    const float d = signed_absmax(sc, 16) / -128.0f;
    y[i].d = fp32_to_fp16(d);
    const float dq = fp16_to_fp32(y[i].d);
    uint8_t L[QK_K];
    for (int j = 0; j < 16; ++j) {
      const int ls = std::clamp(d != 0 ? nearest(sc[j] / d) : 0, -128, 127);
      y[i].scales[j] = static_cast<int8_t>(ls);
      const float ds = dq * ls;
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = static_cast<uint8_t>((ds != 0 ? std::clamp(nearest(x[16 * j + l] / ds), -32, 31) : 0) + 32);
    }
    std::memset(y[i].ql, 0, sizeof(y[i].ql));
    std::memset(y[i].qh, 0, sizeof(y[i].qh));
    for (int e = 0; e < QK_K; ++e) {
      const int n = e / 128, k = (e % 128) / 32, l = e % 32;
      y[i].ql[64 * n + l + 32 * (k & 1)] |= static_cast<uint8_t>((L[e] & 0xF) << (4 * (k >> 1)));
      y[i].qh[32 * n + l] |= static_cast<uint8_t>((L[e] >> 4) << (2 * k));
    }
  }
}

// Activations: symmetric, d = amax/127 so that |q| <= 127 (keeps int16 products of the SIMD dot products
// in range), plus the sum of every 16 quants for the k-quant min terms.
void quantize_q8_k(const float* x, BlockQ8_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    // Scale from the signed extreme value, iscale = -127/max, as llama.cpp's reference Q8_K quantizer does
    // (its x86 path uses it too): matching its float arithmetic makes both engines round identically. The
    // extreme maps to -127 and the far side may reach +128, clipped to 127.
    const float max = signed_absmax(x, QK_K);
    if (max == 0) {
      y[i] = BlockQ8_K{};
      continue;
    }
    const float iscale = -127.0f / max;
    y[i].d = 1.0f / iscale;
    for (int e = 0; e < QK_K; ++e) y[i].qs[e] = static_cast<int8_t>(std::min(127, nearest(iscale * x[e])));
    for (int g = 0; g < QK_K / 16; ++g) {
      int s = 0;
      for (int l = 0; l < 16; ++l) s += y[i].qs[16 * g + l];
      y[i].bsums[g] = static_cast<int16_t>(s);
    }
  }
}

}  // namespace uma::quant_detail
