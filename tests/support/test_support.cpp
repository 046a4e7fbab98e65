#include "test_support.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <unistd.h>

namespace uma::test {

std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("UMA_SHARED")) return env;
  return UMA_SHARED_DIR;
}

std::filesystem::path temp_dir() {
  static std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("uma-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

std::filesystem::path write_temp_file(const std::string& name, const std::vector<uint8_t>& bytes) {
  auto path = temp_dir() / name;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

RowMass exact_row_mass(std::span<const float> row, float max_logit, double inv_t) {
  RowMass m;
  for (float l : row) {
    const float r = ranking_logit(l);
    if (r == -INFINITY) continue;
    m.sum1 += std::exp(double(r - max_logit));
    m.sum_t += std::exp(double(r - max_logit) * inv_t);
  }
  return m;
}

double rel_l2(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  if (a.size() != b.size()) return INFINITY;
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

std::filesystem::path uma_binary() { return std::filesystem::path(UMA_BINARY_DIR) / "uma"; }

}  // namespace uma::test
