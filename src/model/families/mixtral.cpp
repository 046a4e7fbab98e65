// mixtral: GGUF architecture "llama" with experts. Not implemented yet (issue: MoE).
#include "model/registry.h"
#include "gguf/gguf.h"
#include "uma/error.h"

namespace uma {

std::unique_ptr<Model> make_mixtral(const GgufFile& file, Backend& backend, const ModelOptions& options) {
  fail("{}: mixture-of-experts llama models (Mixtral) are not supported yet", file.path().string());
}

}  // namespace uma
