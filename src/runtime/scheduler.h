// Continuous batching over one Engine: requests (token prompts + sampling parameters + callbacks) are
// queued, given a sequence slot of the engine's KV cache, and advanced together by a worker thread; every
// step is one Model::forward over the decode token of each generating slot plus prompt chunks of slots
// still prefilling. No HTTP or JSON here: the server (apps/uma/server_*) is a thin layer over this.
//
// Prefix reuse: a slot keeps the tokens whose keys/values its cache holds after its request finishes.
// A new request takes the idle slot whose cache shares the longest prefix with its prompt, or, when another
// slot (idle or still running) has a longer one, shares that slot's full pages (KvCache::share_prefix).
// Only whole pages are reused, so a page that two slots share is never written again; the rest of the
// prompt is re-run. The last prompt token is always re-run because its logits are needed.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/engine.h"

namespace uma {

struct SchedulerOptions {
  int64_t n_batch = 512;     // tokens per forward step, all slots together (decode tokens come first)
  bool prefix_reuse = true;  // reuse cached prompt prefixes across requests
  // Penalties and top-k next to the logits (Model::forward_top_k_rows, Backend::top_k_row;
  // Sampler::backend_candidates): a GPU returns k pairs a sequence instead of its whole row of logits, and
  // the host skips the selection over the vocabulary; a chain without top-k gets the 256 best and the row's
  // mass (Sampler::sample_head), and the row only when the draw lands past them. Same tokens either way.
  bool backend_sampling = true;
};

// What a finished request reports (exactly once, through Request::on_done).
struct Completion {
  std::vector<TokenId> tokens;  // generated tokens (an end-of-generation token is not included)
  FinishReason finish = FinishReason::Stop;
  int64_t n_prompt = 0;
  int64_t n_cached = 0;  // prompt tokens whose KV came from the cache instead of being computed
  uint64_t seed = 0;     // the sampler's seed (the drawn one when none was given)
  double queue_seconds = 0;   // submit -> slot assigned
  double prompt_seconds = 0;  // slot assigned -> first token sampled
  double generate_seconds = 0;
  std::string error;  // non-empty when the request failed inside the engine (finish is Cancelled then)
};

struct Request {
  std::vector<TokenId> prompt;  // must be non-empty and shorter than the context
  SamplerParams sampling;
  int n_predict = -1;  // < 0: until end of generation or the context is full
  bool ignore_eos = false;
  // Called on the worker thread with each generated token; return false to stop (FinishReason::Cancelled).
  // Keep it short: every other slot waits for it.
  std::function<bool(TokenId token)> on_token;
  // Called once on the worker thread when the request ends for any reason (also after cancel()).
  std::function<void(const Completion& completion)> on_done;
};

struct SchedulerStats {
  int n_slots = 0;
  int slots_busy = 0;
  int64_t queued = 0;
  uint64_t requests_submitted = 0;
  uint64_t requests_finished = 0;
  uint64_t requests_cancelled = 0;
  uint64_t requests_failed = 0;
  uint64_t prompt_tokens = 0;         // prompt tokens of admitted requests
  uint64_t prompt_tokens_cached = 0;  // of which reused from the cache
  uint64_t generated_tokens = 0;
  uint64_t steps = 0;                 // forward calls
  uint64_t steps_backend_sampled = 0; // of which sampled next to the logits (SchedulerOptions::backend_sampling)
  uint64_t batch_tokens = 0;          // tokens over all forward calls
  double busy_seconds = 0;            // time spent in forward + sampling
  int64_t kv_cells_free = 0;
  int64_t kv_cells_total = 0;
};

class Scheduler {
 public:
  // Uses every sequence slot of the engine's cache (EngineOptions::n_seq). Starts the worker thread.
  Scheduler(Engine& engine, const SchedulerOptions& options = {});
  // Cancels whatever is queued or running (their on_done is called) and joins the worker.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request and returns its id. Throws uma::Error (and calls nothing) when the prompt is empty,
  // does not fit the context, or holds a token outside the vocabulary, or the scheduler is stopping.
  uint64_t submit(Request request);
  // Asks a queued or running request to stop; its on_done follows (FinishReason::Cancelled). Unknown or
  // finished ids are ignored. Safe from any thread, including from inside a callback.
  void cancel(uint64_t id);
  SchedulerStats stats() const;
  int n_slots() const { return static_cast<int>(slots_.size()); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Job {
    uint64_t id = 0;
    Request request;
    Clock::time_point submitted, admitted, first_token;
    std::atomic<bool> cancelled{false};
  };
  struct Slot {
    std::shared_ptr<Job> job;         // null when idle
    std::vector<TokenId> cached;      // tokens whose KV this slot's cache holds, in position order
    std::unique_ptr<Sampler> sampler;
    Completion result;
    int64_t n_fed = 0;                // prompt tokens fed (or reused) so far
    TokenId pending = -1;             // sampled token to feed next step (-1: none)
    uint64_t last_used = 0;           // step counter of the last admission, for LRU choice
  };

  void worker();
  void admit(std::unique_lock<std::mutex>& lock);
  void assign(int slot, std::shared_ptr<Job> job);
  void step();
  void finish(int slot, FinishReason reason, std::string error = {});
  void reject(const std::shared_ptr<Job>& job);

  Engine& engine_;
  SchedulerOptions options_;
  std::vector<Slot> slots_;  // touched only by the worker (plus the busy count under mutex_)

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> running_;  // for cancel(): the jobs currently in slots
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  SchedulerStats stats_;

  std::vector<float> logits_;
  std::vector<int> ks_;                                  // per sampling slot of a step: its k on the backend
  std::vector<LogitPenalties> pens_;                      // and its penalties
  std::vector<std::vector<TokenLogit>> candidates_;       // what the backend returned
  Batch batch_;
  uint64_t n_steps_ = 0;
  std::thread thread_;
};

}  // namespace uma
