// Helpers every family uses to read its hyper-parameters and weights from a GGUF file, with errors that
// name the file, the tensor and what was expected.
#pragma once
#include <initializer_list>
#include <string>

#include "backend/backend.h"
#include "gguf/gguf.h"
#include "model/model.h"

namespace uma {

// The hyper-parameters shared by decoder-only families, from "<arch>.*" keys.
ModelConfig read_config(const GgufFile& file, const ModelOptions& options);

class WeightLoader {
 public:
  WeightLoader(const GgufFile& file, Backend& backend) : file_(file), backend_(backend) {}
  // The tensor must exist with exactly this shape (GGUF order, ne[0] first).
  Weight require(const std::string& name, std::initializer_list<int64_t> shape);
  // Returns an empty Weight when absent; checks the shape when present.
  Weight optional(const std::string& name, std::initializer_list<int64_t> shape);
  // Rows [row0, row0 + n_rows) of a 2-D tensor of exactly `shape`, as a weight of its own (a fused
  // projection whose outputs are used apart, e.g. deepseek2's attn_kv_a_mqa = latent rows + rope rows).
  Weight require_rows(const std::string& name, std::initializer_list<int64_t> shape, int64_t row0, int64_t n_rows);
  bool has(const std::string& name) const { return file_.find_tensor(name) != nullptr; }
  size_t bytes() const { return bytes_; }

 private:
  const GgufFile& file_;
  Backend& backend_;
  size_t bytes_ = 0;
};

}  // namespace uma
