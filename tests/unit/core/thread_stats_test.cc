// SPDX-License-Identifier: Apache-2.0
// The monitor with a ThreadStatSource (MonitorDependencies::thread_stats), driven by hand over
// fake qemus and a fake source (fake_stat_source.h): every domain's tick of a period is sampled
// from one pass; a pass that fails makes the domains that hit it read /proc for that tick,
// counted and logged once per run of failures; a process the source cannot watch stays on /proc.
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <vector>

#include "fake_stat_source.h"
#include "internal.h"
#include "stallmon/core/stall_monitor.h"

namespace stallmon::core {
namespace {

using testing::FakeQemu;

// Log lines of the default logger while it lives (the core logs through spdlog's default).
class CapturedLog {
 public:
  CapturedLog() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256)), old_(spdlog::default_logger()) {
    auto logger = std::make_shared<spdlog::logger>("test", sink_);
    logger->set_pattern("%l %v");
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
  }
  ~CapturedLog() { spdlog::set_default_logger(old_); }
  std::vector<std::string> lines_with(const std::string& text) const {
    std::vector<std::string> out;
    for (const auto& l : sink_->last_formatted()) {
      if (l.find(text) != std::string::npos) out.push_back(l);
    }
    return out;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> old_;
};

class ThreadStatsTest : public ::testing::Test {
 protected:
  ThreadStatsTest() {
    for (int i = 0; i < 3; ++i) {
      qemus_.push_back(std::make_unique<FakeQemu>(host_, 2, "vm" + std::to_string(i), "uuid-" + std::to_string(i),
                                                  4000 + 100 * i));
      source_->add(*qemus_.back());
    }
  }
  std::unique_ptr<StallMonitor> make() {
    MonitorConfig c;
    c.threads = false;
    c.introspection = false;
    MonitorDependencies deps{&host_.fs, &host_.mono, &host_.clock, {}};
    deps.thread_stats.source = std::move(owned_);
    deps.thread_stats.kind = "bpf-task-iter";
    deps.thread_stats.reason = "fake: one pass per period";
    auto m = std::make_unique<StallMonitor>(c, std::move(deps));
    for (auto& q : qemus_) m->on_domain_updated(q->info());
    return m;
  }
  void tick(StallMonitor& m, int n = 1) {
    for (int i = 0; i < n; ++i) {
      host_.advance_clocks(100);
      for (auto& q : qemus_) q->advance_threads();
      m.tick_all();
    }
  }
  uint64_t passes() const { return source_->latest() ? source_->latest()->generation : 0; }
  uint64_t stat_reads(int q) const {
    const std::string pid = std::to_string(qemus_[q]->pid());
    return host_.fs.reads("proc/" + pid + "/task/" + std::to_string(qemus_[q]->vcpu_tid(0)) + "/stat");
  }
  uint64_t vcpu_samples(StallMonitor& m, int q) {
    auto h = m.vcpu_history(qemus_[q]->info().name, 0, std::chrono::nanoseconds(0));
    return h.ok() ? h->points.size() : 0;
  }

