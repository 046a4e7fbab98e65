#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "uma/error.h"

namespace uma {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kMaxDims = 4;
constexpr uint64_t kMaxStringBytes = 1ull << 30;

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
    default: return 0;
  }
}

// Bounds-checked little-endian cursor over the mapping. Every read names what it was reading so that a
// truncated file says where it ends.
class Cursor {
 public:
  Cursor(const uint8_t* base, size_t size, const std::filesystem::path& path)
      : base_(base), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  const uint8_t* take(size_t n, std::string_view what) {
    if (n > remaining())
      fail("{}: truncated GGUF file: {} needs {} bytes at offset {} but the file ends at {}; re-download or "
           "re-convert the model", path_.string(), what, n, pos_, size_);
    const uint8_t* p = base_ + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T read(std::string_view what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  // v1 stores counts and lengths as uint32, v2+ as uint64.
  uint64_t read_count(uint32_t version, std::string_view what) {
    return version == 1 ? read<uint32_t>(what) : read<uint64_t>(what);
  }
  std::string_view read_string(uint32_t version, std::string_view what) {
    uint64_t len = read_count(version, what);
    if (len > kMaxStringBytes || len > remaining())
      fail("{}: corrupt GGUF file: {} claims a string of {} bytes at offset {}, past the end of the file",
           path_.string(), what, len, pos_);
    auto p = take(len, what);
    return {reinterpret_cast<const char*>(p), len};
  }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::filesystem::path& path_;
};

bool valid_type(uint32_t t) { return t <= 12; }

}  // namespace

std::string_view gguf_type_name(GgufType type) {
  static constexpr std::string_view names[] = {"uint8", "int8",   "uint16", "int16", "uint32",
                                                "int32", "float32", "bool",   "string", "array",
                                                "uint64", "int64",  "float64"};
  auto i = static_cast<uint32_t>(type);
  return i < 13 ? names[i] : "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::UINT16: case GgufType::INT16:
    case GgufType::UINT32: case GgufType::INT32: case GgufType::UINT64: case GgufType::INT64:
    case GgufType::BOOL:
      return true;
    default:
      return false;
  }
}
bool GgufValue::is_float() const { return type == GgufType::FLOAT32 || type == GgufType::FLOAT64; }

std::string GgufTensor::shape_string() const {
  std::string s = "[";
  for (int d = 0; d < n_dims; ++d) s += (d ? ", " : "") + std::to_string(ne[d]);
  return s + "]";
}

std::unique_ptr<GgufFile> GgufFile::open(const std::filesystem::path& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) fail("{}: cannot open model file: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(f->fd_, &st) != 0) fail("{}: cannot stat model file: {}", path.string(), std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("{}: not a regular file; pass the path of a .gguf model", path.string());
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ < 8) fail("{}: not a GGUF file: only {} bytes long", path.string(), f->size_);
  void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, f->fd_, 0);
  if (m == MAP_FAILED) fail("{}: cannot map model file: {}", path.string(), std::strerror(errno));
  f->base_ = static_cast<const uint8_t*>(m);
  f->parse();
  return f;
}

