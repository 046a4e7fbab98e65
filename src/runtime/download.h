// HTTP(S) file download with resume, SHA-256 verification and a progress bar, over libcurl.
//
// The file is written to `<dest>.part` and renamed onto `dest` only once complete and verified, so `dest`
// either does not exist or is whole. An existing `.part` (an interrupted download) is continued with a
// Range request; a server that ignores the range simply sends the whole file again.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

namespace uma {

struct DownloadOptions {
  // Lower- or upper-case hex SHA-256 the file must have. Empty: use the server's, when an `X-Linked-ETag`
  // or `ETag` header holds a 64-hex-digit value (the Hugging Face hub sends the LFS sha256 that way);
  // otherwise the file is not verified.
  std::string expected_sha256;
  // Sent as `Authorization: Bearer <token>` when not empty (gated or private Hugging Face repositories).
  std::string bearer_token;
  bool quiet = false;   // no progress on stderr
  bool resume = true;   // continue an existing .part; false starts over
  long connect_timeout_s = 30;
  long stall_timeout_s = 60;  // give up when fewer than 1 byte/s arrive for this long
};

// Downloads `url` (redirects followed) to `dest`, creating its parent directories. Throws uma::Error on
// HTTP errors (>= 400), network errors, disk errors and checksum mismatches; a mismatching file is deleted.
void download_file(const std::string& url, const std::filesystem::path& dest, const DownloadOptions& opts = {});

// Lower-case hex SHA-256 of a file's contents (OpenSSL EVP).
std::string sha256_file(const std::filesystem::path& path);

// True for exactly 64 hex digits.
bool is_sha256_hex(const std::string& s);

}  // namespace uma
