// Decode GEMV bandwidth per weight type against the device-to-device copy ceiling, measured in one run.
// Not a correctness test: runs only with UMA_CUDA_BENCH=1 (tools/device/build_and_test.sh gemv), and prints
// the backend's UMA_CUDA_PROFILE table (GPU time and GB/s of every GEMV shape) when the backend dies.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "quant/quant.h"

#ifdef UMA_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace uma {
namespace {

#ifdef UMA_HAVE_CUDA
// Copy bandwidth (bytes read + written) of a 1 GiB device-to-device copy, best of 10.
double copy_gbps() {
  const size_t n = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) return 0;
  cudaMemset(a, 1, n);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  float best = 1e30f;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0);
    cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 2) best = std::min(best, ms);
  }
  cudaFree(a);
  cudaFree(b);
  return 2.0 * n / (best * 1e6);
}
#endif

TEST(CudaBench, GemvBandwidth) {
#ifndef UMA_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  const char* on = std::getenv("UMA_CUDA_BENCH");
  if (!on || std::strcmp(on, "1") != 0) GTEST_SKIP() << "set UMA_CUDA_BENCH=1 to run";
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  std::printf("copy ceiling: %.0f GB/s (read + written, 1 GiB device-to-device)\n", copy_gbps());
  setenv("UMA_CUDA_PROFILE", "1", 1);
  auto cuda = make_cuda_backend(0);
  struct Shape {
    int64_t rows, cols;
  };
  const Shape shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  const GgmlType types[] = {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16, GgmlType::Q4_K, GgmlType::Q6_K};
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  std::vector<float> xs(11008);
  for (float& v : xs) v = dist(rng);
  float* x = cuda->alloc(xs.size());
  cuda->upload(x, xs.data(), xs.size());
  float* y = cuda->alloc(11008);
  float* ys[3] = {cuda->alloc(11008), cuda->alloc(11008), cuda->alloc(11008)};
  for (GgmlType type : types) {
    for (const Shape& s : shapes) {
      // 64 quantized random rows tiled over the matrix; enough copies that they do not fit in L2 together.
      const size_t rb = row_bytes(type, s.cols);
      std::vector<uint8_t> tile(rb * 64);
      std::vector<float> f(size_t(s.cols));
      for (int r = 0; r < 64; ++r) {
        for (float& v : f) v = dist(rng);
        if (type == GgmlType::F32) std::memcpy(tile.data() + r * rb, f.data(), rb);
        else quantize_row(type, f.data(), tile.data() + r * rb, s.cols);
      }
      const size_t bytes = rb * s.rows;
      const int copies = int(std::max<size_t>(2, (size_t(256) << 20) / bytes + 1));
      std::vector<std::vector<uint8_t>> host(copies);
      std::vector<Weight> ws(copies);
      for (int c = 0; c < copies; ++c) {
        host[c].resize(bytes);
        for (int64_t r = 0; r < s.rows; ++r) std::memcpy(host[c].data() + r * rb, tile.data() + (r % 64) * rb, rb);
        ws[c].name = "bench";
        ws[c].type = type;
        ws[c].ne[0] = s.cols;
        ws[c].ne[1] = s.rows;
        ws[c].host = host[c].data();
        ws[c].nbytes = bytes;
        cuda->prepare_weight(ws[c]);
      }
      for (int it = 0; it < 200; ++it) cuda->matmul(ws[it % copies], x, 1, y);
      // Merged launches as the decoder issues them: q/k/v (3 × 4096 rows), gate/up (2 × 11008 rows).
      if (s.cols == 4096 && copies >= 3) {
        const int n = s.rows == 4096 ? 3 : 2;
        for (int it = 0; it < 100; ++it) {
          MatmulTarget t[3];
          for (int i = 0; i < n; ++i) t[i] = {&ws[(it * n + i) % copies], ys[i]};
          cuda->matmul_many(x, 1, t, n);
        }
      }
      std::vector<float> out(size_t(s.rows));
      cuda->download(out.data(), y, out.size());
    }
  }
  cuda->free_buffer(x);
  cuda->free_buffer(y);
  for (float* p : ys) cuda->free_buffer(p);
  cuda.reset();  // prints the table
  unsetenv("UMA_CUDA_PROFILE");
#endif
}

}  // namespace
}  // namespace uma
