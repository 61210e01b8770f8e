// SPDX-License-Identifier: Apache-2.0
// Where stallctl gets guest memory from: an ELF core file, or a live qemu process whose RAM
// layout comes from a ranges file, a plain QMP socket, or the agent's libvirt layer (read-only
// connection, domain XML + /proc/PID/maps: no monitor command, no taint).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/introspect/physical_memory.h"
#include "stallmon/introspect/ram_layout.h"

namespace stallmon::cli {

struct SourceOptions {
  std::string core;     // ELF core file
  pid_t qemu_pid = 0;   // live qemu (0: from --domain's pid file)
  std::string domain;   // libvirt domain: pid and RAM layout from the agent's libvirt layer
  std::string qmp;      // QMP unix socket of a qemu not managed by libvirt
  std::string ranges;   // ranges file (see parse_ranges)
  std::string connect = "qemu:///system";
  std::chrono::milliseconds monitor_timeout{15000};
};

// Ranges file: one RAM range a line, "GPA SIZE HVA [NAME]", numbers in hex (0x...) or decimal;
// '#' starts a comment. This is what `stallctl ram-layout` prints.
Result<std::vector<introspect::RamRange>> parse_ranges(std::string_view text);
std::string format_ranges(const std::vector<introspect::RamRange>& ranges);

// The RAM layout from opts.ranges, opts.qmp or opts.domain (first one set).
Result<std::vector<introspect::RamRange>> resolve_layout(const SourceOptions& opts);

// The qemu pid (libvirt's pid file, checked against /proc/PID/cmdline as the agent does) and
// the RAM layout of a running libvirt domain, from stallmon::libvirt::describe_domain.
struct DomainView {
  pid_t pid = 0;
  std::vector<introspect::RamRange> ranges;
  std::string source;  // how the layout was derived and validated
};
Result<DomainView> describe_libvirt_domain(const SourceOptions& opts);

// Opens the memory the options name: ElfCoreMemory for core, QemuProcessMemory otherwise.
Result<std::shared_ptr<introspect::PhysicalMemory>> open_memory(const SourceOptions& opts);

}  // namespace stallmon::cli
