// SPDX-License-Identifier: Apache-2.0
// Type layouts from a vmlinux's DWARF (libdw, elfutils): the source `stallctl profile make`
// turns into a type profile. Only the type queries of KernelAccess are answered (no memory, no
// symbols). The vmlinux is a host file the operator chose, but its DWARF is still parsed with
// bounds (nesting, members looked at, sizes).
#pragma once

#include <memory>
#include <string>

#include "stallmon/base/result.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::introspect {

// The hex BUILD-ID of an ELF file (.note.gnu.build-id). kNotFound names the file.
Result<std::string> elf_build_id(const std::string& path);

// A KernelAccess whose member/type_size/variable_size come from `path`'s DWARF; read and
// symbol fail. Indexes every named struct/union/typedef/variable of every CU once.
Result<std::unique_ptr<KernelAccess>> open_dwarf_types(const std::string& path);

}  // namespace stallmon::introspect
