#include "uma/server_web.h"

#ifdef UMA_SERVER  // cmake/web.cmake generates the .inc and defines UMA_SERVER
#include "uma_web_index_html.inc"

namespace uma::app {
std::string_view web_index_html() { return k_web_index_html; }
}  // namespace uma::app
#endif
