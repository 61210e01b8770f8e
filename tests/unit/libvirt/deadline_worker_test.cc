// SPDX-License-Identifier: Apache-2.0
// The worker with fake calls that block until the test opens a gate, standing in for a libvirt
// call stuck in a hung QEMU monitor. Deadlines run on a ManualDeadlineClock that moves only when
// the test advances it: every expiry is an explicit step, and no assertion depends on how long a
// real wait took or how fast the worker thread was scheduled.
#include "stallmon/libvirt/deadline_worker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <vector>

namespace stallmon::libvirt {
namespace {

using namespace std::chrono_literals;
using TimePoint = DeadlineClock::time_point;

// Time that moves only in advance(). Waiters register so that advance() can wake them: it locks
// each waiter's mutex before notifying, so a waiter is either still to check the (already
// advanced) time or already waiting on its condition variable.
class ManualDeadlineClock final : public DeadlineClock {
 public:
  TimePoint now() const override { return TimePoint(TimePoint::duration(now_.load())); }
  void advance(std::chrono::nanoseconds d) {
    now_ += std::chrono::duration_cast<TimePoint::duration>(d).count();
    std::lock_guard lock(mu_);
    for (Waiter* w : waiters_) {
      std::lock_guard wl(*w->mu);
      w->cv->notify_all();
    }
  }
  bool wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, TimePoint deadline,
                  const std::function<bool()>& pred) override {
    // Never take mu_ with the waiter's mutex held: advance() takes them in the other order.
    Waiter w{&cv, lock.mutex()};
    lock.unlock();
    {
      std::lock_guard l(mu_);
      waiters_.insert(&w);
    }
    lock.lock();
    while (!pred() && now() < deadline) cv.wait(lock);
    lock.unlock();
    {
      std::lock_guard l(mu_);
      waiters_.erase(&w);
    }
    lock.lock();
    return pred();
  }

 private:
  struct Waiter {
    std::condition_variable* cv;
    std::mutex* mu;
  };
  std::atomic<TimePoint::rep> now_{TimePoint(1000h).time_since_epoch().count()};
  std::mutex mu_;
  std::set<Waiter*> waiters_;
};

// Real time only bounds the destructor's wait for its thread; no test depends on it.
constexpr std::chrono::milliseconds kGrace = 200ms;

// A gate the fake call waits on. Shared, because a detached worker may still be waiting on it
// after the test body (and its stack) is gone.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int entered = 0;
  void release() {
    std::lock_guard lock(mu);
    open = true;
    cv.notify_all();
  }
  void wait() {
    std::unique_lock lock(mu);
    ++entered;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  }
  // Until the worker is inside the call.
  void wait_entered() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return entered > 0; });
  }
};

std::function<Result<int>()> blocking(std::shared_ptr<Gate> gate, int value) {
  return [gate, value]() -> Result<int> {
    gate->wait();
    return value;
  };
}

// Records health transitions; wait_for() blocks until the worker reported the n-th one.
struct HealthLog {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<MonitorHealth> events;
  DeadlineWorker::HealthCallback callback() {
    return [this](const MonitorHealth& h) {
      std::lock_guard lock(mu);
      events.push_back(h);
      cv.notify_all();
    };
  }
  size_t size() {
    std::lock_guard lock(mu);
    return events.size();
  }
  void wait_for(size_t n) {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return events.size() >= n; });
  }
};

class DeadlineWorkerTest : public ::testing::Test {
 protected:
  std::shared_ptr<ManualDeadlineClock> clock = std::make_shared<ManualDeadlineClock>();
  HealthLog log;
  std::shared_ptr<Gate> gate = std::make_shared<Gate>();
};

TEST_F(DeadlineWorkerTest, FastCallReturnsItsResult) {
  DeadlineWorker w("test-fast", {}, kGrace, clock);
  auto r = w.call<int>("answer", 1s, [] { return Result<int>(42); });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 42);
  EXPECT_TRUE(w.health().responsive);
}

TEST_F(DeadlineWorkerTest, ErrorsPassThrough) {
  DeadlineWorker w("test-err", {}, kGrace, clock);
  auto r = w.call<int>("fails", 1s, [] { return Result<int>(Error(ErrorCode::kNotFound, "no such domain")); });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(w.health().responsive);
}

TEST_F(DeadlineWorkerTest, StuckCallMissesDeadlineAndMarksUnresponsive) {
  DeadlineWorker w("test-stuck", log.callback(), kGrace, clock);
  const TimePoint started = clock->now();
  auto p = w.submit<int>("qmp query-cpus-fast", 150ms, blocking(gate, 1));
  gate->wait_entered();
  clock->advance(149ms);
  EXPECT_TRUE(w.check_deadline());  // 1 ms before its deadline the call is not stuck yet
  EXPECT_FALSE(p.try_get().has_value());
  clock->advance(1ms);
  auto r = p.wait();  // at the deadline: returns at once, the call still blocked
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);

  MonitorHealth h = w.health();
  EXPECT_FALSE(h.responsive);
  EXPECT_EQ(h.stuck_call, "qmp query-cpus-fast");
  EXPECT_EQ(h.since_steady, started);  // since the stuck call started, not since noticed
  EXPECT_EQ(log.size(), 1u);

  // Nothing queues behind the stuck call: rejected at submission, before anyone waits.
  auto again = w.submit<int>("qmp query-status", 5s, [] { return Result<int>(7); });
  auto rejected = again.try_get();
  ASSERT_TRUE(rejected.has_value());
  ASSERT_FALSE(rejected->ok());
  EXPECT_EQ(rejected->error().code, ErrorCode::kTimeout);
  EXPECT_NE(rejected->error().message.find("unresponsive"), std::string::npos) << rejected->error().message;

  // The stuck call returns: responsive again, and calls work.
  gate->release();
  log.wait_for(2);
  EXPECT_TRUE(w.health().responsive);
  auto ok = w.call<int>("qmp query-status", 1s, [] { return Result<int>(7); });
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 7);
}

