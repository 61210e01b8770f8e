# libelf (elfutils) for ELF vmcores and vmlinux symbol tables; Debian libelf-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(STALLMON_LIBELF REQUIRED IMPORTED_TARGET GLOBAL libelf)
add_library(stallmon::libelf ALIAS PkgConfig::STALLMON_LIBELF)
# libdw (elfutils) for type profiles made from a vmlinux's DWARF (stallctl profile make, the
# /usr/lib/debug fallback); Debian libdw-dev.
pkg_check_modules(STALLMON_LIBDW REQUIRED IMPORTED_TARGET GLOBAL libdw)
add_library(stallmon::libdw ALIAS PkgConfig::STALLMON_LIBDW)
