#include "runtime/model_ref.h"

#include <cctype>
#include <cstdlib>

#include "runtime/download.h"
#include "uma/error.h"

namespace uma {

namespace {

namespace fs = std::filesystem;

constexpr const char* kDefaultEndpoint = "https://huggingface.co";

// Short names that are also known Hugging Face files: the bare name finds the cached download, and the
// not-found message says how to fetch it.
struct KnownModel {
  const char* name;
  const char* hf;
};
constexpr KnownModel kKnownModels[] = {
    {"stories260K", "hf:ggml-org/models/tinyllamas/stories260K.gguf"},
};

const char* known_hf(const std::string& name) {
  std::string stem = name.size() > 5 && name.ends_with(".gguf") ? name.substr(0, name.size() - 5) : name;
  for (const auto& k : kKnownModels)
    if (stem == k.name) return k.hf;
  return nullptr;
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

// Repository paths become both URL paths and cache paths, so refuse anything that could climb out.
void check_segments(const std::string& what, const std::string& ref, const std::string& value) {
  for (const auto& seg : split(value, '/'))
    if (seg.empty() || seg == "." || seg == "..")
      fail("bad model reference '{}': the {} '{}' has an empty, '.' or '..' part; expected "
           "hf:OWNER/REPO/PATH/IN/REPO.gguf[@REVISION]",
           ref, what, value);
}

// Percent-encodes everything but RFC 3986 unreserved characters (and '/' when keep_slash).
std::string url_encode(const std::string& s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/'))
      out += char(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

fs::path expand_home(const std::string& ref) {
  if (ref == "~" || ref.rfind("~/", 0) == 0) {
    if (const char* home = std::getenv("HOME")) return fs::path(home) / ref.substr(ref.size() > 1 ? 2 : 1);
  }
  return fs::path(ref);
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

std::string join_dirs(const std::vector<fs::path>& dirs) {
  std::string out;
  for (const auto& d : dirs) out += (out.empty() ? "" : ", ") + d.string();
  return out;
}

}  // namespace

std::optional<HfRef> parse_hf_ref(const std::string& ref) {
  if (ref.rfind("hf:", 0) != 0) return std::nullopt;
  std::string rest = ref.substr(3);
  HfRef out;
  if (auto hash = rest.find('#'); hash != std::string::npos) {
    std::string frag = rest.substr(hash + 1);
    rest = rest.substr(0, hash);
    if (frag.rfind("sha256=", 0) != 0 || !is_sha256_hex(frag.substr(7)))
      fail("bad model reference '{}': the part after '#' must be sha256= followed by 64 hex digits", ref);
    out.sha256 = frag.substr(7);
    for (auto& c : out.sha256) c = char(std::tolower(static_cast<unsigned char>(c)));
  }
  if (auto at = rest.rfind('@'); at != std::string::npos) {
    out.revision = rest.substr(at + 1);
    rest = rest.substr(0, at);
    if (out.revision.empty()) fail("bad model reference '{}': empty revision after '@'", ref);
  }
  auto first = rest.find('/');
  auto second = first == std::string::npos ? std::string::npos : rest.find('/', first + 1);
  if (second == std::string::npos || second + 1 >= rest.size())
    fail("bad model reference '{}': expected hf:OWNER/REPO/PATH/IN/REPO.gguf[@REVISION], e.g. {}", ref,
         kKnownModels[0].hf);
  out.owner = rest.substr(0, first);
  out.repo = rest.substr(first + 1, second - first - 1);
  out.path = rest.substr(second + 1);
  check_segments("owner", ref, out.owner);
  check_segments("repository", ref, out.repo);
  check_segments("file path", ref, out.path);
  check_segments("revision", ref, out.revision);
  return out;
}

std::string hf_url(const HfRef& ref, const std::string& endpoint) {
  std::string base = endpoint;
  while (!base.empty() && base.back() == '/') base.pop_back();
  // A revision such as refs/pr/1 travels as one encoded path segment.
  return fmt::format("{}/{}/{}/resolve/{}/{}", base, url_encode(ref.owner, false), url_encode(ref.repo, false),
                     url_encode(ref.revision, false), url_encode(ref.path, true));
}

fs::path hf_cache_path(const HfRef& ref, const fs::path& cache_dir) {
  // Repository names cannot contain '@', so REPO@REVISION never collides with another repository.
  std::string repo = ref.revision == "main" ? ref.repo : ref.repo + "@" + url_encode(ref.revision, false);
  return cache_dir / "hf" / ref.owner / repo / fs::path(ref.path);
}

fs::path default_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "uma";
  const char* home = std::getenv("HOME");
  if (!home || !*home) fail("cannot find a cache folder: neither XDG_CACHE_HOME nor HOME is set");
  return fs::path(home) / ".cache" / "uma";
}

std::vector<fs::path> default_search_dirs() {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("UMA_MODEL_PATH"))
    for (const auto& d : split(env, ':'))
      if (!d.empty()) dirs.push_back(expand_home(d));
  return dirs;
}

fs::path resolve_model(const std::string& ref, const ResolveOptions& opts) {
  if (ref.empty()) fail("empty model reference; pass a .gguf path, a model name or hf:owner/repo/file.gguf");
  auto cache_dir = [&] { return opts.cache_dir ? *opts.cache_dir : default_cache_dir(); };

  if (auto hf = parse_hf_ref(ref)) {
    fs::path dest = hf_cache_path(*hf, cache_dir());
    if (is_file(dest)) return dest;
    std::string url = hf_url(*hf, opts.endpoint ? *opts.endpoint : env_or("UMA_HF_ENDPOINT", kDefaultEndpoint));
    if (!opts.allow_download)
      fail("model '{}' is not cached at {} and downloads are off; allow downloads or fetch {} yourself", ref,
           dest.string(), url);
    DownloadOptions d;
    d.expected_sha256 = hf->sha256;
    d.bearer_token = opts.hf_token ? *opts.hf_token : env_or("HF_TOKEN", "");
    d.quiet = opts.quiet;
    download_file(url, dest, d);
    return dest;
  }

  // 1. An existing file, as given.
  fs::path direct = expand_home(ref);
  if (is_file(direct)) return direct;
  std::error_code ec;
  if (fs::is_directory(direct, ec))
    fail("model '{}' is a folder; pass the .gguf file inside it (or that file's name with UMA_MODEL_PATH={})", ref,
         direct.string());

  // 2. A name, looked up in each folder in order; NAME also matches NAME.gguf. An absolute path cannot
  //    be a name (operator/ would discard the folder).
  std::vector<fs::path> dirs = opts.search_dirs ? *opts.search_dirs : default_search_dirs();
  fs::path cache;
  bool have_cache = true;
  try {
    cache = cache_dir();
  } catch (const Error&) {
    have_cache = false;  // no HOME: search the model path only
  }
  std::vector<fs::path> searched = dirs;
  if (have_cache) searched.push_back(cache);
  fs::path name(ref);
  if (name.is_relative()) {
    for (const auto& dir : searched) {
      if (is_file(dir / name)) return dir / name;
      if (!name.has_extension() || name.extension() != ".gguf") {
        fs::path with_ext = dir / name;
        with_ext += ".gguf";
        if (is_file(with_ext)) return with_ext;
      }
    }
  }
  const char* known = known_hf(ref);
  if (known && have_cache) {
    fs::path cached = hf_cache_path(*parse_hf_ref(known), cache);
    if (is_file(cached)) return cached;
  }

  std::string where = dirs.empty() ? "UMA_MODEL_PATH is unset" : "UMA_MODEL_PATH: " + join_dirs(dirs);
  if (have_cache) where += "; cache: " + cache.string();
  fail("model '{}' not found (not an existing file; searched {}); pass a path to a .gguf file, set "
       "UMA_MODEL_PATH to the folder holding it, or use {}",
       ref, where, known ? std::string(known) + " to download it" : std::string("hf:owner/repo/file.gguf"));
}

}  // namespace uma
