// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: the query-cpus-fast reply (vCPU → thread id) and vCPU thread names.
#include <cstdint>
#include <string_view>

#include "stallmon/libvirt/qemu_process.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)stallmon::libvirt::parse_query_cpus_fast(text);
  (void)stallmon::libvirt::parse_vcpu_thread_name(text);
  (void)stallmon::libvirt::cmdline_matches_domain(text, "0b6b3a52-1b4c-4f2c-9f55-1f6bba1b7a9e", "vm1");
  return 0;
}
