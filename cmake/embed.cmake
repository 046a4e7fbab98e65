# Embeds a text file into C++ as a raw string literal, so `uma` carries its data files and works from any directory.
# Script mode: cmake -DINPUT=file.json -DOUTPUT=file.inc -DSYMBOL=name -P embed.cmake
# Include mode: include(embed.cmake) and call uma_embed_text(INPUT OUTPUT SYMBOL).
function(uma_embed_text input output symbol)
  file(READ "${input}" content)
  string(FIND "${content}" ")uma_embed\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "${input} contains the raw-string delimiter )uma_embed\"; change the delimiter in cmake/embed.cmake")
  endif()
  set(text "// Generated from ${input} by cmake/embed.cmake; do not edit.\n")
  string(APPEND text "inline constexpr std::string_view ${symbol} = R\"uma_embed(${content})uma_embed\";\n")
  # Rewrite only on change, so an unchanged data file does not trigger recompilation.
  if(EXISTS "${output}")
    file(READ "${output}" old)
    if(old STREQUAL text)
      return()
    endif()
  endif()
  file(WRITE "${output}" "${text}")
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND DEFINED INPUT)
  uma_embed_text("${INPUT}" "${OUTPUT}" "${SYMBOL}")
endif()
