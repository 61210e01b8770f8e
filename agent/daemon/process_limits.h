// SPDX-License-Identifier: Apache-2.0
// Process limits stallmond needs at scale. (Not "limits.h": this directory is on the include
// path, and the C library's <limits.h> must stay reachable.)
#pragma once

#include <cstdint>

#include "stallmon/base/result.h"

namespace stallmon::daemon {

struct OpenFilesLimit {
  uint64_t soft_before = 0;
  uint64_t soft = 0;  // after
  uint64_t hard = 0;
};

// Raises the soft RLIMIT_NOFILE to the hard limit. systemd starts services with a soft limit
// of 1024 (DefaultLimitNOFILE=1024:524288) for the sake of programs that use select(); stallmond
// uses poll/epoll only, and its /proc sampler keeps up to 4 descriptors per watched thread
// (stat, schedstat, status, cgroup cpu.stat) plus one per sleeping thread's wchan: at 1024 it
// stops sampling past ~30 16-vCPU domains (measured with tests/scale). Never lowers a limit.
Result<OpenFilesLimit> raise_open_files_limit();

}  // namespace stallmon::daemon
