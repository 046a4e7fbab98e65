#include "plan/plan_data.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "uma/error.h"

// cmake/plan.cmake generates these from data/*.json. Without it (a build that has not included plan.cmake yet) the
// files are read from the source tree this file was compiled from, which works on the build machine only.
#if __has_include(<uma_plan_hardware_json.inc>) && __has_include(<uma_plan_models_json.inc>)
#include <uma_plan_hardware_json.inc>
#include <uma_plan_models_json.inc>
#define UMA_PLAN_HAVE_EMBEDDED 1
#endif

namespace uma::plan {
namespace {

[[maybe_unused]] std::string read_source_data(const char* file) {
  auto path = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "data" / file;
  std::ifstream in(path);
  if (!in) fail("cannot read {} and this build did not embed it; add include(cmake/plan.cmake) to CMakeLists.txt", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string_view embedded_hardware_json() {
#ifdef UMA_PLAN_HAVE_EMBEDDED
  return k_embedded_hardware_json;
#else
  static const std::string text = read_source_data("hardware.json");
  return text;
#endif
}

std::string_view embedded_models_json() {
#ifdef UMA_PLAN_HAVE_EMBEDDED
  return k_embedded_models_json;
#else
  static const std::string text = read_source_data("models.json");
  return text;
#endif
}

}  // namespace uma::plan
