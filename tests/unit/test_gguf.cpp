// GGUF reader/writer: round trips of every value type, real files of each version, and hand-made
// malformed files that must each give one clear uma::Error (never a crash or an out-of-bounds read).
#include <gtest/gtest.h>

#include <cstring>

#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "test_support.h"
#include "uma/error.h"

namespace uma {
namespace {

std::vector<uint8_t> small_file() {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 2);
  w.set_i32("test.i32", -7);
  w.set_u64("test.u64", 1ull << 40);
  w.set_f32("test.f32", 0.5f);
  w.set_bool("test.bool", true);
  w.set_string_array("test.strings", {"a", "bc", "日本"});
  w.set_f32_array("test.floats", {1.0f, 2.5f});
  w.set_i32_array("test.ints", {3, -4, 5});
  std::vector<uint8_t> t0(4 * 8);
  for (int i = 0; i < 8; ++i) {
    float v = float(i);
    std::memcpy(t0.data() + 4 * i, &v, 4);
  }
  w.add_tensor("a.weight", GgmlType::F32, {4, 2}, t0);
  w.add_tensor("b.weight", GgmlType::Q8_0, {32}, std::vector<uint8_t>(34, 1));
  return w.encode();
}

std::unique_ptr<GgufFile> open_bytes(const std::vector<uint8_t>& bytes, const std::string& name = "t.gguf") {
  return GgufFile::open(test::write_temp_file(name, bytes));
}

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    open_bytes(bytes, "bad.gguf");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Offsets into small_file() found by scanning, so the tests do not hard-code the layout.
size_t find(const std::vector<uint8_t>& b, const std::string& needle) {
  auto it = std::search(b.begin(), b.end(), needle.begin(), needle.end());
  EXPECT_NE(it, b.end()) << needle;
  return static_cast<size_t>(it - b.begin());
}

TEST(Gguf, RoundTripsEveryValueType) {
  auto f = open_bytes(small_file());
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("llama.block_count"), 2);
  EXPECT_EQ(f->get_int("test.i32"), -7);
  EXPECT_EQ(f->get_int("test.u64"), int64_t(1) << 40);
  EXPECT_FLOAT_EQ(f->get_float("test.f32"), 0.5f);
  EXPECT_TRUE(f->get_bool("test.bool"));
  auto s = f->get_string_array("test.strings");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[2], "日本");
  EXPECT_EQ(f->get_float_array("test.floats"), (std::vector<float>{1.0f, 2.5f}));
  EXPECT_EQ(f->get_int_array("test.ints"), (std::vector<int64_t>{3, -4, 5}));
  EXPECT_EQ(f->get_int("missing", 42), 42);
  ASSERT_EQ(f->tensors().size(), 2u);
  const GgufTensor* a = f->find_tensor("a.weight");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->ne[0], 4);
  EXPECT_EQ(a->ne[1], 2);
  EXPECT_EQ(a->nbytes, 32u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data) % 32, 0u) << "tensor data must be aligned";
  float v7;
  std::memcpy(&v7, a->data + 28, 4);
  EXPECT_EQ(v7, 7.0f);
  EXPECT_EQ(f->find_tensor("b.weight")->nbytes, 34u);
}

TEST(Gguf, WrongTypeAndMissingKeysAreClearErrors) {
  auto f = open_bytes(small_file());
  EXPECT_THROW(f->get_int("general.architecture"), Error);
  EXPECT_THROW(f->get_string("llama.block_count"), Error);
  try {
    f->get_int("llama.context_length");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama.context_length"), std::string::npos);
  }
}

TEST(Gguf, ReadsRealFilesOfEveryVersion) {
  const auto models = test::shared_dir() / "models";
  auto v3 = GgufFile::open(models / "stories260K.gguf");
  auto v1 = GgufFile::open(models / "tinyllamas-stories-260k-f32.ggufv1.gguf");
  EXPECT_EQ(v1->version(), 1u);
  EXPECT_GE(v3->version(), 2u);
  EXPECT_EQ(v1->tensors().size(), v3->tensors().size());
  EXPECT_EQ(v1->get_int("llama.block_count"), v3->get_int("llama.block_count"));
  // Same weights in both layouts.
  for (const auto& t : v3->tensors()) {
    const GgufTensor* o = v1->find_tensor(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    ASSERT_EQ(o->nbytes, t.nbytes);
    EXPECT_EQ(std::memcmp(o->data, t.data, t.nbytes), 0) << t.name;
  }
}

TEST(GgufMalformed, EveryTruncationIsAnErrorNotACrash) {
  const auto good = small_file();
  for (size_t len = 0; len < good.size(); ++len) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<long>(len));
    // The last tensor's padding may be cut without losing data; everything shorter must fail.
    const std::string err = error_of(cut);
    if (len < good.size() - 30) EXPECT_FALSE(err.empty()) << "truncated at " << len;
  }
}

TEST(GgufMalformed, BadMagic) {
  auto b = small_file();
  b[0] = 'X';
  EXPECT_NE(error_of(b).find("not a GGUF file"), std::string::npos);
}

TEST(GgufMalformed, UnsupportedVersion) {
  auto b = small_file();
  b[4] = 9;
  EXPECT_NE(error_of(b).find("version 9"), std::string::npos);
}

