// Minimal safetensors reader for reference fixtures (F32 tensors only).
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace uma::test {

struct RefTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// Loads every F32 tensor of a .safetensors file.
std::map<std::string, RefTensor> load_safetensors(const std::filesystem::path& path);

}  // namespace uma::test
