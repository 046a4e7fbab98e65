#include "runtime/scheduler.h"

#include <algorithm>

#include "uma/error.h"

namespace uma {
namespace {

int64_t common_prefix(const std::vector<TokenId>& a, const std::vector<TokenId>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return static_cast<int64_t>(i);
}

// Only whole pages are reused: a partial page would be written by the new owner while another slot reads it.
int64_t whole_pages(int64_t n) { return n / KvCache::kPageSize * KvCache::kPageSize; }

double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

Scheduler::Scheduler(Engine& engine, const SchedulerOptions& options) : engine_(engine), options_(options) {
  if (options_.n_batch < 1) options_.n_batch = 1;
  slots_.resize(engine_.kv().options().n_seq);
  stats_.n_slots = n_slots();
  stats_.kv_cells_free = engine_.kv().free_cells();
  stats_.kv_cells_total = engine_.kv().capacity();
  thread_ = std::thread([this] { worker(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

uint64_t Scheduler::submit(Request request) {
  const int64_t n = static_cast<int64_t>(request.prompt.size());
  if (n == 0) fail("the prompt is empty; give some text to continue");
  if (n > engine_.n_ctx())
    fail("the prompt has {} tokens but the context of a sequence holds {}; shorten the prompt or raise the context",
         n, engine_.n_ctx());
  const int32_t n_vocab = engine_.model().config().n_vocab;
  for (TokenId t : request.prompt)
    if (t < 0 || t >= n_vocab) fail("the prompt holds token id {}, outside the vocabulary [0, {})", t, n_vocab);
  auto job = std::make_shared<Job>();
  job->request = std::move(request);
  job->submitted = Clock::now();
  uint64_t id = 0;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) fail("the scheduler is shutting down; the request was not accepted");
    id = job->id = next_id_++;
    queue_.push_back(std::move(job));
    ++stats_.requests_submitted;
  }
  wake_.notify_all();
  return id;
}

void Scheduler::cancel(uint64_t id) {
  {
    std::lock_guard lock(mutex_);
    for (auto& j : queue_)
      if (j->id == id) j->cancelled = true;
    for (auto& j : running_)
      if (j->id == id) j->cancelled = true;
  }
  wake_.notify_all();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mutex_);
  SchedulerStats s = stats_;
  s.queued = static_cast<int64_t>(queue_.size());
  return s;
}

void Scheduler::reject(const std::shared_ptr<Job>& job) {
  Completion c;
  c.finish = FinishReason::Cancelled;
  c.n_prompt = static_cast<int64_t>(job->request.prompt.size());
  c.queue_seconds = seconds(Clock::now() - job->submitted);
  {
    std::lock_guard lock(mutex_);
    ++stats_.requests_cancelled;
  }
  if (job->request.on_done) try {
      job->request.on_done(c);
    } catch (...) {
    }
}

void Scheduler::worker() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] {
      if (stopping_ || stats_.slots_busy > 0) return true;
      return std::any_of(queue_.begin(), queue_.end(), [](auto& j) { return j->cancelled.load(); }) ||
             (!queue_.empty() && stats_.slots_busy < n_slots());
    });
    if (stopping_) break;
    // Drop cancelled queued jobs, then give free slots to the oldest waiting ones.
    std::vector<std::shared_ptr<Job>> dropped;
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->cancelled) {
        dropped.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    admit(lock);
    lock.unlock();
    for (auto& j : dropped) reject(j);
    if (stats_.slots_busy > 0) step();  // slots_busy changes only on this thread
    lock.lock();
  }
  std::deque<std::shared_ptr<Job>> queued;
  queued.swap(queue_);
  lock.unlock();
  for (auto& j : queued) reject(j);
  for (int s = 0; s < n_slots(); ++s)
    if (slots_[s].job) finish(s, FinishReason::Cancelled);
}

