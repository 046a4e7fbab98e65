// Scalar reference (de)quantization: hand-built blocks decode to hand-computed values (bit layout checks
// against ggml's packing), and quantize->dequantize round trips stay within per-type error budgets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "quant/quant.h"
#include "test_support.h"
#include "uma/error.h"

namespace uma {
namespace {

template <typename Block>
std::vector<float> decode(GgmlType type, const Block& b, int n) {
  std::vector<float> y(static_cast<size_t>(n));
  dequantize_row(type, &b, y.data(), n);
  return y;
}

TEST(Fp16, KnownBitPatterns) {
  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xC000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_TRUE(std::isinf(fp16_to_fp32(0x7C00)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7E00)));
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xC000);
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie -> even
  EXPECT_EQ(fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -26)), 0x0000);  // a quarter unit rounds to zero
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1023.5f, -24)), 0x0400);  // subnormal carries into the smallest normal
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  // Every finite half survives a round trip through f32.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) != 0x7C00) ASSERT_EQ(fp32_to_fp16(fp16_to_fp32(static_cast<f16_bits>(h))), h) << h;
  }
}

TEST(Bf16, KnownBitPatterns) {
  EXPECT_EQ(bf16_to_fp32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_fp32(0xC040), -3.0f);
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);      // tie -> even
  EXPECT_EQ(fp32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);  // tie -> even (up)
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(std::nanf("")))));
}

TEST(Dequantize, F16AndBf16Rows) {
  const f16_bits h[2] = {0x3C00, 0xB800};
  std::vector<float> y(2);
  dequantize_row(GgmlType::F16, h, y.data(), 2);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -0.5f);
  const bf16_bits b[2] = {0x4000, 0xBF80};
  dequantize_row(GgmlType::BF16, b, y.data(), 2);
  EXPECT_EQ(y[0], 2.0f);
  EXPECT_EQ(y[1], -1.0f);
}

TEST(Dequantize, Q4_0) {
  BlockQ4_0 b{};
  b.d = 0x3800;  // 0.5
  std::memset(b.qs, 0x88, sizeof b.qs);  // every value 8 -> 0
  b.qs[0] = 0x1F;                        // element 0: 15, element 16: 1
  const auto y = decode(GgmlType::Q4_0, b, 32);
  EXPECT_EQ(y[0], 3.5f);
  EXPECT_EQ(y[16], -3.5f);
  EXPECT_EQ(y[1], 0.0f);
}

TEST(Dequantize, Q4_1) {
  BlockQ4_1 b{};
  b.d = 0x3800;  // 0.5
  b.m = 0x3C00;  // 1.0
  b.qs[3] = 0x52;
  const auto y = decode(GgmlType::Q4_1, b, 32);
  EXPECT_EQ(y[3], 2.0f);
  EXPECT_EQ(y[19], 3.5f);
  EXPECT_EQ(y[0], 1.0f);
}

TEST(Dequantize, Q5_0AndQ5_1) {
  BlockQ5_0 b{};
  b.d = 0x3C00;
  const uint32_t qh = (1u << 0) | (1u << 17);
  std::memcpy(b.qh, &qh, 4);
  b.qs[1] = 0x3F;
  const auto y = decode(GgmlType::Q5_0, b, 32);
  EXPECT_EQ(y[0], 0.0f);    // 0 | 16 - 16
  EXPECT_EQ(y[16], -16.0f);
  EXPECT_EQ(y[1], -1.0f);   // 15 - 16
  EXPECT_EQ(y[17], 3.0f);   // 3 | 16 - 16

  BlockQ5_1 c{};
  c.d = 0x3800;  // 0.5
  c.m = 0xBC00;  // -1
  std::memcpy(c.qh, &qh, 4);
  c.qs[1] = 0x3F;
  const auto z = decode(GgmlType::Q5_1, c, 32);
  EXPECT_EQ(z[0], 7.0f);    // 16 * 0.5 - 1
  EXPECT_EQ(z[16], -1.0f);
  EXPECT_EQ(z[1], 6.5f);    // 15 * 0.5 - 1
  EXPECT_EQ(z[17], 8.5f);   // 19 * 0.5 - 1
}

