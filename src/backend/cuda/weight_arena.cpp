// The weight arena (weight_arena.h) on the driver's virtual memory calls, reached through the runtime's
// entry-point query so that uma links only libcudart, as for cuBLAS (cublas_api.cpp).
#include "backend/cuda/weight_arena.h"

#include <cuda.h>
#include <cstdlib>
#include <string_view>
#include <cuda_runtime_api.h>

#include "uma/error.h"

namespace uma::cuda {
namespace {

struct Vmm {
  decltype(&cuMemGetAllocationGranularity) granularity = nullptr;
  decltype(&cuMemAddressReserve) reserve = nullptr;
  decltype(&cuMemAddressFree) address_free = nullptr;
  decltype(&cuMemCreate) create = nullptr;
  decltype(&cuMemRelease) release = nullptr;
  decltype(&cuMemMap) map = nullptr;
  decltype(&cuMemUnmap) unmap = nullptr;
  decltype(&cuMemSetAccess) set_access = nullptr;
  bool ok() const { return granularity && reserve && address_free && create && release && map && unmap && set_access; }
};

template <class F>
void entry(const char* name, F& fn) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult found{};
  if (cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found) == cudaSuccess &&
      found == cudaDriverEntryPointSuccess)
    fn = reinterpret_cast<F>(p);
}

const Vmm& vmm() {
  static const Vmm v = [] {
    Vmm v;
    entry("cuMemGetAllocationGranularity", v.granularity);
    entry("cuMemAddressReserve", v.reserve);
    entry("cuMemAddressFree", v.address_free);
    entry("cuMemCreate", v.create);
    entry("cuMemRelease", v.release);
    entry("cuMemMap", v.map);
    entry("cuMemUnmap", v.unmap);
    entry("cuMemSetAccess", v.set_access);
    return v;
  }();
  return v;
}

CUmemAllocationProp device_prop(int device) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

// On the first tensor, when the backend has made its device current (reserving address space needs no device,
// but the granularity query and the size do).
void WeightArena::init() {
  initialized_ = true;
  const Vmm& v = vmm();
  const char* env = std::getenv("UMA_CUDA_VMM");  // =0: cudaMalloc per tensor (the fallback, for tests)
  if (!v.ok() || (env && std::string_view(env) == "0")) return;
  const CUmemAllocationProp prop = device_prop(device_);
  size_t gran = 0, free_b = 0, total_b = 0;
  if (v.granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS || gran == 0) return;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return;
  // Address space only: room for every byte the GPU has (no physical memory is taken until mapped).
  const size_t size = round_up(total_b, gran);
  CUdeviceptr base = 0;
  if (v.reserve(&base, size, 0, 0, 0) != CUDA_SUCCESS) return;
  base_ = base, reserved_ = size, granularity_ = gran;
}

WeightArena::~WeightArena() {
  const Vmm& v = vmm();
  if (base_) {
    for (const Mapping& m : mappings_) {
      v.unmap(base_ + m.offset, m.size);
      v.release(m.handle);
    }
    v.address_free(base_, reserved_);
  }
  for (void* p : plain_) cudaFree(p);
}

uint8_t* WeightArena::take(size_t n) {
  if (!initialized_) init();
  n = round_up(n == 0 ? 1 : n, 256);
  auto out_of_memory = [&] {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("out of GPU memory uploading the weights ({} MiB more, {} MiB free of {}); use a smaller model or quant, "
         "fewer --gpu-layers, or --device cpu",
         n >> 20, free_b >> 20, total_b >> 20);
  };
  if (!base_) {
    void* p = nullptr;
    if (cudaMalloc(&p, n) != cudaSuccess) {
      cudaGetLastError();
      out_of_memory();
    }
    plain_.push_back(p);
    held_ += n;
    return static_cast<uint8_t*>(p);
  }
  if (used_ + n > held_) {
    const Vmm& v = vmm();
    const size_t grow = round_up(used_ + n - held_, granularity_);
    if (held_ + grow > reserved_) out_of_memory();
    const CUmemAllocationProp prop = device_prop(device_);
    CUmemGenericAllocationHandle h = 0;
    if (v.create(&h, grow, &prop, 0) != CUDA_SUCCESS) out_of_memory();
    const CUdeviceptr at = base_ + held_;
    CUmemAccessDesc access{};
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if (v.map(at, grow, 0, h, 0) != CUDA_SUCCESS) {
      v.release(h);
      fail("mapping {} MiB of GPU memory for the weights failed", grow >> 20);
    }
    if (v.set_access(at, grow, &access, 1) != CUDA_SUCCESS) {
      v.unmap(at, grow);
      v.release(h);
      fail("enabling access to {} MiB of GPU memory for the weights failed", grow >> 20);
    }
    mappings_.push_back({h, held_, grow});
    held_ += grow;
  }
  uint8_t* p = reinterpret_cast<uint8_t*>(base_ + used_);
  used_ += n;
  return p;
}

}  // namespace uma::cuda
