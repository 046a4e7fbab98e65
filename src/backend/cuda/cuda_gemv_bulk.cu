// Single-token decode GEMVs through bulk copies into shared memory (sm_90, the TMA engine).
//
// The register-load GEMVs of cuda_matmul.cu hold a weight load in registers until it arrives, so the bytes in
// flight are bounded by registers and occupancy, and a block can only load once it is resident. Here one
// thread of each block (one block an SM) copies stages of whole rows (the rows' quant bytes, and their
// scales: each contiguous across consecutive rows in the repacked layout) into a ring of shared-memory slots
// with cp.async.bulk, each completing an mbarrier; 8 to 24 consumer warps compute from shared memory with the
// dot pieces of kernels.cuh and give the slot back. A consumer warp takes whole rows of a stage (up to 4,
// activations loaded once for them) and returns the slot on its own; a stage of fewer rows than warps (a
// down projection's long rows) splits 4-row items over several warps, which sum their parts after a barrier. The
// producer issues its first stages before the PDL wait: no earlier kernel writes weights, so a GEMV that
// starts early has up to 2 x 96 KB of its matrix on the way while the kernels before it finish (with 96 KB
// stages a 4096 x 4096 Q4_0 matrix is fewer stages than there are SMs).
#include <type_traits>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemv_common.cuh"

namespace uma::cuda {
namespace {

struct BulkShape {
  int stage_rows, n_slots, slot_bytes, parts_floats;  // rows a stage; ring slots (<= 8); bytes a slot; part buffer
  int n_stages;                                       // stages over all segments (g.first is in stages)
  int producer_scale;  // a pending norm's 1 / RMS computed by the producer warp (UMA_CUDA_BULK_LATE_SCALE)
  int whole_rows;      // each consumer warp takes whole rows of a stage (stage_rows >= consumers): no block barrier
  int held;            // whole-row warps keep their activations in registers where the type allows (UMA_CUDA_BULK_HELD)
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // mbarrier transactions and bulk copies: Hopper on
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
// bytes (a multiple of 16, both addresses 16-byte aligned) from global memory into shared memory; completes
// `bar`'s transaction count.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
#endif

// Plain types in the bulk GEMV: chunk i is 16 bytes of a row, and the activations are f32 (passed as xq).
template <GgmlType kType>
struct MvPlain {
  using P = GemvPlain<kType>;
  static constexpr int kChunkValues = P::N;
  struct X {
    float v[P::N];
  };
  __device__ static void load_x(const int8_t* xq, const float4*, int i, X& x) {
    P::load_x(reinterpret_cast<const float*>(xq) + i * P::N, 0, x.v);
  }
  __device__ static float dot(const uint8_t* q, const uint8_t*, const uint8_t*, int i, const X& x) {
    return P::dot(q + 16 * i, 0, x.v);
  }
};

// acc[r] += the dot products of chunks i0, i0 + step, ... of rows (q, m, d)[r], the activations of a chunk
// loaded once for all kRows rows.
template <typename T, int kRows>
__device__ __forceinline__ void dot_rows(const uint8_t* const (&q)[kRows], const uint8_t* const (&m)[kRows],
                                         const uint8_t* const (&d)[kRows], int i0, int step, int n_chunks,
                                         const int8_t* __restrict__ xq, const float4* __restrict__ xs,
                                         float (&acc)[kRows]) {
  for (int i = i0; i < n_chunks; i += step) {
    typename T::X xv;
    T::load_x(xq, xs, i, xv);
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] += T::dot(q[r], m[r], d[r], i, xv);
  }
}

// Whole rows first, first + stride, ... (kRows of them) of a stage: each lane strides over the chunks
// (dot_rows), or (kHeld) takes the activations from `held`, chunk lane + 32 c in held[c], loaded once for
// every stage; out[r] is row r's dot product in every lane.
template <typename T>
constexpr int kHeldChunks = 128 / T::kChunkValues;  // a 4096-wide row: 128 values a lane
template <typename T, int kRows, bool kHeld>
__device__ __forceinline__ void bulk_rows(const uint8_t* qs, const uint8_t* ms, const uint8_t* ds, int64_t q_row,
                                          int64_t m_row, int64_t d_row, int first, int stride, int n_chunks,
                                          const int8_t* __restrict__ xq, const float4* __restrict__ xs, int lane,
                                          const typename T::X (&held)[kHeldChunks<T>], float (&out)[4]) {
  const uint8_t *q[kRows], *m[kRows], *d[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = first + r * stride;
    q[r] = qs + row * q_row, m[r] = ms + row * m_row, d[r] = ds + row * d_row;
  }
  float acc[kRows] = {};
  if constexpr (kHeld) {
#pragma unroll
    for (int c = 0; c < kHeldChunks<T>; ++c) {
      const int i = lane + c * kWarp;
      if (i < n_chunks) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] += T::dot(q[r], m[r], d[r], i, held[c]);
      }
    }
  } else {
    dot_rows<T, kRows>(q, m, d, lane, kWarp, n_chunks, xq, xs, acc);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) out[r] = warp_sum(acc[r]);
}

