// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: BTF from arbitrary bytes (libbpf parse + our member resolution).
#include <cstdint>
#include <vector>

#include "stallmon/introspect/btf_types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  auto t = Types::from_btf_bytes(std::vector<uint8_t>(data, data + size));
  if (!t.ok()) return 0;
  (void)(*t)->member_offset("__call_single_data", "node.u_flags");
  (void)(*t)->member("rq", "cfs.h_nr_running");
  (void)(*t)->type_size("call_single_data_t");
  (void)(*t)->variable_type_name("runqueues");
  return 0;
}
