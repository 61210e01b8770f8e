// SPDX-License-Identifier: Apache-2.0
#include "event_loop.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>

#include <chrono>
#include <mutex>

namespace stallmon::libvirt {
namespace {

std::mutex g_mu;
std::weak_ptr<EventLoop> g_current;
bool g_registered = false;

// libvirt's default error handler prints every error to stderr; errors are returned as values
// here (virGetLastError in the calling thread), so silence it.
void quiet_error_handler(void* /*user*/, virErrorPtr /*err*/) {}

void wake_cb(int timer, void* /*opaque*/) {
  // One-shot: disarm so an exiting loop does not spin on it.
  virEventUpdateTimeout(timer, -1);
}

}  // namespace

Result<std::shared_ptr<EventLoop>> EventLoop::acquire() {
  std::lock_guard lock(g_mu);
  if (auto loop = g_current.lock()) return loop;
  if (!g_registered) {
    virSetErrorFunc(nullptr, quiet_error_handler);
    if (virInitialize() < 0) return Error(ErrorCode::kInternal, "virInitialize failed");
    if (virEventRegisterDefaultImpl() < 0) {
      return Error(ErrorCode::kInternal, "virEventRegisterDefaultImpl failed");
    }
    g_registered = true;
  }
  std::shared_ptr<EventLoop> loop(new EventLoop());
  // A disabled timer that stop() arms to make virEventRunDefaultImpl() return.
  loop->wake_timer_ = virEventAddTimeout(-1, wake_cb, nullptr, nullptr);
  if (loop->wake_timer_ < 0) return Error(ErrorCode::kInternal, "virEventAddTimeout failed");
  loop->thread_ = std::thread([raw = loop.get()] {
    pthread_setname_np(pthread_self(), "virt-eventloop");
    while (!raw->stop_.load()) {
      if (virEventRunDefaultImpl() < 0) {
        // Should not happen; do not spin if it does.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  });
  g_current = loop;
  return loop;
}

EventLoop::~EventLoop() {
  stop_.store(true);
  if (wake_timer_ >= 0) virEventUpdateTimeout(wake_timer_, 0);
  if (thread_.joinable()) thread_.join();
  if (wake_timer_ >= 0) virEventRemoveTimeout(wake_timer_);
}

}  // namespace stallmon::libvirt
