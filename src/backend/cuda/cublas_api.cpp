#include "backend/cuda/cublas_api.h"

#include <dlfcn.h>

#include <string>

#include "uma/error.h"

namespace uma::cuda {
namespace {

void* open_cublas() {
  const std::string name = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  for (const std::string& candidate : {name, std::string(UMA_CUDA_LIBRARY_DIR) + "/" + name, std::string("libcublas.so")})
    if (void* h = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
  fail("cannot load {} (cuBLAS, needed by the CUDA backend): {}; install the CUDA toolkit's cuBLAS or use --device cpu",
       name, dlerror());
}

template <typename F>
F symbol(void* lib, const char* name) {
  void* p = dlsym(lib, name);
  if (!p) fail("cuBLAS has no symbol {}; uma needs cuBLAS {} or newer", name, CUBLAS_VER_MAJOR);
  return reinterpret_cast<F>(p);
}

}  // namespace

const CublasApi& cublas_api() {
  static const CublasApi api = [] {
    void* lib = open_cublas();
    CublasApi a;
    a.create = symbol<decltype(a.create)>(lib, "cublasCreate_v2");
    a.destroy = symbol<decltype(a.destroy)>(lib, "cublasDestroy_v2");
    a.set_stream = symbol<decltype(a.set_stream)>(lib, "cublasSetStream_v2");
    a.sgemm = symbol<decltype(a.sgemm)>(lib, "cublasSgemm_v2");
    a.gemm_ex = symbol<decltype(a.gemm_ex)>(lib, "cublasGemmEx");
    a.sgemm_strided_batched = symbol<decltype(a.sgemm_strided_batched)>(lib, "cublasSgemmStridedBatched");
    a.gemm_strided_batched_ex = symbol<decltype(a.gemm_strided_batched_ex)>(lib, "cublasGemmStridedBatchedEx");
    return a;
  }();
  return api;
}

}  // namespace uma::cuda
