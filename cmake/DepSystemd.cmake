# libsystemd for sd_notify (Type=notify, watchdog) and journald; Debian libsystemd-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(STALLMON_SYSTEMD REQUIRED IMPORTED_TARGET GLOBAL libsystemd)
add_library(stallmon::systemd ALIAS PkgConfig::STALLMON_SYSTEMD)
