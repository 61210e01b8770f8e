// SPDX-License-Identifier: Apache-2.0
#include "domain_table.h"

#include <chrono>
#include <sstream>

namespace stallmon::daemon {

std::string format_domain_table(const std::vector<libvirt::DomainInfo>& domains,
                                const libvirt::ConnectionStatus& connection) {
  std::ostringstream os;
  os << "== " << domains.size() << " running domain" << (domains.size() == 1 ? "" : "s") << " on "
     << connection.uri << " (" << libvirt::to_string(connection.state);
  if (connection.state != libvirt::ConnectionState::kConnected && !connection.reason.empty()) {
    os << ": " << connection.reason;
  }
  os << ")\n";
  for (const auto& d : domains) {
    os << d.name << "  uuid " << d.uuid << "  " << libvirt::to_string(d.state) << "  qemu pid ";
    if (d.qemu_pid > 0) {
      os << d.qemu_pid;
    } else {
      os << "?";
    }
    os << "  vcpus " << d.vcpus.size() << " (" << libvirt::to_string(d.vcpu_source) << ")";
    if (d.ram_layout) {
      os << "  ram ranges " << d.ram_layout->size();
    } else if (!d.ram_layout_error.empty()) {
      os << "  ram layout unknown";
    }
    if (!d.monitor.responsive) {
      auto stuck = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() -
                                                                    d.monitor.since_steady);
      os << "  MONITOR UNRESPONSIVE for " << stuck.count() << " s (" << d.monitor.stuck_call << ")";
    }
    os << "\n";
    for (const auto& v : d.vcpus) {
      os << "  vcpu " << v.index << "  tid " << v.tid << "  " << (v.name.empty() ? "?" : v.name) << "\n";
    }
  }
  return os.str();
}

bool DomainTablePrinter::print_if_dirty(const libvirt::DomainWatcher& watcher, std::FILE* out) {
  if (!dirty_.exchange(false)) return false;
  print(watcher, out);
  return true;
}

void DomainTablePrinter::print(const libvirt::DomainWatcher& watcher, std::FILE* out) {
  std::string text = format_domain_table(watcher.domains(), watcher.connection());
  std::fputs(text.c_str(), out);
  std::fflush(out);
}

}  // namespace stallmon::daemon
