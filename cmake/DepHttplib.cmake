# cpp-httplib (header-only) for the /metrics endpoint and Alertmanager client; Debian
# libcpp-httplib-dev.
find_path(STALLMON_HTTPLIB_INCLUDE_DIR httplib.h REQUIRED)
find_package(Threads REQUIRED)
add_library(stallmon_httplib INTERFACE)
target_include_directories(stallmon_httplib SYSTEM INTERFACE ${STALLMON_HTTPLIB_INCLUDE_DIR})
target_link_libraries(stallmon_httplib INTERFACE Threads::Threads)
add_library(stallmon::httplib ALIAS stallmon_httplib)
