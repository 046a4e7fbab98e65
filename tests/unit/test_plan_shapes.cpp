// Shape extraction: GGUF metadata and HF config.json must rebuild every tensor of the shared fixtures exactly, and
// the llama.cpp quantization recipes must pick the type each fixture's quantized file actually stores.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "gguf/gguf.h"
#include "plan/plan.h"

namespace uma::plan {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = UMA_SHARED_DIR;
const char* kArchs[] = {"llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "deepseek_v3"};

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The table rebuilt from `shape` has exactly the file's tensors (names and shapes), and their F32 bytes match.
void expect_table_matches(const ModelShape& shape, const GgufFile& f, const std::string& what) {
  auto table = tensor_table(shape);
  std::map<std::string, const TensorSpec*> by_name;
  for (const auto& t : table) by_name[t.name] = &t;
  EXPECT_EQ(table.size(), f.tensors().size()) << what;
  uint64_t file_bytes = 0, table_bytes = 0;
  for (const auto& g : f.tensors()) {
    auto it = by_name.find(g.name);
    ASSERT_NE(it, by_name.end()) << what << ": tensor " << g.name << " not predicted";
    for (int i = 0; i < 4; ++i) EXPECT_EQ(it->second->ne[i], g.ne[i]) << what << " " << g.name << " dim " << i;
    file_bytes += g.nbytes;
    table_bytes += tensor_bytes(*it->second, storage(g.type));
  }
  EXPECT_EQ(table_bytes, file_bytes) << what;
}

TEST(PlanShapes, GgufShapeRebuildsExactTensorBytes) {
  for (const char* arch : kArchs) {
    auto path = kShared / "fixtures" / arch / (std::string(arch) + "-f32.gguf");
    if (!fs::exists(path)) GTEST_SKIP() << path << " missing";
    auto f = GgufFile::open(path);
    ModelShape s = shape_from_gguf(*f);
    expect_table_matches(s, *f, arch);
    // Planning at F32 must predict exactly the file's weight bytes.
    PlanInputs in;
    in.model = s;
    in.quant = quant_scheme("F32");
    in.machine = parse_machine("h100-sxm", hardware_catalog());
    uint64_t bytes = 0;
    for (const auto& t : f->tensors()) bytes += t.nbytes;
    EXPECT_EQ(make_plan(in).weight_bytes, bytes) << arch;
  }
  for (const char* model : {"stories260K.gguf"}) {
    auto path = kShared / "models" / model;
    if (!fs::exists(path)) GTEST_SKIP() << path << " missing";
    auto f = GgufFile::open(path);
    expect_table_matches(shape_from_gguf(*f), *f, model);
  }
}

TEST(PlanShapes, RecipesPickTheTypesLlamaCppStores) {
  for (const char* arch : kArchs) {
    for (const char* q : {"Q4_0", "Q4_K_M", "Q6_K", "Q8_0"}) {
      auto path = kShared / "fixtures" / arch / (std::string(arch) + "-" + q + ".gguf");
      if (!fs::exists(path)) continue;
      auto f = GgufFile::open(path);
      ModelShape s = shape_from_gguf(*f);
      auto scheme = quant_scheme(q);
      ASSERT_TRUE(scheme);
      std::map<std::string, StorageType> predicted;
      for (const auto& t : tensor_table(s)) predicted[t.name] = tensor_type(t, *scheme, s);
      for (const auto& g : f->tensors()) {
        ASSERT_TRUE(predicted.count(g.name)) << arch << " " << q << " " << g.name;
        EXPECT_EQ(predicted[g.name].name(), storage(g.type).name()) << arch << " " << q << " " << g.name;
      }
    }
  }
}

TEST(PlanShapes, HfConfigMatchesGguf) {
  for (const char* arch : kArchs) {
    auto cfg = kShared / "fixtures" / arch / "hf" / "config.json";
    auto gguf = kShared / "fixtures" / arch / (std::string(arch) + "-f32.gguf");
    if (!fs::exists(cfg) || !fs::exists(gguf)) GTEST_SKIP() << cfg << " missing";
    ModelShape h = shape_from_hf_config(read_text(cfg), arch);
    auto f = GgufFile::open(gguf);
    ModelShape g = shape_from_gguf(*f);
    EXPECT_EQ(h.arch, g.arch) << arch;
    EXPECT_EQ(h.n_layer, g.n_layer) << arch;
    EXPECT_EQ(h.n_embd, g.n_embd) << arch;
    EXPECT_EQ(h.n_head, g.n_head) << arch;
    EXPECT_EQ(h.n_head_kv, g.n_head_kv) << arch;
    EXPECT_EQ(h.head_dim, g.head_dim) << arch;
    EXPECT_EQ(h.n_vocab, g.n_vocab) << arch;
    EXPECT_EQ(h.n_expert, g.n_expert) << arch;
    EXPECT_EQ(h.n_expert_used, g.n_expert_used) << arch;
    EXPECT_EQ(h.kv_lora_rank, g.kv_lora_rank) << arch;
    EXPECT_EQ(h.tied_embeddings, g.tied_embeddings) << arch;
    EXPECT_EQ(kv_bytes_per_token_layer(h, GgmlType::F16), kv_bytes_per_token_layer(g, GgmlType::F16)) << arch;
    // The config alone rebuilds the converted file's tensors.
    expect_table_matches(h, *f, std::string(arch) + " (config.json)");
  }
}

TEST(PlanShapes, PlansAGgufAsStored) {
  auto path = kShared / "fixtures" / "qwen3_moe" / "qwen3_moe-Q4_K_M.gguf";
  if (!fs::exists(path)) GTEST_SKIP();
  auto f = GgufFile::open(path);
  PlanInputs in;
  in.model = shape_from_gguf(*f);
  in.file_tensors = gguf_tensor_specs(*f);
  for (const auto& t : f->tensors()) in.file_types.push_back(storage(t.type));
  in.machine = parse_machine("cpu-ddr5:32", hardware_catalog());
  Plan p = make_plan(in);
  uint64_t bytes = 0;
  for (const auto& t : f->tensors()) bytes += t.nbytes;
  EXPECT_EQ(p.weight_bytes, bytes);
  EXPECT_TRUE(p.fits);
  EXPECT_LT(p.active_bytes, p.weight_bytes);
}

}  // namespace
}  // namespace uma::plan