// Called with mutex_ held, on the worker thread.
void Scheduler::admit(std::unique_lock<std::mutex>&) {
  while (!queue_.empty()) {
    std::shared_ptr<Job> job = queue_.front();
    const std::vector<TokenId>& prompt = job->request.prompt;
    const int64_t limit = static_cast<int64_t>(prompt.size()) - 1;  // the last prompt token is always re-run
    // The free slot whose own cache matches best (ties: least recently used).
    int dst = -1;
    int64_t own = -1;
    for (int s = 0; s < n_slots(); ++s) {
      if (slots_[s].job) continue;
      const int64_t m =
          options_.prefix_reuse ? whole_pages(std::min(common_prefix(slots_[s].cached, prompt), limit)) : 0;
      if (m > own || (m == own && slots_[s].last_used < slots_[dst].last_used)) {
        dst = s;
        own = m;
      }
    }
    if (dst < 0) return;
    queue_.pop_front();
    // A longer prefix in another slot (idle or running: only positions it has already computed count).
    int src = -1;
    int64_t shared = own;
    if (options_.prefix_reuse)
      for (int s = 0; s < n_slots(); ++s) {
        if (s == dst) continue;
        const int64_t m = whole_pages(std::min(common_prefix(slots_[s].cached, prompt), limit));
        if (m > shared) {
          src = s;
          shared = m;
        }
      }
    KvCache& kv = engine_.kv();
    Slot& slot = slots_[dst];
    if (src >= 0) {
      shared = kv.share_prefix(src, dst, shared);
      slot.cached.assign(prompt.begin(), prompt.begin() + shared);
    } else {
      kv.truncate(dst, own);
      slot.cached.resize(own);
      shared = own;
    }
    slot.job = job;
    slot.last_used = ++n_steps_;
    slot.n_fed = shared;
    slot.pending = -1;
    slot.sampler = std::make_unique<Sampler>(job->request.sampling, engine_.model().config().n_vocab);
    for (TokenId t : prompt) slot.sampler->accept(t);
    slot.result = Completion{};
    slot.result.n_prompt = static_cast<int64_t>(prompt.size());
    slot.result.n_cached = shared;
    slot.result.seed = slot.sampler->seed();
    job->admitted = Clock::now();
    running_.push_back(job);
    ++stats_.slots_busy;
    stats_.prompt_tokens += prompt.size();
    stats_.prompt_tokens_cached += shared;
  }
}

void Scheduler::finish(int s, FinishReason reason, std::string error) {
  Slot& slot = slots_[s];
  std::shared_ptr<Job> job = std::move(slot.job);
  slot.job.reset();
  slot.sampler.reset();
  slot.pending = -1;
  Completion c = std::move(slot.result);
  c.finish = reason;
  c.error = std::move(error);
  const auto now = Clock::now();
  c.queue_seconds = seconds(job->admitted - job->submitted);
  if (job->first_token != Clock::time_point{}) {
    c.prompt_seconds = seconds(job->first_token - job->admitted);
    c.generate_seconds = seconds(now - job->first_token);
  } else {
    c.prompt_seconds = seconds(now - job->admitted);
  }
  {
    std::lock_guard lock(mutex_);
    running_.erase(std::find(running_.begin(), running_.end(), job));
    --stats_.slots_busy;
    if (!c.error.empty()) ++stats_.requests_failed;
    else if (reason == FinishReason::Cancelled) ++stats_.requests_cancelled;
    else ++stats_.requests_finished;
  }
  if (job->request.on_done) try {
      job->request.on_done(c);
    } catch (...) {
    }
}

