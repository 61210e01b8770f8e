// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: every /proc and cgroup file parser of agent/host (proc_parse.cc). The first
// byte picks the parser, so each seed keeps to its file type.
#include <cstdint>
#include <string_view>

#include "stallmon/host/proc_parse.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::host;
  if (size < 1) return 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 8) {
    case 0: (void)parse_task_stat(text); break;
    case 1: (void)parse_schedstat(text); break;
    case 2: (void)parse_task_status(text); break;
    case 3: (void)parse_wchan(text); break;
    case 4: (void)parse_stack(text); break;
    case 5: (void)parse_cgroup_v1_cpu_stat(text); break;
    case 6: (void)parse_cgroup_v2_cpu_stat(text); break;
    case 7: {
      auto m = parse_proc_cgroup(text);
      if (m.ok()) (void)find_cpu_cgroup(*m);
      break;
    }
  }
  return 0;
}
