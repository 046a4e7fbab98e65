#include "gguf/gguf_writer.h"

#include <cstdio>
#include <cstring>
#include <memory>

#include "uma/error.h"

namespace uma {
namespace {

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}
void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

}  // namespace

void GgufWriter::add_kv(Kv kv) {
  for (auto& k : kv_)
    if (k.key == kv.key) { k = std::move(kv); return; }
  kv_.push_back(std::move(kv));
}

void GgufWriter::set_u32(const std::string& key, uint32_t v) { Kv kv{key, GgufType::UINT32}; put(kv.raw, v); add_kv(std::move(kv)); }
void GgufWriter::set_i32(const std::string& key, int32_t v) { Kv kv{key, GgufType::INT32}; put(kv.raw, v); add_kv(std::move(kv)); }
void GgufWriter::set_u64(const std::string& key, uint64_t v) { Kv kv{key, GgufType::UINT64}; put(kv.raw, v); add_kv(std::move(kv)); }
void GgufWriter::set_f32(const std::string& key, float v) { Kv kv{key, GgufType::FLOAT32}; put(kv.raw, v); add_kv(std::move(kv)); }
void GgufWriter::set_bool(const std::string& key, bool v) { Kv kv{key, GgufType::BOOL}; put<uint8_t>(kv.raw, v ? 1 : 0); add_kv(std::move(kv)); }
void GgufWriter::set_string(const std::string& key, const std::string& v) { Kv kv{key, GgufType::STRING}; put_string(kv.raw, v); add_kv(std::move(kv)); }

void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  Kv kv{key, GgufType::ARRAY, GgufType::STRING};
  kv.count = v.size();
  for (const auto& s : v) put_string(kv.raw, s);
  add_kv(std::move(kv));
}
void GgufWriter::set_f32_array(const std::string& key, const std::vector<float>& v) {
  Kv kv{key, GgufType::ARRAY, GgufType::FLOAT32};
  kv.count = v.size();
  for (float x : v) put(kv.raw, x);
  add_kv(std::move(kv));
}
void GgufWriter::set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  Kv kv{key, GgufType::ARRAY, GgufType::INT32};
  kv.count = v.size();
  for (int32_t x : v) put(kv.raw, x);
  add_kv(std::move(kv));
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                            Producer producer) {
  if (shape.empty() || shape.size() > 4) fail("GGUF writer: tensor '{}' must have 1 to 4 dimensions", name);
  const auto& t = traits(type);
  if (shape[0] % t.block_size != 0)
    fail("GGUF writer: tensor '{}' row length {} is not a multiple of the {} block size {}", name, shape[0],
         t.name, t.block_size);
  int64_t n = 1;
  for (auto d : shape) n *= d;
  tensors_.push_back({name, type, std::move(shape), static_cast<size_t>(n / t.block_size) * t.type_size,
                      std::move(producer)});
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape,
                            std::vector<uint8_t> data) {
  auto shared = std::make_shared<std::vector<uint8_t>>(std::move(data));
  add_tensor(name, type, std::move(shape), [shared, name](uint8_t* dst, size_t nbytes) {
    if (shared->size() != nbytes)
      fail("GGUF writer: tensor '{}' has {} bytes of data but its shape needs {}", name, shared->size(), nbytes);
    std::memcpy(dst, shared->data(), nbytes);
  });
}

std::vector<uint8_t> GgufWriter::header() const {
  std::vector<uint8_t> out;
  put<uint32_t>(out, 0x46554747);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kv_.size() + (alignment_ != 32 ? 1 : 0));
  for (const auto& kv : kv_) {
    put_string(out, kv.key);
    put<uint32_t>(out, static_cast<uint32_t>(kv.type));
    if (kv.type == GgufType::ARRAY) {
      put<uint32_t>(out, static_cast<uint32_t>(kv.elem_type));
      put<uint64_t>(out, kv.count);
    }
    out.insert(out.end(), kv.raw.begin(), kv.raw.end());
  }
  if (alignment_ != 32) {
    put_string(out, "general.alignment");
    put<uint32_t>(out, static_cast<uint32_t>(GgufType::UINT32));
    put<uint32_t>(out, static_cast<uint32_t>(alignment_));
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
    for (auto d : t.shape) put<uint64_t>(out, static_cast<uint64_t>(d));
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, offset);
    offset += (t.nbytes + alignment_ - 1) / alignment_ * alignment_;
  }
  out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, 0);
  return out;
}

size_t GgufWriter::write(const std::filesystem::path& path) const {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) fail("{}: cannot create file: {}", path.string(), std::strerror(errno));
  auto emit = [&](const uint8_t* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f.get()) != n)
      fail("{}: write failed (disk full?): {}", path.string(), std::strerror(errno));
  };
  const auto head = header();
  emit(head.data(), head.size());
  size_t total = head.size();
  std::vector<uint8_t> buf;
  for (const auto& t : tensors_) {
    const size_t padded = (t.nbytes + alignment_ - 1) / alignment_ * alignment_;
    buf.assign(padded, 0);
    t.producer(buf.data(), t.nbytes);
    emit(buf.data(), padded);
    total += padded;
  }
  if (std::fflush(f.get()) != 0) fail("{}: write failed: {}", path.string(), std::strerror(errno));
  return total;
}

std::vector<uint8_t> GgufWriter::encode() const {
  auto out = header();
  for (const auto& t : tensors_) {
    const size_t start = out.size();
    out.resize(start + (t.nbytes + alignment_ - 1) / alignment_ * alignment_, 0);
    t.producer(out.data() + start, t.nbytes);
  }
  return out;
}

}  // namespace uma
