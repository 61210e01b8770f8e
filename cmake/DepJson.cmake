# nlohmann/json (header-only) for JSON output and parsing QMP replies; Debian nlohmann-json3-dev.
find_package(nlohmann_json 3.9 REQUIRED CONFIG)
add_library(stallmon_json INTERFACE)
target_link_libraries(stallmon_json INTERFACE nlohmann_json::nlohmann_json)
add_library(stallmon::json ALIAS stallmon_json)
