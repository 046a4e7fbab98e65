// Python str semantics the templates rely on (ASCII case mapping; UTF-8 passes through untouched).
#pragma once

#include <string>
#include <vector>

namespace uma::jinja::str {

std::string lower(const std::string& s);
std::string upper(const std::string& s);
std::string capitalize(const std::string& s);  // first character upper, the rest lower
std::string title(const std::string& s);       // each word capitalized; words start after a non-letter
// Strips `chars` (nullptr: whitespace) from both ends, the left or the right.
std::string strip(const std::string& s, const std::string* chars);
std::string lstrip(const std::string& s, const std::string* chars);
std::string rstrip(const std::string& s, const std::string* chars);
// str.split(sep, maxsplit) / str.rsplit; maxsplit < 0 means no limit. `sep` must be non-empty.
std::vector<std::string> split(const std::string& s, const std::string& sep, int64_t maxsplit);
std::vector<std::string> rsplit(const std::string& s, const std::string& sep, int64_t maxsplit);
// str.split() with no separator: runs of whitespace, no empty parts.
std::vector<std::string> split_whitespace(const std::string& s, int64_t maxsplit);
std::vector<std::string> rsplit_whitespace(const std::string& s, int64_t maxsplit);
std::string replace(const std::string& s, const std::string& old, const std::string& with, int64_t count);

}  // namespace uma::jinja::str
