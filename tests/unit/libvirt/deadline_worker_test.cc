// SPDX-License-Identifier: Apache-2.0
// The worker with fake calls that block until the test opens a gate, standing in for a libvirt
// call stuck in a hung QEMU monitor.
#include "stallmon/libvirt/deadline_worker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace stallmon::libvirt {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A gate the fake call waits on. Shared, because a detached worker may still be waiting on it
// after the test body (and its stack) is gone.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  std::atomic<int> entered{0};
  void release() {
    std::lock_guard lock(mu);
    open = true;
    cv.notify_all();
  }
  void wait() {
    ++entered;
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return open; });
  }
};

std::function<Result<int>()> blocking(std::shared_ptr<Gate> gate, int value) {
  return [gate, value]() -> Result<int> {
    gate->wait();
    return value;
  };
}

// Records health transitions.
struct HealthLog {
  std::mutex mu;
  std::vector<MonitorHealth> events;
  DeadlineWorker::HealthCallback callback() {
    return [this](const MonitorHealth& h) {
      std::lock_guard lock(mu);
      events.push_back(h);
    };
  }
  size_t size() {
    std::lock_guard lock(mu);
    return events.size();
  }
};

TEST(DeadlineWorker, FastCallReturnsItsResult) {
  DeadlineWorker w("test-fast");
  auto r = w.call<int>("answer", 1s, [] { return Result<int>(42); });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 42);
  EXPECT_TRUE(w.health().responsive);
}

TEST(DeadlineWorker, ErrorsPassThrough) {
  DeadlineWorker w("test-err");
  auto r = w.call<int>("fails", 1s, [] { return Result<int>(Error(ErrorCode::kNotFound, "no such domain")); });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(w.health().responsive);
}

TEST(DeadlineWorker, StuckCallMissesDeadlineAndMarksUnresponsive) {
  HealthLog log;
  auto gate = std::make_shared<Gate>();
  DeadlineWorker w("test-stuck", log.callback());
  auto before = Clock::now();
  auto r = w.call<int>("qmp query-cpus-fast", 150ms, blocking(gate, 1));
  auto waited = Clock::now() - before;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_GE(waited, 150ms);
  EXPECT_LT(waited, 2s);  // the caller never waits much past its deadline (slack for loaded CI)

  MonitorHealth h = w.health();
  EXPECT_FALSE(h.responsive);
  EXPECT_EQ(h.stuck_call, "qmp query-cpus-fast");
  EXPECT_LE(h.since_steady, before + 50ms);  // since the stuck call started, not since noticed
  EXPECT_EQ(log.size(), 1u);

  // Nothing queues behind the stuck call: rejected at once.
  auto t0 = Clock::now();
  auto again = w.call<int>("qmp query-status", 5s, [] { return Result<int>(7); });
  EXPECT_LT(Clock::now() - t0, 1s);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kTimeout);
  EXPECT_NE(again.error().message.find("unresponsive"), std::string::npos) << again.error().message;

  // The stuck call returns: responsive again, and calls work.
  gate->release();
  for (int i = 0; i < 200 && !w.health().responsive; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_TRUE(w.health().responsive);
  EXPECT_EQ(log.size(), 2u);
  auto ok = w.call<int>("qmp query-status", 1s, [] { return Result<int>(7); });
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 7);
}

TEST(DeadlineWorker, CallQueuedBehindStuckCallTimesOutAndIsNeverRun) {
  auto gate = std::make_shared<Gate>();
  DeadlineWorker w("test-queue");
  // The first call has a long deadline: the worker is not yet "unresponsive" when the second
  // caller gives up.
  auto first = w.submit<int>("slow", 10s, blocking(gate, 1));
  while (gate->entered.load() == 0) std::this_thread::sleep_for(1ms);
  auto ran = std::make_shared<std::atomic<bool>>(false);
  auto second = w.submit<int>("queued", 100ms, [ran]() -> Result<int> {
    ran->store(true);
    return 2;
  });
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

TEST(DeadlineWorker, CheckDeadlineFlagsCallsNobodyWaitsFor) {
  HealthLog log;
  auto gate = std::make_shared<Gate>();
  DeadlineWorker w("test-nowait", log.callback());
  auto pending = w.submit<int>("hmp info mtree -f", 50ms, blocking(gate, 1));
  while (gate->entered.load() == 0) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(w.check_deadline());  // not yet overdue
  std::this_thread::sleep_for(80ms);
  EXPECT_FALSE(w.check_deadline());
  EXPECT_FALSE(w.health().responsive);
  EXPECT_EQ(w.health().stuck_call, "hmp info mtree -f");
  EXPECT_EQ(log.size(), 1u);
  gate->release();
  // Nobody timed out on this call, so its late result is still delivered to whoever looks.
  for (int i = 0; i < 200 && !pending.try_get(); ++i) std::this_thread::sleep_for(5ms);
  auto r = pending.try_get();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->ok());
  for (int i = 0; i < 200 && !w.health().responsive; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_TRUE(w.health().responsive);
}

TEST(DeadlineWorker, LateResultIsDroppedForACallerThatTimedOut) {
  auto gate = std::make_shared<Gate>();
  DeadlineWorker w("test-late");
  auto p = w.submit<int>("slow", 50ms, blocking(gate, 5));
  auto r = p.wait();
  ASSERT_FALSE(r.ok());
  gate->release();
  for (int i = 0; i < 200 && !w.health().responsive; ++i) std::this_thread::sleep_for(5ms);
  auto again = p.wait();  // idempotent: still the timeout it already returned
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kTimeout);
  ASSERT_TRUE(p.try_get().has_value());
}

TEST(DeadlineWorker, DestructorDoesNotWaitForAStuckCall) {
  auto gate = std::make_shared<Gate>();
  auto t0 = Clock::now();
  {
    DeadlineWorker w("test-dtor", {}, 50ms);
    auto p = w.submit<int>("stuck forever", 20ms, blocking(gate, 1));
    EXPECT_FALSE(p.wait().ok());
  }
  EXPECT_LT(Clock::now() - t0, 1s);
  // Let the detached thread finish so the test binary exits cleanly.
  gate->release();
}

TEST(DeadlineWorker, CompletedCallNeedsNoWorker) {
  auto p = PendingCall<int>::completed(Error(ErrorCode::kNotFound, "no running domain x"));
  auto r = p.wait();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST(DeadlineWorker, ManyCallsInOrder) {
  DeadlineWorker w("test-order");
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
