// The uma program end to end: streaming output and timings, and one clear sentence (never a crash) for
// each kind of bad input.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>

#include "gguf/gguf_writer.h"
#include "test_support.h"

namespace uma {
namespace {

struct Result {
  int status;
  std::string out;  // stdout and stderr together
};

Result uma(const std::string& args) {
  const std::string cmd = "UMA_MODEL_PATH=" + (test::shared_dir() / "models").string() + " " +
                          test::uma_binary().string() + " " + args + " 2>&1";
  Result r{0, ""};
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  r.status = pclose(p);
  return r;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(Cli, RunStreamsTextAndEndsWithTimings) {
  const Result r = uma("run -p 'Once upon a time' -n 16 --temp 0 -t 1");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "Once upon a time, there was a little girl named Lily.")) << r.out;
  EXPECT_TRUE(contains(r.out, "prompt: 5 tokens")) << r.out;
  EXPECT_TRUE(contains(r.out, "generation: 16 tokens")) << r.out;
  EXPECT_TRUE(contains(r.out, "plan:")) << "the plan is printed before loading: " << r.out;
}

TEST(Cli, SeededSamplingIsReproducible) {
  const Result a = uma("run -p 'The dog' -n 24 --temp 1.0 --seed 42 -t 1 --no-plan");
  const Result b = uma("run -p 'The dog' -n 24 --temp 1.0 --seed 42 -t 1 --no-plan");
  ASSERT_EQ(a.status, 0) << a.out;
  auto text = [](const std::string& s) { return s.substr(0, s.find("prompt:")); };
  EXPECT_EQ(text(a.out), text(b.out));
}

TEST(Cli, ChatModePrintsOnlyTheReply) {
  const Result r = uma("run --chat --system 'You tell stories.' -p 'Tell me about a dog' -n 24 --temp 0 -t 1 --no-plan");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_FALSE(contains(r.out, "Tell me about a dog")) << "the prompt is not echoed in chat mode: " << r.out;
  EXPECT_FALSE(contains(r.out, "User:")) << "generation stops at the transcript's next user turn: " << r.out;
  EXPECT_TRUE(contains(r.out, "prompt:")) << r.out;
}

TEST(Cli, InfoShowsArchitectureTensorsAndMemory) {
  const Result r = uma("info stories260K");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* part : {"GGUF v3", "llama.block_count", "blk.0.attn_q.weight", "F32", "KV cache", "layers 5"})
    EXPECT_TRUE(contains(r.out, part)) << part << "\n" << r.out;
}

TEST(Cli, PromptLongerThanTheContextIsRefused) {
  const Result r = uma("run -c 8 -p 'Once upon a time there was a little girl named Lily who loved to play' --no-plan");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.out, "context holds 8")) << r.out;
  EXPECT_FALSE(contains(r.out, "generation:")) << "nothing may be generated from a truncated prompt";
}

TEST(Cli, MissingModelSaysWhereItLooked) {
  const Result r = uma("run -m no-such-model -p hi");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.out, "error:")) << r.out;
  EXPECT_TRUE(contains(r.out, "no-such-model")) << r.out;
}

TEST(Cli, UnknownArchitectureListsTheSupportedOnes) {
  GgufWriter w;
  w.set_string("general.architecture", "mamba-9000");
  const auto path = test::temp_dir() / "unknown-arch.gguf";
  w.write(path);
  const Result r = uma("info " + path.string());
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.out, "'mamba-9000' is not supported")) << r.out;
  EXPECT_TRUE(contains(r.out, "qwen2")) << r.out;
}

TEST(Cli, UnknownDeviceIsOneClearErrorEverywhere) {
  for (const char* cmd : {"run -p hi -n 1 --no-plan", "bench -p 8 -n 1 -r 1 --no-membw", "serve --port 18111"}) {
    const Result r = uma(std::string(cmd) + " --device tpu");
    EXPECT_NE(r.status, 0) << cmd;
    EXPECT_TRUE(contains(r.out, "unknown device 'tpu': use cpu, cuda, cuda:N or auto")) << cmd << ": " << r.out;
  }
}

TEST(Cli, TruncatedFileIsOneClearError) {
  std::ifstream in(test::shared_dir() / "models" / "stories260K.gguf", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  bytes.resize(bytes.size() / 2);
  const auto path = test::temp_dir() / "half.gguf";
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  const Result r = uma("run -m " + path.string() + " -p hi");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.out, "truncated GGUF file")) << r.out;
}

}  // namespace
}  // namespace uma
