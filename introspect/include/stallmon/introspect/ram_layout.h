// SPDX-License-Identifier: Apache-2.0
// Guest RAM layout of a QEMU process: which guest-physical ranges are RAM and where each is
// mapped in the qemu process's address space. Obtained from the QEMU monitor (HMP
// `info mtree -f` and `gpa2hva`) while the guest is healthy, then cached by the caller: during a
// stall the monitor may never answer, but the mapping does not change.
//
// This library does not know how monitor commands are delivered (libvirt passthrough, a plain
// QMP socket, a test fake): the caller passes a function that runs one HMP command.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"

namespace stallmon::introspect {

struct RamRange {
  uint64_t gpa = 0;   // guest-physical start
  uint64_t size = 0;  // bytes
  uint64_t hva = 0;   // host-virtual start in the qemu process (0 until resolved)
  std::string name;   // QEMU memory region name, e.g. "pc.ram"
};

// Runs one HMP command and returns its text output. Must honour its own deadline.
using HmpCommand = std::function<Result<std::string>(std::string_view command)>;

// Parses `info mtree -f` output: the RAM ranges of the system address space ("memory" view),
// merged where adjacent. Host addresses are left 0. Hostile-input safe (bounded, no throws).
Result<std::vector<RamRange>> parse_mtree_ram(std::string_view mtree_text);

// Parses a `gpa2hva ADDR` reply ("Host virtual address for 0x0 (pc.ram) is 0x7f...").
Result<uint64_t> parse_gpa2hva(std::string_view reply);

// Runs `info mtree -f`, then `gpa2hva` for the start of each RAM range, and returns the ranges
// with host addresses filled in.
Result<std::vector<RamRange>> resolve_ram_layout(const HmpCommand& hmp);

}  // namespace stallmon::introspect
