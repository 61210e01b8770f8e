// SPDX-License-Identifier: Apache-2.0
// libvirt's default event loop on a thread of its own. libvirt allows one event implementation per
// process, registered before the first connection; keepalive, the close callback and domain
// events all need it running. Shared by every DomainWatcher in the process and stopped when the
// last one releases it.
#pragma once

#include <atomic>
#include <memory>
#include <thread>

#include "stallmon/base/result.h"

namespace stallmon::libvirt {

class EventLoop {
 public:
  // Registers the default implementation (once per process) and starts the loop thread if it is
  // not running.
  static Result<std::shared_ptr<EventLoop>> acquire();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

 private:
  EventLoop() = default;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  int wake_timer_ = -1;
};

}  // namespace stallmon::libvirt
