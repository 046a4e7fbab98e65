#include "runtime/engine.h"

#include <algorithm>
#include <chrono>

#include "uma/error.h"

namespace uma {

int64_t default_n_ctx(const GgufFile& file) {
  const std::string arch = file.get_string("general.architecture", "llama");
  return std::min<int64_t>(file.get_int(arch + ".context_length", 2048), 4096);
}

namespace {

// The backend EngineOptions::device names (see there).
std::unique_ptr<Backend> make_backend(const EngineOptions& o, const std::filesystem::path& path) {
  const std::string& d = o.device;
  const bool cuda = d == "cuda" || d.rfind("cuda:", 0) == 0;
  if (d == "cpu") return make_cpu_backend(o.n_threads);
#ifdef UMA_HAVE_CUDA
  if (cuda) return make_cuda_backend(d == "cuda" ? 0 : std::stoi(d.substr(5)));
  if (d == "auto" && cuda_device_count() > 0) {
    std::error_code ec;
    const uintmax_t bytes = std::filesystem::file_size(path, ec);
    if (!ec && bytes + (uintmax_t(1) << 30) < cuda_free_bytes(0)) return make_cuda_backend(0);
  }
#else
  if (cuda) fail("this build of uma has no CUDA backend (nvcc was not found when it was built); use --device cpu");
#endif
  if (d != "auto") fail("unknown device '{}': use cpu, cuda, cuda:N or auto", d);
  return make_cpu_backend(o.n_threads);
}

}  // namespace

std::unique_ptr<Engine> Engine::load(const std::filesystem::path& path, const EngineOptions& options) {
  auto e = std::unique_ptr<Engine>(new Engine());
  e->options_ = options;
  e->file_ = GgufFile::open(path);
  e->backend_ = make_backend(options, path);
  e->model_ = load_model(*e->file_, *e->backend_);
  e->tokenizer_ = Tokenizer::from_gguf(*e->file_);
  const ModelConfig& c = e->model_->config();
  if (e->tokenizer_->vocab_size() > c.n_vocab)
    fail("{}: the tokenizer has {} tokens but the model only {} rows of embeddings", path.string(),
         e->tokenizer_->vocab_size(), c.n_vocab);
  if (e->options_.n_ctx <= 0) e->options_.n_ctx = default_n_ctx(*e->file_);
  KvCacheOptions ko = e->model_->kv_options(e->options_.n_ctx * e->options_.n_seq, e->options_.n_seq);
  const std::string& kt = e->options_.kv_type;
  const bool latent = c.kv_lora_rank > 0;
  if ((kt == "f16" || kt == "q8_0") && latent)
    fail("{}: latent attention (MLA) keeps its cache in f32; use --kv-type f32 or auto", path.string());
  if (kt != "f16" && kt != "f32" && kt != "q8_0" && kt != "auto")
    fail("unknown KV cache type '{}'; use f16, q8_0, f32 or auto", kt);
  ko.f16 = kt == "f16" || (kt == "auto" && !latent && e->backend_->supports_f16_kv());
  ko.q8 = kt == "q8_0";
  e->kv_ = std::make_unique<KvCache>(*e->backend_, ko);
  return e;
}

TokenId sample_head_of(Model& model, Sampler& sampler, int64_t row, std::span<const TokenLogit> head) {
  if (head.empty()) fail("sampler: no candidates to sample from");
  const RowMass mass = model.last_row_mass(row, head[0].logit, sampler.inv_temperature());
  return sampler.sample_head(head, mass, [&](std::vector<float>& logits) { model.last_logits_row(row, logits); });
}

GenerateResult generate(Engine& engine, int seq, const std::vector<TokenId>& prompt, const GenerateOptions& options,
                        const TokenCallback& on_token) {
  using Clock = std::chrono::steady_clock;
  Model& model = engine.model();
  KvCache& kv = engine.kv();
  const Tokenizer& tok = engine.tokenizer();
  const int64_t n_ctx = engine.n_ctx();
  if (prompt.empty()) fail("the prompt is empty; give some text to continue");
  if (static_cast<int64_t>(prompt.size()) > n_ctx)
    fail("the prompt has {} tokens but the context holds {}; raise the context size (-c) or shorten the prompt",
         prompt.size(), n_ctx);

  GenerateResult result;
  result.n_prompt = static_cast<int64_t>(prompt.size());
  kv.truncate(seq, 0);
  Sampler sampler(options.sampling, model.config().n_vocab);
  result.seed = sampler.seed();
  for (TokenId t : prompt) sampler.accept(t);

  // Prefill in chunks of n_batch tokens; only the last prompt token needs logits. The backend does what it
  // can where the logits are: plain greedy decoding lets it pick the token (on a GPU one id comes back
  // instead of n_vocab floats); a chain that starts with top-k lets it apply the penalties and return the k
  // best candidates, the sampler finishing on those. The penalties are those of the history at the forward
  // pass, which is the history at the sample that follows it.
  auto t0 = Clock::now();
  std::vector<float> logits;
  std::vector<int32_t> picked;
  std::vector<TokenLogit> candidates;
  const bool backend_picks = options.backend_sampling && sampler.plain_greedy();
  int backend_k = 0;  // per token: a whole-row chain may rest its head (Sampler::backend_candidates)
  auto forward = [&](const Batch& b) {
    backend_k = options.backend_sampling && !backend_picks ? sampler.backend_candidates() : 0;
    if (backend_picks)
      model.forward_greedy(b, kv, picked);
    else if (backend_k > 0)
      model.forward_top_k(b, kv, backend_k, sampler.penalties(), candidates);
    else
      model.forward(b, kv, logits, nullptr);
  };
  auto sample = [&]() -> TokenId {
    if (backend_picks) return picked.at(0);
    if (backend_k > 0 && sampler.whole_row()) return sample_head_of(model, sampler, 0, candidates);
    if (backend_k > 0) return sampler.sample_candidates(candidates);
    return sampler.sample(logits);
  };
  Batch batch;
  const int64_t n_batch = std::max<int64_t>(1, engine.options().n_batch);
  for (int64_t i = 0; i < result.n_prompt; i += n_batch) {
    batch.clear();
    const int64_t end = std::min(result.n_prompt, i + n_batch);
    for (int64_t j = i; j < end; ++j)
      batch.add(prompt[j], static_cast<int32_t>(j), seq, j + 1 == result.n_prompt);
    kv.reserve(seq, end);
    forward(batch);
  }
  auto t1 = Clock::now();
  result.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();

  int64_t pos = result.n_prompt;
  for (int n = 0; options.n_predict < 0 || n < options.n_predict; ++n) {
    const TokenId next = sample();
    sampler.accept(next);
    if (!options.ignore_eos && tok.is_eog(next)) {
      result.finish = FinishReason::Stop;
      break;
    }
    result.tokens.push_back(next);
    if (on_token && !on_token(next)) {
      result.finish = FinishReason::Cancelled;
      break;
    }
    if (pos >= n_ctx) {  // the context is full: stop and say so rather than silently dropping history
      result.finish = FinishReason::Length;
      break;
    }
    if (options.n_predict >= 0 && n + 1 == options.n_predict) {
      result.finish = FinishReason::Length;
      break;
    }
    batch.clear();
    batch.add(next, static_cast<int32_t>(pos), seq, true);
    kv.reserve(seq, pos + 1);
    forward(batch);
    ++pos;
  }
  result.generate_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return result;
}

}  // namespace uma
