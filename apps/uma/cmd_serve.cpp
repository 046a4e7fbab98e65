// uma serve: an OpenAI-compatible HTTP server over one Engine and its Scheduler (continuous batching), plus
// character cards and the web chat page. HTTP and JSON live only here (apps/); see docs/SERVER.md.
#ifdef UMA_SERVER  // defined by cmake/web.cmake, which also links cpp-httplib
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "runtime/model_ref.h"
#include "runtime/scheduler.h"
#include "uma/command.h"
#include "uma/error.h"
#include "uma/server_cards.h"
#include "uma/server_openai.h"
#include "uma/server_web.h"

namespace uma::app {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct ServeArgs {
  std::string model = "stories260K";
  std::string host = "127.0.0.1";
  int port = 8080;
  int parallel = 4;
  int64_t n_ctx = 0;
  int n_threads = 0;
  std::string kv_type = "auto";
  std::string device = "auto";
  int64_t n_batch = 512;
  std::string api_key;
  std::string characters;
  size_t max_body = 4 << 20;
  int http_threads = 0;
  int max_n = 8;
  bool no_prefix_reuse = false;
};

// One HTTP request's generations (n choices): the scheduler's callbacks fill it on the worker thread,
// the connection's thread drains it.
struct Exchange {
  struct Choice {
    std::unique_ptr<TextStream> text;
    std::string content;  // everything sent so far (for the non-streaming answer)
    std::string finish_reason;
    Completion completion;
    bool done = false;
    bool reported = false;  // the streaming finish chunk went out
  };
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<std::pair<int, std::string>> deltas;  // (choice, text) not yet sent
  std::vector<Choice> choices;
  std::vector<uint64_t> ids;
  int n_done = 0;
};

std::string random_id(const char* prefix) {
  static std::mutex m;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard lock(m);
  return fmt::format("{}{:016x}", prefix, rng());
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// cpp-httplib binds with SO_REUSEPORT, so a second server on a busy port would silently share it. A probe
// bind without that option fails with EADDRINUSE when something already listens there.
bool port_in_use(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res) return false;
  const int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  bool busy = false;
  if (fd >= 0) {
    const int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);  // TIME_WAIT leftovers are fine
    busy = ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 && errno == EADDRINUSE;
    ::close(fd);
  }
  freeaddrinfo(res);
  return busy;
}

size_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  size_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

class Server {
 public:
  Server(const ServeArgs& args, Engine& engine, Scheduler& scheduler, std::vector<CharacterCard> cards)
      : args_(args), engine_(engine), scheduler_(scheduler), format_(engine), cards_(std::move(cards)),
        model_id_(engine.file().path().stem().string()), started_(unix_time()) {}

