#include "runtime/download.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <vector>

#include "uma/error.h"

namespace uma {

namespace {

using Clock = std::chrono::steady_clock;

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_) fail("sha256: OpenSSL could not allocate a digest context");
    reset();
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void reset() {
    if (EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) fail("sha256: OpenSSL could not start a digest");
  }
  void update(const void* data, size_t n) { EVP_DigestUpdate(ctx_, data, n); }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
      out += digits[md[i] >> 4];
      out += digits[md[i] & 15];
    }
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

void hash_file_into(Sha256& sha, const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {} to checksum it", path.string());
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    sha.update(buf.data(), size_t(in.gcount()));
  }
  if (in.bad()) fail("reading {} to checksum it failed", path.string());
}

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// `W/"abc"` or `"abc"` -> `abc`.
std::string etag_value(std::string v) {
  v = trim(v);
  if (v.rfind("W/", 0) == 0) v = v.substr(2);
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  return lower(v);
}

std::string human_bytes(double b) {
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.1f} kB", b / 1e3);
  return fmt::format("{:.0f} B", b);
}

std::string human_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  auto t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
  return fmt::format("{}:{:02}", t / 60, t % 60);
}

// Progress on stderr: a bar redrawn in place on a terminal (at most 10 times a second), otherwise a plain
// line every 10 seconds so logs stay short.
class Progress {
 public:
  Progress(std::string name, bool quiet)
      : name_(std::move(name)), quiet_(quiet), tty_(::isatty(STDERR_FILENO) == 1), start_(Clock::now()) {}

  void update(uint64_t offset, uint64_t now, uint64_t total, bool final) {
    if (quiet_) return;
    auto t = Clock::now();
    double since_draw = std::chrono::duration<double>(t - last_).count();
    if (!final && drawn_ && since_draw < (tty_ ? 0.1 : 10.0)) return;
    if (final && !drawn_ && !tty_) return;  // a quick download needs no line of its own
    last_ = t;
    drawn_ = true;
    double elapsed = std::chrono::duration<double>(t - start_).count();
    double rate = elapsed > 0 ? double(now) / elapsed : 0;  // bytes of this session only
    if (total) total_ = total;  // libcurl may report 0 once the transfer is over
    uint64_t have = offset + now, all = total_ ? offset + total_ : 0;
    std::string line;
    if (all) {
      double frac = std::min(1.0, double(have) / double(all));
      double eta = rate > 0 ? double(all - std::min(have, all)) / rate : -1;
      std::string bar;
      if (tty_) {
        const size_t width = 24, fill = std::min(width, size_t(frac * double(width)));
        bar.append(1, '[').append(fill, '#').append(width - fill, '.').append("] ");
      }
      line = fmt::format("{} {}{} / {} {:3.0f}% {}/s ETA {}", name_, bar, human_bytes(double(have)),
                         human_bytes(double(all)), frac * 100, human_bytes(rate), human_duration(eta));
    } else {
      line = fmt::format("{} {} {}/s", name_, human_bytes(double(have)), human_bytes(rate));
    }
    if (tty_) {
      std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), final ? "\n" : "");
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

 private:
  std::string name_;
  bool quiet_, tty_, drawn_ = false;
  uint64_t total_ = 0;
  Clock::time_point start_, last_{};
};

