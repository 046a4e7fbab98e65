// uma run: generate text from a prompt, streaming tokens as they come, then a line of timings.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "chat/prompt_format.h"
#include "plan/local.h"
#include "runtime/engine.h"
#include "uma/error.h"
#include "runtime/model_ref.h"
#include "uma/command.h"

namespace uma::app {
namespace {

struct RunArgs {
  std::string model = "stories260K";
  std::string prompt = "Once upon a time";
  int n_predict = 128;
  int64_t n_ctx = 0;
  int n_threads = 0;
  std::string device = "auto";
  std::string kv_type = "auto";
  SamplerParams sampling;
  bool ignore_eos = false;
  bool no_special = false;
  bool no_plan = false;
  bool chat = false;
  std::string system;
  bool touch_kv = false;  // diagnostic: make the whole KV cache resident, as a full context would
  bool host_sampling = false;  // diagnostic: every logits row to the host (GenerateOptions::backend_sampling)
};

// The GPU `index` of this host as a one-device machine for the planner (nvidia-smi's free memory), if the
// build can use it.
std::optional<plan::Machine> local_gpu_machine(int index) {
#ifdef UMA_HAVE_CUDA
  if (cuda_device_count() <= index) return std::nullopt;
  for (const plan::Machine& m : plan::detect_local_machines(plan::BandwidthSource::cache_only))
    if (!m.devices.empty() && m.devices.front().backend == plan::Backend::cuda && int(m.devices.size()) > index)
      return plan::Machine{"local " + m.devices[size_t(index)].label, {m.devices[size_t(index)]}};
#else
  (void)index;
#endif
  return std::nullopt;
}

// Prints the plan for the device the run will use and refuses, with the numbers, a model that will not fit —
// before anything is loaded. Returns the device to load on: `auto` becomes the GPU when the plan says the
// model fits it (with the cache type the GPU would use), else the CPU, so the plan printed is the one run.
std::string plan_or_refuse(const std::filesystem::path& path, int64_t n_ctx, const std::string& kv_type,
                           const std::string& device) {
  auto file = GgufFile::open(path);
  plan::PlanInputs in = plan::inputs_for_gguf(*file);
  in.n_ctx = n_ctx > 0 ? n_ctx : default_n_ctx(*file);
  auto planned = [&](const plan::Machine& m, bool gpu) {
    // The engine's cache: f16 on a GPU unless asked otherwise or latent attention (MLA keeps f32), f32 on the CPU.
    const bool f16 = kv_type == "f16" || (kv_type == "auto" && gpu && !in.model.is_mla());
    in.kv_type = kv_type == "q8_0" ? GgmlType::Q8_0 : f16 ? GgmlType::F16 : GgmlType::F32;
    in.machine = m;
    return plan::make_plan(in);
  };
  const bool cuda = device == "cuda" || device.rfind("cuda:", 0) == 0;
  if (cuda || device == "auto") {
    const int index = device.rfind("cuda:", 0) == 0 ? std::atoi(device.c_str() + 5) : 0;
    if (const auto gpu = local_gpu_machine(index)) {
      const plan::Plan p = planned(*gpu, true);
      const std::string why = plan::check_fits_or_explain(p);
      if (why.empty() || cuda) {
        std::fputs(plan::format_plan_summary(p).c_str(), stderr);
        if (!why.empty()) fail("{}", why);
        return device == "auto" ? "cuda:" + std::to_string(index) : device;
      }
      std::fprintf(stderr, "does not fit %s (%s); planning for the CPU instead\n", gpu->label.c_str(), why.c_str());
    }
    // cuda without a usable GPU: the engine says why when it loads.
    if (cuda) return device;
  }
  const plan::Plan p = planned(plan::local_cpu_machine(), false);
  std::fputs(plan::format_plan_summary(p).c_str(), stderr);
  if (const std::string why = plan::check_fits_or_explain(p); !why.empty()) fail("{}", why);
  return device == "auto" ? "cpu" : device;
}

int run(const RunArgs& a) {
  const auto path = resolve_model(a.model);
  const std::string device = a.no_plan ? a.device : plan_or_refuse(path, a.n_ctx, a.kv_type, a.device);
  EngineOptions eo;
  eo.n_threads = a.n_threads;
  eo.device = device;
  eo.kv_type = a.kv_type;
  eo.n_ctx = a.n_ctx;
  auto engine = Engine::load(path, eo);
  if (a.touch_kv && engine->backend().name() == "cpu") {  // peak memory of a full context without running one (tests/e2e/test_plan_memory.cpp)
    const KvCacheOptions& ko = engine->kv().options();
    for (int l = 0; l < ko.n_layer; ++l) {
      std::fill_n(engine->kv().k(l), ko.n_cells * ko.k_width, 0.0f);
      if (ko.v_width) std::fill_n(engine->kv().v(l), ko.n_cells * ko.v_width, 0.0f);
    }
  }
  const Tokenizer& tok = engine->tokenizer();
  // --chat: the prompt is one user turn rendered with the model's chat template (or a documented fallback);
  // only the reply is printed, and it ends at the format's stop strings.
  std::vector<TokenId> prompt;
  std::vector<std::string> stops;
  std::unique_ptr<PromptFormat> format;
  if (a.chat) {
    format = std::make_unique<PromptFormat>(*engine);
    std::vector<ChatMessage> messages;
    if (!a.system.empty()) messages.push_back({"system", a.system});
    messages.push_back({"user", a.prompt});
    prompt = format->tokenize(format->render(messages, {}));
    stops = format->stops({});
  } else {
    prompt = tok.encode(a.prompt, /*add_special=*/true, /*parse_special=*/!a.no_special);
    std::fputs(a.prompt.c_str(), stdout);
    std::fflush(stdout);
  }

  GenerateOptions go;
  go.n_predict = a.n_predict;
  go.sampling = a.sampling;
  go.ignore_eos = a.ignore_eos;
  go.backend_sampling = !a.host_sampling;
  TextStream stream(tok, stops);
  auto result = generate(*engine, 0, prompt, go, [&](TokenId t) {
    const std::string text = stream.push(t);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return !stream.stopped();
  });
  const std::string rest = stream.finish();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  if (result.finish == FinishReason::Length && a.n_predict >= 0 &&
      static_cast<int>(result.tokens.size()) < a.n_predict)
    std::fprintf(stderr, "note: stopped after %zu tokens because the context of %lld tokens is full; raise -c\n",
                 result.tokens.size(), static_cast<long long>(engine->n_ctx()));
  const double pp = result.prompt_seconds > 0 ? result.n_prompt / result.prompt_seconds : 0;
  const double tg = result.generate_seconds > 0 ? result.tokens.size() / result.generate_seconds : 0;
  std::fprintf(stderr, "prompt: %lld tokens, %.1f t/s | generation: %zu tokens, %.1f t/s | seed %llu\n",
               static_cast<long long>(result.n_prompt), pp, result.tokens.size(), tg,
               static_cast<unsigned long long>(result.seed));
  return 0;
}

const RegisterCommand reg{{"run", "Generate text from a prompt", [](CLI::App& sub) {
  auto a = std::make_shared<RunArgs>();
  sub.add_option("-m,--model", a->model, "Model path or reference (name in UMA_MODEL_PATH/~/.cache/uma, hf:owner/repo/file.gguf)")
      ->capture_default_str();
  sub.add_option("-p,--prompt", a->prompt, "Prompt text")->capture_default_str();
  sub.add_option("-n,--n-predict", a->n_predict, "Tokens to generate (-1: until end or context full)")->capture_default_str();
  sub.add_option("-c,--ctx-size", a->n_ctx, "Context size in tokens (0: model's, at most 4096)")->capture_default_str();
  sub.add_option("-t,--threads", a->n_threads, "CPU threads (0: all)")->capture_default_str();
  sub.add_option("--device", a->device, "cpu, cuda, cuda:N or auto (a GPU when the model fits)")->capture_default_str();
  sub.add_option("--kv-type", a->kv_type, "KV cache cells: f32, f16 or q8_0 (GPU only), or auto (f16 on a GPU)")->capture_default_str();
  sub.add_option("--temp", a->sampling.temperature, "Temperature (0: greedy)")->capture_default_str();
  sub.add_option("--top-k", a->sampling.top_k, "Top-k (0: off)")->capture_default_str();
  sub.add_option("--top-p", a->sampling.top_p, "Top-p (1: off)")->capture_default_str();
  sub.add_option("--min-p", a->sampling.min_p, "Min-p (0: off)")->capture_default_str();
  sub.add_option("--repeat-penalty", a->sampling.repeat_penalty, "Repetition penalty (1: off)")->capture_default_str();
  sub.add_option("--repeat-last-n", a->sampling.repeat_last_n, "Tokens the penalties look back over")->capture_default_str();
  sub.add_option("--presence-penalty", a->sampling.presence_penalty, "Presence penalty")->capture_default_str();
  sub.add_option("--frequency-penalty", a->sampling.frequency_penalty, "Frequency penalty")->capture_default_str();
  sub.add_option("-s,--seed", a->sampling.seed, "RNG seed (default: random)");
  sub.add_flag("--ignore-eos", a->ignore_eos, "Keep generating past end-of-generation tokens");
  sub.add_flag("--no-plan", a->no_plan, "Skip the memory plan printed (and enforced) before loading");
  sub.add_flag("--host-sampling", a->host_sampling,
               "Diagnostic: sample every token from the whole row of logits on the host (same tokens, slower)")
      ->group("");
  sub.add_flag("--touch-kv", a->touch_kv, "Diagnostic: write the whole KV cache once (peak memory of a full context)")
      ->group("");
  sub.add_flag("--chat", a->chat, "Treat the prompt as a user message in the model's chat template; print only the reply");
  sub.add_option("--system", a->system, "System message for --chat");
  sub.add_flag("--no-special", a->no_special, "Treat special-token text in the prompt as plain text");
  return [a] { return run(*a); };
}}};

}  // namespace
}  // namespace uma::app
