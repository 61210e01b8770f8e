// SPDX-License-Identifier: Apache-2.0
#include "stallmon/libvirt/deadline_worker.h"

#include <pthread.h>

#include <algorithm>

namespace stallmon::libvirt {

std::shared_ptr<DeadlineClock> SteadyDeadlineClock::instance() {
  static const auto clock = std::make_shared<SteadyDeadlineClock>();
  return clock;
}

namespace detail {

std::deque<Task> WorkerCore::mark_unresponsive_locked() {
  health.responsive = false;
  health.since_steady = running_start;
  health.since_wall = std::chrono::system_clock::now() -
                      std::chrono::duration_cast<std::chrono::system_clock::duration>(clock->now() - running_start);
  health.stuck_call = running_what;
  // Nothing may wait behind the stuck call: fail everything queued now.
  std::deque<Task> dropped;
  dropped.swap(queue);
  return dropped;
}

void WorkerCore::notify(const MonitorHealth& h) {
  std::lock_guard lock(cb_mu);
  if (on_health) on_health(h);
}

bool WorkerCore::check_deadline(std::chrono::steady_clock::time_point now) {
  std::deque<Task> dropped;
  MonitorHealth h;
  {
    std::lock_guard lock(mu);
    if (!health.responsive || running_id == 0 || now < running_deadline) return false;
    dropped = mark_unresponsive_locked();
    h = health;
  }
  for (auto& t : dropped) {
    t.reject(Error(ErrorCode::kTimeout,
                   t.what + ": monitor of " + name + " unresponsive (stuck in " + h.stuck_call + ")"));
  }
  notify(h);
  return true;
}

Error WorkerCore::caller_timed_out(uint64_t id, const std::string& what) {
  bool queued = false;
  {
    std::lock_guard lock(mu);
    auto it = std::find_if(queue.begin(), queue.end(), [&](const Task& t) { return t.id == id; });
    if (it != queue.end()) {
      queue.erase(it);
      queued = true;
    }
  }
  // Whether or not this caller's call was the running one, the running call may now be overdue.
  check_deadline(clock->now());
  std::lock_guard lock(mu);
  if (queued) {
    return Error(ErrorCode::kTimeout,
                 what + ": still queued at the deadline on " + name +
                     (running_id ? " behind " + running_what : std::string()));
  }
  return Error(ErrorCode::kTimeout, what + ": no answer before the deadline on " + name +
                                        (health.responsive ? "" : " (monitor unresponsive)"));
}

void WorkerCore::run_loop() {
  std::unique_lock lock(mu);
  for (;;) {
    cv.wait(lock, [&] { return stop || !queue.empty(); });
    if (stop) break;
    Task task = std::move(queue.front());
    queue.pop_front();
    auto now = clock->now();
    if (now >= task.deadline) {
      // Its caller has given up (or will the moment it looks); do not start it late.
      lock.unlock();
      task.reject(Error(ErrorCode::kTimeout, task.what + ": deadline passed while queued on " + name));
      lock.lock();
      continue;
    }
    running_id = task.id;
    running_what = task.what;
    running_start = now;
    running_deadline = task.deadline;
    lock.unlock();
    task.run();
    lock.lock();
    running_id = 0;
    running_what.clear();
    if (!health.responsive) {
      // The stuck call returned: the monitor answers again.
      health = MonitorHealth{};
      MonitorHealth h = health;
      lock.unlock();
      notify(h);
      lock.lock();
    }
  }
  std::deque<Task> dropped;
  dropped.swap(queue);
  exited = true;
  cv.notify_all();
  lock.unlock();
  for (auto& t : dropped) t.reject(Error(ErrorCode::kTimeout, t.what + ": worker " + name + " stopped"));
}

}  // namespace detail

DeadlineWorker::DeadlineWorker(std::string name, HealthCallback on_health,
                               std::chrono::milliseconds shutdown_grace, std::shared_ptr<DeadlineClock> clock)
    : core_(std::make_shared<detail::WorkerCore>()), shutdown_grace_(shutdown_grace) {
  core_->name = std::move(name);
  core_->clock = clock ? std::move(clock) : SteadyDeadlineClock::instance();
  core_->on_health = std::move(on_health);  // no thread yet: no lock needed
  // The thread shares ownership of the core so that it can outlive this object when detached.
  thread_ = std::thread([core = core_] {
    std::string tname = core->name.substr(0, 15);
    pthread_setname_np(pthread_self(), tname.c_str());
    core->run_loop();
  });
}

DeadlineWorker::~DeadlineWorker() {
  {
    // Health callbacks after destruction would reach a dead owner.
    std::lock_guard lock(core_->cb_mu);
    core_->on_health = nullptr;
  }
  bool exited = false;
  {
    std::unique_lock lock(core_->mu);
    core_->stop = true;
    core_->cv.notify_all();
    exited = core_->cv.wait_for(lock, shutdown_grace_, [&] { return core_->exited; });
  }
  if (thread_.get_id() == std::this_thread::get_id()) {
    // The last owner let go from inside one of this worker's own calls.
    thread_.detach();
  } else if (exited) {
    thread_.join();
  } else {
    // Blocked in a call that cannot be cancelled. The thread keeps the core alive and finishes on
    // its own when the call returns (or dies with the process).
    thread_.detach();
  }
}

bool DeadlineWorker::check_deadline(Clock::time_point now) {
  core_->check_deadline(now);
  std::lock_guard lock(core_->mu);
  return core_->health.responsive;
}

bool DeadlineWorker::check_deadline() { return check_deadline(core_->clock->now()); }

MonitorHealth DeadlineWorker::health() const {
  std::lock_guard lock(core_->mu);
  return core_->health;
}

bool DeadlineWorker::busy() const {
  std::lock_guard lock(core_->mu);
  return core_->running_id != 0 || !core_->queue.empty();
}

}  // namespace stallmon::libvirt
