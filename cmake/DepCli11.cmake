# CLI11 (header-only) for command-line parsing; Debian libcli11-dev.
find_package(CLI11 REQUIRED CONFIG)
add_library(stallmon_cli11 INTERFACE)
target_link_libraries(stallmon_cli11 INTERFACE CLI11::CLI11)
add_library(stallmon::cli11 ALIAS stallmon_cli11)
