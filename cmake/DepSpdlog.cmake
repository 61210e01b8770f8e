# spdlog (with Debian's external fmt); Debian libspdlog-dev.
find_package(spdlog REQUIRED CONFIG)
add_library(stallmon_spdlog INTERFACE)
target_link_libraries(stallmon_spdlog INTERFACE spdlog::spdlog)
add_library(stallmon::spdlog ALIAS stallmon_spdlog)
