// Token sampling: turns one row of logits into a token id.
//
// The chain follows llama.cpp's default common sampler:
//   penalties -> top-k -> top-p -> min-p -> temperature -> seeded draw.
// As in llama.cpp, the truncation steps (top-k, top-p, min-p) see the temperature-free distribution
// softmax(logits); temperature only reshapes the probabilities of the survivors before the draw. So
// "top_p = 0.9" keeps the same set of tokens whatever the temperature.
//
// Determinism: the RNG is std::mt19937_64, whose output sequence the C++ standard fixes, and the uniform
// in [0, 1) is built from its top 53 bits by hand (std::uniform_real_distribution and friends are
// implementation-defined). Ties in the ordering are broken by the lower token id. Same seed, same logits
// => same tokens on every platform (up to libm's expf, which is correctly rounded on glibc and close
// enough elsewhere that only exact probability ties could flip).
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "sampling/top_k.h"

namespace uma {

struct SamplerParams {
  float temperature = 0.8f;  // <= 0: greedy argmax after penalties (ties: lowest id)
  int top_k = 40;            // <= 0 or >= vocab: disabled
  float top_p = 0.95f;       // >= 1: disabled
  float min_p = 0.05f;       // <= 0: disabled; keeps p >= min_p * p_max
  float repeat_penalty = 1.0f;   // 1: disabled; divides positive logits, multiplies negative ones
  int repeat_last_n = 64;        // how many recent accepted tokens the penalties see; 0: none; -1: all since reset
  float presence_penalty = 0.0f;   // OpenAI: logit -= presence * (count > 0)
  float frequency_penalty = 0.0f;  // OpenAI: logit -= frequency * count
  uint64_t seed = 0xFFFFFFFFFFFFFFFF;  // this value: draw a seed from std::random_device
};

// One surviving candidate of the last sample(): token id and its final probability (after temperature),
// sorted by probability, highest first.
struct TokenProb {
  int32_t id;
  float p;
};

class Sampler {
 public:
  Sampler(const SamplerParams& params, int32_t vocab_size);

  // Picks a token from `logits` (size must equal vocab_size). Applies the penalties to `logits` in place.
  int32_t sample(std::span<float> logits);

  // The same chain split where a backend can run its first stages next to the logits:
  //   k = backend_top_k();  Backend::top_k_row(logits, vocab, k, penalties(), candidates);
  //   token = sample_candidates(candidates);
  // picks the token sample() would pick from the same logits (same seed, same history), bit for bit.
  //
  // How many candidates that needs: top_k when the chain truncates to it (temperature > 0 and
  // 0 < top_k < vocab), 1 for greedy; 0 when the rest of the chain needs the whole row (no top-k: top-p
  // then sees every token), and sample() must be used.
  int backend_top_k() const;
  // The same split for the chains that see the whole row (temperature > 0, no top-k: top-p, min-p and the
  // draw over every token, as OpenAI's defaults ask): the backend returns the kHead best candidates and the
  // row's mass (Model::last_row_mass, RowMass), and sample_head decides from them whenever the sums' error
  // bound (kRowMassError) cannot change the outcome, which is exactly sample()'s token; otherwise (the draw
  // lands past the head, or within the bound of a boundary) it takes the whole penalised row from
  // `whole_row` and finishes as sample() does, with the same uniform. kHead candidates: 256 (a trained
  // model's top 256 hold most of the mass), or the vocabulary when smaller.
  static constexpr int kHead = 256;
  // How many candidates to ask the backend for: backend_top_k(), or for a whole-row chain the head (then
  // sample with sample_head), or 0 (the whole row, sample()) while the head rests after draws that kept
  // landing past it.
  int backend_candidates() const;
  bool whole_row() const { return params_.temperature > 0.0f && backend_top_k() == 0; }  // a chain without top-k
  double inv_temperature() const { return 1.0 / double(params_.temperature); }
  int32_t sample_head(std::span<const TokenLogit> head, const RowMass& mass,
                      const std::function<void(std::vector<float>&)>& whole_row);
  // How many sample_head calls needed the whole row (for tests and statistics).
  uint64_t whole_row_fallbacks() const { return fallbacks_; }
  // The penalties for the current history (distinct ids with their counts). Views into the sampler, valid
  // until the next accept(), reset(), sample() or penalties().
  LogitPenalties penalties();
  // The rest of the chain (top-p -> min-p -> temperature -> seeded draw; fills last_candidates) on the
  // penalised candidates sorted best first, as Backend::top_k_row returns them.
  int32_t sample_candidates(std::span<const TokenLogit> sorted);

  // Feeds the penalty history; call with every token that enters the context (prompt tokens too, if the
  // penalties should see them).
  void accept(int32_t token);

  // Clears the penalty history and restarts the RNG from the seed, so a reset sampler repeats itself.
  void reset();

  // The seed in use (the drawn one when params.seed asked for a random seed).
  uint64_t seed() const { return seed_; }

  // The candidates that survived truncation in the last sample() or sample_candidates(), with the
  // probabilities the draw used. Empty after a greedy sample. After sample_head decided a draw over the
  // whole row from its head: the head, with probabilities from the backend's mass. Valid until the next
  // sample.
  std::span<const TokenProb> last_candidates() const { return kept_; }

  const SamplerParams& params() const { return params_; }

  // Whether sample() is the argmax of the logits as given: greedy, and no penalty that would change a logit
  // (the caller may then let the backend pick, Model::forward_greedy, and only accept() the token).
  bool plain_greedy() const {
    const SamplerParams& p = params_;
    const bool penalties = p.repeat_last_n != 0 &&
                           (p.repeat_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f);
    return p.temperature <= 0.0f && !penalties;
  }

 private:
  // The chain after top-k on candidates sorted best first (greedy: the first).
  // `u`: the draw's uniform when already taken (sample_head's fallback), else drawn here.
  int32_t finish(std::span<const TokenLogit> sorted, const double* u = nullptr);
  // The temperature and the draw on the survivors sorted[0, k) (finish's last step).
  int32_t draw(std::span<const TokenLogit> sorted, size_t k, double u);
  // A uniform double in [0, 1) from the top 53 bits of one 64-bit draw.
  double next_uniform();

  SamplerParams params_;
  int32_t vocab_size_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::deque<int32_t> history_;  // most recent last; capped at repeat_last_n when that is > 0

  // Scratch reused across calls so a 150k-token vocabulary allocates nothing per token.
  std::vector<TokenLogit> candidates_;
  std::vector<TokenProb> kept_;
  std::vector<double> weights_;
  std::vector<int32_t> history_sorted_, penalty_ids_, penalty_counts_;
  std::vector<float> row_;  // sample_head's whole row, when it needs it
  uint64_t fallbacks_ = 0;
  // Whether sample_head's draws land past the head (head_outcome): while most do, backend_candidates asks for
  // the whole row (0) for head_rest_ more samples.
  void head_outcome(bool miss);
  static constexpr double kRestAbove = 0.875;
  static constexpr int kHeadRest = 32, kMaxHeadRest = 1024;
  double miss_rate_ = 0.0;
  int head_rest_ = 0, rest_len_ = kHeadRest;
};

}  // namespace uma
