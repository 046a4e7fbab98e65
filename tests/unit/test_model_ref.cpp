// Model references (paths, names, UMA_MODEL_PATH, XDG cache, hf:) and the downloader, the latter against a
// small HTTP/1.1 server on 127.0.0.1 run in a thread by the test itself.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "runtime/download.h"
#include "runtime/model_ref.h"
#include "test_support.h"
#include "uma/error.h"

namespace uma {
namespace {

namespace fs = std::filesystem;
using test::EnvGuard;

// ---------------------------------------------------------------------------------------------------------
// Helpers

fs::path fresh_dir(const std::string& name) {
  fs::path d = test::temp_dir() / "model_ref" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_file(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string sha256_of(const std::string& bytes) {
  fs::path p = test::temp_dir() / "model_ref_sha_scratch";
  write_file(p, bytes);
  return sha256_file(p);
}

// Bytes that are not all alike, big enough for libcurl to deliver them in several pieces.
std::string payload(size_t n) {
  std::string s(n, '\0');
  uint32_t x = 12345;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = char(x >> 24);
  }
  return s;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected uma::Error";
  return {};
}

// ---------------------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server: one connection at a time, one request per connection, GET only.

struct Request {
  std::string method, path;
  std::map<std::string, std::string> headers;  // lower-case names
};

struct Response {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

class TestServer {
 public:
  explicit TestServer(std::function<Response(const Request&)> handler) : handler_(std::move(handler)) {
    // Make sure a proxy configured in the environment does not intercept 127.0.0.1.
    ::setenv("no_proxy", "127.0.0.1,localhost", 1);
    ::setenv("NO_PROXY", "127.0.0.1,localhost", 1);
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;  // any free port
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 16) != 0)
      throw std::runtime_error("test server: bind/listen failed");
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~TestServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }

  std::string url(const std::string& path = "") const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  std::vector<Request> requests() {
    std::lock_guard lock(mutex_);
    return requests_;
  }

 private:
  void loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      serve(c);
      ::close(c);
    }
  }

  void serve(int c) {
    std::string in;
    char buf[4096];
    while (in.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      in.append(buf, size_t(n));
    }
    Request req;
    std::istringstream lines(in.substr(0, in.find("\r\n\r\n")));
    std::string line;
    std::getline(lines, line);
    std::istringstream(line) >> req.method >> req.path;
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string name = line.substr(0, colon);
      for (auto& ch : name) ch = char(std::tolower(static_cast<unsigned char>(ch)));
      req.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    }
    {
      std::lock_guard lock(mutex_);
      requests_.push_back(req);
    }
    Response res = handler_(req);
    std::string out = "HTTP/1.1 " + std::to_string(res.status) + " X\r\n";
    out += "Content-Length: " + std::to_string(res.body.size()) + "\r\nConnection: close\r\n";
    for (const auto& [k, v] : res.headers) out += k + ": " + v + "\r\n";
    out += "\r\n" + res.body;
    for (size_t sent = 0; sent < out.size();) {
      ssize_t n = ::send(c, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;
      sent += size_t(n);
    }
  }

  std::function<Response(const Request&)> handler_;
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mutex_;
  std::vector<Request> requests_;
};

struct FileOptions {
  std::string etag;         // sent quoted as ETag when not empty
  bool honour_range = true;
};

// Serves `content` like a static file server: Range "bytes=N-" gives 206 (416 past the end).
Response serve_file(const Request& req, const std::string& content, const FileOptions& o = {}) {
  Response res;
  if (!o.etag.empty()) res.headers.push_back({"ETag", "\"" + o.etag + "\""});
  auto range = req.headers.find("range");
  if (o.honour_range && range != req.headers.end()) {
    unsigned long long from = 0;
    if (std::sscanf(range->second.c_str(), "bytes=%llu-", &from) == 1) {
      if (from >= content.size()) {
        res.status = 416;
        res.headers.push_back({"Content-Range", "bytes */" + std::to_string(content.size())});
        return res;
      }
      res.status = 206;
      res.headers.push_back({"Content-Range", "bytes " + std::to_string(from) + "-" +
                                                  std::to_string(content.size() - 1) + "/" +
                                                  std::to_string(content.size())});
      res.body = content.substr(from);
      return res;
    }
  }
  res.body = content;
  return res;
}

