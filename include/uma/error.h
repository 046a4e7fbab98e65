// Errors carry one sentence: what is wrong, where, and what to do. The library throws uma::Error;
// only programs (apps/) catch, print and exit.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace uma {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace uma