// State shared with the libcurl callbacks for one attempt.
struct Transfer {
  CURL* curl = nullptr;
  std::filesystem::path part;
  uint64_t resume_from = 0;  // bytes already in .part that the request asked the server to skip
  bool started = false;      // the first body byte of the final response has been seen
  long status = 0;
  std::FILE* file = nullptr;
  Sha256 sha;
  std::string error_body;    // start of an error response's body, for the message
  std::string linked_etag;   // first sha256-looking X-Linked-ETag of any response in the redirect chain
  std::string etag;          // ETag of the latest response
  std::string content_range; // Content-Range of the latest response
  int write_errno = 0;
  bool range_mismatch = false;
  std::exception_ptr error;  // thrown inside a callback, rethrown after curl_easy_perform
  uint64_t received = 0;
  Progress* progress = nullptr;
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  std::string line(data, size * n);
  if (line.rfind("HTTP/", 0) == 0) {  // a new response (after a redirect): forget the previous one's headers
    t.etag.clear();
    t.content_range.clear();
    return size * n;
  }
  auto colon = line.find(':');
  if (colon == std::string::npos) return size * n;
  std::string name = lower(trim(line.substr(0, colon))), value = trim(line.substr(colon + 1));
  if (name == "x-linked-etag" && t.linked_etag.empty() && is_sha256_hex(etag_value(value)))
    t.linked_etag = etag_value(value);
  else if (name == "etag")
    t.etag = etag_value(value);
  else if (name == "content-range")
    t.content_range = value;
  return size * n;
}

// Returning anything but size * n aborts the transfer (CURLE_WRITE_ERROR).
size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  size_t bytes = size * n;
  if (!t.started) {
    t.started = true;
    curl_easy_getinfo(t.curl, CURLINFO_RESPONSE_CODE, &t.status);
    if (t.status == 206 && t.resume_from > 0) {
      // The server honoured the range; make sure it starts where the .part ends.
      unsigned long long first = 0;
      if (std::sscanf(t.content_range.c_str(), "bytes %llu-", &first) != 1 || first != t.resume_from) {
        t.range_mismatch = true;
        return 0;
      }
      try {  // an exception must not unwind through libcurl's C frames: park it for after perform
        hash_file_into(t.sha, t.part);
      } catch (...) {
        t.error = std::current_exception();
        return 0;
      }
      t.file = std::fopen(t.part.c_str(), "ab");
    } else if (t.status < 300) {
      t.resume_from = 0;  // a 200 reply to a range request: the whole file comes again
      t.file = std::fopen(t.part.c_str(), "wb");
    }
    if (t.status < 300 && !t.file) {
      t.write_errno = errno;
      return 0;
    }
  }
  if (t.status >= 300) {  // keep the start of an error page for the message
    t.error_body.append(data, std::min(bytes, size_t(300) - std::min(size_t(300), t.error_body.size())));
    return bytes;
  }
  if (std::fwrite(data, 1, bytes, t.file) != bytes) {
    t.write_errno = errno;
    return 0;
  }
  t.sha.update(data, bytes);
  t.received += bytes;
  return bytes;
}

int on_progress(void* user, curl_off_t total, curl_off_t now, curl_off_t, curl_off_t) {
  auto& t = *static_cast<Transfer*>(user);
  if (t.started && t.status < 300) t.progress->update(t.resume_from, uint64_t(now), uint64_t(total), false);
  return 0;
}

