# OpenSSL's libcrypto for SHA-256 (introspect shares symbol tables and types between guests only
# by a hash of the bytes read from each guest); Debian libssl-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(STALLMON_LIBCRYPTO REQUIRED IMPORTED_TARGET GLOBAL libcrypto)
add_library(stallmon::libcrypto ALIAS PkgConfig::STALLMON_LIBCRYPTO)