DownloadOptions quiet() {
  DownloadOptions o;
  o.quiet = true;
  return o;
}

// ---------------------------------------------------------------------------------------------------------
// Reference resolution

TEST(ModelRef, ExistingFileIsItself) {
  fs::path f = fresh_dir("existing") / "m.gguf";
  write_file(f, "GGUF");
  ResolveOptions o;
  o.search_dirs = std::vector<fs::path>{};
  o.cache_dir = fresh_dir("existing-cache");
  EXPECT_EQ(resolve_model(f.string(), o), f);
}

TEST(ModelRef, SearchDirsInOrderThenCache) {
  fs::path a = fresh_dir("order-a"), b = fresh_dir("order-b"), cache = fresh_dir("order-cache");
  write_file(a / "both.gguf", "a");
  write_file(b / "both.gguf", "b");
  write_file(b / "only_b.gguf", "b");
  write_file(b / "org" / "nested.gguf", "b");
  write_file(cache / "both.gguf", "c");
  write_file(cache / "cached.gguf", "c");
  ResolveOptions o;
  o.search_dirs = std::vector<fs::path>{a, b};
  o.cache_dir = cache;
  EXPECT_EQ(resolve_model("both.gguf", o), a / "both.gguf");
  EXPECT_EQ(resolve_model("both", o), a / "both.gguf") << "a name without extension matches NAME.gguf";
  EXPECT_EQ(resolve_model("only_b", o), b / "only_b.gguf");
  EXPECT_EQ(resolve_model("org/nested.gguf", o), b / "org" / "nested.gguf");
  EXPECT_EQ(resolve_model("cached", o), cache / "cached.gguf");
}

TEST(ModelRef, ModelPathFromEnvironment) {
  fs::path a = fresh_dir("env-a"), b = fresh_dir("env-b");
  write_file(b / "m.gguf", "b");
  EnvGuard env("UMA_MODEL_PATH", a.string() + "::" + b.string());
  EXPECT_EQ(default_search_dirs(), (std::vector<fs::path>{a, b}));
  ResolveOptions o;
  o.cache_dir = fresh_dir("env-cache");
  EXPECT_EQ(resolve_model("m", o), b / "m.gguf");
}

TEST(ModelRef, CacheDirFollowsXdg) {
  {
    EnvGuard xdg("XDG_CACHE_HOME", "/tmp/some-xdg");
    EXPECT_EQ(default_cache_dir(), fs::path("/tmp/some-xdg/uma"));
  }
  {
    EnvGuard xdg("XDG_CACHE_HOME", std::nullopt);
    EnvGuard home("HOME", "/home/someone");
    EXPECT_EQ(default_cache_dir(), fs::path("/home/someone/.cache/uma"));
  }
  // And resolution uses it when no cache_dir is given.
  fs::path xdg_root = fresh_dir("xdg");
  write_file(xdg_root / "uma" / "in_cache.gguf", "x");
  EnvGuard xdg("XDG_CACHE_HOME", xdg_root.string());
  ResolveOptions o;
  o.search_dirs = std::vector<fs::path>{};
  EXPECT_EQ(resolve_model("in_cache", o), xdg_root / "uma" / "in_cache.gguf");
}

TEST(ModelRef, DefaultModelFindsItsHfDownload) {
  fs::path cache = fresh_dir("known-cache");
  fs::path cached = cache / "hf/ggml-org/models/tinyllamas/stories260K.gguf";
  write_file(cached, "GGUF");
  ResolveOptions o;
  o.search_dirs = std::vector<fs::path>{};
  o.cache_dir = cache;
  EXPECT_EQ(resolve_model(kDefaultModel, o), cached);
}

TEST(ModelRef, SharedStories260K) {
  fs::path models = test::shared_dir() / "models";
  if (!fs::exists(models / "stories260K.gguf")) GTEST_SKIP() << "no shared models";
  ResolveOptions o;
  o.search_dirs = std::vector<fs::path>{models};
  o.cache_dir = fresh_dir("shared-cache");
  EXPECT_EQ(resolve_model("stories260K", o), models / "stories260K.gguf");
}

