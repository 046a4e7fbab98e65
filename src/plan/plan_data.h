// The planner's data files (data/hardware.json, data/models.json), embedded at build time by cmake/plan.cmake.
#pragma once
#include <string_view>

namespace uma::plan {
std::string_view embedded_hardware_json();
std::string_view embedded_models_json();
}  // namespace uma::plan
