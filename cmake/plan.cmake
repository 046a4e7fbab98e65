# The planner (src/plan): embeds data/hardware.json and data/models.json into uma_core and gives src/plan the JSON
# parser. Include from the top-level CMakeLists.txt after uma_core is defined: include(cmake/plan.cmake)
include(${CMAKE_SOURCE_DIR}/cmake/embed.cmake)
set(UMA_PLAN_GEN_DIR ${CMAKE_BINARY_DIR}/generated/plan)
file(MAKE_DIRECTORY ${UMA_PLAN_GEN_DIR})
set(UMA_PLAN_GEN_FILES)
foreach(name hardware models)
  set(in ${CMAKE_SOURCE_DIR}/data/${name}.json)
  set(out ${UMA_PLAN_GEN_DIR}/uma_plan_${name}_json.inc)
  uma_embed_text(${in} ${out} k_embedded_${name}_json)  # at configure time, so the file exists from the start
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -DINPUT=${in} -DOUTPUT=${out} -DSYMBOL=k_embedded_${name}_json
            -P ${CMAKE_SOURCE_DIR}/cmake/embed.cmake
    DEPENDS ${in} ${CMAKE_SOURCE_DIR}/cmake/embed.cmake
    COMMENT "Embedding data/${name}.json")
  list(APPEND UMA_PLAN_GEN_FILES ${out})
endforeach()
add_custom_target(uma_plan_data DEPENDS ${UMA_PLAN_GEN_FILES})
add_dependencies(uma_core uma_plan_data)
target_include_directories(uma_core PRIVATE ${UMA_PLAN_GEN_DIR})
target_compile_definitions(uma_core PRIVATE UMA_PLAN_EMBEDDED=1)
target_link_libraries(uma_core PRIVATE nlohmann_json::nlohmann_json)
