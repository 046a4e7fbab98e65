// Scalar reference code for every supported tensor type: conversion of rows to and from f32.
// These are the "plain scalar twins" every SIMD/CUDA kernel is tested against.
#pragma once
#include <cstdint>

#include "quant/types.h"

namespace uma {

float fp16_to_fp32(f16_bits h);
f16_bits fp32_to_fp16(float f);  // round to nearest even
float bf16_to_fp32(bf16_bits h);
bf16_bits fp32_to_bf16(float f);  // round to nearest even

// dst[0..n) = values of one row of `type`; n must be a multiple of the block size. Throws for
// types uma cannot compute (the error names the type).
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// Reference quantizer (round-to-nearest, no importance matrix): used by `uma synth`, tests and on-the-fly
// activation quantization. Throws for types without a quantizer.
void quantize_row(GgmlType type, const float* src, void* dst, int64_t n);

}  // namespace uma
