// SPDX-License-Identifier: Apache-2.0
// Type profiles: exactly the type layouts stallmon's readers ask for, for one kernel build
// (keyed by its BUILD-ID), for guests without BTF. Made from a vmlinux's DWARF
// (`stallctl profile make`), kept one per kernel build in a profile directory, loaded as Types.
//
// Text format, version 1 (one entry per line, '#' comments, fields separated by one space):
//   stallmon-type-profile 1
//   build-id 1a2b...                               (hex, 2..128 digits)
//   type rq 3200                                   (name, sizeof)
//   member rq cfs.h_nr_running int 4 1312 0        (type, dot path, kind, size, bit offset, bit size)
//   var watchdog_touch_ts 8                        (a per-cpu or global variable's sizeof)
// kinds: int ptr array struct union enum. Bit offsets are from the start of the outer type; a
// bit size is non-zero only for bitfields. Whatever a profile does not list does not exist:
// the readers' feature probes (csd `flags` vs `node.u_flags`) see exactly what the kernel has.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/btf_types.h"
#include "stallmon/introspect/memory_budget.h"
#include "stallmon/introspect/snapshot_access.h"

namespace stallmon::introspect {

struct ProfileMember {
  std::string path;  // "cfs.h_nr_running"
  MemberLayout layout;
};
struct ProfileType {
  std::string name;
  uint64_t size = 0;
  std::vector<ProfileMember> members;
};
struct ProfileVariable {
  std::string name;
  uint64_t size = 0;
};

struct TypeProfile {
  inline static constexpr uint32_t kVersion = 1;
  // Bounds for a profile read from a file (untrusted: a profile directory may be shared).
  inline static constexpr uint64_t kMaxBytes = 1u << 20;
  inline static constexpr uint32_t kMaxTypes = 1024;
  inline static constexpr uint32_t kMaxMembers = 16384;  // over all types
  inline static constexpr uint32_t kMaxVariables = 4096;
  inline static constexpr uint64_t kMaxTypeBytes = 1u << 20;  // what btf_member_layout accepts
  inline static constexpr size_t kMaxNameBytes = 128;
  inline static constexpr size_t kMaxPathComponents = 8;

  std::string build_id;  // lower-case hex
  std::vector<ProfileType> types;
  std::vector<ProfileVariable> variables;

  const ProfileType* find_type(std::string_view name) const;
  // "profile 1a2b3c4d" (the first 8 hex digits): the context of every error about this profile.
  std::string label() const;
};

// Parses a profile. Every count and size is bounded (TypeProfile::k*), every member must lie
// inside its type, names are C identifiers; errors name the line ("line 7: member rq.curr ...").
Result<TypeProfile> parse_type_profile(std::string_view text);
// Reads and parses a file (at most kMaxBytes); errors name the path.
Result<TypeProfile> load_type_profile(const std::string& path);
std::string format_type_profile(const TypeProfile& profile);

// Types backed by a profile: the profile is turned into a small BTF (libbpf's writer) holding
// exactly its types, members and variables, so every consumer (Types, btf_member_layout) reads
// it through the same checked paths as guest BTF. A lookup of something the profile lacks is
// kNotFound (the readers' feature detection).
Result<std::shared_ptr<const Types>> types_from_profile(const TypeProfile& profile,
                                                        const std::shared_ptr<MemoryBudget>& budget = nullptr);

// The profile of what the readers ask `source` for: runs the layout planning of every reader
// (SnapshotReader::create, the ORC entry format, module layout, kthread inference, printk)
// against `source`'s types, with every symbol present and memory reading as one CPU, and keeps
// each member, type size and variable size that `source` answered. The list of types is thus
// derived from the readers' own queries, never written down a second time.
Result<TypeProfile> record_reader_types(const KernelAccess& source);

// Where a vmlinux with DWARF for BUILD-ID sits under a debug directory ("/usr/lib/debug"):
// <dir>/.build-id/xx/yyyy.debug, the layout of Debian's -dbg / -dbgsym and Fedora's debuginfo.
std::string debug_file_for_build_id(const std::string& debug_dir, std::string_view build_id);

}  // namespace stallmon::introspect
