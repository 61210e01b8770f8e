# libelf (elfutils) for ELF vmcores and vmlinux symbol tables; Debian libelf-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(STALLMON_LIBELF REQUIRED IMPORTED_TARGET GLOBAL libelf)
add_library(stallmon::libelf ALIAS PkgConfig::STALLMON_LIBELF)
