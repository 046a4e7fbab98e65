#include "chat/jinja_strings.h"

#include <algorithm>
#include <cctype>

namespace uma::jinja::str {
namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

bool in_set(char c, const std::string* chars) { return chars ? chars->find(c) != std::string::npos : is_ws(c); }

}  // namespace

std::string lower(const std::string& s) {
  std::string r = s;
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

std::string upper(const std::string& s) {
  std::string r = s;
  for (char& c : r) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return r;
}

std::string capitalize(const std::string& s) {
  std::string r = lower(s);
  if (!r.empty()) r[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(r[0])));
  return r;
}

std::string title(const std::string& s) {
  std::string r = s;
  bool word_start = true;
  for (char& c : r) {
    unsigned char u = static_cast<unsigned char>(c);
    if (std::isalpha(u)) {
      c = static_cast<char>(word_start ? std::toupper(u) : std::tolower(u));
      word_start = false;
    } else {
      word_start = !(std::isdigit(u) || u >= 0x80);
    }
  }
  return r;
}

std::string lstrip(const std::string& s, const std::string* chars) {
  size_t i = 0;
  while (i < s.size() && in_set(s[i], chars)) ++i;
  return s.substr(i);
}

std::string rstrip(const std::string& s, const std::string* chars) {
  size_t n = s.size();
  while (n > 0 && in_set(s[n - 1], chars)) --n;
  return s.substr(0, n);
}

std::string strip(const std::string& s, const std::string* chars) { return lstrip(rstrip(s, chars), chars); }

std::vector<std::string> split(const std::string& s, const std::string& sep, int64_t maxsplit) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    size_t at = s.find(sep, start);
    if (at == std::string::npos) break;
    parts.push_back(s.substr(start, at - start));
    start = at + sep.size();
  }
  parts.push_back(s.substr(start));
  return parts;
}

std::vector<std::string> rsplit(const std::string& s, const std::string& sep, int64_t maxsplit) {
  std::vector<std::string> parts;
  size_t end = s.size();
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    if (end < sep.size()) break;
    size_t at = s.rfind(sep, end - sep.size());
    if (at == std::string::npos) break;
    parts.push_back(s.substr(at + sep.size(), end - at - sep.size()));
    end = at;
  }
  parts.push_back(s.substr(0, end));
  std::reverse(parts.begin(), parts.end());
  return parts;
}

std::vector<std::string> split_whitespace(const std::string& s, int64_t maxsplit) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (true) {
    while (i < s.size() && is_ws(s[i])) ++i;
    if (i >= s.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
      parts.push_back(rstrip(s.substr(i), nullptr));
      break;
    }
    size_t j = i;
    while (j < s.size() && !is_ws(s[j])) ++j;
    parts.push_back(s.substr(i, j - i));
    i = j;
  }
  return parts;
}

std::vector<std::string> rsplit_whitespace(const std::string& s, int64_t maxsplit) {
  std::vector<std::string> parts;
  size_t end = s.size();
  while (true) {
    while (end > 0 && is_ws(s[end - 1])) --end;
    if (end == 0) break;
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
      parts.push_back(lstrip(s.substr(0, end), nullptr));
      break;
    }
    size_t j = end;
    while (j > 0 && !is_ws(s[j - 1])) --j;
    parts.push_back(s.substr(j, end - j));
    end = j;
  }
  std::reverse(parts.begin(), parts.end());
  return parts;
}

std::string replace(const std::string& s, const std::string& old, const std::string& with, int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts `with` between characters and at both ends
    int64_t done = 0;
    for (size_t i = 0; i <= s.size(); ++i) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      if (i < s.size()) out += s[i];
    }
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t at = s.find(old, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    out += with;
    start = at + old.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

}  // namespace uma::jinja::str
