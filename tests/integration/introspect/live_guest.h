// SPDX-License-Identifier: Apache-2.0
// Helpers for real-guest introspection tests: the QEMU monitor through `virsh
// qemu-monitor-command` (as the agent does through libvirt), the guest's RAM layout, and a
// memory source over its qemu process. Header-only; usable by every test in this directory.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "stallmon/introspect/physical_memory.h"
#include "stallmon/introspect/ram_layout.h"

namespace stallmon::introspect::live {

// Runs one HMP command on `domain` via virsh, bounded by `timeout_s` (coreutils timeout).
inline HmpCommand virsh_hmp(const std::string& domain, int timeout_s = 30) {
  return [domain, timeout_s](std::string_view command) -> Result<std::string> {
    std::string cmd = "timeout " + std::to_string(timeout_s) + " virsh -c qemu:///system qemu-monitor-command '" +
                      domain + "' --hmp '" + std::string(command) + "' 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return Error::io("popen virsh", errno);
    std::string out;
    std::array<char, 65536> buf;
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
    int status = ::pclose(p);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 124) return Error(ErrorCode::kTimeout, "virsh: " + std::string(command));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return Error(ErrorCode::kIo, "virsh failed: " + out.substr(0, 300));
    return out;
  };
}

// Guest RAM of a libvirt domain's qemu as a memory source.
inline Result<std::shared_ptr<QemuProcessMemory>> qemu_memory(const std::string& domain, pid_t qemu_pid) {
  STALLMON_TRY(auto ram, resolve_ram_layout(virsh_hmp(domain)));
  STALLMON_TRY(auto mem, QemuProcessMemory::create(qemu_pid, std::move(ram)));
  return std::shared_ptr<QemuProcessMemory>(std::move(mem));
}

// A memory source with some bytes replaced: corrupts a real image without copying it.
class PatchedMemory final : public PhysicalMemory {
 public:
  explicit PatchedMemory(std::shared_ptr<PhysicalMemory> base) : base_(std::move(base)) {}
  void patch(uint64_t gpa, const void* data, size_t len) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < len; ++i) bytes_[gpa + i] = p[i];
  }
  Result<void> read(uint64_t gpa, void* buf, size_t len) override {
    STALLMON_TRY_VOID(base_->read(gpa, buf, len));
    for (auto it = bytes_.lower_bound(gpa); it != bytes_.end() && it->first < gpa + len; ++it) {
      static_cast<uint8_t*>(buf)[it->first - gpa] = it->second;
    }
    return Ok();
  }
  const std::vector<PhysRange>& ranges() const override { return base_->ranges(); }

 private:
  std::shared_ptr<PhysicalMemory> base_;
  std::map<uint64_t, uint8_t> bytes_;
};

}  // namespace stallmon::introspect::live
