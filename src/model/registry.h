// Family registry: adding a model family = one families/<arch>.cpp defining a factory + one line in
// registry.cpp. (An explicit table rather than static self-registration, which a static library's
// linker would silently drop.)
#pragma once
#include <memory>

#include "model/model.h"

namespace uma {

std::unique_ptr<Model> make_llama(const GgufFile& file, Backend& backend, const ModelOptions& options);
std::unique_ptr<Model> make_qwen2(const GgufFile& file, Backend& backend, const ModelOptions& options);
std::unique_ptr<Model> make_qwen3(const GgufFile& file, Backend& backend, const ModelOptions& options);
std::unique_ptr<Model> make_mixtral(const GgufFile& file, Backend& backend, const ModelOptions& options);  // llama with experts
std::unique_ptr<Model> make_qwen3moe(const GgufFile& file, Backend& backend, const ModelOptions& options);
std::unique_ptr<Model> make_deepseek2(const GgufFile& file, Backend& backend, const ModelOptions& options);

}  // namespace uma
