# cpp-httplib for the /metrics endpoint and the Alertmanager client; Debian libcpp-httplib-dev.
# Debian builds it as a shared library (libcpp-httplib.so) with OpenSSL, zlib and brotli support:
# its pkg-config Cflags carry the matching CPPHTTPLIB_* definitions, without which our objects
# would see different class layouts than the library's. So use pkg-config, not the bare header.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
pkg_check_modules(STALLMON_CPP_HTTPLIB REQUIRED IMPORTED_TARGET GLOBAL cpp-httplib>=0.10)
add_library(stallmon_httplib INTERFACE)
target_link_libraries(stallmon_httplib INTERFACE PkgConfig::STALLMON_CPP_HTTPLIB Threads::Threads)
add_library(stallmon::httplib ALIAS stallmon_httplib)
