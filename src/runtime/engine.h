// A model ready to run: the mapped file, a backend, the model, its tokenizer. Plus the generation loop
// that `uma run` and the server's scheduler share.
#pragma once
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "gguf/gguf.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"

namespace uma {

struct EngineOptions {
  int n_threads = 0;      // 0: all hardware threads
  int64_t n_ctx = 0;      // KV cells per sequence; 0: min(training context, 4096)
  int n_seq = 1;          // parallel sequences sharing the cache
  int64_t n_batch = 512;  // prompt tokens per forward step (bounds activation memory)
  // Compute device: "cpu", "cuda" (= "cuda:0"), "cuda:N", or "auto": the first GPU when uma was built with
  // CUDA, one is present and the weights fit in its free memory (with 1 GiB to spare), else the CPU.
  std::string device = "auto";
  // KV cache cells: "f32", "f16", or "auto": f16 where the backend keeps one (CUDA; half the memory and
  // the bytes a long-context decode reads) unless the model uses latent attention, else f32.
  std::string kv_type = "auto";
};

// The context a run gets when none is asked for: the model's trained context, at most 4096 tokens.
int64_t default_n_ctx(const GgufFile& file);

class Engine {
 public:
  static std::unique_ptr<Engine> load(const std::filesystem::path& path, const EngineOptions& options);

  const GgufFile& file() const { return *file_; }
  Model& model() { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  Backend& backend() { return *backend_; }
  KvCache& kv() { return *kv_; }
  const EngineOptions& options() const { return options_; }
  int64_t n_ctx() const { return options_.n_ctx; }

 private:
  EngineOptions options_;
  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<KvCache> kv_;
};

struct GenerateOptions {
  int n_predict = 128;       // < 0: until end of generation or the context is full
  SamplerParams sampling;
  bool ignore_eos = false;
  // Let the backend run the sampler's first stages where the logits are (greedy argmax, or penalties and
  // top-k: Model::forward_greedy / forward_top_k) so that a GPU sends back ids instead of every logit.
  // false: download each row of logits and sample on the host. The tokens are the same either way.
  bool backend_sampling = true;
};

enum class FinishReason { Stop, Length, Cancelled };

struct GenerateResult {
  std::vector<TokenId> tokens;
  FinishReason finish = FinishReason::Stop;
  int64_t n_prompt = 0;
  double prompt_seconds = 0;
  double generate_seconds = 0;
  uint64_t seed = 0;  // the sampler's seed (the drawn one when none was given)
};

// A chain without top-k sampled from row `row` of the last forward_top_k(_rows) pass: its best candidates
// (`head`), the row's mass, and the whole row only if the sampler needs it (Sampler::sample_head).
TokenId sample_head_of(Model& model, Sampler& sampler, int64_t row, std::span<const TokenLogit> head);

// Called with each generated token; return false to stop (FinishReason::Cancelled).
using TokenCallback = std::function<bool(TokenId token)>;

// Runs prompt + generation on sequence `seq` of the engine's cache (which is cleared first). Throws
// uma::Error when the prompt alone does not fit the context.
GenerateResult generate(Engine& engine, int seq, const std::vector<TokenId>& prompt, const GenerateOptions& options,
                        const TokenCallback& on_token);

}  // namespace uma
