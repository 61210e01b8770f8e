# libbpf, used only for its BTF parser; Debian libbpf-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(STALLMON_LIBBPF REQUIRED IMPORTED_TARGET GLOBAL libbpf>=0.8)
add_library(stallmon::libbpf ALIAS PkgConfig::STALLMON_LIBBPF)
include(DepBpf)
