// SPDX-License-Identifier: Apache-2.0
// libFuzzer entry: ElfCoreMemory::open on arbitrary bytes (a memfd, so nothing touches the
// disk): program headers, PT_LOAD ranges, the VMCOREINFO PT_NOTE, wrong e_machine/class.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "stallmon/introspect/physical_memory.h"
#include "stallmon/introspect/vmcoreinfo.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stallmon::introspect;
  static const int fd = memfd_create("fuzz-core", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  auto core = ElfCoreMemory::open("/proc/self/fd/" + std::to_string(fd));
  if (!core.ok()) return 0;
  uint8_t buf[256];
  for (const PhysRange& r : (*core)->ranges()) {
    (void)(*core)->read(r.gpa, buf, std::min<uint64_t>(sizeof buf, r.size));
    (void)(*core)->read(r.end() - 1, buf, 2);
  }
  if (!(*core)->vmcoreinfo_note().empty()) (void)parse_vmcoreinfo((*core)->vmcoreinfo_note());
  return 0;
}