TEST(ModelRef, NotFoundSaysWhereItLookedAndWhatToDo) {
  fs::path a = fresh_dir("nf-a"), cache = fresh_dir("nf-cache");
  ResolveOptions o;
  o.search_dirs = std::vector<fs::path>{a};
  o.cache_dir = cache;
  std::string msg = error_of([&] { resolve_model("nope-model", o); });
  EXPECT_NE(msg.find("'nope-model' not found"), std::string::npos) << msg;
  EXPECT_NE(msg.find(a.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find(cache.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("UMA_MODEL_PATH"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hf:owner/repo/file.gguf"), std::string::npos) << msg;

  o.search_dirs = std::vector<fs::path>{};
  msg = error_of([&] { resolve_model("stories260K", o); });
  EXPECT_NE(msg.find("UMA_MODEL_PATH is unset"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hf:ggml-org/models/tinyllamas/stories260K.gguf"), std::string::npos) << msg;

  msg = error_of([&] { resolve_model(a.string(), o); });
  EXPECT_NE(msg.find("is a folder"), std::string::npos) << msg;
}

TEST(ModelRef, ParseHfReferences) {
  EXPECT_FALSE(parse_hf_ref("models/x.gguf"));
  auto r = parse_hf_ref("hf:ggml-org/models/tinyllamas/stories260K.gguf");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->owner, "ggml-org");
  EXPECT_EQ(r->repo, "models");
  EXPECT_EQ(r->path, "tinyllamas/stories260K.gguf");
  EXPECT_EQ(r->revision, "main");
  EXPECT_EQ(r->sha256, "");

  std::string sha(64, 'A');
  r = parse_hf_ref("hf:o/r/f.gguf@v1.0#sha256=" + sha);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->path, "f.gguf");
  EXPECT_EQ(r->revision, "v1.0");
  EXPECT_EQ(r->sha256, std::string(64, 'a'));

  for (const char* bad : {"hf:", "hf:owner", "hf:owner/repo", "hf:owner/repo/", "hf:o/r/../../etc/passwd",
                          "hf:o//f.gguf", "hf:o/r/f.gguf@", "hf:o/r/f.gguf#sha256=abc", "hf:o/r/f.gguf#md5=x"})
    EXPECT_THROW(parse_hf_ref(bad), Error) << bad;
}

TEST(ModelRef, HfUrlAndCachePath) {
  auto r = *parse_hf_ref("hf:ggml-org/models/tinyllamas/stories260K.gguf");
  EXPECT_EQ(hf_url(r, "https://huggingface.co/"),
            "https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf");
  EXPECT_EQ(hf_cache_path(r, "/c"), fs::path("/c/hf/ggml-org/models/tinyllamas/stories260K.gguf"));
  auto pr = *parse_hf_ref("hf:o/r/a b.gguf@refs/pr/1");
  EXPECT_EQ(hf_url(pr, "http://h"), "http://h/o/r/resolve/refs%2Fpr%2F1/a%20b.gguf");
  EXPECT_EQ(hf_cache_path(pr, "/c"), fs::path("/c/hf/o/r@refs%2Fpr%2F1/a b.gguf"));
}

// ---------------------------------------------------------------------------------------------------------
// Downloads

TEST(Download, Sha256KnownVector) {
  EXPECT_EQ(sha256_of("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_of(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Download, FullDownloadVerifiedByEtag) {
  std::string content = payload(300000);
  TestServer server([&](const Request& r) { return serve_file(r, content, {sha256_of(content)}); });
  fs::path dest = fresh_dir("full") / "sub" / "m.gguf";
  download_file(server.url("/m.gguf"), dest, quiet());
  EXPECT_EQ(read_file(dest), content);
  EXPECT_FALSE(fs::exists(dest.string() + ".part"));
}

TEST(Download, NonShaEtagIsNotAChecksum) {
  std::string content = payload(1000);
  TestServer server([&](const Request& r) { return serve_file(r, content, {"abc123-weak"}); });
  fs::path dest = fresh_dir("weak") / "m.gguf";
  download_file(server.url("/m.gguf"), dest, quiet());
  EXPECT_EQ(read_file(dest), content);
}

TEST(Download, BadEtagChecksumDeletesTheFile) {
  std::string content = payload(5000);
  TestServer server([&](const Request& r) { return serve_file(r, content, {sha256_of("something else")}); });
  fs::path dest = fresh_dir("bad-etag") / "m.gguf";
  std::string msg = error_of([&] { download_file(server.url("/m.gguf"), dest, quiet()); });
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_FALSE(fs::exists(dest.string() + ".part"));
}

TEST(Download, ExplicitChecksumGoodAndBad) {
  std::string content = payload(5000);
  TestServer server([&](const Request& r) { return serve_file(r, content); });
  fs::path dir = fresh_dir("explicit");
  DownloadOptions o = quiet();
  o.expected_sha256 = sha256_of(content);
  for (auto& c : o.expected_sha256) c = char(std::toupper(static_cast<unsigned char>(c)));  // case-insensitive
  download_file(server.url("/m.gguf"), dir / "good.gguf", o);
  EXPECT_EQ(read_file(dir / "good.gguf"), content);

  o.expected_sha256 = sha256_of("other");
  EXPECT_THROW(download_file(server.url("/m.gguf"), dir / "bad.gguf", o), Error);
  EXPECT_FALSE(fs::exists(dir / "bad.gguf"));

  o.expected_sha256 = "xyz";
  EXPECT_THROW(download_file(server.url("/m.gguf"), dir / "bad.gguf", o), Error);
}

TEST(Download, ResumesPartialFileWithRange) {
  std::string content = payload(200000);
  TestServer server([&](const Request& r) { return serve_file(r, content, {sha256_of(content)}); });
  fs::path dest = fresh_dir("resume") / "m.gguf";
  write_file(dest.string() + ".part", content.substr(0, 123456));
  download_file(server.url("/m.gguf"), dest, quiet());
  EXPECT_EQ(read_file(dest), content);
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].headers["range"], "bytes=123456-");
}

TEST(Download, ResumeIgnoredByServerStartsOver) {
  std::string content = payload(50000);
  TestServer server([&](const Request& r) { return serve_file(r, content, {sha256_of(content), false}); });
  fs::path dest = fresh_dir("resume-ignored") / "m.gguf";
  write_file(dest.string() + ".part", "garbage that must be overwritten");
  download_file(server.url("/m.gguf"), dest, quiet());
  EXPECT_EQ(read_file(dest), content);
}

TEST(Download, CorruptPartIsCaughtByChecksum) {
  std::string content = payload(50000);
  TestServer server([&](const Request& r) { return serve_file(r, content, {sha256_of(content)}); });
  fs::path dest = fresh_dir("resume-corrupt") / "m.gguf";
  std::string bad = content.substr(0, 1000);
  bad[10] ^= 1;
  write_file(dest.string() + ".part", bad);
  std::string msg = error_of([&] { download_file(server.url("/m.gguf"), dest, quiet()); });
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dest.string() + ".part"));
  // The next attempt starts clean and succeeds.
  download_file(server.url("/m.gguf"), dest, quiet());
  EXPECT_EQ(read_file(dest), content);
}

TEST(Download, OversizedPartRestartsAfter416) {
  std::string content = payload(1000);
  TestServer server([&](const Request& r) { return serve_file(r, content); });
  fs::path dest = fresh_dir("resume-416") / "m.gguf";
  write_file(dest.string() + ".part", payload(2000));
  download_file(server.url("/m.gguf"), dest, quiet());
  EXPECT_EQ(read_file(dest), content);
  EXPECT_EQ(server.requests().size(), 2u);
}

TEST(Download, NotFoundIsAClearError) {
  TestServer server([](const Request&) { return Response{404, {}, "Entry not found"}; });
  fs::path dest = fresh_dir("404") / "m.gguf";
  std::string msg = error_of([&] { download_file(server.url("/missing.gguf"), dest, quiet()); });
  EXPECT_NE(msg.find("HTTP 404"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
  EXPECT_NE(msg.find("/missing.gguf"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_FALSE(fs::exists(dest.string() + ".part"));
}

TEST(Download, ConnectionRefusedIsAnError) {
  int port;
  {
    TestServer probe([](const Request&) { return Response{}; });
    port = std::stoi(probe.url().substr(probe.url().rfind(':') + 1));
  }
  std::string msg = error_of([&] {
    download_file("http://127.0.0.1:" + std::to_string(port) + "/x", fresh_dir("refused") / "x", quiet());
  });
  EXPECT_NE(msg.find("failed"), std::string::npos) << msg;
}

// As the Hugging Face hub does: the first response redirects to a CDN and carries the LFS sha256 in
// X-Linked-ETag; the CDN's own ETag is something else.
TEST(Download, RedirectFollowedAndLinkedEtagChecked) {
  std::string content = payload(70000);
  std::string linked = sha256_of(content);
  TestServer server([&](const Request& r) {
    if (r.path == "/o/r/resolve/main/m.gguf" || r.path == "/o/r/resolve/main/bad.gguf") {
      bool bad = r.path.ends_with("bad.gguf");
      return Response{302,
                      {{"Location", "/cdn/blob"}, {"X-Linked-ETag", "\"" + (bad ? sha256_of("x") : linked) + "\""}},
                      ""};
    }
    if (r.path == "/cdn/blob") return serve_file(r, content, {"cdn-etag-1"});
    return Response{404, {}, ""};
  });
  fs::path dir = fresh_dir("redirect");
  download_file(server.url("/o/r/resolve/main/m.gguf"), dir / "m.gguf", quiet());
  EXPECT_EQ(read_file(dir / "m.gguf"), content);
  EXPECT_THROW(download_file(server.url("/o/r/resolve/main/bad.gguf"), dir / "bad.gguf", quiet()), Error);
  EXPECT_FALSE(fs::exists(dir / "bad.gguf"));
}

TEST(Download, ProgressOutputDoesNotDisturbTheFile) {
  std::string content = payload(100000);
  TestServer server([&](const Request& r) { return serve_file(r, content); });
  fs::path dest = fresh_dir("progress") / "m.gguf";
  DownloadOptions o;  // not quiet: stderr is not a terminal under ctest, so plain lines at most
  download_file(server.url("/m.gguf"), dest, o);
  EXPECT_EQ(read_file(dest), content);
}

// ---------------------------------------------------------------------------------------------------------
// hf: references end to end

TEST(ModelRef, HfReferenceDownloadsOnceIntoCache) {
  std::string content = payload(4096);
  TestServer server([&](const Request& r) {
    if (r.path == "/owner/repo/resolve/main/dir/m.gguf" || r.path == "/owner/repo/resolve/v2/dir/m.gguf")
      return serve_file(r, content, {sha256_of(content)});
    return Response{404, {}, ""};
  });
  fs::path cache = fresh_dir("hf-cache");
  ResolveOptions o;
  o.cache_dir = cache;
  o.endpoint = server.url();
  o.quiet = true;
  o.hf_token = "secret-token";
  fs::path got = resolve_model("hf:owner/repo/dir/m.gguf", o);
  EXPECT_EQ(got, cache / "hf/owner/repo/dir/m.gguf");
  EXPECT_EQ(read_file(got), content);
  ASSERT_EQ(server.requests().size(), 1u);
  EXPECT_EQ(server.requests()[0].headers["authorization"], "Bearer secret-token");

  EXPECT_EQ(resolve_model("hf:owner/repo/dir/m.gguf", o), got);
  EXPECT_EQ(server.requests().size(), 1u) << "a cached file needs no request";

  EXPECT_EQ(resolve_model("hf:owner/repo/dir/m.gguf@v2", o), cache / "hf/owner/repo@v2/dir/m.gguf");
  EXPECT_EQ(server.requests().size(), 2u);
}

TEST(ModelRef, HfReferenceErrors) {
  std::string content = payload(100);
  TestServer server([&](const Request& r) {
    if (r.path == "/o/r/resolve/main/m.gguf") return serve_file(r, content);
    return Response{404, {}, ""};
  });
  ResolveOptions o;
  o.cache_dir = fresh_dir("hf-errors");
  o.endpoint = server.url();
  o.quiet = true;

  std::string msg = error_of([&] { resolve_model("hf:o/r/missing.gguf", o); });
  EXPECT_NE(msg.find("HTTP 404"), std::string::npos) << msg;

  msg = error_of([&] { resolve_model("hf:o/r/m.gguf#sha256=" + sha256_of("not it"), o); });
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(*o.cache_dir / "hf/o/r/m.gguf"));

  EXPECT_NO_THROW(resolve_model("hf:o/r/m.gguf#sha256=" + sha256_of(content), o));

  o.allow_download = false;
  msg = error_of([&] { resolve_model("hf:o/r/other.gguf", o); });
  EXPECT_NE(msg.find("downloads are off"), std::string::npos) << msg;
}

}  // namespace
}  // namespace uma
