// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: qemu's HMP text (`info mtree -f`, `gpa2hva`) and QMP replies (JSON lines).
#include <cstdint>
#include <string_view>

#include "stallmon/introspect/qmp.h"
#include "stallmon/introspect/ram_layout.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)parse_mtree_ram(text);
  (void)parse_gpa2hva(text);
  auto reply = parse_qmp_reply(text, "human-monitor-command");
  if (reply.ok() && *reply) (void)parse_hmp_return(**reply);
  (void)parse_hmp_return(text);
  return 0;
}
