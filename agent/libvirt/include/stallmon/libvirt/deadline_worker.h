// SPDX-License-Identifier: Apache-2.0
// A thread that runs blocking calls (libvirt RPCs, QEMU monitor commands) one at a time, for
// callers that wait with a deadline.
//
// A libvirt call cannot be cancelled: when one misses its deadline the worker stays blocked inside
// it. The worker then reports itself unresponsive (with the time the stuck call started) and
// rejects every new call at once instead of queueing it behind the stuck one, so no caller ever
// waits longer than its own deadline. When the stuck call finally returns, the worker is
// responsive again.
//
// One worker per domain keeps a hung monitor from delaying any other domain; the sampling thread
// never submits anything here.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "stallmon/base/result.h"
#include "stallmon/libvirt/domain.h"

namespace stallmon::libvirt {

// The time a worker's deadlines are measured on. Production uses SteadyDeadlineClock; unit
// tests substitute a clock that moves only when told to, so that no assertion depends on how
// long a real wait took.
class DeadlineClock {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  virtual ~DeadlineClock() = default;
  virtual time_point now() const = 0;
  // Waits on `cv` (whose mutex `lock` holds) until pred() or now() >= deadline; returns pred().
  // May release and re-acquire `lock` like a condition-variable wait.
  virtual bool wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, time_point deadline,
                          const std::function<bool()>& pred) = 0;
};

class SteadyDeadlineClock final : public DeadlineClock {
 public:
  time_point now() const override { return std::chrono::steady_clock::now(); }
  bool wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, time_point deadline,
                  const std::function<bool()>& pred) override {
    return cv.wait_until(lock, deadline, pred);
  }
  // The shared instance workers use by default.
  static std::shared_ptr<DeadlineClock> instance();
};

namespace detail {
struct WorkerCore;
}  // namespace detail

// The caller's end of one submitted call. Copyable; all copies share the result.
template <typename T>
class PendingCall {
 public:
  PendingCall() = default;

  // A call that is already complete (e.g. rejected before reaching any worker).
  static PendingCall completed(Result<T> result) {
    auto s = std::make_shared<State>();
    s->result = std::move(result);
    s->deadline = std::chrono::steady_clock::now();
    return PendingCall(std::move(s));
  }

  // Waits until the call completes or its deadline passes. On a missed deadline returns kTimeout
  // and, if the call is the one running, marks the worker unresponsive. Idempotent.
  Result<T> wait();

  // The result if the call already completed (or was rejected), without waiting.
  std::optional<Result<T>> try_get() const;

  std::chrono::steady_clock::time_point deadline() const;

 private:
  friend class DeadlineWorker;
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Result<T>> result;
    uint64_t task_id = 0;
    std::chrono::steady_clock::time_point deadline{};
    std::string what;
    std::weak_ptr<detail::WorkerCore> core;
    std::shared_ptr<DeadlineClock> clock;  // null for completed()
  };
  explicit PendingCall(std::shared_ptr<State> s) : state_(std::move(s)) {}
  std::shared_ptr<State> state_;
};

namespace detail {

// Type-erased queued call; the typed result lives in the PendingCall's state.
struct Task {
  uint64_t id = 0;
  std::string what;
  std::chrono::steady_clock::time_point deadline{};
  std::function<void()> run;                       // runs the call and stores its result
  std::function<void(const Error&)> reject;        // stores an error without running
};

struct WorkerCore {
  std::string name;
  std::shared_ptr<DeadlineClock> clock;  // set before the thread starts, never changed
  // Guarded by cb_mu (not mu) so that the callback runs without mu held and the destructor can
  // clear it knowing no callback is in progress.
  std::mutex cb_mu;
  std::function<void(const MonitorHealth&)> on_health;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<Task> queue;
  uint64_t next_id = 1;
  bool stop = false;
  bool exited = false;
  // The call being executed, if any.
  uint64_t running_id = 0;
  std::string running_what;
  std::chrono::steady_clock::time_point running_start{};
  std::chrono::steady_clock::time_point running_deadline{};
  MonitorHealth health;

  // Called when a caller's wait for task `id` timed out. Returns the error for that caller.
  Error caller_timed_out(uint64_t id, const std::string& what);
  // Marks unresponsive if the running call passed its deadline. Returns true if it did so now.
  bool check_deadline(std::chrono::steady_clock::time_point now);
  void run_loop();

 private:
  // Requires mu held; returns the callbacks to fire once it is released.
  std::deque<Task> mark_unresponsive_locked();
  void notify(const MonitorHealth& h);
};

}  // namespace detail

class DeadlineWorker {
 public:
  using Clock = std::chrono::steady_clock;
  using HealthCallback = std::function<void(const MonitorHealth&)>;

