// Model references: what `uma run -m X` accepts, turned into a local file path.
//
//   1. an existing file                      ./models/x.gguf, /abs/x.gguf, ~/x.gguf
//   2. a name searched in the model folders  stories260K, stories260K.gguf, org/file.gguf
//      folders: $UMA_MODEL_PATH (colon-separated, in order), then the cache folder; a name without an
//      extension also matches NAME.gguf
//   3. a Hugging Face file                   hf:OWNER/REPO/PATH/IN/REPO.gguf[@REVISION][#sha256=HEX]
//      cached at CACHE/hf/OWNER/REPO/PATH (CACHE/hf/OWNER/REPO@REVISION/PATH for a revision other than
//      main); downloaded when absent from $UMA_HF_ENDPOINT (default https://huggingface.co)
//      /OWNER/REPO/resolve/REVISION/PATH, sending $HF_TOKEN when set.
//
// The cache folder is $XDG_CACHE_HOME/uma, or ~/.cache/uma when XDG_CACHE_HOME is unset.
//
// The default model, `stories260K`, is also resolvable as hf:ggml-org/models/tinyllamas/stories260K.gguf;
// once downloaded that way, the bare name finds the cached copy too.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace uma {

inline constexpr const char* kDefaultModel = "stories260K";

struct ResolveOptions {
  // Each unset field falls back to the environment (tests set them instead of touching env vars).
  std::optional<std::vector<std::filesystem::path>> search_dirs;  // default: $UMA_MODEL_PATH
  std::optional<std::filesystem::path> cache_dir;                 // default: default_cache_dir()
  std::optional<std::string> endpoint;                            // default: $UMA_HF_ENDPOINT or huggingface.co
  std::optional<std::string> hf_token;                            // default: $HF_TOKEN
  bool quiet = false;           // no download progress on stderr
  bool allow_download = true;   // false: an hf: reference must already be cached
};

// A parsed hf: reference.
struct HfRef {
  std::string owner, repo, path;  // path inside the repository, '/'-separated
  std::string revision = "main";
  std::string sha256;             // from #sha256=HEX, lower-case; empty when not given
};

// Parses "hf:OWNER/REPO/PATH[@REVISION][#sha256=HEX]"; nullopt when `ref` does not start with "hf:".
// Throws uma::Error on a malformed hf: reference.
std::optional<HfRef> parse_hf_ref(const std::string& ref);

// The download URL of an hf: reference under `endpoint` (no trailing slash needed).
std::string hf_url(const HfRef& ref, const std::string& endpoint);

// Where an hf: reference is cached under `cache_dir`.
std::filesystem::path hf_cache_path(const HfRef& ref, const std::filesystem::path& cache_dir);

// $XDG_CACHE_HOME/uma, else $HOME/.cache/uma.
std::filesystem::path default_cache_dir();

// $UMA_MODEL_PATH split on ':' (empty entries dropped).
std::vector<std::filesystem::path> default_search_dirs();

// Resolves a reference (see above) to an existing file, downloading an hf: reference when needed.
// Throws uma::Error naming every place it looked and how to fix it.
std::filesystem::path resolve_model(const std::string& ref, const ResolveOptions& opts = {});

}  // namespace uma
