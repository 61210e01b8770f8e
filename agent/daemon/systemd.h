// SPDX-License-Identifier: Apache-2.0
// systemd integration (Type=notify): READY/RELOADING/STOPPING/STATUS and the watchdog
// keep-alive, through libsystemd's sd_notify. Everything is a no-op when NOTIFY_SOCKET is unset
// (stallmond run by hand, in tests, or by another supervisor).
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace stallmon::daemon {

class SystemdNotifier {
 public:
  // Reads NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID (sd_watchdog_enabled) once.
  SystemdNotifier();

  bool enabled() const { return enabled_; }
  // WATCHDOG_USEC when systemd set a watchdog for this process; keep-alives go at half of it.
  std::optional<std::chrono::microseconds> watchdog_timeout() const { return watchdog_; }
  std::optional<std::chrono::microseconds> keepalive_interval() const {
    if (!watchdog_) return std::nullopt;
    return *watchdog_ / 2;
  }

  void ready(const std::string& status);
  void reloading();
  void reloaded(const std::string& status);  // READY=1 again after RELOADING=1
  void stopping();
  void status(const std::string& status);
  void watchdog();  // WATCHDOG=1

 private:
  void notify(const std::string& text);
  bool enabled_ = false;
  std::optional<std::chrono::microseconds> watchdog_;
};

}  // namespace stallmon::daemon
