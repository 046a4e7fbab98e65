// uma synth and uma bench end to end: synthetic files load and run, carry llama.cpp's keys and tensor
// names, and `uma bench --json` prints a parseable report. Smoke tests only: no timing thresholds.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "runtime/engine.h"
#include "synth/synth.h"
#include "test_support.h"
#include "uma/error.h"

namespace uma {
namespace {

struct UmaRun {
  int status = -1;
  std::string out;
};

// Runs the built uma binary; stdout only (stderr passes through to the test log).
UmaRun run_uma(const std::string& args) {
  UmaRun r;
  const std::string cmd = test::uma_binary().string() + " " + args;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  r.status = pclose(p);
  return r;
}

std::filesystem::path synth(const std::string& shape, const std::string& type, uint64_t seed = 1) {
  const auto path = test::temp_dir() / (shape + "-" + type + "-" + std::to_string(seed) + ".gguf");
  write_synthetic_model({.shape = shape, .type = type, .seed = seed}, path);
  return path;
}

std::vector<int64_t> shape_of(const GgufTensor& t) { return {t.ne, t.ne + t.n_dims}; }

class SynthTiny : public ::testing::TestWithParam<std::string> {};

TEST_P(SynthTiny, LoadsRunsAndHasTheShape) {
  const auto path = synth("tiny", GetParam());
  auto file = GgufFile::open(path);
  EXPECT_EQ(file->get_string("general.architecture"), "llama");
  EXPECT_EQ(file->get_int("llama.block_count"), 2);
  EXPECT_EQ(file->get_int("llama.embedding_length"), 64);
  EXPECT_EQ(file->get_int("llama.feed_forward_length"), 256);
  EXPECT_EQ(file->get_int("llama.attention.head_count"), 4);
  EXPECT_EQ(file->get_int("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(file->get_string_array("tokenizer.ggml.tokens").size(), 512u);
  EXPECT_EQ(file->get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(file->tensors().size(), 3u + 2 * 9);
  const GgufTensor* down = file->find_tensor("blk.1.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(shape_of(*down), (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(file->find_tensor("blk.0.attn_norm.weight")->type, GgmlType::F32);
  const GgmlType k = file->find_tensor("blk.0.attn_k.weight")->type;
  if (GetParam() == "q4_k_m") {
    EXPECT_EQ(file->find_tensor("output.weight")->type, GgmlType::Q8_0);  // Q6_K does not fit 64-wide rows
    EXPECT_EQ(file->find_tensor("blk.0.ffn_down.weight")->type, GgmlType::Q4_K);
    EXPECT_EQ(down->type, GgmlType::Q6_K);  // last layer: one of llama.cpp's "more bits" layers
    EXPECT_EQ(k, GgmlType::Q5_0);
  } else if (GetParam() == "q6_k") {
    EXPECT_EQ(k, GgmlType::Q8_0);  // llama.cpp's fallback for rows that are not a multiple of 256
    EXPECT_EQ(down->type, GgmlType::Q6_K);
  } else {
    EXPECT_EQ(k, *type_from_name(GetParam()));
  }

  auto engine = Engine::load(path, EngineOptions{.n_threads = 2, .n_ctx = 64});
  EXPECT_EQ(engine->model().config().n_layer, 2);
  const auto tokens = engine->tokenizer().encode("Hello world", true, false);
  ASSERT_GE(tokens.size(), 2u);
  EXPECT_EQ(engine->tokenizer().decode(tokens), "Hello world");
  Batch batch;
  for (size_t i = 0; i < tokens.size(); ++i) batch.add(tokens[i], static_cast<int32_t>(i), 0, true);
  engine->kv().reserve(0, batch.size());
  std::vector<float> logits;
  engine->model().forward(batch, engine->kv(), logits);
  ASSERT_EQ(logits.size(), tokens.size() * 512);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));

  const UmaRun info = run_uma("info " + path.string());
  EXPECT_EQ(info.status, 0);
  EXPECT_NE(info.out.find("blk.1.ffn_down.weight"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Types, SynthTiny, ::testing::Values("q4_0", "q8_0", "f16", "bf16", "f32", "q4_k_m", "q6_k"));

TEST(Synth, SameSeedSameBytesOtherSeedOtherBytes) {
  auto read = [](const std::filesystem::path& p) {
    auto f = GgufFile::open(p);
    const GgufTensor* t = f->find_tensor("blk.0.ffn_up.weight");
    return std::vector<uint8_t>(t->data, t->data + t->nbytes);
  };
  EXPECT_EQ(read(synth("tiny", "q4_0", 7)), read(synth("tiny", "q4_0", 7)));
  EXPECT_NE(read(synth("tiny", "q4_0", 7)), read(synth("tiny", "q4_0", 8)));
}

TEST(Synth, MoeFileHasLlamaCppNamesAndByteLevelVocab) {
  const auto path = synth("tiny-moe", "q4_k_m");
  auto file = GgufFile::open(path);
  EXPECT_EQ(file->get_string("general.architecture"), "qwen3moe");
  EXPECT_EQ(file->get_int("qwen3moe.expert_count"), 4);
  EXPECT_EQ(file->get_int("qwen3moe.expert_used_count"), 2);
  EXPECT_EQ(file->get_int("qwen3moe.expert_feed_forward_length"), 256);
  EXPECT_EQ(file->get_int("qwen3moe.attention.key_length"), 16);
  EXPECT_EQ(shape_of(*file->find_tensor("blk.0.ffn_gate_exps.weight")), (std::vector<int64_t>{64, 256, 4}));
  EXPECT_EQ(shape_of(*file->find_tensor("blk.0.ffn_down_exps.weight")), (std::vector<int64_t>{256, 64, 4}));
  EXPECT_EQ(file->find_tensor("blk.0.ffn_gate_inp.weight")->type, GgmlType::F32);
  EXPECT_NE(file->find_tensor("blk.1.attn_k_norm.weight"), nullptr);
  EXPECT_EQ(file->get_string_array("tokenizer.ggml.merges").size(), 512u - 256 - 3);
  auto tok = Tokenizer::from_gguf(*file);
  const std::string text = "Synthetic weights, real shapes: 123 ü!";
  EXPECT_EQ(tok->decode(tok->encode(text, false, false)), text);
  EXPECT_TRUE(tok->is_eog(511));
}

TEST(Synth, RealShapesMatchTheirModels) {
  const SynthType q4km = *synth_type_from_name("q4_k_m");
  auto find = [](const std::vector<SynthTensor>& ts, const std::string& name) -> const SynthTensor* {
    for (const auto& t : ts)
      if (t.name == name) return &t;
    return nullptr;
  };
  const auto llama = synth_tensors(*find_synth_shape("llama-7b"), q4km);
  EXPECT_EQ(llama.size(), 291u);
  EXPECT_EQ(find(llama, "output.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(find(llama, "blk.0.ffn_down.weight")->type, GgmlType::Q6_K);  // first eighth: more bits
  EXPECT_EQ(find(llama, "blk.4.ffn_down.weight")->type, GgmlType::Q4_K);
  EXPECT_EQ(find(llama, "blk.6.attn_v.weight")->type, GgmlType::Q6_K);    // (6 - 4) % 3 == 2
  EXPECT_EQ(find(llama, "blk.0.ffn_gate.weight")->shape, (std::vector<int64_t>{4096, 11008}));
  int64_t params = 0;
  for (const auto& t : llama) {
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    params += n;
  }
  EXPECT_EQ(params, 6738415616);  // LLaMA-7B

  const auto mixtral = synth_tensors(*find_synth_shape("mixtral-8x7b"), q4km);
  EXPECT_EQ(find(mixtral, "blk.3.ffn_down_exps.weight")->shape, (std::vector<int64_t>{14336, 4096, 8}));
  EXPECT_EQ(find(mixtral, "blk.3.ffn_gate_inp.weight")->shape, (std::vector<int64_t>{4096, 8}));
  const auto qwen = synth_tensors(*find_synth_shape("qwen3-30b-a3b"), q4km);
  EXPECT_EQ(find(qwen, "blk.47.ffn_up_exps.weight")->shape, (std::vector<int64_t>{2048, 768, 128}));
  EXPECT_EQ(find(qwen, "blk.0.attn_q.weight")->shape, (std::vector<int64_t>{2048, 4096}));
  const auto ds = synth_tensors(*find_synth_shape("deepseek-v3-mini"), q4km);
  EXPECT_NE(find(ds, "blk.0.ffn_gate.weight"), nullptr);  // leading dense layer
  EXPECT_EQ(find(ds, "blk.1.ffn_gate.weight"), nullptr);
  EXPECT_EQ(find(ds, "blk.1.attn_k_b.weight")->shape, (std::vector<int64_t>{128, 512, 16}));
  EXPECT_EQ(find(ds, "blk.1.ffn_down_shexp.weight")->shape, (std::vector<int64_t>{512, 2048}));
  EXPECT_NE(find(ds, "blk.1.exp_probs_b.bias"), nullptr);
  const auto lite = synth_tensors(*find_synth_shape("deepseek-v2-lite"), q4km);
  EXPECT_EQ(find(lite, "blk.1.attn_q_a.weight"), nullptr);  // no q LoRA: one attn_q
  EXPECT_EQ(find(lite, "blk.1.attn_q.weight")->shape, (std::vector<int64_t>{2048, 16 * 192}));
  EXPECT_EQ(find(lite, "blk.26.ffn_gate_exps.weight")->shape, (std::vector<int64_t>{2048, 1408, 64}));
  EXPECT_EQ(find(lite, "blk.26.ffn_down_shexp.weight")->shape, (std::vector<int64_t>{2 * 1408, 2048}));
  int64_t lite_params = 0;
  for (const auto& t : lite) {
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    lite_params += n;
  }
  EXPECT_NEAR(static_cast<double>(lite_params), 15.7e9, 0.1e9);  // DeepSeek-V2-Lite: 15.7 B
}

TEST(Synth, UnknownShapeListsTheKnownOnes) {
  try {
    synth("llama-9000b", "q4_0");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama-7b"), std::string::npos) << e.what();
  }
  EXPECT_THROW(synth("tiny", "q4_7"), Error);
}

TEST(Bench, JsonReportOnStories260K) {
  const auto model = test::shared_dir() / "models" / "stories260K.gguf";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " is missing";
  const UmaRun r = run_uma("bench --json -p 16 -n 4 -r 1 --membw-mib 64 -m " + model.string());
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model"]["arch"], "llama");
  EXPECT_GT(j["model"]["n_params"].get<int64_t>(), 200000);
  EXPECT_GT(j["bytes_per_token"].get<int64_t>(), 0);
  // The better of the probes before and after the tests; both are reported (tools/calibrate_cpu.sh uses them).
  const auto& bw = j["membw"];
  EXPECT_GT(bw["read_gbps"].get<double>(), 0);
  EXPECT_DOUBLE_EQ(bw["read_gbps"].get<double>(),
                   std::max(bw["before_gbps"].get<double>(), bw["after_gbps"].get<double>()));
  EXPECT_GE(bw["prefetch_bytes"].get<int64_t>(), 0);
  ASSERT_EQ(j["tests"].size(), 2u);
  EXPECT_EQ(j["tests"][0]["name"], "pp16");
  EXPECT_EQ(j["tests"][1]["name"], "tg4");
  for (const auto& t : j["tests"]) EXPECT_GT(t["tps_median"].get<double>(), 0);
  EXPECT_GT(j["tests"][1]["gbps"].get<double>(), 0);
}

TEST(Bench, MarkdownTableOnTinySynth) {
  const auto path = synth("tiny", "q8_0");
  const UmaRun r = run_uma("bench -p 8 -n 2 -r 2 --no-membw -m " + path.string());
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("| model | size | params | backend | threads | test | t/s |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| tg2 |"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace uma
