// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/metrics.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <regex>

#include "fake_view.h"

namespace stallmon::alerting {
namespace {

using namespace std::chrono_literals;
using testing::FakeView;

std::string render(MetricsCollector& c) {
  auto r = c.render();
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().to_string());
  return r.ok() ? r.value() : "";
}

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos;
}

// Every sample line parses as name{labels} value, and every family has HELP before TYPE.
void expect_well_formed(const std::string& text) {
  static const std::regex sample(
      R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? (NaN|[+-]Inf|-?[0-9.eE+-]+)$)");
  size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    ASSERT_NE(end, std::string::npos) << "no trailing newline";
    const std::string line = text.substr(pos, end - pos);
    if (line.rfind("# HELP ", 0) != 0 && line.rfind("# TYPE ", 0) != 0) {
      EXPECT_TRUE(std::regex_match(line, sample)) << line;
    }
    pos = end + 1;
  }
}

TEST(Metrics, AgentHealthFamilies) {
  FakeView v;
  v.agent.ticks = 42;
  v.agent.introspection_errors = 3;
  v.agent.monitor_timeouts = 1;
  v.agent.history_memory_bytes = 4096;
  v.agent.tick_latency = core::LatencyHistogram{{0.001, 0.01}, {5, 9}, 10, 0.05};
  MetricsCollector c(v, MetricsOptions{64, "0.1.0"});
  const auto text = render(c);
  expect_well_formed(text);
  EXPECT_TRUE(has_line(text, "stallmon_build_info{version=\"0.1.0\"} 1"));
  EXPECT_TRUE(has_line(text, "stallmon_sampling_ticks_total 42"));
  EXPECT_TRUE(has_line(text, "stallmon_introspection_errors_total 3"));
  EXPECT_TRUE(has_line(text, "stallmon_monitor_timeouts_total 1"));
  EXPECT_TRUE(has_line(text, "stallmon_history_memory_bytes 4096"));
  EXPECT_TRUE(has_line(text, "# TYPE stallmon_sampling_tick_duration_seconds histogram"));
  EXPECT_TRUE(has_line(text, "stallmon_sampling_tick_duration_seconds_bucket{le=\"0.01\"} 9"));
  EXPECT_TRUE(has_line(text, "stallmon_sampling_tick_duration_seconds_bucket{le=\"+Inf\"} 10"));
  EXPECT_TRUE(has_line(text, "stallmon_sampling_tick_duration_seconds_count 10"));
}

