// Device memory for a model's weights as one growing range. cudaMalloc rounds every allocation up to the
// driver's 2 MiB granularity: a 7B model's ~290 tensors left 150-300 MiB of the GPU unused that way (Q4_0:
// 9.0 MiB matrices took 10). The arena reserves one virtual address range and maps physical memory into it,
// in that granularity, as it fills, so the weights cost their bytes plus at most one granule. Where the driver
// has no virtual memory management it falls back to cudaMalloc per tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace uma::cuda {

class WeightArena {
 public:
  explicit WeightArena(int device) : device_(device) {}
  ~WeightArena();
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;

  // n bytes, 256-byte aligned, valid until the arena dies. Fails (uma::Error) when the GPU is full.
  uint8_t* take(size_t n);
  // Device memory the arena holds (physical, mapped or allocated).
  size_t held() const { return held_; }
  bool virtual_memory() const { return base_ != 0; }

 private:
  struct Mapping {
    unsigned long long handle;  // CUmemGenericAllocationHandle
    size_t offset, size;
  };
  void init();
  int device_;
  bool initialized_ = false;
  unsigned long long base_ = 0;  // CUdeviceptr of the reserved range; 0: cudaMalloc per tensor
  size_t reserved_ = 0, granularity_ = 0, used_ = 0, held_ = 0;
  std::vector<Mapping> mappings_;
  std::vector<void*> plain_;  // the fallback's allocations
};

}  // namespace uma::cuda