void Scheduler::step() {
  const auto t0 = Clock::now();
  Model& model = engine_.model();
  KvCache& kv = engine_.kv();
  const int64_t n_ctx = engine_.n_ctx();
  for (int s = 0; s < n_slots(); ++s)
    if (slots_[s].job && slots_[s].job->cancelled) finish(s, FinishReason::Cancelled);

  // Grows a slot's cache to n_tokens; on a full cache, first forget what idle slots keep for reuse.
  auto reserve = [&](int s, int64_t n_tokens) {
    try {
      kv.reserve(s, n_tokens);
      return true;
    } catch (const Error&) {
    }
    for (int i = 0; i < n_slots(); ++i)
      if (!slots_[i].job) {
        kv.truncate(i, 0);
        slots_[i].cached.clear();
      }
    try {
      kv.reserve(s, n_tokens);
      return true;
    } catch (const Error& e) {
      finish(s, FinishReason::Cancelled, e.what());
      return false;
    }
  };

  // The batch: first one decode token per generating slot, then prompt chunks within the token budget.
  batch_.clear();
  struct Part {
    int slot;
    int64_t n;        // tokens this slot put in the batch
    bool wants_logits;
  };
  std::vector<Part> parts;
  for (int s = 0; s < n_slots(); ++s) {
    Slot& slot = slots_[s];
    if (!slot.job || slot.pending < 0) continue;
    const int64_t pos = static_cast<int64_t>(slot.cached.size());
    if (!reserve(s, pos + 1)) continue;
    batch_.add(slot.pending, static_cast<int32_t>(pos), s, true);
    parts.push_back({s, 1, true});
  }
  int64_t budget = options_.n_batch - batch_.size();
  // Start prefill at a rotating slot so that long prompts do not starve the ones after them.
  const int first = static_cast<int>(n_steps_ % n_slots());
  for (int k = 0; k < n_slots() && budget > 0; ++k) {
    const int s = (first + k) % n_slots();
    Slot& slot = slots_[s];
    if (!slot.job || slot.pending >= 0) continue;
    const auto& prompt = slot.job->request.prompt;
    const int64_t n_prompt = static_cast<int64_t>(prompt.size());
    if (slot.n_fed >= n_prompt) continue;
    const int64_t end = std::min(n_prompt, slot.n_fed + budget);
    if (!reserve(s, end)) continue;
    for (int64_t j = slot.n_fed; j < end; ++j) batch_.add(prompt[j], static_cast<int32_t>(j), s, j + 1 == n_prompt);
    parts.push_back({s, end - slot.n_fed, end == n_prompt});
    budget -= end - slot.n_fed;
  }
  ++n_steps_;
  if (batch_.size() == 0) return;

  // Sampling next to the logits when every sampling slot's chain allows it (see SchedulerOptions).
  ks_.clear();
  pens_.clear();
  for (const Part& p : parts)
    if (p.wants_logits) ks_.push_back(options_.backend_sampling ? slots_[p.slot].sampler->backend_candidates() : 0);
  const bool on_backend = !ks_.empty() && std::all_of(ks_.begin(), ks_.end(), [](int k) { return k > 0; });
  if (on_backend)
    for (const Part& p : parts)
      if (p.wants_logits) pens_.push_back(slots_[p.slot].sampler->penalties());
  try {
    if (on_backend) model.forward_top_k_rows(batch_, kv, ks_, pens_, candidates_);
    else model.forward(batch_, kv, logits_, nullptr);
  } catch (const std::exception& e) {
    // The cache state of these slots is unknown now: forget it.
    for (const Part& p : parts) {
      kv.truncate(p.slot, 0);
      slots_[p.slot].cached.clear();
      if (slots_[p.slot].job) finish(p.slot, FinishReason::Cancelled, e.what());
    }
    return;
  }

  // Record what the cache now holds, then sample for every slot that asked for logits (in batch order).
  const int32_t n_vocab = model.config().n_vocab;
  const Tokenizer& tok = engine_.tokenizer();
  int64_t row = 0;
  uint64_t n_generated = 0;
  for (const Part& p : parts) {
    Slot& slot = slots_[p.slot];
    const auto& prompt = slot.job->request.prompt;
    if (slot.pending >= 0) {
      slot.cached.push_back(slot.pending);
      slot.pending = -1;
    } else {
      slot.cached.insert(slot.cached.end(), prompt.begin() + slot.n_fed, prompt.begin() + slot.n_fed + p.n);
      slot.n_fed += p.n;
    }
    if (!p.wants_logits) continue;
    const Request& req = slot.job->request;
    Sampler& sampler = *slot.sampler;
    TokenId next;
    if (!on_backend) {
      next = sampler.sample(std::span<float>(logits_.data() + row * n_vocab, n_vocab));
    } else if (sampler.whole_row()) {  // the head and the row's mass; the row itself only when needed
      next = sample_head_of(model, sampler, row, candidates_[row]);
    } else {
      next = sampler.sample_candidates(candidates_[row]);
    }
    ++row;
    slot.sampler->accept(next);
    if (slot.job->first_token == Clock::time_point{}) slot.job->first_token = Clock::now();
    if (!req.ignore_eos && tok.is_eog(next)) {
      finish(p.slot, FinishReason::Stop);
      continue;
    }
    slot.result.tokens.push_back(next);
    ++n_generated;
    bool go_on = !slot.job->cancelled;
    if (go_on && req.on_token) try {
        go_on = req.on_token(next);
      } catch (...) {
        go_on = false;
      }
    if (!go_on) {
      finish(p.slot, FinishReason::Cancelled);
    } else if (static_cast<int64_t>(slot.cached.size()) >= n_ctx ||
               (req.n_predict >= 0 && static_cast<int64_t>(slot.result.tokens.size()) >= req.n_predict)) {
      finish(p.slot, FinishReason::Length);  // context full, or as many tokens as asked for
    } else {
      slot.pending = next;
    }
  }
  std::lock_guard lock(mutex_);
  ++stats_.steps;
  stats_.steps_backend_sampled += on_backend;
  stats_.batch_tokens += batch_.size();
  stats_.generated_tokens += n_generated;
  stats_.busy_seconds += seconds(Clock::now() - t0);
  stats_.kv_cells_free = kv.free_cells();
  stats_.kv_cells_total = kv.capacity();
}

}  // namespace uma