TEST(Metrics, AGuestWithNoLinuxKernelShowsItsScanAndNextTry) {
  FakeView v;
  auto& d = v.add("firmware-only", 1);
  d.summary.introspection.state = core::IntrospectionState::kNoKernel;
  d.summary.introspection.discovery_bytes_read = 4ull << 30;
  d.summary.introspection.next_attempt_at = core::Timestamp(std::chrono::seconds(1'700'003'600));
  v.agent.reads_abandoned = 2;
  MetricsCollector c(v, {});
  const auto text = render(c);
  expect_well_formed(text);
  EXPECT_TRUE(has_line(text, "stallmon_domain_introspection_state{domain=\"firmware-only\",state=\"no_kernel\"} 1"));
  EXPECT_TRUE(has_line(text, "stallmon_domain_discovery_scanned_bytes_total{domain=\"firmware-only\"} 4294967296"));
  EXPECT_TRUE(has_line(text, "stallmon_domain_discovery_next_attempt_timestamp_seconds{domain=\"firmware-only\"} 1700003600"));
  EXPECT_TRUE(has_line(text, "stallmon_guest_reads_abandoned_total 2"));
}

TEST(Metrics, PerVcpuCountersAndOneHotState) {
  FakeView v;
  auto& d = v.add("vm1", 2);
  d.vcpus[0].thread.latest.run_ns = 1'500'000'000;
  d.vcpus[0].thread.latest.wait_ns = 250'000'000;
  d.vcpus[1].thread.latest.state = 'D';
  d.vcpus[1].thread.signals.time_in_state_ns = 2'000'000'000;
  d.vcpus[1].thread.signals.no_progress_ns = 1'900'000'000;
  MetricsCollector c(v, {});
  const auto text = render(c);
  expect_well_formed(text);
  EXPECT_TRUE(has_line(text, "stallmon_vcpu_run_seconds_total{domain=\"vm1\",vcpu=\"0\"} 1.5"));
  EXPECT_TRUE(
      has_line(text, "stallmon_vcpu_run_delay_seconds_total{domain=\"vm1\",vcpu=\"0\"} 0.25"));
  EXPECT_TRUE(has_line(
      text, "stallmon_vcpu_thread_state{domain=\"vm1\",vcpu=\"1\",state=\"disk_sleep\"} 1"));
  EXPECT_TRUE(has_line(
      text, "stallmon_vcpu_thread_state{domain=\"vm1\",vcpu=\"1\",state=\"sleeping\"} 0"));
  EXPECT_TRUE(has_line(
      text, "stallmon_vcpu_thread_state{domain=\"vm1\",vcpu=\"0\",state=\"sleeping\"} 1"));
  EXPECT_TRUE(has_line(text, "stallmon_vcpu_no_progress_seconds{domain=\"vm1\",vcpu=\"1\"} 1.9"));
  // Not in its own cgroup: no throttling series.
  EXPECT_EQ(text.find("stallmon_vcpu_throttled_seconds_total{"), std::string::npos);
  // Six states per vCPU, whatever the letter.
  size_t n = 0;
  for (size_t p = text.find("stallmon_vcpu_thread_state{"); p != std::string::npos;
       p = text.find("stallmon_vcpu_thread_state{", p + 1)) {
    ++n;
  }
  EXPECT_EQ(n, 12u);
  // No tids anywhere.
  EXPECT_EQ(text.find("1000"), std::string::npos);
  EXPECT_EQ(text.find("tid="), std::string::npos);
}

TEST(Metrics, FindingsByDomainKindSeverityCause) {
  FakeView v;
  v.add("vm1", 4);
  diagnosis::Finding f;
  f.id = "vm1/GUEST_IPI_STALL/2/1";
  f.kind = diagnosis::FindingKind::kGuestIpiStall;
  f.severity = diagnosis::Severity::kCritical;
  f.cause = diagnosis::Cause::kHostBlocked;
  f.domain = "vm1";
  v.findings = {f, f};
  v.findings[1].id = "vm1/GUEST_IPI_STALL/3/1";
  MetricsCollector c(v, {});
  const auto text = render(c);
  EXPECT_TRUE(has_line(text,
                       "stallmon_findings_active{domain=\"vm1\",kind=\"GUEST_IPI_STALL\","
                       "severity=\"critical\",cause=\"host_blocked\"} 2"));
}

TEST(Metrics, DomainCapBoundsSeries) {
  FakeView v;
  v.add("a", 1);
  v.add("b", 1);
  v.add("c", 1);
  diagnosis::Finding f;
  f.kind = diagnosis::FindingKind::kVcpuHostBlocked;
  f.severity = diagnosis::Severity::kCritical;
  f.cause = diagnosis::Cause::kHostBlocked;
  f.domain = "c";
  v.findings = {f};
  MetricsCollector c(v, MetricsOptions{2, "x"});
  const auto text = render(c);
  EXPECT_TRUE(has_line(text, "stallmon_domains_watched 3"));
  EXPECT_TRUE(has_line(text, "stallmon_domains_omitted 1"));
  EXPECT_NE(text.find("domain=\"b\""), std::string::npos);
  EXPECT_EQ(text.find("domain=\"c\""), std::string::npos);
  // The over-the-cap domain's finding is still counted, without a domain label.
  EXPECT_TRUE(has_line(text,
                       "stallmon_findings_active{kind=\"VCPU_HOST_BLOCKED\",severity=\"critical\","
                       "cause=\"host_blocked\"} 1"));
}

TEST(Metrics, EscapesDomainNames) {
  FakeView v;
  v.add("we\"ird\\name\n", 1);
  MetricsCollector c(v, {});
  const auto text = render(c);
  expect_well_formed(text);
  EXPECT_NE(text.find("domain=\"we\\\"ird\\\\name\\n\""), std::string::npos);
}

TEST(Metrics, SoftlockupTouchAgeIsTheEnginesAndAbsentWhereNoWatchdogRuns) {
  FakeView v;
  auto& d = v.add("vm1", 3);
  d.guest = core::GuestOverview{};
  d.guest->watchdog_thresh = 5;
  d.guest->guest_clock_ns = 100ull << 30;
  // Every CPU's snapshot has a stale touch timestamp, but the engine knows CPU 1's watchdog does
  // not run there (nohz_full): a touch age computed from the snapshot alone would fire
  // StallmonGuestSoftLockupImminent on a CPU that can never report a soft lockup.
  for (auto& vc : d.vcpus) {
    introspect::CpuSnapshot cpu;
    cpu.online = true;
    cpu.watchdog.touch_ts = 1;
    vc.guest = cpu;
  }
  diagnosis::GuestCpuAges cpu0;
  cpu0.cpu = 0;
  cpu0.softlockup_touch_age = 3500ms;
  diagnosis::GuestCpuAges cpu1;  // watchdog not running: no touch age
  cpu1.cpu = 1;
  v.ages["uuid-vm1"] = {cpu0, cpu1};  // CPU 2: the engine has no data for it
  MetricsCollector c(v, {});
  const auto text = render(c);
  EXPECT_TRUE(has_line(text, "stallmon_guest_softlockup_touch_age_seconds{domain=\"vm1\",vcpu=\"0\"} 3.5"))
      << text;
  EXPECT_TRUE(has_line(text, "stallmon_guest_softlockup_threshold_seconds{domain=\"vm1\"} 10"));
  EXPECT_EQ(text.find("touch_age_seconds{domain=\"vm1\",vcpu=\"1\"}"), std::string::npos);
  EXPECT_EQ(text.find("touch_age_seconds{domain=\"vm1\",vcpu=\"2\"}"), std::string::npos);
}

TEST(Metrics, CsdWaitAgeIsTheEngines) {
  FakeView v;
  auto& d = v.add("vm1", 3);
  d.guest = core::GuestOverview{};
  diagnosis::GuestCpuAges waiter;
  waiter.cpu = 0;
  waiter.csd_wait_age = 2100ms;
  waiter.csd_wait_target = 2;
  diagnosis::GuestCpuAges idle;
  idle.cpu = 1;
  v.ages["uuid-vm1"] = {waiter, idle};
  MetricsCollector c(v, {});
  auto text = render(c);
  EXPECT_TRUE(has_line(text, "stallmon_guest_csd_wait_age_seconds{domain=\"vm1\",vcpu=\"0\"} 2.1")) << text;
  EXPECT_TRUE(has_line(text, "stallmon_guest_csd_wait_age_seconds{domain=\"vm1\",vcpu=\"1\"} 0"));
  EXPECT_TRUE(has_line(text, "stallmon_guest_csd_wait_age_seconds{domain=\"vm1\",vcpu=\"2\"} 0"));
  // Released: the engine no longer reports the wait.
  v.ages["uuid-vm1"][0].csd_wait_age.reset();
  text = render(c);
  EXPECT_TRUE(has_line(text, "stallmon_guest_csd_wait_age_seconds{domain=\"vm1\",vcpu=\"0\"} 0"));
}

class CountingContributor final : public MetricsContributor {
 public:
  void write_metrics(ExpositionWriter& out) const override {
    out.family("stallmon_extra", MetricType::kGauge, "extra");
    out.sample({}, 7);
  }
};

TEST(Metrics, ContributorsAddFamilies) {
  FakeView v;
  MetricsCollector c(v, {});
  CountingContributor extra;
  c.add_contributor(&extra);
  EXPECT_TRUE(has_line(render(c), "stallmon_extra 7"));
  c.remove_contributor(&extra);
  EXPECT_EQ(render(c).find("stallmon_extra"), std::string::npos);
}

}  // namespace
}  // namespace stallmon::alerting

