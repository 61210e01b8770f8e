// SPDX-License-Identifier: Apache-2.0
#include "systemd.h"

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <cstring>

namespace stallmon::daemon {

SystemdNotifier::SystemdNotifier() {
  const char* sock = std::getenv("NOTIFY_SOCKET");
  enabled_ = sock != nullptr && *sock != '\0';
  uint64_t usec = 0;
  // > 0 only if WATCHDOG_USEC is set and WATCHDOG_PID (if set) is this process.
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) watchdog_ = std::chrono::microseconds(usec);
}

void SystemdNotifier::notify(const std::string& text) {
  if (!enabled_) return;
  int r = sd_notify(0, text.c_str());
  if (r < 0) spdlog::warn("sd_notify({}): {}", text.substr(0, text.find('\n')), std::strerror(-r));
}

void SystemdNotifier::ready(const std::string& s) { notify("READY=1\nSTATUS=" + s); }
void SystemdNotifier::reloading() { notify("RELOADING=1\nSTATUS=reloading configuration"); }
void SystemdNotifier::reloaded(const std::string& s) { notify("READY=1\nSTATUS=" + s); }
void SystemdNotifier::stopping() { notify("STOPPING=1\nSTATUS=shutting down"); }
void SystemdNotifier::status(const std::string& s) { notify("STATUS=" + s); }
void SystemdNotifier::watchdog() { notify("WATCHDOG=1"); }

}  // namespace stallmon::daemon
