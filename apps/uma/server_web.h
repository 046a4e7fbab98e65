// The web chat page (web/index.html), embedded into the binary at build time by cmake/web.cmake.
#pragma once
#include <string_view>

namespace uma::app {
std::string_view web_index_html();
}  // namespace uma::app