GgufFile::~GgufFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void GgufFile::parse() {
  const std::string file = path_.string();
  Cursor c(base_, size_, path_);
  if (c.read<uint32_t>("magic") != kMagic)
    fail("{}: not a GGUF file (bad magic); uma loads GGUF models such as those made by llama.cpp's converter",
         file);
  version_ = c.read<uint32_t>("version");
  if (version_ < 1 || version_ > 3)
    fail("{}: unsupported GGUF version {}; uma reads versions 1 to 3", file, version_);
  const uint64_t n_tensors = c.read_count(version_, "tensor count");
  const uint64_t n_kv = c.read_count(version_, "metadata count");
  // Each key/value needs at least 12 bytes and each tensor info at least 24: reject absurd counts before
  // reserving memory for them.
  if (n_kv > c.remaining() / 12)
    fail("{}: corrupt GGUF header: {} metadata entries cannot fit in a {}-byte file", file, n_kv, size_);
  if (n_tensors > c.remaining() / 24)
    fail("{}: corrupt GGUF header: {} tensors cannot fit in a {}-byte file", file, n_tensors, size_);

  kv_.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key(c.read_string(version_, "metadata key"));
    const uint32_t t = c.read<uint32_t>("metadata value type");
    if (!valid_type(t)) fail("{}: corrupt GGUF metadata: key '{}' has unknown value type {}", file, key, t);
    GgufValue v;
    v.type = static_cast<GgufType>(t);
    auto read_scalar = [&](GgufType st, GgufValue& out) {
      const uint8_t* p = c.take(scalar_size(st), key);
      switch (st) {
        case GgufType::UINT8: out.u = *p; out.i = *p; break;
        case GgufType::INT8: out.i = static_cast<int8_t>(*p); out.u = static_cast<uint64_t>(out.i); break;
        case GgufType::BOOL:
          if (*p > 1) fail("{}: corrupt GGUF metadata: bool '{}' has value {}", file, key, *p);
          out.i = out.u = *p;
          break;
        case GgufType::UINT16: { uint16_t x; std::memcpy(&x, p, 2); out.u = x; out.i = x; break; }
        case GgufType::INT16: { int16_t x; std::memcpy(&x, p, 2); out.i = x; out.u = static_cast<uint64_t>(x); break; }
        case GgufType::UINT32: { uint32_t x; std::memcpy(&x, p, 4); out.u = x; out.i = x; break; }
        case GgufType::INT32: { int32_t x; std::memcpy(&x, p, 4); out.i = x; out.u = static_cast<uint64_t>(x); break; }
        case GgufType::UINT64: { uint64_t x; std::memcpy(&x, p, 8); out.u = x; out.i = static_cast<int64_t>(x); break; }
        case GgufType::INT64: { int64_t x; std::memcpy(&x, p, 8); out.i = x; out.u = static_cast<uint64_t>(x); break; }
        case GgufType::FLOAT32: { float x; std::memcpy(&x, p, 4); out.f = x; break; }
        case GgufType::FLOAT64: { double x; std::memcpy(&x, p, 8); out.f = x; break; }
        default: break;
      }
    };
    if (v.type == GgufType::STRING) {
      v.str = c.read_string(version_, key);
    } else if (v.type == GgufType::ARRAY) {
      const uint32_t et = c.read<uint32_t>("array element type");
      if (!valid_type(et) || et == static_cast<uint32_t>(GgufType::ARRAY))
        fail("{}: corrupt GGUF metadata: array '{}' has unsupported element type {}", file, key, et);
      v.elem_type = static_cast<GgufType>(et);
      v.count = c.read_count(version_, key);
      if (v.elem_type == GgufType::STRING) {
        // Each string needs at least its length prefix.
        if (v.count > c.remaining() / (version_ == 1 ? 4 : 8))
          fail("{}: corrupt GGUF metadata: array '{}' claims {} strings, more than the file can hold", file,
               key, v.count);
        v.strings.reserve(v.count);
        for (uint64_t j = 0; j < v.count; ++j) v.strings.push_back(c.read_string(version_, key));
      } else {
        const size_t es = scalar_size(v.elem_type);
        if (v.count > c.remaining() / es)
          fail("{}: corrupt GGUF metadata: array '{}' claims {} elements, more than the file can hold", file,
               key, v.count);
        v.array_data = c.take(v.count * es, key);
      }
    } else {
      read_scalar(v.type, v);
    }
    if (kv_index_.count(key))
      fail("{}: corrupt GGUF metadata: duplicate key '{}'", file, key);
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_integer() || a->u == 0 || a->u > (1u << 20) || (a->u & (a->u - 1)) != 0)
      fail("{}: corrupt GGUF metadata: general.alignment must be a power of two, got {}", file, a->i);
    alignment_ = a->u;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t t = 0; t < n_tensors; ++t) {
    GgufTensor ti;
    ti.name = std::string(c.read_string(version_, "tensor name"));
    const uint32_t n_dims = c.read<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      fail("{}: corrupt GGUF tensor '{}': {} dimensions (1 to 4 allowed)", file, ti.name, n_dims);
    ti.n_dims = static_cast<int>(n_dims);
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.read_count(version_, "tensor dimension");
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          n_el > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne)
        fail("{}: corrupt GGUF tensor '{}': dimension {} = {} is empty or overflows", file, ti.name, d, ne);
      ti.ne[d] = static_cast<int64_t>(ne);
      n_el *= ne;
    }
    const uint32_t type_id = c.read<uint32_t>("tensor type");
    const auto tt = type_traits(type_id);
    if (!tt)
      fail("{}: tensor '{}' has unknown type id {}; this file needs a newer uma or was corrupted", file,
           ti.name, type_id);
    ti.type = static_cast<GgmlType>(type_id);
    if (ti.ne[0] % tt->block_size != 0)
      fail("{}: corrupt GGUF tensor '{}': row length {} is not a multiple of the {} block size {}", file,
           ti.name, ti.ne[0], tt->name, tt->block_size);
    const uint64_t blocks = n_el / static_cast<uint64_t>(tt->block_size);
    if (blocks > std::numeric_limits<uint64_t>::max() / tt->type_size)
      fail("{}: corrupt GGUF tensor '{}': size overflows", file, ti.name);
    ti.nbytes = blocks * tt->type_size;
    ti.offset = c.read<uint64_t>("tensor offset");
    if (ti.offset % alignment_ != 0)
      fail("{}: corrupt GGUF tensor '{}': data offset {} is not aligned to {} bytes", file, ti.name,
           ti.offset, alignment_);
    if (tensor_index_.count(ti.name)) fail("{}: corrupt GGUF file: duplicate tensor '{}'", file, ti.name);
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  // The data section starts at the next multiple of the alignment (v1 files align to 32 too).
  data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_offset_ > size_ && !tensors_.empty())
    fail("{}: truncated GGUF file: tensor data would start at {} but the file is {} bytes", file, data_offset_,
         size_);
  const size_t data_size = size_ > data_offset_ ? size_ - data_offset_ : 0;
  for (auto& ti : tensors_) {
    if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
      fail("{}: truncated GGUF file: tensor '{}' ({} bytes at data offset {}) runs past the end of the file; "
           "re-download the model", file, ti.name, ti.nbytes, ti.offset);
    ti.data = base_ + data_offset_ + ti.offset;
  }
  // Overlapping tensors mean a corrupt or hostile table.
  std::vector<const GgufTensor*> by_offset;
  for (auto& ti : tensors_) by_offset.push_back(&ti);
  std::sort(by_offset.begin(), by_offset.end(), [](auto a, auto b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->nbytes > by_offset[i]->offset)
      fail("{}: corrupt GGUF file: tensors '{}' and '{}' overlap", file, by_offset[i - 1]->name,
           by_offset[i]->name);
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
[[noreturn]] void wrong_type(const std::filesystem::path& p, std::string_view key, std::string_view want,
                             GgufType got) {
  fail("{}: metadata '{}' should be {} but is {}", p.string(), key, want, gguf_type_name(got));
}
}  // namespace