TEST_F(DeadlineWorkerTest, CallQueuedBehindStuckCallTimesOutAndIsNeverRun) {
  DeadlineWorker w("test-queue", {}, kGrace, clock);
  // The first call has a long deadline: the worker is not yet "unresponsive" when the second
  // caller gives up.
  auto first = w.submit<int>("slow", 10s, blocking(gate, 1));
  gate->wait_entered();
  auto ran = std::make_shared<std::atomic<bool>>(false);
  auto second = w.submit<int>("queued", 100ms, [ran]() -> Result<int> {
    ran->store(true);
    return 2;
  });
  clock->advance(100ms);
  auto r = second.wait();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_NE(r.error().message.find("queued"), std::string::npos) << r.error().message;
  EXPECT_TRUE(w.health().responsive);  // the running call is still within its own deadline
  gate->release();
  auto f = first.wait();
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f, 1);
  // A drained queue: the abandoned call was removed, not run late.
  ASSERT_TRUE(w.call<int>("sync", 1s, [] { return Result<int>(0); }).ok());
  EXPECT_FALSE(ran->load());
}

TEST_F(DeadlineWorkerTest, CheckDeadlineFlagsCallsNobodyWaitsFor) {
  DeadlineWorker w("test-nowait", log.callback(), kGrace, clock);
  auto pending = w.submit<int>("hmp info mtree -f", 50ms, blocking(gate, 1));
  gate->wait_entered();
  EXPECT_TRUE(w.check_deadline());  // not yet overdue
  clock->advance(80ms);
  EXPECT_FALSE(w.check_deadline());
  EXPECT_FALSE(w.health().responsive);
  EXPECT_EQ(w.health().stuck_call, "hmp info mtree -f");
  EXPECT_EQ(log.size(), 1u);
  gate->release();
  // Responsive again once the call returned; the result is stored before that is reported.
  log.wait_for(2);
  EXPECT_TRUE(w.health().responsive);
  // Nobody timed out on this call, so its late result is still delivered to whoever looks.
  auto r = pending.try_get();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->ok());
  EXPECT_EQ(**r, 1);
}

TEST_F(DeadlineWorkerTest, LateResultIsDroppedForACallerThatTimedOut) {
  DeadlineWorker w("test-late", log.callback(), kGrace, clock);
  auto p = w.submit<int>("slow", 50ms, blocking(gate, 5));
  gate->wait_entered();
  clock->advance(50ms);
  auto r = p.wait();
  ASSERT_FALSE(r.ok());
  gate->release();
  log.wait_for(2);  // unresponsive, then responsive once the call returned with its result
  auto again = p.wait();  // idempotent: still the timeout it already returned
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kTimeout);
  ASSERT_TRUE(p.try_get().has_value());
  EXPECT_FALSE(p.try_get()->ok());
}

TEST_F(DeadlineWorkerTest, DestructorDoesNotWaitForAStuckCall) {
  auto finished = std::make_shared<std::atomic<bool>>(false);
  {
    DeadlineWorker w("test-dtor", {}, 50ms, clock);
    auto p = w.submit<int>("stuck forever", 20ms, [g = gate, finished]() -> Result<int> {
      g->wait();
      finished->store(true);
      return 1;
    });
    gate->wait_entered();
    clock->advance(20ms);
    EXPECT_FALSE(p.wait().ok());
  }
  // The destructor returned with the call still blocked behind the closed gate: it did not wait
  // for it (one that did would never return).
  EXPECT_FALSE(finished->load());
  // Let the detached thread finish so the test binary exits cleanly.
  gate->release();
}

// The production clock: a call blocked past a real deadline of 1 ms comes back as a timeout
// (whether the worker had started it or not: both are kTimeout).
TEST_F(DeadlineWorkerTest, SteadyClockDeadlinesExpire) {
  DeadlineWorker w("test-steady");
  auto r = w.call<int>("stuck", 1ms, blocking(gate, 1));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  gate->release();
}

TEST(DeadlineWorker, CompletedCallNeedsNoWorker) {
  auto p = PendingCall<int>::completed(Error(ErrorCode::kNotFound, "no running domain x"));
  auto r = p.wait();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST_F(DeadlineWorkerTest, ManyCallsInOrder) {
  DeadlineWorker w("test-order", {}, kGrace, clock);
  std::vector<PendingCall<int>> calls;
  auto order = std::make_shared<std::vector<int>>();
  for (int i = 0; i < 50; ++i) {
    calls.push_back(w.submit<int>("n", 5s, [i, order]() -> Result<int> {
      order->push_back(i);
      return i;
    }));
  }
  for (int i = 0; i < 50; ++i) {
    auto r = calls[i].wait();
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, i);
  }
  ASSERT_EQ(order->size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ((*order)[i], i);
}

}  // namespace
}  // namespace stallmon::libvirt