namespace stallmon::alerting {
namespace {

// promtool's own linter (naming conventions: units, _total on counters, no duplicate HELP...)
// over a full exposition. Skipped where Debian's prometheus package is not installed.
TEST(Metrics, PromtoolCheckMetricsFindsNoProblem) {
  if (system("command -v promtool >/dev/null 2>&1") != 0) GTEST_SKIP() << "no promtool";
  testing::FakeView v;
  auto& d = v.add("vm1", 2);
  d.vcpus[0].thread.own_cgroup = true;
  d.guest = core::GuestOverview{};
  d.guest->watchdog_thresh = 10;
  introspect::CpuSnapshot cpu;
  cpu.online = true;
  cpu.watchdog.touch_ts = 1;
  d.vcpus[0].guest = cpu;
  diagnosis::Finding f;
  f.kind = diagnosis::FindingKind::kGuestIpiStall;
  f.domain = "vm1";
  v.findings = {f};
  v.agent.tick_latency = core::LatencyHistogram{{0.001}, {1}, 1, 0.0005};
  MetricsCollector c(v, MetricsOptions{64, "0.1.0"});
  auto text = c.render();
  ASSERT_TRUE(text.ok());
  char path[] = "/tmp/stallmon-metrics-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, text->data(), text->size()), static_cast<ssize_t>(text->size()));
  close(fd);
  const std::string cmd = std::string("promtool check metrics < ") + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  const int rc = pclose(p);
  unlink(path);
  EXPECT_EQ(rc, 0) << out << "\n" << *text;
  EXPECT_EQ(out, "") << *text;
}

}  // namespace
}  // namespace stallmon::alerting
