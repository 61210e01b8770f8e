# libvirt and libvirt-qemu (QMP/HMP passthrough) from Debian's libvirt-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(STALLMON_LIBVIRT REQUIRED IMPORTED_TARGET GLOBAL libvirt>=7.0 libvirt-qemu)
add_library(stallmon::libvirt ALIAS PkgConfig::STALLMON_LIBVIRT)