// One GEMV group (GemvSegs, g.first in stages): block b takes stages b, b + grid, ...
template <typename T, int kConsumers>
__global__ void __launch_bounds__((kConsumers + 1) * kWarp)
    gemv_bulk_kernel(const __grid_constant__ GemvSegs g, int n_chunks, const int8_t* __restrict__ xq,
                     const float4* __restrict__ xs, BulkShape sh) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // (launched only there: bulk_allowed_)
  constexpr int kItemRows = 4;  // rows a warp takes at once (activations loaded once for them)
  extern __shared__ __align__(128) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + sh.n_slots;
  float* scale_s = reinterpret_cast<float*>(smem + 128);  // the producer warp's 1 / RMS
  float* parts = reinterpret_cast<float*>(smem + 256);
  uint8_t* slots = smem + 256 + 2 * sh.parts_floats * sizeof(float);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t q_row = g.w[0].q_row, m_row = g.w[0].m_row, d_row = g.w[0].d_row;
  // This block's k-th stage (stage blockIdx.x + k * gridDim.x, in slot k % n_slots): its segment, first row
  // and row count.
  auto stage = [&](int k, int& s, int64_t& row0, int& n_rows) {
    const int st = int(blockIdx.x) + k * int(gridDim.x);
    s = segment_of(g, st);
    row0 = int64_t(st - g.first[s]) * sh.stage_rows;
    n_rows = int(min(int64_t(sh.stage_rows), g.rows[s] - row0));
  };
  auto produce = [&](int k) {  // this block's k-th stage into its slot
    int s, n_rows;
    int64_t row0;
    stage(k, s, row0, n_rows);
    uint8_t* dst = slots + (k % sh.n_slots) * sh.slot_bytes;
    uint64_t* bar = full + k % sh.n_slots;
    mbar_expect_tx(bar, uint32_t(n_rows * (q_row + m_row + d_row)));
    bulk_copy(dst, g.w[s].q + row0 * q_row, uint32_t(n_rows * q_row), bar);
    if (m_row) bulk_copy(dst + n_rows * q_row, g.w[s].m + row0 * m_row, uint32_t(n_rows * m_row), bar);
    if (d_row) bulk_copy(dst + n_rows * (q_row + m_row), g.w[s].d + row0 * d_row, uint32_t(n_rows * d_row), bar);
  };
  const int mine = (sh.n_stages - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);  // stages of this block
  if (threadIdx.x == 0) {
    for (int i = 0; i < sh.n_slots; ++i) mbar_init(full + i, 1), mbar_init(empty + i, sh.whole_rows ? kConsumers : 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  const bool producer = warp == kConsumers && lane == 0;
  if (producer)
    for (int k = 0; k < min(mine, sh.n_slots); ++k) produce(k);
  pdl_wait();
  pdl_trigger();
  // A pending norm's 1 / RMS (RmsIn) is a dependent read of every part from L2, ~1 us after the wait. The
  // consumers need it only for their first outputs, so the producer warp (its lane 0 has issued the first
  // stages) computes it while they work on the first stage, scales the norm's output in place, and hands the
  // scale over through shared memory and named barrier 2 (llama-7b tg128, one H100, two alternating rounds:
  // Q4_0 455-459 -> 462-467 t/s, Q8_0 304-305 -> 311-312, Q4_K_M 385 -> 388-391).
  const bool late = sh.producer_scale && g.rms.parts;
  float scale = late ? 1.0f : gemv_rms_scale(g.rms, 0);
  if (late && warp == kConsumers) {
    const RmsIn& rms = g.rms;
    const float sc = rms_scale_from_parts(rms.parts, rms.dim / 32, rms.dim, rms.eps);
    for (int64_t i = int64_t(blockIdx.x) * kWarp + lane; i < rms.dim; i += int64_t(gridDim.x) * kWarp) rms.xn[i] *= sc;
    if (lane == 0) *scale_s = sc;
    asm volatile("bar.arrive 2, %0;" ::"r"((kConsumers + 1) * kWarp) : "memory");
  }
  if (producer) {
    for (int k = sh.n_slots; k < mine; ++k) {
      mbar_wait(empty + k % sh.n_slots, uint32_t((k / sh.n_slots - 1) & 1));
      produce(k);
    }
    return;
  }
  if (warp == kConsumers) return;
  // The consumers' k-th stage: waits for its slot's bytes; its quants, per-group scales and block scales.
  auto consume = [&](int k, int& s, int64_t& row0, int& n_rows, const uint8_t*& qs, const uint8_t*& ms,
                     const uint8_t*& ds) {
    stage(k, s, row0, n_rows);
    mbar_wait(full + k % sh.n_slots, uint32_t((k / sh.n_slots) & 1));
    qs = slots + (k % sh.n_slots) * sh.slot_bytes;
    ms = qs + n_rows * q_row;
    ds = ms + n_rows * m_row;
  };
  auto take_scale = [&](int k) {  // the producer warp's scale, before the first outputs
    if (late && k == 0) {
      asm volatile("bar.sync 2, %0;" ::"r"((kConsumers + 1) * kWarp) : "memory");
      scale = *scale_s;
    }
  };
  auto write = [&](int s, int64_t row, float v) { g.y[s][row] = v * scale + (g.bias[s] ? g.bias[s][row] : 0.0f); };
  // Whole rows: warp w takes rows w, w + kConsumers, ... of every stage, and the slot's empty barrier counts
  // one arrival a warp, so no warp waits for the others. A 40-row Q4_0 stage in 4-row items over 24 warps left
  // 4 of them idle (and a 40-row Q4_K stage over 16 warps 6) and needed the block barrier before the sums.
  // llama-7b tg128 on one H100, two alternating rounds, against 4-row items: Q4_0 (32-value chunks, see
  // bulk_pair_) 437/443 -> 445/455 t/s; on two other H100s Q4_K_M (pairs) 389/389 -> 400/401 and
  // 383/381 -> 396/401, Q8_0 309/310 -> 310/306.
  if (sh.whole_rows) {
    // Rows of up to 4096 values (q/k/v, o, gate/up) of Q8_0, and of Q4_0 on 16 consumer warps: each lane
    // keeps its activations in registers for all its stages, loaded right after the wait (up to 40
    // registers). tg128 on one H100, alternating: Q8_0 276-280 -> 284-287 t/s (five rounds), 282/278 ->
    // 285/285 on another; Q4_0 on 16 warps 406-414 -> 417-421. Not for the k-quants, which then spill
    // (Q4_K_M 338/340 -> 331/334), nor with 24 consumer warps (72 registers a thread: spills).
    constexpr bool kMayHold = (std::is_same_v<T, MvQ4_0> || std::is_same_v<T, MvQ8_0>) && kConsumers <= 16;
    const bool hold = kMayHold && sh.held && n_chunks <= kHeldChunks<T> * kWarp;
    typename T::X held[kHeldChunks<T>];
    if (hold) {
#pragma unroll
      for (int c = 0; c < kHeldChunks<T>; ++c)
        if (lane + c * kWarp < n_chunks) T::load_x(xq, xs, lane + c * kWarp, held[c]);
    }
    for (int k = 0; k < mine; ++k) {
      int s, n_rows;
      int64_t row0;
      const uint8_t *qs, *ms, *ds;
      consume(k, s, row0, n_rows, qs, ms, ds);
      const int nr = (n_rows - warp + kConsumers - 1) / kConsumers;  // this warp's rows: warp, warp + kConsumers..
      float out[4] = {};
      auto rows = [&](auto held_tag) {
        constexpr bool kH = decltype(held_tag)::value;
        auto run = [&](auto n_rows_tag) {
          bulk_rows<T, decltype(n_rows_tag)::value, kH>(qs, ms, ds, q_row, m_row, d_row, warp, kConsumers, n_chunks,
                                                        xq, xs, lane, held, out);
        };
        switch (nr) {
          case 1: run(std::integral_constant<int, 1>{}); break;
          case 2: run(std::integral_constant<int, 2>{}); break;
          case 3: run(std::integral_constant<int, 3>{}); break;
          case 4: run(std::integral_constant<int, 4>{}); break;
          default: break;  // no row of this stage (a short last stage)
        }
      };
      if constexpr (kMayHold) {
        if (hold) rows(std::true_type{});
        else rows(std::false_type{});
      } else {
        rows(std::false_type{});
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(empty + k % sh.n_slots);
      take_scale(k);
      if (lane < nr)  // lane r writes row r of the warp's
        write(s, row0 + warp + lane * kConsumers, lane == 0 ? out[0] : lane == 1 ? out[1] : lane == 2 ? out[2] : out[3]);
    }
    return;
  }
  for (int k = 0; k < mine; ++k) {
    int s, n_rows;
    int64_t row0;
    const uint8_t *qs, *ms, *ds;
    consume(k, s, row0, n_rows, qs, ms, ds);
    // Work items: groups of kItemRows rows, each split over `split` warps when there are fewer groups than warps.
    const int groups = (n_rows + kItemRows - 1) / kItemRows;
    const int split = groups < kConsumers ? kConsumers / groups : 1;
    float* part = parts + (k & 1) * sh.parts_floats;
    for (int item = warp; item < groups * split; item += kConsumers) {
      const int r0 = (item / split) * kItemRows, p = item % split;
      const uint8_t *q[kItemRows], *m[kItemRows], *d[kItemRows];
#pragma unroll
      for (int r = 0; r < kItemRows; ++r) {
        const int row = min(r0 + r, n_rows - 1);
        q[r] = qs + row * q_row, m[r] = ms + row * m_row, d[r] = ds + row * d_row;
      }
      float acc[kItemRows] = {};
      dot_rows<T, kItemRows>(q, m, d, p * kWarp + lane, split * kWarp, n_chunks, xq, xs, acc);
#pragma unroll
      for (int r = 0; r < kItemRows; ++r) {
        const float v = warp_sum(acc[r]);
        if (lane == 0) part[(r0 + r) * split + p] = v;
      }
    }
    asm volatile("bar.sync 1, %0;" ::"r"(kConsumers * kWarp) : "memory");  // the consumers only
    take_scale(k);
    if (threadIdx.x == 0) mbar_arrive(empty + k % sh.n_slots);
    if (int(threadIdx.x) < n_rows) {
      float v = 0;
      for (int j = 0; j < split; ++j) v += part[threadIdx.x * split + j];
      write(s, row0 + threadIdx.x, v);
    }
  }
#endif
}

}  // namespace

// Whether this binary holds the bulk GEMV's sm_90 code: a build for an older architecture runs on a Hopper GPU
// too, with the kernel's body compiled out.
bool bulk_gemv_compiled() {
  cudaFuncAttributes a{};
  return cudaFuncGetAttributes(&a, gemv_bulk_kernel<MvQ8_0, 16>) == cudaSuccess && a.binaryVersion >= 90;
}

// Bulk-copy GEMV settings for a type: UMA_CUDA_GEMV_BULK=KB,slots,blocks,warps for every type, =0 for none;
// by default 96 KB stages in a ring of 2, one block an SM, for the int8 types (24 consumer warps for Q4_0, 16
// for the k-quants and Q8_0, whose dot products hold more registers). 16 warps for Q4_0 too depend on the
// machine: whole rows, tg128, alternating, on one H100 482, 468, 486, 469, 462, 486 t/s against 24's 452,
// 459, 461, 468, 469, 467; on another 420/421 against 472/476. llama-7b tg128 on one H100, against
// the register-load kernels (tools/device/build_and_test.sh ab, AB_VALUES, two alternating rounds): Q8_0
// 266 -> 305-310 t/s, Q4_K_M 364-368 -> 379-384, Q4_0 432-442 -> 469-470; F16 180 -> 172 (so plain types keep
// gemv_split_kernel: their GEMVs already stream at 96 % of copy and the f32 dot is heavier than a dp4a).
// Smaller stages lost everywhere (32 KB x 4: Q4_0 373, Q4_K_M 296): with 96 KB stages a 4096-row Q4_0 or
// Q4_K matrix is fewer stages than there are SMs, so the whole matrix is on its way before the PDL wait.
CudaBackend::BulkConfig CudaBackend::bulk_config(GgmlType type) const {
  if (!bulk_allowed_) return {};
  if (bulk_explicit_.kb) return bulk_explicit_;
  switch (type) {
    case GgmlType::Q4_0: return {96, 2, 1, 24};
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return {96, 2, 1, 16};
    default: return {};
  }
}

// Launches the GEMV of segs through gemv_bulk_kernel when c allows it for these matrices (every region's rows
// whole 16-byte units on 16-byte boundaries); false: nothing launched.
bool CudaBackend::launch_gemv_bulk(const BulkConfig& c, const GemvSegs& segs, const GemvTargets& g, const float* x,
                                   const int8_t* xq, const float4* xs, bool pair) {
  const DeviceWeight& d0 = *g.d[0];
  const WView& v0 = d0.view;
  if (!c.kb || !(xq || x) || v0.q_row % 16 || v0.m_row % 16 || v0.d_row % 16) return false;
  for (int s = 0; s < g.n; ++s)
    for (const uint8_t* p : {g.d[s]->view.q, g.d[s]->view.m, g.d[s]->view.d})
      if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  auto with = [&](auto consumers) {
    constexpr int kConsumers = decltype(consumers)::value;
    const int64_t row_total = v0.q_row + v0.m_row + v0.d_row;
    BulkShape sh{};
    sh.stage_rows = int(std::clamp<int64_t>(int64_t(c.kb) * 1024 / row_total, 1, kConsumers * kWarp));
    if (sh.stage_rows >= 8) sh.stage_rows -= sh.stage_rows % 4;  // whole 4-row work items
    sh.n_slots = c.slots;
    sh.producer_scale = producer_scale_;
    sh.whole_rows = bulk_whole_rows_ && sh.stage_rows >= kConsumers && sh.stage_rows <= 4 * kConsumers;
    sh.held = bulk_held_;
    sh.slot_bytes = int((sh.stage_rows * row_total + 127) / 128 * 128);
    sh.parts_floats = std::max((sh.stage_rows + 3) / 4, kConsumers) * 4 + 4;
    GemvSegs bs = segs;  // g.first counted in stages
    for (int s = 0; s < g.n; ++s)
      bs.first[s + 1] = bs.first[s] + int((g.d[s]->rows + sh.stage_rows - 1) / sh.stage_rows);
    sh.n_stages = bs.first[g.n];
    // A matrix of fewer stages than half the blocks leaves most SMs idle, and the register kernel (a row a
    // block for small matrices) is faster there: deepseek-v3-mini Q4_0, whose attention matrices are 10-25
    // stages, ran tg128 at 564-582 t/s with them in bulk, 603-620 with a stage for every SM, 674 without bulk
    // copies (one H100); llama-7b's smallest matrix is 103 stages.
    if (2 * int64_t(sh.n_stages) < int64_t(c.blocks) * sm_count_) return false;
    const size_t smem = 256 + 2 * sh.parts_floats * sizeof(float) + size_t(sh.n_slots) * sh.slot_bytes;
    const dim3 grid{unsigned(std::min(sh.n_stages, c.blocks * sm_count_))}, block{(kConsumers + 1) * kWarp};
    const int8_t* xa = xq ? xq : reinterpret_cast<const int8_t*>(x);  // plain types: f32 activations
    auto go = [&](auto kernel, int chunk_values) {
      UMA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      launch_smem(pdl_, grid, block, smem, stream_, kernel, bs, int(d0.cols / chunk_values), xa, xs, sh);
      return true;
    };
    // Q4_0 on 32-value chunks unless UMA_CUDA_BULK_PAIR=1: a lane's 16 quant bytes then sit next to its
    // neighbours', where the 32 bytes a lane of a 64-value chunk made the shared-memory loads ~5-way
    // bank-conflicted (Nsight Compute). Whole rows, tg128, two alternating rounds on each of three H100s:
    // 456/456 -> 469/468, 464/456 -> 475/478 t/s (and 4-row items with pairs 437/443 -> 445/455). The
    // k-quants keep their pairs (which decode a super-block's scales once for two groups): Q4_K_M 376/369 ->
    // 392/390 without them on one H100, but 400/401 -> 377/383 on another.
    if (d0.type == GgmlType::Q4_0 && !bulk_pair_) pair = false;
    switch (d0.type) {
      case GgmlType::Q4_0:
        if (pair) return go(gemv_bulk_kernel<MvQ4_0x2, kConsumers>, 64);
        return go(gemv_bulk_kernel<MvQ4_0, kConsumers>, 32);
      case GgmlType::Q8_0: return go(gemv_bulk_kernel<MvQ8_0, kConsumers>, 32);
      case GgmlType::Q4_K:
        if (pair) return go(gemv_bulk_kernel<MvQ45_Kx2<false>, kConsumers>, 64);
        return go(gemv_bulk_kernel<MvQ45_K<false>, kConsumers>, 32);
      case GgmlType::Q5_K:
        if (pair) return go(gemv_bulk_kernel<MvQ45_Kx2<true>, kConsumers>, 64);
        return go(gemv_bulk_kernel<MvQ45_K<true>, kConsumers>, 32);
      case GgmlType::Q6_K: return go(gemv_bulk_kernel<MvQ6_K, kConsumers>, 32);
      case GgmlType::F16: return go(gemv_bulk_kernel<MvPlain<GgmlType::F16>, kConsumers>, 8);
      case GgmlType::BF16: return go(gemv_bulk_kernel<MvPlain<GgmlType::BF16>, kConsumers>, 8);
      case GgmlType::F32: return go(gemv_bulk_kernel<MvPlain<GgmlType::F32>, kConsumers>, 4);
      default: return false;
    }
  };
  if (c.warps >= 24) return with(std::integral_constant<int, 24>{});
  if (c.warps >= 16) return with(std::integral_constant<int, 16>{});
  return with(std::integral_constant<int, 8>{});
}

}  // namespace uma::cuda
