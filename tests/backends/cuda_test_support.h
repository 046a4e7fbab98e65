// Whether a CUDA device is usable, and a backend on it; compiled without CUDA both say "no".
#pragma once
#include <memory>

#include "backend/backend.h"

namespace uma::test {

#ifdef UMA_HAVE_CUDA
inline bool have_gpu() { return cuda_device_count() > 0; }
inline std::unique_ptr<Backend> gpu() { return make_cuda_backend(0); }
#else
inline bool have_gpu() { return false; }
inline std::unique_ptr<Backend> gpu() { return nullptr; }
#endif

}  // namespace uma::test

#define REQUIRE_GPU() \
  if (!::uma::test::have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)"