  testing::FakeHost host_;
  std::vector<std::unique_ptr<FakeQemu>> qemus_;
  std::unique_ptr<testing::FakeStatSource> owned_ = std::make_unique<testing::FakeStatSource>();
  testing::FakeStatSource* source_ = owned_.get();
};

TEST_F(ThreadStatsTest, EveryDomainsTickOfAPeriodIsSampledFromOnePass) {
  auto m = make();
  tick(*m);  // each domain is watched on its first tick: a pass for each new process
  EXPECT_EQ(source_->watched().size(), 3u);
  const uint64_t first = passes();
  const uint64_t reads = stat_reads(1);
  tick(*m, 5);
  EXPECT_EQ(passes() - first, 5u);  // one per period, for all three domains
  EXPECT_EQ(stat_reads(1), reads);  // nothing read from /proc
  auto d = m->domain("vm1");
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(d->vcpus[1].thread.has_sample);
  EXPECT_EQ(d->vcpus[1].thread.latest.t_ns, source_->latest()->t_ns);
  EXPECT_EQ(d->vcpus[1].thread.latest.run_ns, qemus_[1]->threads()[2].run_ns);
  EXPECT_EQ(vcpu_samples(*m, 1), 6u);

  AgentStats s = m->stats();
  EXPECT_EQ(s.thread_stats_source, "bpf-task-iter");
  EXPECT_EQ(s.thread_stats_reason, "fake: one pass per period");
  EXPECT_EQ(s.thread_stats_passes, passes());
  EXPECT_EQ(s.thread_stats_fallbacks, 0u);
  EXPECT_EQ(s.sample_errors, 0u);
}

TEST_F(ThreadStatsTest, AFailedPassMakesThatDomainReadProcForTheTickAndIsLogged) {
  CapturedLog log;
  auto m = make();
  tick(*m, 2);
  const uint64_t reads0 = stat_reads(0), reads1 = stat_reads(1);
  source_->fail_next(1);
  tick(*m);
  // vm0 ticks first and hit the failed pass; vm1 and vm2 got the next one.
  EXPECT_EQ(m->stats().thread_stats_fallbacks, 1u);
  EXPECT_GT(stat_reads(0), reads0);  // vm0's threads came from /proc this tick
  EXPECT_EQ(stat_reads(1), reads1);
  EXPECT_EQ(vcpu_samples(*m, 0), 3u);  // no sample lost
  auto d = m->domain("vm0");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->vcpus[0].thread.latest.run_ns, qemus_[0]->threads()[1].run_ns);
  auto warned = log.lines_with("domain vm0: bpf-task-iter pass failed");
  ASSERT_EQ(warned.size(), 1u);
  EXPECT_NE(warned[0].find("fake pass failure"), std::string::npos) << warned[0];
  EXPECT_EQ(warned[0].rfind("warning", 0), 0u) << warned[0];

  tick(*m);  // the pass works again
  EXPECT_EQ(m->stats().thread_stats_fallbacks, 1u);
  EXPECT_EQ(log.lines_with("domain vm0: sampling its threads from bpf-task-iter passes again").size(), 1u);

  // Failing for a while: every domain falls back on every tick, logged once per domain.
  source_->fail_next(1000);
  tick(*m, 4);
  EXPECT_EQ(m->stats().thread_stats_fallbacks, 1u + 3 * 4);
  EXPECT_EQ(log.lines_with("pass failed").size(), 1u + 3);
  for (int q = 0; q < 3; ++q) EXPECT_EQ(vcpu_samples(*m, q), 8u) << q;
  EXPECT_EQ(m->stats().sample_errors, 0u);
}

TEST_F(ThreadStatsTest, AProcessTheSourceCannotWatchIsSampledFromProcAndLogged) {
  CapturedLog log;
  source_->set_capacity(2);
  auto m = make();
  tick(*m, 3);
  EXPECT_EQ(source_->watched().size(), 2u);
  AgentStats s = m->stats();
  EXPECT_EQ(s.thread_stats_fallbacks, 1u);  // once, for that process's life
  auto warned = log.lines_with("domain vm2: thread statistics from /proc for qemu pid 4200");
  ASSERT_EQ(warned.size(), 1u);
  EXPECT_NE(warned[0].find("fake source full"), std::string::npos) << warned[0];
  EXPECT_EQ(vcpu_samples(*m, 2), 3u);
  EXPECT_GT(stat_reads(2), 0u);
}

TEST(ThreadStats, WithoutASourceTheMonitorReportsProc) {
  testing::FakeQemu q;
  MonitorConfig c;
  c.threads = false;
  c.introspection = false;
  StallMonitor m(c, MonitorDependencies{&q.fs, &q.mono, &q.clock, {}});
  AgentStats s = m.stats();
  EXPECT_EQ(s.thread_stats_source, "proc");
  EXPECT_EQ(s.thread_stats_reason, "/proc per thread: no other source given");
  EXPECT_EQ(s.thread_stats_passes, 0u);
}

TEST(ThreadStats, TicksFollowTheIntervalGrid) {
  using internal::next_tick_due;
  EXPECT_EQ(next_tick_due(1'000'000'000, 100'000'000), 1'100'000'000);  // on the grid: +1 interval
  EXPECT_EQ(next_tick_due(1'030'000'000, 100'000'000), 1'100'000'000);  // off it: snaps forward
  EXPECT_EQ(next_tick_due(1'099'999'999, 100'000'000), 1'100'000'000);
  EXPECT_EQ(next_tick_due(0, 100'000'000), 100'000'000);
  EXPECT_EQ(next_tick_due(-30'000'000, 100'000'000), 0);
  EXPECT_EQ(next_tick_due(-100'000'000, 100'000'000), 0);
}

}  // namespace
}  // namespace stallmon::core
