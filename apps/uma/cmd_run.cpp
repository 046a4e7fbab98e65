// uma run: generate text from a prompt, streaming tokens as they come, then a line of timings.
#include <cstdio>
#include <string>

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
  SamplerParams sampling;
  bool ignore_eos = false;
  bool no_special = false;
  bool no_plan = false;
};

// Prints the plan for this machine and refuses, with the numbers, a model that will not fit — before
// anything is loaded.
void plan_or_refuse(const std::filesystem::path& path, int64_t n_ctx) {
  auto file = GgufFile::open(path);
  plan::PlanInputs in = plan::inputs_for_gguf(*file);
  in.n_ctx = n_ctx > 0 ? n_ctx : default_n_ctx(*file);
  in.kv_type = GgmlType::F32;  // the CPU backend keeps an f32 cache
  in.machine = plan::local_cpu_machine();
  const plan::Plan p = plan::make_plan(in);
  std::fputs(plan::format_plan_summary(p).c_str(), stderr);
  if (const std::string why = plan::check_fits_or_explain(p); !why.empty()) fail("{}", why);
}

int run(const RunArgs& a) {
  const auto path = resolve_model(a.model);
  if (!a.no_plan) plan_or_refuse(path, a.n_ctx);
  EngineOptions eo;
  eo.n_threads = a.n_threads;
  eo.n_ctx = a.n_ctx;
  auto engine = Engine::load(path, eo);
  const Tokenizer& tok = engine->tokenizer();
  const auto prompt = tok.encode(a.prompt, /*add_special=*/true, /*parse_special=*/!a.no_special);

  GenerateOptions go;
  go.n_predict = a.n_predict;
  go.sampling = a.sampling;
  go.ignore_eos = a.ignore_eos;
  std::fputs(a.prompt.c_str(), stdout);
  std::fflush(stdout);
  Utf8Stream stream;
  auto result = generate(*engine, 0, prompt, go, [&](TokenId t) {
    const std::string text = stream.push(tok.token_bytes(t));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  const std::string rest = stream.flush();
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
  sub.add_flag("--no-special", a->no_special, "Treat special-token text in the prompt as plain text");
  return [a] { return run(*a); };
}}};

}  // namespace
}  // namespace uma::app
