// Decode (one token) fast path for Q4_0, Q8_0, Q4_K and Q6_K weights on x86 CPUs with AVX512-VNNI (Ice Lake,
// Sapphire Rapids, Zen 4 and later). See matmul_vnni.cpp for why it exists beside the Highway kernels.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/cpu/matmul.h"

namespace uma::cpu {

// True when this CPU has AVX512-F/BW/VL/VNNI and the weight is Q4_0/Q8_0 with an even number of blocks
// per row, or Q4_K/Q6_K.
bool vnni_decode_supported(const WeightView& w);

// y[r] = W[r, :] · x for one token, rows split over the pool. Activations are quantized to Q8_0 (Q8_K for the
// k-quants) exactly as the generic path does, so results agree with it up to f32 summation order.
void matmul_vnni_decode(const WeightView& w, const float* x, float* y, ThreadPool& pool);
// y[i] = w[i] x for n matrices sharing the input x (one token; every w[i] vnni_decode_supported), in one
// parallel region; results identical to n matmul_vnni_decode calls.
void matmul_vnni_decode_many(const WeightView* w, float* const* y, size_t n, const float* x, ThreadPool& pool);

// quantize_row(type, x, y, cols) for type Q8_0 or Q8_K with AVX-512, bit-identical to it; the decode path's
// activation quantizer (exposed for its test). Only on CPUs where vnni_decode_supported can be true.
void quantize_activations_avx512(GgmlType type, const float* x, void* y, int64_t cols);

}  // namespace uma::cpu