TEST(Dequantize, Q8_0) {
  BlockQ8_0 b{};
  b.d = 0x3400;  // 0.25
  b.qs[5] = -7;
  b.qs[31] = 127;
  const auto y = decode(GgmlType::Q8_0, b, 32);
  EXPECT_EQ(y[5], -1.75f);
  EXPECT_EQ(y[31], 31.75f);
}

TEST(Dequantize, Q2_K) {
  BlockQ2_K b{};
  b.d = 0x3C00;     // 1
  b.dmin = 0x3800;  // 0.5
  b.qs[5] = 0x08;       // element 37 (half 0, shift 2, l 5) = 2
  b.scales[2] = 0x33;   // group 2: scale 3, min 3
  b.qs[40] = 0x30;      // element 200 (half 1, shift 4, l 8) = 3
  b.scales[12] = 0x21;  // group 12: scale 1, min 2
  const auto y = decode(GgmlType::Q2_K, b, 256);
  EXPECT_EQ(y[37], 4.5f);   // 1*3*2 - 0.5*3
  EXPECT_EQ(y[200], 2.0f);  // 1*1*3 - 0.5*2
  EXPECT_EQ(y[36], -1.5f);  // q 0
}

TEST(Dequantize, Q3_K) {
  BlockQ3_K b{};
  b.d = 0x4000;  // 2
  b.qs[54] = 0x01;      // element 150 (half 1, shift 0, l 22): low bits 1
  b.hmask[22] = 0x10;   // high bit (bit 4*1+0) set: no -4
  b.scales[1] = 0x50;   // group 9: low nibble 5 (high nibble of byte 1)
  b.scales[9] = 0x20;   // group 9: top bits 2 (byte 8 + 9%4, field 9/4=2) -> 37 - 32 = 5
  b.scales[0] = 0x01;   // group 0: low nibble 1
  b.scales[8] = 0x02;   // group 0: top bits 2 -> 33 - 32 = 1
  const auto y = decode(GgmlType::Q3_K, b, 256);
  EXPECT_EQ(y[150], 10.0f);  // 2 * 5 * 1
  EXPECT_EQ(y[3], -8.0f);    // 2 * 1 * (0 - 4)
}

TEST(Dequantize, Q4_KAndQ5_K) {
  BlockQ4_K b{};
  b.d = 0x3C00;
  b.dmin = 0x3C00;
  b.scales[3] = 0x45;   // sub-block 3 scale 5; top bits 1 -> sub-block 7 scale bit 4
  b.scales[7] = 0x82;   // sub-block 3 min 2; top bits 2 -> sub-block 7 min bit 5
  b.scales[11] = 0x23;  // sub-block 7: scale low 3, min low 2
  b.qs[36] = 0x90;      // element 100 (chunk 1, high nibble, l 4) = 9
  b.qs[102] = 0x10;     // element 230 (chunk 3, high nibble, l 6) = 1
  const auto y = decode(GgmlType::Q4_K, b, 256);
  EXPECT_EQ(y[100], 43.0f);  // 5*9 - 2
  EXPECT_EQ(y[230], -15.0f); // 19*1 - 34

  BlockQ5_K c{};
  c.d = b.d;
  c.dmin = b.dmin;
  std::memcpy(c.scales, b.scales, 12);
  std::memcpy(c.qs, b.qs, sizeof c.qs);
  c.qh[4] = 1 << 3;  // element 100: bit 2*1+1
  const auto z = decode(GgmlType::Q5_K, c, 256);
  EXPECT_EQ(z[100], 123.0f);  // 5*25 - 2
  EXPECT_EQ(z[230], -15.0f);
}