std::string GgufFile::get_string(std::string_view key, std::optional<std::string> fallback) const {
  const GgufValue* v = find(key);
  if (!v) {
    if (fallback) return *fallback;
    fail("{}: required metadata '{}' is missing", path_.string(), key);
  }
  if (v->type != GgufType::STRING) wrong_type(path_, key, "a string", v->type);
  return std::string(v->str);
}

int64_t GgufFile::get_int(std::string_view key, std::optional<int64_t> fallback) const {
  const GgufValue* v = find(key);
  if (!v) {
    if (fallback) return *fallback;
    fail("{}: required metadata '{}' is missing", path_.string(), key);
  }
  if (!v->is_integer()) wrong_type(path_, key, "an integer", v->type);
  return v->i;
}

double GgufFile::get_float(std::string_view key, std::optional<double> fallback) const {
  const GgufValue* v = find(key);
  if (!v) {
    if (fallback) return *fallback;
    fail("{}: required metadata '{}' is missing", path_.string(), key);
  }
  if (v->is_float()) return v->f;
  if (v->is_integer()) return static_cast<double>(v->i);
  wrong_type(path_, key, "a number", v->type);
}

bool GgufFile::get_bool(std::string_view key, std::optional<bool> fallback) const {
  const GgufValue* v = find(key);
  if (!v) {
    if (fallback) return *fallback;
    fail("{}: required metadata '{}' is missing", path_.string(), key);
  }
  if (!v->is_integer()) wrong_type(path_, key, "a bool", v->type);
  return v->i != 0;
}

std::vector<std::string_view> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  if (v->type != GgufType::ARRAY || v->elem_type != GgufType::STRING)
    wrong_type(path_, key, "an array of strings", v->type);
  return v->strings;
}

namespace {
template <typename Out>
std::vector<Out> numeric_array(const GgufValue& v) {
  std::vector<Out> out(v.count);
  const size_t es = scalar_size(v.elem_type);
  for (uint64_t j = 0; j < v.count; ++j) {
    const uint8_t* p = v.array_data + j * es;
    switch (v.elem_type) {
      case GgufType::UINT8: out[j] = static_cast<Out>(*p); break;
      case GgufType::INT8: out[j] = static_cast<Out>(static_cast<int8_t>(*p)); break;
      case GgufType::BOOL: out[j] = static_cast<Out>(*p); break;
      case GgufType::UINT16: { uint16_t x; std::memcpy(&x, p, 2); out[j] = static_cast<Out>(x); break; }
      case GgufType::INT16: { int16_t x; std::memcpy(&x, p, 2); out[j] = static_cast<Out>(x); break; }
      case GgufType::UINT32: { uint32_t x; std::memcpy(&x, p, 4); out[j] = static_cast<Out>(x); break; }
      case GgufType::INT32: { int32_t x; std::memcpy(&x, p, 4); out[j] = static_cast<Out>(x); break; }
      case GgufType::UINT64: { uint64_t x; std::memcpy(&x, p, 8); out[j] = static_cast<Out>(x); break; }
      case GgufType::INT64: { int64_t x; std::memcpy(&x, p, 8); out[j] = static_cast<Out>(x); break; }
      case GgufType::FLOAT32: { float x; std::memcpy(&x, p, 4); out[j] = static_cast<Out>(x); break; }
      case GgufType::FLOAT64: { double x; std::memcpy(&x, p, 8); out[j] = static_cast<Out>(x); break; }
      default: break;
    }
  }
  return out;
}
}  // namespace

std::vector<float> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  if (v->type != GgufType::ARRAY || v->elem_type == GgufType::STRING)
    wrong_type(path_, key, "a numeric array", v->type);
  return numeric_array<float>(*v);
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return {};
  if (v->type != GgufType::ARRAY || v->elem_type == GgufType::STRING)
    wrong_type(path_, key, "a numeric array", v->type);
  return numeric_array<int64_t>(*v);
}

}  // namespace uma
