// Shared by the CUDA tests: whether a CUDA device is usable and a backend on it (compiled without CUDA both say
// "no"), random weights and activations, and device buffers freed with their holder.
#pragma once
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "quant/quant.h"

namespace uma::test {

#ifdef UMA_HAVE_CUDA
inline bool have_gpu() { return cuda_device_count() > 0; }
inline std::unique_ptr<Backend> gpu() { return make_cuda_backend(0); }
#else
inline bool have_gpu() { return false; }
inline std::unique_ptr<Backend> gpu() { return nullptr; }
#endif

// n values from N(0, scale²), seeded.
inline std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A weight [cols, rows, n_stack] of `type` quantized from N(0, scale²) values; owns its bytes.
struct TestWeight {
  std::vector<uint8_t> bytes;
  Weight w;
  TestWeight(GgmlType type, int64_t rows, int64_t cols, uint32_t seed, int64_t n_stack = 1, float scale = 0.5f) {
    const int64_t all_rows = rows * n_stack;
    const auto f = random_floats(size_t(all_rows * cols), seed, scale);
    const size_t rb = row_bytes(type, cols);
    bytes.resize(rb * all_rows + 16);
    for (int64_t r = 0; r < all_rows; ++r) {
      if (type == GgmlType::F32) std::memcpy(bytes.data() + r * rb, f.data() + r * cols, cols * 4);
      else quantize_row(type, f.data() + r * cols, bytes.data() + r * rb, cols);
    }
    w.name = "test." + std::string(type_name(type));
    w.type = type;
    w.ne[0] = cols, w.ne[1] = rows, w.ne[2] = n_stack;
    w.host = bytes.data();
    w.nbytes = rb * all_rows;
  }
};

// Buffers of a backend, freed when this goes.
struct DeviceBuffers {
  Backend& b;
  std::vector<float*> bufs;
  ~DeviceBuffers() {
    for (float* p : bufs) b.free_buffer(p);
  }
  float* put(const std::vector<float>& v) {
    float* p = b.alloc(v.size());
    b.upload(p, v.data(), v.size());
    bufs.push_back(p);
    return p;
  }
  float* make(size_t n) {
    bufs.push_back(b.alloc(n));
    return bufs.back();
  }
  std::vector<float> get(const float* p, size_t n) {
    std::vector<float> v(n);
    b.download(v.data(), p, n);
    return v;
  }
};

// One GGUF loaded on the GPU and on the CPU backend, for tests that compare the two (members in the order
// they must outlive each other: the models go first).
struct GpuAndCpuModels {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Backend> cuda, cpu;
  std::unique_ptr<Model> model, model_cpu;
};
inline GpuAndCpuModels load_on_gpu_and_cpu(const std::filesystem::path& path) {
  GpuAndCpuModels m;
  m.file = GgufFile::open(path);
  m.cuda = gpu();
  m.cpu = make_cpu_backend(2);
  m.model = load_model(*m.file, *m.cuda);
  m.model_cpu = load_model(*m.file, *m.cpu);
  return m;
}

}  // namespace uma::test

#define REQUIRE_GPU() \
  if (!::uma::test::have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)"
