// Helpers shared by every test tier: where the shared data lives, temp files, and error metrics.
#pragma once
#include <filesystem>
#include <string>
#include <vector>
#include <span>

namespace uma::test {

// ../shared beside the repo, or $UMA_SHARED.
std::filesystem::path shared_dir();
// A fresh temporary directory for one test (removed at exit is not guaranteed).
std::filesystem::path temp_dir();
// Write bytes to a file under temp_dir() and return its path.
std::filesystem::path write_temp_file(const std::string& name, const std::vector<uint8_t>& bytes);
// ||a - b|| / ||b||
double rel_l2(std::span<const float> a, std::span<const float> b);
// The uma binary built beside the tests.
std::filesystem::path uma_binary();

}  // namespace uma::test