  // `name` names the thread (visible in /proc, truncated to 15 bytes) and error messages.
  // `on_health` is called on every responsive/unresponsive transition, from whichever thread
  // noticed it (a waiting caller, check_deadline()'s caller, or the worker); keep it short.
  // Deadlines are on `clock` (default: SteadyDeadlineClock); `shutdown_grace` is real time.
  explicit DeadlineWorker(std::string name, HealthCallback on_health = {},
                          std::chrono::milliseconds shutdown_grace = std::chrono::milliseconds(200),
                          std::shared_ptr<DeadlineClock> clock = nullptr);
  // Rejects queued calls, then joins the thread; a thread still inside a call after
  // `shutdown_grace` is detached (it owns everything it touches) rather than waited for.
  ~DeadlineWorker();

  DeadlineWorker(const DeadlineWorker&) = delete;
  DeadlineWorker& operator=(const DeadlineWorker&) = delete;

  // Queues `fn`; it must finish within `timeout` or the worker is declared unresponsive. While the
  // worker is unresponsive the call is rejected at once with kTimeout. `what` names the call in
  // errors and in MonitorHealth::stuck_call.
  template <typename T>
  PendingCall<T> submit(std::string what, std::chrono::milliseconds timeout,
                        std::function<Result<T>()> fn);

  // submit() then wait().
  template <typename T>
  Result<T> call(std::string what, std::chrono::milliseconds timeout, std::function<Result<T>()> fn) {
    return submit<T>(std::move(what), timeout, std::move(fn)).wait();
  }

  // For callers that submit and do not wait: marks the worker unresponsive if the running call is
  // past its deadline (as of `now`, or of the worker's clock). Returns true if the worker is
  // responsive afterwards.
  bool check_deadline(Clock::time_point now);
  bool check_deadline();

  MonitorHealth health() const;
  // True while a call is being executed or queued.
  bool busy() const;

 private:
  std::shared_ptr<detail::WorkerCore> core_;
  std::thread thread_;
  std::chrono::milliseconds shutdown_grace_;
};

// ---- implementation of the templates ----

template <typename T>
Result<T> PendingCall<T>::wait() {
  if (!state_) return Error(ErrorCode::kInternal, "wait() on an empty PendingCall");
  {
    std::unique_lock lock(state_->mu);
    auto done = [&] { return state_->result.has_value(); };
    if (done() || (state_->clock && state_->clock->wait_until(state_->cv, lock, state_->deadline, done))) {
      return *state_->result;
    }
  }
  Error err(ErrorCode::kTimeout, state_->what + ": no answer before the deadline");
  if (auto core = state_->core.lock()) err = core->caller_timed_out(state_->task_id, state_->what);
  std::lock_guard lock(state_->mu);
  // The call may have completed between the timed-out wait and now; a result wins.
  if (state_->result) return *state_->result;
  state_->result = err;
  return err;
}

template <typename T>
std::optional<Result<T>> PendingCall<T>::try_get() const {
  if (!state_) return std::nullopt;
  std::lock_guard lock(state_->mu);
  return state_->result;
}

template <typename T>
std::chrono::steady_clock::time_point PendingCall<T>::deadline() const {
  return state_ ? state_->deadline : std::chrono::steady_clock::time_point{};
}

template <typename T>
PendingCall<T> DeadlineWorker::submit(std::string what, std::chrono::milliseconds timeout,
                                      std::function<Result<T>()> fn) {
  using State = typename PendingCall<T>::State;
  auto state = std::make_shared<State>();
  state->deadline = core_->clock->now() + timeout;
  state->what = what;
  state->core = core_;
  state->clock = core_->clock;

  detail::Task task;
  task.what = std::move(what);
  task.deadline = state->deadline;
  task.run = [state, fn = std::move(fn)] {
    Result<T> r = fn();
    std::lock_guard lock(state->mu);
    // A caller that timed out already holds its kTimeout; the late result is dropped.
    if (!state->result) state->result = std::move(r);
    state->cv.notify_all();
  };
  task.reject = [state](const Error& e) {
    std::lock_guard lock(state->mu);
    if (!state->result) state->result = e;
    state->cv.notify_all();
  };

  std::unique_lock lock(core_->mu);
  if (core_->stop || !core_->health.responsive) {
    Error e(ErrorCode::kTimeout,
            core_->stop ? task.what + ": worker " + core_->name + " is shutting down"
                        : task.what + ": monitor of " + core_->name + " unresponsive (stuck in " +
                              core_->health.stuck_call + ")");
    lock.unlock();
    task.reject(e);
    return PendingCall<T>(state);
  }
  task.id = core_->next_id++;
  state->task_id = task.id;
  core_->queue.push_back(std::move(task));
  core_->cv.notify_all();
  return PendingCall<T>(state);
}

}  // namespace stallmon::libvirt
