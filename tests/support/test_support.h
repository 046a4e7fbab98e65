// Helpers shared by every test tier: where the shared data lives, temp files, and error metrics.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sampling/top_k.h"

namespace uma::test {

// ../shared beside the repo, or $UMA_SHARED.
std::filesystem::path shared_dir();
// A fresh temporary directory for one test (removed at exit is not guaranteed).
std::filesystem::path temp_dir();
// Write bytes to a file under temp_dir() and return its path.
std::filesystem::path write_temp_file(const std::string& name, const std::vector<uint8_t>& bytes);
// ||a - b|| / ||b||
double rel_l2(std::span<const float> a, std::span<const float> b);
// RowMass (sampling/top_k.h) with double exponentials: the exact sums that row_mass's bound is checked against.
RowMass exact_row_mass(std::span<const float> row, float max_logit, double inv_t);
// The uma binary built beside the tests.
std::filesystem::path uma_binary();

// Sets (or unsets, with nullopt) an environment variable for one scope.
class EnvGuard {
 public:
  EnvGuard(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~EnvGuard() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace uma::test
