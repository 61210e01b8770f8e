// SPDX-License-Identifier: Apache-2.0
#include "task_pool.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <new>
#include <utility>

namespace stallmon::core::internal {

namespace {
struct CurrentWorker {
  WorkerSlot* slot = nullptr;
  host::Clock* clock = nullptr;
};
thread_local CurrentWorker t_worker;

std::string ms_text(int64_t ns) { return std::to_string(ns / 1'000'000) + " ms"; }
}  // namespace

GuestReadScope::GuestReadScope() : slot_(t_worker.slot) {
  if (slot_ == nullptr) return;
  std::lock_guard<std::mutex> l(slot_->mu);
  if (slot_->depth++ == 0) slot_->read_since_ns = t_worker.clock->now_ns();
  open_ = true;
}

bool GuestReadScope::end() {
  if (slot_ == nullptr) return false;
  std::lock_guard<std::mutex> l(slot_->mu);
  if (open_ && --slot_->depth == 0) slot_->read_since_ns = 0;
  open_ = false;
  return slot_->abandoned;
}

bool GuestReadScope::current_abandoned() {
  WorkerSlot* s = t_worker.slot;
  if (s == nullptr) return false;
  std::lock_guard<std::mutex> l(s->mu);
  return s->abandoned;
}

TaskPool::TaskPool(Options options) : opt_(std::move(options)) {}

TaskPool::~TaskPool() { stop(); }

void TaskPool::start() {
  std::lock_guard<std::mutex> l(mu_);
  if (started_) return;
  started_ = true;
  for (size_t i = 0; i < std::max<size_t>(1, opt_.workers); ++i) spawn_locked();
  supervisor_ = std::thread([this] { supervisor_loop(); });
}

void TaskPool::spawn_locked() {
  workers_.emplace_back();
  Worker* w = &workers_.back();
  ++live_;
  w->thread = std::thread([this, w] { worker_loop(w); });
}

void TaskPool::stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) return;
    stop_ = true;
    while (!queue_.empty()) queue_.pop();
  }
  cv_.notify_all();
  sup_cv_.notify_all();
  if (supervisor_.joinable()) supervisor_.join();
  // Waits for workers inside a read as well: they hold the pool's lock when they finish.
  std::list<Worker> all;
  {
    std::lock_guard<std::mutex> l(mu_);
    all.swap(workers_);
  }
  for (Worker& w : all) {
    if (w.thread.joinable()) w.thread.join();
  }
}

void TaskPool::post(int64_t due_ns, PoolTask task) {
  bool earliest, untimed;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) return;
    const uint64_t seq = seq_++;
    queue_.push(Entry{due_ns, seq, std::make_shared<PoolTask>(std::move(task))});
    earliest = queue_.top().seq == seq;
    untimed = untimed_waiters_ > 0;
  }
  // An idle worker sleeps until the earliest entry is due, or, with an empty queue, until woken.
  // So only a new earliest entry, or a worker with no timer at all, needs a wake: waking one for
  // every post (each domain posts its next tick) was a futex round trip per tick, ~13 % of the
  // monitor's CPU at 10 domains (tests/scale/README.md). Every worker without a timer is woken
  // (notify_one might pick a timed one and leave it asleep while the entry comes due).
  if (untimed) {
    cv_.notify_all();
  } else if (earliest) {
    cv_.notify_one();
  }
}

size_t TaskPool::threads() const {
  std::lock_guard<std::mutex> l(mu_);
  size_t n = 0;
  for (const Worker& w : workers_) n += w.done ? 0 : 1;
  return n + (supervisor_.joinable() ? 1 : 0);
}

size_t TaskPool::queued() const {
  std::lock_guard<std::mutex> l(mu_);
  return queue_.size();
}

void TaskPool::worker_loop(Worker* self) {
  const std::shared_ptr<WorkerSlot> slot = self->slot;
  t_worker = CurrentWorker{slot.get(), opt_.mono};
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    if (queue_.empty()) {
      ++untimed_waiters_;
      cv_.wait(lk);
      --untimed_waiters_;
      continue;
    }
    const int64_t now = opt_.mono->now_ns();
    if (queue_.top().due > now) {
      cv_.wait_for(lk, std::chrono::nanoseconds(queue_.top().due - now));
      continue;
    }
    std::shared_ptr<PoolTask> task = queue_.top().task;
    queue_.pop();
    {
      std::lock_guard<std::mutex> s(slot->mu);
      slot->on_abandon = task->on_abandon;
    }
    lk.unlock();
    // The last line of containment: a task is expected to keep its failures to itself.
    const std::string what = run_contained([&] { task->run(); });
    if (!what.empty()) {
      exceptions_.fetch_add(1, std::memory_order_relaxed);
      if (task->on_exception) {
        try {
          task->on_exception(what);
        } catch (...) {  // nothing more can be done for this task; the pool goes on
        }
      }
    }
    bool abandoned;
    {
      std::lock_guard<std::mutex> s(slot->mu);
      slot->on_abandon = nullptr;
      slot->read_since_ns = 0;
      slot->depth = 0;
      abandoned = slot->abandoned;
    }
    task.reset();
    lk.lock();
    if (abandoned) {
      // Replaced meanwhile (or not, when the spare cap was reached): stay only if the pool is
      // below its size.
      if (stop_ || live_ >= opt_.workers) break;
      std::lock_guard<std::mutex> s(slot->mu);
      slot->abandoned = false;
      ++live_;
    }
  }
  {
    std::lock_guard<std::mutex> s(slot->mu);
    if (!slot->abandoned) --live_;
  }
  self->done = true;
  t_worker = CurrentWorker{};
  sup_cv_.notify_all();
}

void TaskPool::reap_locked() {
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->done) {
      if (it->thread.joinable()) it->thread.join();  // it has returned: join is immediate
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

void TaskPool::supervisor_loop() {
  const int64_t deadline = opt_.read_deadline_ns;
  const auto period = std::chrono::nanoseconds(std::clamp<int64_t>(deadline / 4, 1'000'000, 100'000'000));
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    sup_cv_.wait_for(lk, period);
    if (stop_) break;
    reap_locked();
    const int64_t now = opt_.mono->now_ns();
    std::vector<std::pair<std::function<void(const std::string&)>, std::string>> calls;
    for (Worker& w : workers_) {
      if (w.done) continue;
      std::lock_guard<std::mutex> s(w.slot->mu);
      if (w.slot->abandoned || w.slot->read_since_ns == 0) continue;
      const int64_t age = now - w.slot->read_since_ns;
      if (age <= deadline) continue;
      w.slot->abandoned = true;
      --live_;
      abandoned_.fetch_add(1, std::memory_order_relaxed);
      calls.emplace_back(w.slot->on_abandon, "a guest memory read did not return within " +
                                                 ms_text(deadline) + " (" + ms_text(age) +
                                                 " so far); its result will be dropped");
    }
    if (calls.empty()) continue;
    size_t alive = 0;
    for (const Worker& w : workers_) alive += w.done ? 0 : 1;
    while (live_ < opt_.workers && alive < opt_.workers + opt_.max_spare) {
      spawn_locked();
      ++alive;
    }
    lk.unlock();
    for (auto& [f, why] : calls) {
      if (!f) continue;
      try {
        f(why);
      } catch (...) {  // contained like a task
        exceptions_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    cv_.notify_all();
    lk.lock();
  }
}

}  // namespace stallmon::core::internal
