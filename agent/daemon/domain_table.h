// SPDX-License-Identifier: Apache-2.0
// Prints the domain table (qemu pid, vCPU threads, monitor health) to stdout whenever it changes.
#pragma once

#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include "stallmon/libvirt/domain_watcher.h"

namespace stallmon::daemon {

// Formats the table as text, one domain per block.
std::string format_domain_table(const std::vector<libvirt::DomainInfo>& domains,
                                const libvirt::ConnectionStatus& connection);

// Observer that only marks the table dirty; the main thread prints it (printing from the watcher's
// dispatch thread would let a blocked stdout stall discovery).
class DomainTablePrinter : public libvirt::DomainObserver {
 public:
  void on_connection(const libvirt::ConnectionStatus&) override { dirty_ = true; }
  void on_domain_event(const libvirt::DomainEvent&) override { dirty_ = true; }
  void on_domain_updated(const libvirt::DomainInfo&) override { dirty_ = true; }
  void on_domain_gone(const libvirt::DomainInfo&) override { dirty_ = true; }
  void on_domains_synced(const std::vector<libvirt::DomainInfo>&) override { dirty_ = true; }

  // Prints if anything changed since the last print. Returns true if it printed.
  bool print_if_dirty(const libvirt::DomainWatcher& watcher, std::FILE* out);
  void print(const libvirt::DomainWatcher& watcher, std::FILE* out);

 private:
  std::atomic<bool> dirty_{false};
};

}  // namespace stallmon::daemon
