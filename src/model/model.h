// A loaded model: hyper-parameters from GGUF metadata, weights used in place from the mapping (or
// uploaded by a device backend), and a forward pass over a batch of tokens from one or more sequences.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"

namespace uma {

class GgufFile;

struct ModelConfig {
  std::string arch;
  std::string name;
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim_k = 0;   // per-head query/key width
  int head_dim_v = 0;   // per-head value width
  int n_ff = 0;         // dense FFN width
  int n_vocab = 0;
  int64_t n_ctx_train = 0;
  float norm_eps = 1e-5f;
  RopeParams rope;
  // Mixture of experts (0 when dense).
  int n_expert = 0, n_expert_used = 0, n_ff_expert = 0, n_expert_shared = 0, n_layer_dense_lead = 0;
  MoeGating expert_gating = MoeGating::softmax;  // "expert_gating_func": 1 softmax, 2 sigmoid
  bool expert_weights_norm = false;   // renormalise the top-k weights
  float expert_weights_scale = 1.0f;  // routed scaling factor
  int n_expert_group = 1, n_expert_group_used = 1;
  // Multi-head latent attention (deepseek2; 0 when absent).
  int q_lora_rank = 0, kv_lora_rank = 0;
};

// One step of work: tokens, each with its sequence slot and position; `output` marks tokens whose logits
// are wanted (usually the last of each sequence; every token for perplexity and tests).
struct Batch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> pos;
  std::vector<int32_t> seq;
  std::vector<uint8_t> output;

  void add(int32_t token, int32_t position, int32_t sequence, bool want_logits) {
    tokens.push_back(token);
    pos.push_back(position);
    seq.push_back(sequence);
    output.push_back(want_logits ? 1 : 0);
  }
  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
  void clear() { tokens.clear(); pos.clear(); seq.clear(); output.clear(); }
};

// Observes the residual stream (host copy, [n_tokens, n_embd]) after the embedding (layer 0) and after each
// transformer layer l (l = 1..n_layer). Used by the per-layer reference tests.
using LayerHook = std::function<void(int layer, const float* hidden, int64_t n_tokens, int64_t n_embd)>;

class Model {
 public:
  virtual ~Model() = default;
  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return *backend_; }

  // KV cache layout this model needs for n_ctx total token cells over n_seq sequences.
  virtual KvCacheOptions kv_options(int64_t n_ctx, int n_seq) const;
  // Runs the batch; the cache must already hold cells for every (seq, pos) in it (KvCache::reserve).
  // Writes logits [n_outputs, n_vocab] to `logits` in batch order of the marked tokens.
  virtual void forward(const Batch& batch, KvCache& kv, std::vector<float>& logits,
                       const LayerHook* hook = nullptr) = 0;
  // The same pass for greedy decoding: for each marked token the id of its largest logit (lowest id on ties),
  // in batch order. A device backend picks them where the logits are and returns ids instead of
  // n_outputs x n_vocab floats; the default runs forward() and picks on the host.
  virtual void forward_greedy(const Batch& batch, KvCache& kv, std::vector<int32_t>& ids);
  // The same pass for sampling (Sampler::backend_top_k): the batch marks at most one token; its logits get
  // the penalties and are cut to the k best (id, penalised logit), best first, in `out` (Backend::top_k_row;
  // empty when no token is marked). A device backend returns k pairs instead of n_vocab floats; the default
  // runs forward() and does the same on the host.
  virtual void forward_top_k(const Batch& batch, KvCache& kv, int k, const LogitPenalties& pen,
                             std::vector<TokenLogit>& out);
  // The same for every marked token, each with its own k and penalties (the server's batch of sequences):
  // row r (in batch order of the marked tokens) gets pens[r] and its ks[r] best go to outs[r]. ks and pens
  // hold one entry per marked token.
  virtual void forward_top_k_rows(const Batch& batch, KvCache& kv, std::span<const int> ks,
                                  std::span<const LogitPenalties> pens, std::vector<std::vector<TokenLogit>>& outs);
  // After forward_top_k or forward_top_k_rows, for chains that sample from the whole row (Sampler::sample_head):
  // the mass of row r (batch order of the marked tokens) of that pass's penalised logits (RowMass; two numbers
  // from a device backend), or the whole row. Valid until the next pass.
  virtual RowMass last_row_mass(int64_t row, float max_logit, double inv_t);
  virtual void last_logits_row(int64_t row, std::vector<float>& out);
  // Bytes of weights read to produce one token (all weights of a dense model; active experts of a MoE).
  virtual size_t bytes_per_token() const;
  size_t weight_bytes() const { return weight_bytes_; }

 protected:
  ModelConfig config_;
  Backend* backend_ = nullptr;
  size_t weight_bytes_ = 0;
  std::vector<float> last_logits_;  // the default forward_top_k(_rows): that pass's penalised rows
  const float* last_row(int64_t row) const;  // row `row` of last_logits_, or one sentence why not
};

// Choices that are not in the file.
struct ModelOptions {
  // Reproduce transformers running a bf16 checkpoint (RoPE frequencies rounded to bf16; see RopeParams).
  bool rope_freq_bf16 = false;
  // Replaces the file's rope_freqs.weight (per-pair frequency divisors) when non-empty — e.g. factors
  // computed by llama3_rope_factors() from the HF config the GGUF was converted from.
  std::vector<float> rope_freq_factors;
};

// Llama-3.x RoPE scaling as HF defines it: per rotated pair, the divisor of the base frequency.
std::vector<float> llama3_rope_factors(int n_rot, float freq_base, float factor, float low_freq_factor,
                                       float high_freq_factor, float original_context);

// Reads the architecture from the file and builds the matching family; throws uma::Error listing the
// supported architectures when it is unknown.
std::unique_ptr<Model> load_model(const GgufFile& file, Backend& backend, const ModelOptions& options = {});
std::vector<std::string> supported_architectures();

}  // namespace uma
