# `uma serve`: links cpp-httplib into the uma app and embeds web/index.html as a raw string, so the binary
# serves its chat page from any directory without external files. Include from the top-level CMakeLists.txt
# after the uma executable is defined: include(cmake/web.cmake)
# Debian's libcpp-httplib-dev is the compiled flavour (libcpp-httplib.so); its pkg-config file also carries
# the CPPHTTPLIB_*_SUPPORT definitions the library was built with, which must match for the class layouts.
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
include(${CMAKE_SOURCE_DIR}/cmake/embed.cmake)
set(UMA_WEB_GEN_DIR ${CMAKE_BINARY_DIR}/generated/web)
file(MAKE_DIRECTORY ${UMA_WEB_GEN_DIR})
set(UMA_WEB_IN ${CMAKE_SOURCE_DIR}/web/index.html)
set(UMA_WEB_OUT ${UMA_WEB_GEN_DIR}/uma_web_index_html.inc)
uma_embed_text(${UMA_WEB_IN} ${UMA_WEB_OUT} k_web_index_html)  # at configure time, so the file exists from the start
add_custom_command(OUTPUT ${UMA_WEB_OUT}
  COMMAND ${CMAKE_COMMAND} -DINPUT=${UMA_WEB_IN} -DOUTPUT=${UMA_WEB_OUT} -DSYMBOL=k_web_index_html
          -P ${CMAKE_SOURCE_DIR}/cmake/embed.cmake
  DEPENDS ${UMA_WEB_IN} ${CMAKE_SOURCE_DIR}/cmake/embed.cmake
  COMMENT "Embedding web/index.html")
add_custom_target(uma_web_assets DEPENDS ${UMA_WEB_OUT})
add_dependencies(uma uma_web_assets)
# The .inc is listed as a source so that editing web/index.html recompiles server_web.cpp.
target_sources(uma PRIVATE ${UMA_WEB_OUT})
set_source_files_properties(${UMA_WEB_OUT} PROPERTIES HEADER_FILE_ONLY TRUE)
target_include_directories(uma PRIVATE ${UMA_WEB_GEN_DIR})
target_link_libraries(uma PRIVATE PkgConfig::HTTPLIB)
target_compile_definitions(uma PRIVATE UMA_SERVER=1)