std::string http_hint(long status) {
  switch (status) {
    case 401:
    case 403:
      return " (access denied: the repository may be gated or private; set HF_TOKEN to a token that can read it)";
    case 404:
      return " (not found: check the owner, repository, file path and revision)";
    case 429:
      return " (rate limited: wait a moment and retry)";
    default:
      return status >= 500 ? " (server error: retry later)" : "";
  }
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// One request. Returns false when it should be retried from scratch (the server's range did not fit the
// .part); throws on anything else that went wrong.
bool attempt(const std::string& url, const std::filesystem::path& dest, const DownloadOptions& opts, bool resume) {
  Transfer t;
  t.part = dest;
  t.part += ".part";
  std::error_code ec;
  if (resume && std::filesystem::is_regular_file(t.part, ec)) t.resume_from = std::filesystem::file_size(t.part, ec);
  if (ec) t.resume_from = 0;

  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), &curl_easy_cleanup);
  if (!curl) fail("download of {}: libcurl could not start a session", url);
  t.curl = curl.get();
  Progress progress(dest.filename().string(), opts.quiet);
  t.progress = &progress;

  curl_slist* headers = nullptr;
  if (!opts.bearer_token.empty())
    headers = curl_slist_append(headers, ("Authorization: Bearer " + opts.bearer_token).c_str());
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> header_guard(headers, &curl_slist_free_all);

  char errbuf[CURL_ERROR_SIZE] = {};
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "uma/0.1");
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, opts.connect_timeout_s);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, opts.stall_timeout_s);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
  if (headers) curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  // CURLOPT_RANGE rather than CURLOPT_RESUME_FROM: libcurl then accepts a 200 reply (a server that ignores
  // ranges) instead of failing, and on_body starts the file over.
  std::string range = std::to_string(t.resume_from) + "-";
  if (t.resume_from > 0) curl_easy_setopt(c, CURLOPT_RANGE, range.c_str());

  CURLcode rc = curl_easy_perform(c);
  if (!t.started) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &t.status);
  int close_rc = t.file ? std::fclose(t.file) : 0;
  if (close_rc != 0 && !t.write_errno) t.write_errno = errno;
  t.file = nullptr;

  if (t.error) std::rethrow_exception(t.error);
  if (t.range_mismatch || (t.status == 416 && t.resume_from > 0)) return false;
  if (t.write_errno)
    fail("download of {}: writing {} failed ({}); check free space and permissions", url, t.part.string(),
         std::strerror(t.write_errno));
  if (t.status >= 400)
    fail("download of {} failed: HTTP {}{}", url, t.status, http_hint(t.status));
  if (rc != CURLE_OK)
    fail("download of {} failed: {}{}", url, errbuf[0] ? errbuf : curl_easy_strerror(rc),
         t.received || t.resume_from ? fmt::format("; {} is kept and the next attempt resumes it", t.part.string())
                                     : "");
  if (t.status != 200 && t.status != 206)
    fail("download of {} failed: unexpected HTTP status {}", url, t.status);
  if (!t.started) {  // an empty body: the file is empty
    std::FILE* f = std::fopen(t.part.c_str(), "wb");
    if (!f || std::fclose(f) != 0) fail("download of {}: cannot create {}", url, t.part.string());
  }
  progress.update(t.resume_from, t.received, 0, true);

  std::string want = lower(opts.expected_sha256);
  if (want.empty()) want = !t.linked_etag.empty() ? t.linked_etag : (is_sha256_hex(t.etag) ? t.etag : "");
  if (!want.empty()) {
    std::string got = t.sha.hex();
    if (got != want) {
      std::filesystem::remove(t.part, ec);
      fail("download of {}: checksum mismatch (sha256 expected {}, got {}); the file was deleted, retry or check "
           "the expected checksum",
           url, want, got);
    }
  }
  std::filesystem::rename(t.part, dest, ec);
  if (ec) fail("download of {}: cannot move {} to {} ({})", url, t.part.string(), dest.string(), ec.message());
  return true;
}

}  // namespace

bool is_sha256_hex(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

std::string sha256_file(const std::filesystem::path& path) {
  Sha256 sha;
  hash_file_into(sha, path);
  return sha.hex();
}

void download_file(const std::string& url, const std::filesystem::path& dest, const DownloadOptions& opts) {
  if (!opts.expected_sha256.empty() && !is_sha256_hex(opts.expected_sha256))
    fail("download of {}: expected sha256 '{}' is not 64 hex digits", url, opts.expected_sha256);
  global_init();
  std::error_code ec;
  if (dest.has_parent_path()) {
    std::filesystem::create_directories(dest.parent_path(), ec);
    if (ec) fail("download of {}: cannot create folder {} ({})", url, dest.parent_path().string(), ec.message());
  }
  if (!opts.quiet) std::fprintf(stderr, "downloading %s\n         to %s\n", url.c_str(), dest.c_str());
  if (attempt(url, dest, opts, opts.resume)) return;
  // The .part did not fit what the server offered (416, or a range starting elsewhere): start over once.
  std::filesystem::remove(std::filesystem::path(dest.string() + ".part"), ec);
  if (!attempt(url, dest, opts, false))
    fail("download of {} failed: the server answered a fresh request with a partial range", url);
}

}  // namespace uma