TEST(GgufMalformed, HugeCounts) {
  auto b = small_file();
  const uint64_t huge = 1ull << 60;
  std::memcpy(b.data() + 8, &huge, 8);  // tensor count
  EXPECT_NE(error_of(b).find("tensors cannot fit"), std::string::npos);
  b = small_file();
  std::memcpy(b.data() + 16, &huge, 8);  // metadata count
  EXPECT_NE(error_of(b).find("metadata entries cannot fit"), std::string::npos);
}

TEST(GgufMalformed, HugeStringLength) {
  auto b = small_file();
  const size_t at = find(b, "general.architecture") - 8;  // the key's length prefix
  const uint64_t huge = ~0ull;
  std::memcpy(b.data() + at, &huge, 8);
  EXPECT_NE(error_of(b).find("past the end"), std::string::npos);
}

TEST(GgufMalformed, HugeArrayLength) {
  auto b = small_file();
  const size_t at = find(b, "test.floats") + std::strlen("test.floats") + 4 + 4;  // type, elem type, count
  const uint64_t huge = 1ull << 62;
  std::memcpy(b.data() + at, &huge, 8);
  EXPECT_NE(error_of(b).find("more than the file can hold"), std::string::npos);
}

TEST(GgufMalformed, UnknownValueType) {
  auto b = small_file();
  const size_t at = find(b, "test.i32") + std::strlen("test.i32");
  const uint32_t bad = 77;
  std::memcpy(b.data() + at, &bad, 4);
  EXPECT_NE(error_of(b).find("unknown value type 77"), std::string::npos);
}

TEST(GgufMalformed, DuplicateKey) {
  auto b = small_file();
  const size_t at = find(b, "test.i32");
  std::memcpy(b.data() + at, "test.f32", 8);  // same length, now duplicates test.f32
  EXPECT_NE(error_of(b).find("duplicate key"), std::string::npos);
}

// Tensor info layout after the name: n_dims u32, dims u64 x n, type u32, offset u64.
size_t tensor_info(const std::vector<uint8_t>& b, const std::string& name) {
  return find(b, name) + name.size();
}

TEST(GgufMalformed, DuplicateTensor) {
  auto b = small_file();
  std::memcpy(b.data() + find(b, "b.weight"), "a", 1);
  EXPECT_NE(error_of(b).find("duplicate tensor"), std::string::npos);
}

TEST(GgufMalformed, TooManyDimensions) {
  auto b = small_file();
  const uint32_t five = 5;
  std::memcpy(b.data() + tensor_info(b, "a.weight"), &five, 4);
  EXPECT_NE(error_of(b).find("5 dimensions"), std::string::npos);
}

TEST(GgufMalformed, OverflowingShape) {
  auto b = small_file();
  const size_t at = tensor_info(b, "a.weight") + 4;
  const uint64_t big = 1ull << 62;
  std::memcpy(b.data() + at, &big, 8);
  std::memcpy(b.data() + at + 8, &big, 8);
  EXPECT_NE(error_of(b).find("overflows"), std::string::npos);
}

TEST(GgufMalformed, UnknownTensorType) {
  auto b = small_file();
  const size_t at = tensor_info(b, "a.weight") + 4 + 16;
  const uint32_t bad = 1234;
  std::memcpy(b.data() + at, &bad, 4);
  EXPECT_NE(error_of(b).find("unknown type id 1234"), std::string::npos);
}

TEST(GgufMalformed, RowNotMultipleOfBlock) {
  auto b = small_file();
  const size_t at = tensor_info(b, "b.weight") + 4;
  const uint64_t n = 31;  // Q8_0 blocks hold 32
  std::memcpy(b.data() + at, &n, 8);
  EXPECT_NE(error_of(b).find("not a multiple"), std::string::npos);
}

TEST(GgufMalformed, MisalignedOffset) {
  auto b = small_file();
  const size_t at = tensor_info(b, "b.weight") + 4 + 8 + 4;
  const uint64_t off = 33;
  std::memcpy(b.data() + at, &off, 8);
  EXPECT_NE(error_of(b).find("not aligned"), std::string::npos);
}

TEST(GgufMalformed, OffsetPastTheEnd) {
  auto b = small_file();
  const size_t at = tensor_info(b, "b.weight") + 4 + 8 + 4;
  const uint64_t off = 1ull << 40;
  std::memcpy(b.data() + at, &off, 8);
  EXPECT_NE(error_of(b).find("past the end"), std::string::npos);
}

TEST(GgufMalformed, OverlappingTensors) {
  auto b = small_file();
  const size_t at = tensor_info(b, "b.weight") + 4 + 8 + 4;
  const uint64_t off = 0;  // on top of a.weight
  std::memcpy(b.data() + at, &off, 8);
  EXPECT_NE(error_of(b).find("overlap"), std::string::npos);
}

TEST(GgufMalformed, BadAlignment) {
  GgufWriter w;
  w.set_u32("general.alignment", 3);
  EXPECT_NE(error_of(w.encode()).find("power of two"), std::string::npos);
}

TEST(GgufMalformed, NotARegularFileOrMissing) {
  EXPECT_THROW(GgufFile::open(test::temp_dir()), Error);
  EXPECT_THROW(GgufFile::open(test::temp_dir() / "does-not-exist.gguf"), Error);
  EXPECT_NE(error_of({1, 2, 3}).find("only 3 bytes"), std::string::npos);
}

}  // namespace
}  // namespace uma