  void install(httplib::Server& http) {
    http.set_payload_max_length(args_.max_body);
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      ++http_requests_;
      if (args_.api_key.empty() || req.path == "/" || req.path == "/health" || req.method == "OPTIONS")
        return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") == "Bearer " + args_.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      reply_error(res, ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                "invalid_request_error", {}, "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404) reply_error(res, ApiError(404, "no route for " + req.method + " " + req.path));
      else if (res.status == 413) reply_error(res, ApiError(413, "the request body is too large"));
      else reply_error(res, ApiError(res.status, "request failed", "invalid_request_error"));
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      reply_error(res, ApiError(500, what, "server_error"));
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      const std::string_view page = web_index_html();
      res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) { health(res); });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) { metrics(res); });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { models(res); });
    http.Get("/v1/characters", [this](const httplib::Request&, httplib::Response& res) { characters(res); });
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(res, [&] { complete(req, res, /*chat=*/true); });
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(res, [&] { complete(req, res, /*chat=*/false); });
    });
  }

 private:
  static void reply_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(error_json(e).dump(), "application/json");
  }

  template <typename F>
  void guarded(httplib::Response& res, F&& f) {
    try {
      f();
    } catch (const ApiError& e) {
      ++http_errors_;
      reply_error(res, e);
    } catch (const Error& e) {
      ++http_errors_;
      reply_error(res, ApiError(400, e.what()));
    } catch (const json::exception& e) {
      ++http_errors_;
      reply_error(res, ApiError(400, std::string("bad request: ") + e.what()));
    }
  }

  void health(httplib::Response& res) {
    const SchedulerStats s = scheduler_.stats();
    json j = {{"status", "ok"},          {"slots_total", s.n_slots}, {"slots_busy", s.slots_busy},
              {"slots_idle", s.n_slots - s.slots_busy}, {"queued", s.queued}};
    res.set_content(j.dump(), "application/json");
  }

  void metrics(httplib::Response& res) {
    const SchedulerStats s = scheduler_.stats();
    std::string out;
    auto metric = [&](const char* name, const char* type, const char* help, double value) {
      out += fmt::format("# HELP uma_{} {}\n# TYPE uma_{} {}\numa_{} {}\n", name, help, name, type, name, value);
    };
    metric("slots_total", "gauge", "Sequence slots (--parallel).", s.n_slots);
    metric("slots_busy", "gauge", "Slots running a request.", s.slots_busy);
    metric("requests_queued", "gauge", "Requests waiting for a slot.", static_cast<double>(s.queued));
    metric("requests_submitted_total", "counter", "Generations submitted to the scheduler.", s.requests_submitted);
    metric("requests_finished_total", "counter", "Generations that ended normally.", s.requests_finished);
    metric("requests_cancelled_total", "counter", "Generations cancelled (stop strings, disconnects).",
           s.requests_cancelled);
    metric("requests_failed_total", "counter", "Generations that failed in the engine.", s.requests_failed);
    metric("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", s.prompt_tokens);
    metric("prompt_tokens_cached_total", "counter", "Prompt tokens reused from the KV cache.", s.prompt_tokens_cached);
    metric("generated_tokens_total", "counter", "Tokens generated.", s.generated_tokens);
    metric("decode_steps_total", "counter", "Batched forward passes.", s.steps);
    metric("batch_tokens_total", "counter", "Tokens over all forward passes.", s.batch_tokens);
    metric("busy_seconds_total", "counter", "Seconds spent in forward passes and sampling.", s.busy_seconds);
    metric("kv_cells_free", "gauge", "Free KV cache cells.", static_cast<double>(s.kv_cells_free));
    metric("kv_cells_total", "gauge", "KV cache cells.", static_cast<double>(s.kv_cells_total));
    metric("http_requests_total", "counter", "HTTP requests received.", http_requests_.load());
    metric("http_request_errors_total", "counter", "Requests answered with an error.", http_errors_.load());
    metric("resident_memory_bytes", "gauge", "Resident set size of the process.", static_cast<double>(rss_bytes()));
    res.set_content(out, "text/plain; version=0.0.4");
  }

  json model_meta() const {
    const ModelConfig& c = engine_.model().config();
    return {{"arch", c.arch},
            {"n_ctx", engine_.n_ctx()},
            {"n_ctx_train", c.n_ctx_train},
            {"n_vocab", c.n_vocab},
            {"n_layer", c.n_layer},
            {"parallel", scheduler_.n_slots()},
            {"chat_template", format_.name()},
            {"characters", cards_.size()}};
  }

  void models(httplib::Response& res) {
    json data = json::array();
    data.push_back({{"id", model_id_}, {"object", "model"}, {"created", started_}, {"owned_by", "uma"},
                    {"meta", model_meta()}});
    for (const auto& c : cards_)
      data.push_back({{"id", "uma:" + c.id}, {"object", "model"}, {"created", started_}, {"owned_by", "uma"},
                      {"meta", {{"character", c.id}, {"name", c.name}}}});
    res.set_content(json{{"object", "list"}, {"data", data}}.dump(), "application/json");
  }

  void characters(httplib::Response& res) {
    json data = json::array();
    for (const auto& c : cards_)
      data.push_back({{"id", c.id},
                      {"object", "character"},
                      {"name", c.name},
                      {"model", "uma:" + c.id},
                      {"description", c.description},
                      {"personality", c.personality},
                      {"scenario", c.scenario},
                      {"first_mes", c.first_mes},
                      {"creator_notes", c.creator_notes},
                      {"tags", c.tags}});
    res.set_content(json{{"object", "list"}, {"data", data}}.dump(), "application/json");
  }

  const CharacterCard* find_card(const std::string& id) const {
    for (const auto& c : cards_)
      if (c.id == id) return &c;
    return nullptr;
  }

  // Messages -> prompt tokens, with the selected character's system prompt, greeting and instructions.
  std::vector<TokenId> chat_prompt(const json& body, const CharacterCard* card, std::vector<std::string>& stops) {
    std::vector<ChatMessage> messages = parse_messages(body);
    PromptFormat::Labels labels;
    if (card) {
      std::string user = optional_string(body, "user_name");
      if (user.empty()) user = "User";
      const CharacterPrompt cp = character_prompt(*card, user);
      labels = {user, card->name};
      // One system message: the card's, then the client's own if it sent one first.
      if (!messages.empty() && messages[0].role == "system") {
        messages[0].content = cp.system + "\n\n" + messages[0].content;
      } else {
        messages.insert(messages.begin(), ChatMessage{"system", cp.system});
      }
      // The greeting opens the conversation unless the client already shows an assistant turn first.
      if (!cp.greeting.empty() && messages.size() > 1 && messages[1].role == "user")
        messages.insert(messages.begin() + 1, ChatMessage{"assistant", cp.greeting});
      if (!cp.post_history.empty() && messages.back().role == "user")
        messages.back().content += "\n\n" + cp.post_history;
    }
    for (auto& s : format_.stops(labels)) stops.push_back(s);
    try {
      return format_.tokenize(format_.render(messages, labels));
    } catch (const Error& e) {
      throw ApiError(400, e.what());
    }
  }

  std::vector<TokenId> text_prompt(const json& body) {
    auto it = body.find("prompt");
    if (it == body.end() || it->is_null()) throw ApiError(400, "'prompt' is required", "invalid_request_error", "prompt");
    const json* p = &*it;
    if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
    if (p->is_string()) return engine_.tokenizer().encode(p->get<std::string>(), true, true);
    if (p->is_array() && !p->empty() && std::all_of(p->begin(), p->end(), [](auto& x) { return x.is_number_integer(); }))
      return p->get<std::vector<TokenId>>();
    throw ApiError(400, "'prompt' must be a string, one-element array of strings, or an array of token ids",
                   "invalid_request_error", "prompt");
  }

  void complete(const httplib::Request& req, httplib::Response& res, bool chat) {
    const json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
    if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
    GenerationParams gp = parse_generation_params(body, args_.max_n);
    // Character: the `character` field, or the model name "uma:<id>".
    std::string model = optional_string(body, "model");
    std::string character = optional_string(body, "character");
    if (character.empty() && model.starts_with("uma:")) character = model.substr(4);
    const CharacterCard* card = nullptr;
    if (!character.empty() && !(card = find_card(character)))
      throw ApiError(404, "no character '" + character + "'; GET /v1/characters lists them", "invalid_request_error",
                     "character", "model_not_found");
    if (model.empty()) model = model_id_;

    std::vector<std::string> stops = gp.stop;
    const std::vector<TokenId> prompt = chat ? chat_prompt(body, card, stops) : text_prompt(body);
    const int64_t n_prompt = static_cast<int64_t>(prompt.size());
    if (n_prompt == 0) throw ApiError(400, "the prompt is empty", "invalid_request_error", "prompt");
    if (n_prompt >= engine_.n_ctx())
      throw ApiError(400,
                     fmt::format("the prompt has {} tokens but the context of a request holds {} (and needs room "
                                 "for at least one generated token); shorten it or start the server with a larger --ctx",
                                 n_prompt, engine_.n_ctx()),
                     "invalid_request_error", chat ? "messages" : "prompt", "context_length_exceeded");

    auto ex = std::make_shared<Exchange>();
    ex->choices.resize(gp.n);
    for (int i = 0; i < gp.n; ++i) {
      ex->choices[i].text = std::make_unique<TextStream>(engine_.tokenizer(), stops);
      Request r;
      r.prompt = prompt;
      r.sampling = gp.sampling;
      if (gp.sampling.seed != SamplerParams{}.seed) r.sampling.seed = gp.sampling.seed + i;  // n choices differ
      r.n_predict = gp.max_tokens > 0 ? static_cast<int>(gp.max_tokens) : -1;
      r.ignore_eos = gp.ignore_eos;
      r.on_token = [ex, i](TokenId t) {
        Exchange::Choice& c = ex->choices[i];  // the TextStream is only touched on the worker thread
        std::string text = c.text->push(t);
        if (!text.empty()) {
          std::lock_guard lock(ex->mutex);
          ex->deltas.emplace_back(i, std::move(text));
        }
        ex->cv.notify_all();
        return !c.text->stopped();
      };
      r.on_done = [ex, i](const Completion& done) {
        Exchange::Choice& c = ex->choices[i];
        std::string tail = c.text->finish();
        std::lock_guard lock(ex->mutex);
        if (!tail.empty()) ex->deltas.emplace_back(i, std::move(tail));
        c.completion = done;
        c.finish_reason = c.text->stopped() || done.finish == FinishReason::Stop ? "stop"
                          : done.finish == FinishReason::Length              ? "length"
                                                                             : "cancelled";
        c.done = true;
        ++ex->n_done;
        ex->cv.notify_all();
      };
      try {
        ex->ids.push_back(scheduler_.submit(std::move(r)));
      } catch (const Error& e) {
        for (uint64_t id : ex->ids) scheduler_.cancel(id);
        throw ApiError(400, e.what());
      }
    }

    const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
    const int64_t created = unix_time();
    auto cancel_all = [this, ex] {
      for (uint64_t id : ex->ids) scheduler_.cancel(id);
    };
    auto usage = [ex, n_prompt] {
      int64_t n_gen = 0, n_cached = 0;
      for (const auto& c : ex->choices) {
        n_gen += static_cast<int64_t>(c.completion.tokens.size());
        n_cached = std::max(n_cached, c.completion.n_cached);
      }
      return json{{"prompt_tokens", n_prompt},
                  {"completion_tokens", n_gen},
                  {"total_tokens", n_prompt + n_gen},
                  {"prompt_tokens_details", {{"cached_tokens", n_cached}}}};
    };
    auto chunk = [=](json choices) {
      json j = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                {"model", model}, {"system_fingerprint", "uma"}, {"choices", std::move(choices)}};
      return j;
    };
    auto sse = [](httplib::DataSink& sink, const json& j) {
      const std::string line = "data: " + j.dump() + "\n\n";
      return sink.write(line.data(), line.size());
    };

    // The generation runs while this provider waits for it; a closed connection cancels it (and the
    // releaser cancels it too when the provider never ran). Every choice's on_done always arrives.
    const bool stream = gp.stream, include_usage = gp.include_usage;
    res.set_chunked_content_provider(
        stream ? "text/event-stream" : "application/json",
        [=, this](size_t, httplib::DataSink& sink) {
          if (stream && chat) {  // OpenAI opens a chat stream with the role
            json first = json::array();
            for (int i = 0; i < static_cast<int>(ex->choices.size()); ++i)
              first.push_back({{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                               {"logprobs", nullptr}, {"finish_reason", nullptr}});
            if (!sse(sink, chunk(first))) return cancel_all(), false;
          }
          for (;;) {
            std::vector<std::pair<int, std::string>> deltas;
            std::vector<int> finished;
            bool all_done;
            {
              std::unique_lock lock(ex->mutex);
              ex->cv.wait_for(lock, std::chrono::milliseconds(100), [&] {
                if (!ex->deltas.empty()) return true;
                for (auto& c : ex->choices)
                  if (c.done && !c.reported) return true;
                return false;
              });
              deltas.swap(ex->deltas);
              for (int i = 0; i < static_cast<int>(ex->choices.size()); ++i) {
                auto& c = ex->choices[i];
                if (c.done && !c.reported) c.reported = true, finished.push_back(i);
              }
              all_done = ex->n_done == static_cast<int>(ex->choices.size());
            }
            if (!sink.is_writable()) return cancel_all(), false;
            for (auto& [i, text] : deltas) {
              ex->choices[i].content += text;
              if (!stream) continue;
              json c = chat ? json{{"index", i}, {"delta", {{"content", text}}}, {"logprobs", nullptr},
                                   {"finish_reason", nullptr}}
                            : json{{"index", i}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
              if (!sse(sink, chunk(json::array({c})))) return cancel_all(), false;
            }
            for (int i : finished) {
              const auto& ch = ex->choices[i];
              if (!ch.completion.error.empty()) {
                const json err = error_json(ApiError(500, ch.completion.error, "server_error"));
                if (stream) sse(sink, err);
                else sink.write(err.dump().data(), err.dump().size());
                sink.done();
                return cancel_all(), true;
              }
              if (!stream) continue;
              json c = chat ? json{{"index", i}, {"delta", json::object()}, {"logprobs", nullptr},
                                   {"finish_reason", ch.finish_reason}}
                            : json{{"index", i}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", ch.finish_reason}};
              if (!sse(sink, chunk(json::array({c})))) return cancel_all(), false;
            }
            if (!all_done) continue;
            if (stream) {
              if (include_usage) {
                json last = chunk(json::array());
                last["usage"] = usage();
                if (!sse(sink, last)) return false;
              }
              static constexpr std::string_view kDone = "data: [DONE]\n\n";
              sink.write(kDone.data(), kDone.size());
            } else {
              json choices = json::array();
              for (int i = 0; i < static_cast<int>(ex->choices.size()); ++i) {
                const auto& ch = ex->choices[i];
                choices.push_back(chat ? json{{"index", i},
                                              {"message", {{"role", "assistant"}, {"content", ch.content}}},
                                              {"logprobs", nullptr},
                                              {"finish_reason", ch.finish_reason}}
                                       : json{{"index", i}, {"text", ch.content}, {"logprobs", nullptr},
                                              {"finish_reason", ch.finish_reason}});
              }
              json j = chunk(choices);
              j["object"] = chat ? "chat.completion" : "text_completion";
              j["usage"] = usage();
              const std::string text = j.dump();
              sink.write(text.data(), text.size());
            }
            sink.done();
            return true;
          }
        },
        [cancel_all](bool) { cancel_all(); });
  }

  const ServeArgs& args_;
  Engine& engine_;
  Scheduler& scheduler_;
  PromptFormat format_;
  std::vector<CharacterCard> cards_;
  std::string model_id_;
  int64_t started_;
  std::atomic<uint64_t> http_requests_{0}, http_errors_{0};
};

int serve(const ServeArgs& a) {
  if (a.parallel < 1) fail("--parallel must be at least 1");
  // SIGINT/SIGTERM go to one thread that stops the server: block them before any thread starts (the
  // engine's thread pool included), so that no other thread takes the default action and kills the process.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  std::atomic<httplib::Server*> listening{nullptr};
  std::atomic<bool> leaving{false};
  std::thread stopper([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (leaving) return;  // serve() is returning and woke this thread up
    if (httplib::Server* h = listening.load()) h->stop();
    else std::_Exit(128 + sig);  // still loading: nothing to shut down gracefully
  });
  struct Join {
    std::thread& t;
    std::atomic<bool>& leaving;
    ~Join() {
      leaving = true;
      pthread_kill(t.native_handle(), SIGTERM);  // harmless after a signal already ended the sigwait
      t.join();
    }
  } join_stopper{stopper, leaving};
  std::vector<CharacterCard> cards;
  if (!a.characters.empty()) {
    std::vector<std::string> warnings;
    cards = load_character_cards(a.characters, warnings);
    for (const auto& w : warnings) std::fprintf(stderr, "warning: character card skipped: %s\n", w.c_str());
  }
  EngineOptions eo;
  eo.n_threads = a.n_threads;
  eo.kv_type = a.kv_type;
  eo.device = a.device;
  eo.n_seq = a.parallel;
  // Whole pages per sequence, so that every slot can always grow to its full context.
  eo.n_ctx = (a.n_ctx + KvCache::kPageSize - 1) / KvCache::kPageSize * KvCache::kPageSize;
  eo.n_batch = a.n_batch;
  auto engine = Engine::load(resolve_model(a.model), eo);
  SchedulerOptions so;
  so.n_batch = a.n_batch;
  so.prefix_reuse = !a.no_prefix_reuse;

  Scheduler scheduler(*engine, so);
  Server server(a, *engine, scheduler, std::move(cards));
  httplib::Server http;
  // A streaming response holds its connection's thread, so the pool bounds concurrent streams.
  const int threads = a.http_threads > 0 ? a.http_threads : std::max(64, 8 * a.parallel);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_keep_alive_timeout(5);
  http.set_read_timeout(30);
  http.set_write_timeout(10);
  server.install(http);
  if (a.port > 0 && port_in_use(a.host, a.port))
    fail("port {} on {} is already in use; pick another --port", a.port, a.host);
  if (!http.bind_to_port(a.host, a.port))
    fail("cannot listen on {}:{} (in use, or not an address of this machine); pick another --port or --host", a.host,
         a.port);
  listening = &http;
  std::fprintf(stderr, "uma serve: %s on http://%s:%d  (%d slots x %lld tokens, chat format: %s%s)\n",
               engine->file().path().filename().string().c_str(), a.host.c_str(), a.port, a.parallel,
               static_cast<long long>(engine->n_ctx()), engine->file().has("tokenizer.chat_template") ? "model's template" : "fallback",
               a.api_key.empty() ? "" : ", API key required");
  const bool ok = http.listen_after_bind();
  listening = nullptr;
  return ok ? 0 : 1;
}

const RegisterCommand reg{{"serve", "Serve the OpenAI API and a web chat page", [](CLI::App& sub) {
  auto a = std::make_shared<ServeArgs>();
  sub.add_option("-m,--model", a->model, "Model path or reference")->capture_default_str();
  sub.add_option("--host", a->host, "Address to bind (loopback unless told otherwise)")->capture_default_str();
  sub.add_option("--port", a->port, "TCP port")->capture_default_str();
  sub.add_option("--parallel", a->parallel, "Sequence slots decoded together (continuous batching)")
      ->capture_default_str();
  sub.add_option("-c,--ctx", a->n_ctx, "Context per slot in tokens (0: the model's, at most 4096)")->capture_default_str();
  sub.add_option("-t,--threads", a->n_threads, "CPU threads (0: all)")->capture_default_str();
  sub.add_option("--device", a->device, "cpu, cuda, cuda:N or auto (a GPU when the model fits)")->capture_default_str();
  sub.add_option("--kv-type", a->kv_type, "KV cache cells: f32, f16 or q8_0 (GPU only), or auto (f16 on a GPU)")->capture_default_str();
  sub.add_option("-b,--batch", a->n_batch, "Tokens per forward step over all slots")->capture_default_str();
  sub.add_option("--api-key", a->api_key, "Require 'Authorization: Bearer KEY' on /v1/* and /metrics");
  sub.add_option("--characters", a->characters, "Directory of character cards (*.json, *.png)");
  sub.add_option("--max-body", a->max_body, "Largest request body in bytes")->capture_default_str();
  sub.add_option("--max-n", a->max_n, "Largest 'n' (choices per request)")->capture_default_str();
  sub.add_option("--http-threads", a->http_threads, "HTTP worker threads (0: max(64, 8 x parallel))");
  sub.add_flag("--no-prefix-reuse", a->no_prefix_reuse, "Do not reuse cached prompt prefixes");
  return [a] { return serve(*a); };
}}};

}  // namespace
}  // namespace uma::app
#endif  // UMA_SERVER
