// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: Volatility 3 ISF JSON from arbitrary bytes (an ISF file comes from elsewhere):
// the JSON and descriptor walk behind every type query the readers make, the profile recorded
// from it, and that profile loaded as Types.
#include <cstdint>
#include <string_view>

#include "stallmon/introspect/isf_types.h"
#include "stallmon/introspect/type_profile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  auto isf = isf_types_from_text(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!isf.ok()) return 0;
  auto p = record_reader_types(**isf);
  if (!p.ok()) return 0;
  p->build_id = "00";
  // What an ISF yields is a profile like any other: it passes the profile parser's bounds or
  // is refused there, never loaded unchecked.
  auto checked = parse_type_profile(format_type_profile(*p));
  if (checked.ok()) (void)types_from_profile(*checked);
  return 0;
}
