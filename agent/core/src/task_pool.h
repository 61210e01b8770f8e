// SPDX-License-Identifier: Apache-2.0
// A fixed pool of worker threads running tasks from one due-time-ordered queue, with a
// supervisor that abandons a worker stuck inside a guest memory read.
//
// The monitor runs two: the TickPool (every domain's tick, re-posted by the task itself for
// its next due time) and the DiscoveryPool (kernel discovery, FIFO: due = now). Guest memory is
// read with process_vm_readv on the qemu process, which sleeps while a qemu thread holds its mm
// lock stuck in the host kernel (or on userfaultfd-backed RAM during postcopy): a read can take
// arbitrarily long, and nothing can interrupt it. So instead of a thread per domain, reads are
// *supervised*: code that reads guest memory opens a GuestReadScope; a read older than the
// deadline makes the supervisor mark that worker abandoned, call the task's on_abandon (which
// re-schedules the domain, host-only), and start a replacement worker (at most `max_spare`
// at a time). When the read returns, the scope reports the worker as abandoned: the caller
// drops its result, and the worker then leaves the pool if the pool is at full size again.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "stallmon/host/clock.h"

namespace stallmon::core::internal {

// Runs f and returns what escaped it, described for a log line or a health reason ("" if nothing
// did). The one catch-all of the pool's workers and of a domain's tick. *out_of_memory, if given,
// says whether it was std::bad_alloc: by type, never by the text (an exception's message may
// carry anything, guest bytes included).
template <typename F>
std::string run_contained(F&& f, bool* out_of_memory = nullptr) {
  if (out_of_memory) *out_of_memory = false;
  try {
    f();
  } catch (const std::bad_alloc&) {
    if (out_of_memory) *out_of_memory = true;
    return "allocation failed (std::bad_alloc)";
  } catch (const std::exception& e) {
    return std::string("exception: ") + e.what();
  } catch (...) {
    return "unknown exception";
  }
  return {};
}

struct PoolTask {
  std::function<void()> run;
  // Called by the supervisor (on its thread, no lock held) when `run` was abandoned inside a
  // guest read. `why` says how long and which deadline. May be empty.
  std::function<void(const std::string& why)> on_abandon;
  // Called instead of `run` when an exception escaped `run` (run should contain its own
  // failures; this is the last line, so that one domain's bug never takes the daemon down).
  std::function<void(const std::string& what)> on_exception;
};

// What the supervisor sees of one worker.
struct WorkerSlot {
  std::mutex mu;
  int64_t read_since_ns = 0;  // start of the outermost open GuestReadScope; 0: not reading
  int depth = 0;
  bool abandoned = false;
  std::function<void(const std::string&)> on_abandon;  // of the task being run
};

// Marks the calling thread as inside a guest read until end() (or destruction). Outside a
// pool worker (threads=false, tests, tools) it does nothing and end() is always false.
// Nested scopes count once (a snapshot scope around the memory decorator's per-read scopes).
class GuestReadScope {
 public:
  GuestReadScope();
  ~GuestReadScope() { (void)end(); }
  GuestReadScope(const GuestReadScope&) = delete;
  GuestReadScope& operator=(const GuestReadScope&) = delete;
  // Closes the scope. True when the supervisor abandoned this worker meanwhile: the caller's
  // result is stale and must be dropped (give borrowed state back, touch nothing else).
  bool end();
  // Whether the calling worker has been abandoned (e.g. to fail later reads fast).
  static bool current_abandoned();

 private:
  WorkerSlot* slot_;
  bool open_ = false;
};

class TaskPool {
 public:
  struct Options {
    std::string name = "pool";
    size_t workers = 1;
    size_t max_spare = 1;               // replacement workers alive beyond `workers`, at most
    int64_t read_deadline_ns = 250'000'000;
    host::Clock* mono = nullptr;        // due times and read ages (must be real time)
  };
  explicit TaskPool(Options options);
  ~TaskPool();  // stop()
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  void start();
  // Joins every worker that is not stuck; workers stuck in a read are detached and exit when
  // it returns (they hold only shared state). Queued tasks are dropped. Idempotent.
  void stop();

  // Runs `task` at or after `due_ns` (mono clock). Earliest due first; FIFO among equal.
  void post(int64_t due_ns, PoolTask task);

  // Wakes the workers to look at the queue again (tests on a simulated clock).
  void wake() { cv_.notify_all(); sup_cv_.notify_all(); }

  size_t threads() const;        // live threads: workers + replacements + the supervisor
  uint64_t abandoned() const { return abandoned_.load(); }
  uint64_t exceptions() const { return exceptions_.load(); }
  size_t queued() const;
  int64_t now_ns() const { return opt_.mono->now_ns(); }

 private:
  struct Worker {
    std::thread thread;
    std::shared_ptr<WorkerSlot> slot = std::make_shared<WorkerSlot>();
    bool done = false;  // under mu_: the thread returned (join it)
  };
  struct Entry {
    int64_t due;
    uint64_t seq;
    std::shared_ptr<PoolTask> task;
    bool operator>(const Entry& o) const { return due != o.due ? due > o.due : seq > o.seq; }
  };
  void spawn_locked();
  void worker_loop(Worker* self);
  void supervisor_loop();
  void reap_locked();

  const Options opt_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable sup_cv_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> queue_;
  uint64_t seq_ = 0;
  size_t untimed_waiters_ = 0;  // idle workers waiting with an empty queue (no timer)
  std::list<Worker> workers_;
  size_t live_ = 0;  // workers not abandoned
  bool started_ = false, stop_ = false;
  std::thread supervisor_;
  std::atomic<uint64_t> abandoned_{0}, exceptions_{0};
};

}  // namespace stallmon::core::internal
