# BPF programs: compiled with Debian's clang (-target bpf), CO-RE against a vmlinux.h dumped with
# bpftool from the build machine's /sys/kernel/btf/vmlinux, embedded as a libbpf skeleton
# (bpftool gen skeleton). CO-RE relocations make the object run on other kernels with BTF.
#
# STALLMON_BPF: AUTO (default: build the BPF parts when clang, bpftool and the kernel BTF are
# there), ON (fail if they are not), OFF (compile them out; the /proc sampler is used).
# Sets STALLMON_HAVE_BPF and defines stallmon_bpf_skeleton(<target> <name> <source.bpf.c>).
set(STALLMON_BPF AUTO CACHE STRING "Build BPF programs: AUTO, ON or OFF")
set_property(CACHE STALLMON_BPF PROPERTY STRINGS AUTO ON OFF)
set(STALLMON_BPF_VMLINUX_BTF /sys/kernel/btf/vmlinux CACHE FILEPATH
    "Kernel BTF that vmlinux.h is generated from")

set(STALLMON_HAVE_BPF OFF)
if(NOT STALLMON_BPF STREQUAL "OFF")
  find_program(STALLMON_BPF_CLANG NAMES clang clang-19 clang-16 clang-14)
  find_program(STALLMON_BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin)
  find_program(STALLMON_LLVM_STRIP NAMES llvm-strip llvm-strip-19 llvm-strip-16 llvm-strip-14)
  set(_missing "")
  if(NOT STALLMON_BPF_CLANG)
    list(APPEND _missing "clang")
  endif()
  if(NOT STALLMON_BPFTOOL)
    list(APPEND _missing "bpftool")
  endif()
  if(NOT EXISTS "${STALLMON_BPF_VMLINUX_BTF}")
    list(APPEND _missing "${STALLMON_BPF_VMLINUX_BTF}")
  endif()
  if(_missing)
    if(STALLMON_BPF STREQUAL "ON")
      message(FATAL_ERROR "STALLMON_BPF=ON but missing: ${_missing}")
    endif()
    message(STATUS "BPF sampler compiled out (missing: ${_missing}); the /proc sampler is used")
  else()
    set(STALLMON_HAVE_BPF ON)
    message(STATUS "BPF sampler: ${STALLMON_BPF_CLANG}, ${STALLMON_BPFTOOL}, BTF ${STALLMON_BPF_VMLINUX_BTF}")
  endif()
endif()

if(STALLMON_HAVE_BPF)
  set(STALLMON_BPF_GEN_DIR ${CMAKE_BINARY_DIR}/generated/bpf)
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
    set(STALLMON_BPF_ARCH arm64)
  else()
    set(STALLMON_BPF_ARCH x86)
  endif()
  file(MAKE_DIRECTORY ${STALLMON_BPF_GEN_DIR})
endif()

# stallmon_bpf_skeleton(<target> <name> <source.bpf.c> [headers...]): compiles the program and
# adds the directory holding <name>.skel.h to <target>'s private include path.
function(stallmon_bpf_skeleton target name source)
  set(obj ${STALLMON_BPF_GEN_DIR}/${name}.bpf.o)
  set(skel ${STALLMON_BPF_GEN_DIR}/${name}.skel.h)
  get_filename_component(src_dir ${source} DIRECTORY)
  set(strip_cmd "")
  if(STALLMON_LLVM_STRIP)
    # Drops DWARF only; the .BTF and .BTF.ext sections CO-RE needs stay.
    set(strip_cmd COMMAND ${STALLMON_LLVM_STRIP} -g ${obj})
  endif()
  # vmlinux.h is generated in the directory of the first caller (custom command outputs are
  # per directory); further callers would need a shared target, add one then.
  get_property(have_vmlinux GLOBAL PROPERTY STALLMON_BPF_VMLINUX_RULE)
  if(NOT have_vmlinux)
    set_property(GLOBAL PROPERTY STALLMON_BPF_VMLINUX_RULE ${CMAKE_CURRENT_SOURCE_DIR})
    add_custom_command(
      OUTPUT ${STALLMON_BPF_GEN_DIR}/vmlinux.h
      COMMAND ${STALLMON_BPFTOOL} btf dump file ${STALLMON_BPF_VMLINUX_BTF} format c
              > ${STALLMON_BPF_GEN_DIR}/vmlinux.h.tmp
      COMMAND ${CMAKE_COMMAND} -E rename ${STALLMON_BPF_GEN_DIR}/vmlinux.h.tmp
              ${STALLMON_BPF_GEN_DIR}/vmlinux.h
      COMMENT "Generating vmlinux.h from ${STALLMON_BPF_VMLINUX_BTF}"
      VERBATIM)
  endif()
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${STALLMON_BPF_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_${STALLMON_BPF_ARCH} -Wall -Werror
            -I${STALLMON_BPF_GEN_DIR} -I${src_dir} -c ${source} -o ${obj}
    ${strip_cmd}
    DEPENDS ${source} ${ARGN} ${STALLMON_BPF_GEN_DIR}/vmlinux.h
    COMMENT "Compiling BPF program ${name}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${skel}
    COMMAND ${STALLMON_BPFTOOL} gen skeleton ${obj} name ${name} > ${skel}.tmp
    COMMAND ${CMAKE_COMMAND} -E rename ${skel}.tmp ${skel}
    DEPENDS ${obj}
    COMMENT "Generating BPF skeleton ${name}.skel.h"
    VERBATIM)
  add_custom_target(${target}_${name}_skel DEPENDS ${skel})
  add_dependencies(${target} ${target}_${name}_skel)
  target_include_directories(${target} PRIVATE ${STALLMON_BPF_GEN_DIR})
endfunction()
