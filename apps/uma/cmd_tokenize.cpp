// uma tokenize: the token ids (and pieces) of a text under a model's tokenizer.
#include <cstdio>

#include "gguf/gguf.h"
#include "runtime/model_ref.h"
#include "tokenizer/tokenizer.h"
#include "uma/command.h"

namespace uma::app {
namespace {

const RegisterCommand reg{{"tokenize", "Print the token ids of a text", [](CLI::App& sub) {
  struct Args {
    std::string model = "stories260K", prompt;
    bool no_special = false, pieces = false, no_bos = false;
  };
  auto a = std::make_shared<Args>();
  sub.add_option("-m,--model", a->model, "Model path or reference")->capture_default_str();
  sub.add_option("-p,--prompt", a->prompt, "Text to tokenize")->required();
  sub.add_flag("--no-bos", a->no_bos, "Do not add BOS/EOS even when the model asks for them");
  sub.add_flag("--no-special", a->no_special, "Treat special-token text as plain text");
  sub.add_flag("--pieces", a->pieces, "Print each token's text beside its id");
  return [a] {
    auto file = GgufFile::open(resolve_model(a->model));
    auto tok = Tokenizer::from_gguf(*file);
    const auto ids = tok->encode(a->prompt, !a->no_bos, !a->no_special);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (a->pieces)
        std::printf("%6d  '%s'\n", ids[i], tok->token_bytes(ids[i], true).c_str());
      else
        std::printf("%s%d", i ? " " : "", ids[i]);
    }
    if (!a->pieces) std::printf("\n");
    return 0;
  };
}}};

}  // namespace
}  // namespace uma::app
