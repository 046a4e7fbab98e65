// Tensor element types as numbered by GGUF/ggml, and their block layouts.
// A quantized row is a sequence of blocks; each block holds `block_size` values in `type_size` bytes.
// The layouts are shared by every backend (CPU and CUDA include this file).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace uma {

enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30,
};

struct TypeTraits {
  std::string_view name;
  int64_t block_size;  // values per block
  size_t type_size;    // bytes per block
  bool supported;      // uma can dequantize / compute with it
};

// Traits for a raw GGUF type id; nullopt when the id is not a known ggml type.
std::optional<TypeTraits> type_traits(uint32_t type_id);
const TypeTraits& traits(GgmlType type);
std::string_view type_name(GgmlType type);
// Parse "q4_0", "Q4_K", "f16", ... (case-insensitive).
std::optional<GgmlType> type_from_name(std::string_view name);
// Bytes of a row of n values; n must be a multiple of the block size.
size_t row_bytes(GgmlType type, int64_t n);

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK8_1 = 32;
constexpr int QK_K = 256;        // super-block size of the k-quants
constexpr int K_SCALE_SIZE = 12; // packed 6-bit scales/mins of Q4_K and Q5_K

using f16_bits = uint16_t;
using bf16_bits = uint16_t;

struct BlockQ4_0 { f16_bits d; uint8_t qs[QK4_0 / 2]; };
struct BlockQ4_1 { f16_bits d, m; uint8_t qs[QK4_1 / 2]; };
struct BlockQ5_0 { f16_bits d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };
struct BlockQ5_1 { f16_bits d, m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };
struct BlockQ8_0 { f16_bits d; int8_t qs[QK8_0]; };
struct BlockQ8_1 { f16_bits d, s; int8_t qs[QK8_1]; };
// k-quants: 256 values per super-block.
struct BlockQ2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; f16_bits d, dmin; };
struct BlockQ3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; f16_bits d; };
struct BlockQ4_K { f16_bits d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct BlockQ5_K { f16_bits d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
struct BlockQ6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; f16_bits d; };
struct BlockQ8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34 && sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

}  // namespace uma
