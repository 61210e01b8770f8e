# yaml-cpp for the daemon's configuration file; Debian libyaml-cpp-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(STALLMON_YAMLCPP REQUIRED IMPORTED_TARGET GLOBAL yaml-cpp)
add_library(stallmon::yaml_cpp ALIAS PkgConfig::STALLMON_YAMLCPP)
