// Writes GGUF v3 files. Tensor data is produced on demand by a callback while the file is written, so
// multi-gigabyte synthetic or converted models stream to disk without being held in memory.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <variant>
#include <vector>

#include "gguf/gguf.h"

namespace uma {

class GgufWriter {
 public:
  // Fills `dst` (exactly the tensor's byte size) with the tensor's data.
  using Producer = std::function<void(uint8_t* dst, size_t nbytes)>;

  explicit GgufWriter(size_t alignment = 32) : alignment_(alignment) {}

  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);

  // Shape in GGUF order (ne[0] = contiguous dimension).
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape, Producer producer);
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape, std::vector<uint8_t> data);

  // Writes the file; throws uma::Error on I/O failure. Returns the file size.
  size_t write(const std::filesystem::path& path) const;
  // Encodes the whole file in memory (tests).
  std::vector<uint8_t> encode() const;

 private:
  struct Kv {
    std::string key;
    GgufType type;
    GgufType elem_type = GgufType::UINT8;
    std::vector<uint8_t> raw;  // little-endian payload, strings already length-prefixed
    uint64_t count = 0;
  };
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> shape;
    size_t nbytes;
    Producer producer;
  };
  std::vector<uint8_t> header() const;
  void add_kv(Kv kv);

  size_t alignment_;
  std::vector<Kv> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace uma