TEST(Dequantize, Q6_K) {
  BlockQ6_K b{};
  b.d = 0x3800;  // 0.5
  b.ql[106] = 0x07;  // element 170 (half 1, k 1, l 10): low nibble 7
  b.qh[42] = 0x08;   // high bits 2 -> 39 - 32 = 7
  b.scales[10] = -3;
  b.ql[36] = 0xF0;   // element 100 (half 0, k 3, l 4): high nibble 15, high bits 0 -> -17
  b.scales[6] = 2;
  const auto y = decode(GgmlType::Q6_K, b, 256);
  EXPECT_EQ(y[170], -10.5f);
  EXPECT_EQ(y[100], -17.0f);
}

TEST(Dequantize, UnsupportedTypeNamesIt) {
  std::vector<uint8_t> block(256);
  std::vector<float> y(256);
  try {
    dequantize_row(static_cast<GgmlType>(16), block.data(), y.data(), 256);
    FAIL() << "expected uma::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("IQ2_XXS"), std::string::npos) << e.what();
  }
  std::vector<float> x(256);
  EXPECT_THROW(quantize_row(GgmlType::Q8_1, x.data(), block.data(), 32), Error);
  EXPECT_THROW(dequantize_row(GgmlType::Q4_0, block.data(), y.data(), 31), Error);
}

// Round-trip budgets (relative L2 error on N(0,1) data). RTN with step s has rms error s/sqrt(12); with
// the block maxima of Gaussian data (about 2.1 sigma for 32 values, 2.8 for 256) that predicts roughly:
// Q8_0 0.005, Q8_K 0.006, Q6_K 0.015, Q5_0/Q5_1/Q5_K 0.04, Q4_0/Q4_1/Q4_K 0.08, Q3_K 0.15, Q2_K 0.3.
// Budgets leave ~50% headroom for the quantized super-block scales.
struct RoundTrip {
  GgmlType type;
  double budget;
};

class QuantRoundTrip : public ::testing::TestWithParam<RoundTrip> {};

TEST_P(QuantRoundTrip, ErrorWithinBudget) {
  const auto [type, budget] = GetParam();
  const int64_t n = 4096;
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n), y(n);
  for (auto& v : x) v = dist(rng);
  std::vector<uint8_t> q(row_bytes(type, n));
  quantize_row(type, x.data(), q.data(), n);
  dequantize_row(type, q.data(), y.data(), n);
  const double err = test::rel_l2(y, x);
  EXPECT_LT(err, budget) << type_name(type);
  RecordProperty("rel_l2", std::to_string(err));
  // Quantizing a dequantized row again must be (almost) lossless: the grid reproduces itself.
  std::vector<uint8_t> q2(q.size());
  std::vector<float> y2(n);
  quantize_row(type, y.data(), q2.data(), n);
  dequantize_row(type, q2.data(), y2.data(), n);
  EXPECT_LT(test::rel_l2(y2, y), budget / 2) << type_name(type);
  // All-zero input gives all-zero output (no NaN from 0/0 scales).
  std::vector<float> zeros(n, 0.0f);
  quantize_row(type, zeros.data(), q.data(), n);
  dequantize_row(type, q.data(), y.data(), n);
  for (float v : y) ASSERT_EQ(v, 0.0f) << type_name(type);
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, QuantRoundTrip,
    ::testing::Values(RoundTrip{GgmlType::F16, 5e-4}, RoundTrip{GgmlType::BF16, 4e-3},
                      RoundTrip{GgmlType::Q8_0, 0.008}, RoundTrip{GgmlType::Q8_K, 0.01},
                      RoundTrip{GgmlType::Q6_K, 0.025}, RoundTrip{GgmlType::Q5_0, 0.06},
                      RoundTrip{GgmlType::Q5_1, 0.06}, RoundTrip{GgmlType::Q5_K, 0.06},
                      RoundTrip{GgmlType::Q4_0, 0.12}, RoundTrip{GgmlType::Q4_1, 0.12},
                      RoundTrip{GgmlType::Q4_K, 0.12}, RoundTrip{GgmlType::Q3_K, 0.22},
                      RoundTrip{GgmlType::Q2_K, 0.45}),
    [](const auto& info) { return std::string(type_name(info.param.type)); });

}  // namespace
}  // namespace uma
