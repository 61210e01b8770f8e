// SPDX-License-Identifier: Apache-2.0
// Diagnosis scenarios on real guests (issue 5, items 5 and 6): an in-process StallMonitor with a
// real DomainWatcher on qemu:///system, filtered to the test's own domain, against each fault
// the testbed can inject. One guest per test (each needs its own kernel command line, panic
// setting or a CPU it may lose for good). Each test prints its evidence and figures.
//
// Environment: STALLMON_HEALTHY_SECONDS (default 600) - how long the healthy guest is watched.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "stallmon/core/stall_monitor.h"
#include "stallmon/introspect/ram_layout.h"
#include "stallmon/libvirt/domain_watcher.h"
#include "testbed/guest.h"

namespace stallmon {
namespace {

namespace tb = testbed;
namespace lv = libvirt;
using namespace std::chrono_literals;
using diagnosis::Cause;
using diagnosis::Finding;
using diagnosis::FindingEvent;
using diagnosis::FindingKind;
using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Guest kernels besides the testbed's default (Debian 12's 6.1). Issue 13: seed case 1 is
// diagnosed on the cloud flavors of 6.1 and 6.12 by running two seed-case-1 variants (i440fx,
// forged BUILD-ID) on them, at no extra guest boot; the RT flavors have a test of their own
// (seed_case1_preempt_rt: the guest's own report does not reach the console there). A 6.12-rt
// boot that oopses under TCG (int3 in text being patched, tests/testbed/README.md) fails the
// testbed's boot-health gate and is replaced, counted. Keep tests/testbed/integration-kernels in
// step (deploy/test.sh builds their kits ahead).
constexpr const char* kKernel612 = "linux-image-6.12.117+deb12-amd64";
constexpr const char* kKernel61Cloud = "linux-image-cloud-amd64";
constexpr const char* kKernel612Cloud = "linux-image-6.12.118+deb12-cloud-amd64";
constexpr const char* kKernel61Rt = "linux-image-rt-amd64";
constexpr const char* kKernel612Rt = "linux-image-6.12.118+deb12-rt-amd64";

std::string roots_of(const Finding& f) {
  for (const auto& e : f.evidence) {
    if (e.wait_roots) return diagnosis::evidence_facts(e).at("roots");  // "1,2", as the API shows it
  }
  return "";
}

// The frames of `cpu`'s kernel trace in f's evidence (innermost first); empty when it has none.
bool has_trace(const diagnosis::Evidence& e) { return e.cpu && e.kernel_trace && e.kernel_trace->trace.error.empty(); }

std::vector<std::string> trace_frames(const Finding& f, int cpu) {
  std::vector<std::string> frames;
  for (const auto& e : f.evidence) {
    if (!has_trace(e) || e.cpu != cpu) continue;
    frames = e.kernel_trace->trace.frames;
    break;
  }
  return frames;
}
std::string function_of(const std::string& frame) { return frame.substr(0, frame.find('+')); }

std::string describe(const Finding& f) {
  std::ostringstream o;
  o << to_string(f.kind) << " [" << to_string(f.severity) << ", cause " << to_string(f.cause) << ", cpus";
  for (int c : f.cpus) o << " " << c;
  o << (f.active ? "" : ", resolved") << "] " << f.summary;
  for (const auto& e : f.evidence) {
    o << "\n    - " << e.text;
    if (!e.host_stack.empty()) {
      o << " [host stack:";
      for (size_t i = 0; i < e.host_stack.size() && i < 4; ++i) o << " " << e.host_stack[i];
      o << "]";
    }
  }
  return o.str();
}

// Every finding event, with the host time it arrived.
class FindingLog final : public diagnosis::FindingListener {
 public:
  struct Entry {
    Clock::time_point at;
    FindingEvent event;
  };

  void on_finding_event(const FindingEvent& e) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      entries_.push_back(Entry{Clock::now(), e});
    }
    cv_.notify_all();
  }
  size_t size() const {
    std::lock_guard<std::mutex> l(mu_);
    return entries_.size();
  }
  // The first event from index `from` on (not a resolution) whose finding satisfies pred.
  std::optional<Entry> wait(const std::function<bool(const Finding&)>& pred, Clock::duration timeout,
                            size_t from = 0) const {
    return wait_event(false, pred, timeout, from);
  }
  // The first resolution from index `from` on whose finding satisfies pred.
  std::optional<Entry> wait_resolved(const std::function<bool(const Finding&)>& pred, Clock::duration timeout,
                                     size_t from = 0) const {
    return wait_event(true, pred, timeout, from);
  }
  // Number of events whose finding satisfies pred.
  size_t count_if(const std::function<bool(const Finding&)>& pred) const {
    std::lock_guard<std::mutex> l(mu_);
    return static_cast<size_t>(
        std::count_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return pred(e.event.finding); }));
  }
  // Every event from index `from` on.
  std::vector<Entry> entries(size_t from = 0) const {
    std::lock_guard<std::mutex> l(mu_);
    return from < entries_.size() ? std::vector<Entry>(entries_.begin() + static_cast<std::ptrdiff_t>(from), entries_.end())
                                  : std::vector<Entry>{};
  }
  std::string dump(size_t from = 0) const {
    std::lock_guard<std::mutex> l(mu_);
    std::ostringstream o;
    for (size_t i = from; i < entries_.size(); ++i) {
      o << "  #" << entries_[i].event.revision << " " << to_string(entries_[i].event.type) << " "
        << describe(entries_[i].event.finding) << "\n";
    }
    return o.str();
  }

 private:
  std::optional<Entry> wait_event(bool resolution, const std::function<bool(const Finding&)>& pred,
                                  Clock::duration timeout, size_t from) const {
    std::unique_lock<std::mutex> l(mu_);
    std::optional<Entry> hit;
    cv_.wait_for(l, timeout, [&] {
      for (size_t i = from; i < entries_.size(); ++i) {
        if ((entries_[i].event.type == FindingEvent::Type::kResolved) == resolution && pred(entries_[i].event.finding)) {
          hit = entries_[i];
          return true;
        }
      }
      return false;
    });
    return hit;
  }

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<Entry> entries_;
};

// A StallMonitor watching one testbed guest through the real libvirt layer.
class Monitored {
 public:
  // `neighbour`: a second guest of the test's, watched by the same monitor.
  explicit Monitored(const tb::Guest& g, core::MonitorConfig config = {}, const tb::Guest* neighbour = nullptr)
      : name_(g.name()) {
    // Other engineers' guests share this libvirtd: watch ours only.
    config.domain_filter = [n = name_, other = neighbour ? neighbour->name() : std::string()](
                               const lv::DomainInfo& d) { return d.name == n || (!other.empty() && d.name == other); };
    monitor_ = std::make_unique<core::StallMonitor>(config);
    lv::WatcherOptions o;
    o.ram_layout_resolver = [](const introspect::HmpCommand& hmp) { return introspect::resolve_ram_layout(hmp); };
    watcher_ = std::make_unique<lv::DomainWatcher>(o);
    monitor_->attach(*watcher_);
    monitor_->add_finding_listener(&log);
    started_ = watcher_->start();
  }
  ~Monitored() {
    watcher_->stop();
    monitor_->stop();
    monitor_->remove_finding_listener(&log);
  }

  // Watched, sampled, and the guest kernel discovered.
  ::testing::AssertionResult ready(Clock::duration timeout, const std::string& domain = {}) {
    if (!started_.ok()) return ::testing::AssertionFailure() << "watcher: " << started_.error().to_string();
    const std::string& name = domain.empty() ? name_ : domain;
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto h = monitor_->wait_introspection(name, 1000ms);
      if (h.ok() && h->ok()) {
        auto d = monitor_->domain(name);
        if (d.ok() && d->summary.ticks > 20 && d->guest) {
          std::cout << "monitor ready: kernel " << h->kernel_release << " build-id " << h->build_id
                    << ", discovery " << seconds(h->last_discovery_duration) * 1e3 << " ms, "
                    << d->vcpus.size() << " vCPUs" << std::endl;
          return ::testing::AssertionSuccess();
        }
      }
      std::this_thread::sleep_for(100ms);
    }
    auto h = monitor_->wait_introspection(name, 0ms);
    return ::testing::AssertionFailure()
           << "monitor not ready after " << seconds(timeout) << " s: "
           << (h.ok() ? std::string(to_string(h->state)) + " " + h->error : h.error().to_string());
  }

  core::StallMonitor& monitor() { return *monitor_; }
  std::vector<Finding> active() const { return monitor_->engine().active_findings(name_); }
  bool all_resolved(Clock::duration timeout) const {
    return tb::eventually([&] { return active().empty(); },
                          std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
  }
  void print_stats() const {
    core::AgentStats s = monitor_->stats();
    std::cout << "agent: " << s.ticks << " ticks, " << s.overruns << " overruns, " << s.snapshots
              << " snapshots (" << s.snapshot_errors << " with errors), tick latency mean "
              << (s.tick_latency.count ? s.tick_latency.sum_s / s.tick_latency.count * 1e6 : 0)
              << " us, snapshot mean "
              << (s.snapshot_latency.count ? s.snapshot_latency.sum_s / s.snapshot_latency.count * 1e6 : 0)
              << " us, history " << s.history_memory_bytes / 1024 << " KiB; process RSS "
              << status_kib("VmRSS") / 1024 << " MiB, peak " << status_kib("VmHWM") / 1024 << " MiB"
              << std::endl;
  }
  // A field of /proc/self/status in KiB (VmRSS, VmHWM): the monitor runs in this process.
  static uint64_t status_kib(const std::string& field) {
    std::ifstream f("/proc/self/status");
    for (std::string line; std::getline(f, line);) {
      if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1));
    }
    return 0;
  }

  FindingLog log;

 private:
  std::string name_;
  std::unique_ptr<core::StallMonitor> monitor_;
  std::unique_ptr<lv::DomainWatcher> watcher_;
  Result<void> started_;
};

// The host instant a condition first holds, polled every `every` in a thread of its own: an
// independent clock, e.g. for "injection" (a thread state letter, polled every millisecond,
// does not depend on how long an injector takes to report: the freeze injector measures for a
// second before it answers) or for a guest console line.
class FirstSeen {
 public:
  FirstSeen(std::function<bool()> pred, std::chrono::microseconds every) {
    thread_ = std::thread([pred = std::move(pred), every, this] {
      while (!stop_) {
        if (pred()) {
          std::lock_guard<std::mutex> l(mu_);
          at_ = Clock::now();
          return;
        }
        std::this_thread::sleep_for(every);
      }
    });
  }
  ~FirstSeen() {
    stop_ = true;
    thread_.join();
  }
  std::optional<Clock::time_point> at() {
    std::lock_guard<std::mutex> l(mu_);
    return at_;
  }
  std::optional<Clock::time_point> wait(Clock::duration timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline && !at()) std::this_thread::sleep_for(5ms);
    return at();
  }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::optional<Clock::time_point> at_;
  std::thread thread_;
};

FirstSeen state_watch(pid_t pid, pid_t tid, char want) {
  return FirstSeen([=] { return tb::thread_state(pid, tid) == want; }, 1ms);
}
FirstSeen console_watch(const tb::Guest& g, std::regex re, size_t from) {
  return FirstSeen([&g, re = std::move(re), from] { return std::regex_search(g.console(from), re); }, 10ms);
}

// Moves every guest task and IRQ onto the CPUs of `cpu_mask` (hex), then loads a test module
// (`module_args`: path and parameters) in the background. The CPUs the module takes stop
// answering, and anything that IPIs them hangs, insmod included; everything the control channel
// needs (the control loop, a TLB-shootdown IPI for its mm, the virtio-serial interrupt) must stay
// off them, or its reply would never come. The scenario's IPIs still go to every CPU.
tb::CommandResult insmod_off_cpus(tb::Guest& g, const std::string& cpu_mask, const std::string& module_args) {
  return g.run("for p in $(ls /proc | grep '^[0-9][0-9]*$'); do taskset -a -p " + cpu_mask +
                   " $p >/dev/null 2>&1; done; "
                   "for f in /proc/irq/*/smp_affinity; do echo " + cpu_mask + " > $f 2>/dev/null; done; "
                   "insmod " + module_args + " </dev/null >/dev/null 2>&1 &",
               60s);
}

class Scenario : public ::testing::Test {
 protected:
  void SetUp() override {
    if (tb::integration_skipped()) GTEST_SKIP() << "STALLMON_SKIP_INTEGRATION=1";
  }
  // Boots this test's own guest; on failure the test fails with the testbed's reason.
  bool boot(tb::GuestOptions o) {
    const auto t0 = Clock::now();
    try {
      guest_ = tb::Guest::boot(o);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "guest boot failed: " << e.what();
      return false;
    }
    std::cout << "guest " << guest_->name() << " ready in " << seconds(Clock::now() - t0)
              << " s (qemu pid " << guest_->qemu_pid() << ")" << std::endl;
    return true;
  }
  tb::Guest& guest() { return *guest_; }
  void seed_case1(tb::GuestOptions o, const std::string& expect_build_id_from = {},
                  const std::function<void()>& before_monitor = {});
  // Seed case 1's fault: vCPU 2 frozen while halted, the rest of the VM running (both decided by
  // the injector from host thread states; it retries until it has them), after every process was
  // moved off CPU 2. `t_freeze`: when its thread was first seen in D.
  void freeze_idle_vcpu2(tb::Injector& f, std::optional<Clock::time_point>& t_freeze);
  // Seed case 1 on a PREEMPT_RT kernel, where the guest's own report is not the yardstick.
  void seed_case1_preempt_rt(const std::string& tag, const std::string& kernel_package);
  // stackend.ko mode=spin twice on CPU1: GUEST_STACK_OVERFLOW each time (issue 12 item 3).
  void stack_end_overwritten_twice(const std::string& tag, const std::string& kernel_package);
  // spinhold.ko: CPU1 holds a spinlock with IRQs off, CPU2 contends (issue 12 item 2).
  void spinlock_held_with_irqs_off(const std::string& tag, const std::string& kernel_package);
  // irqoff.ko on CPU1 under on_each_cpu load: the root, and where every CPU is (issue 12).
  void irqs_off_root(const std::string& tag, const std::string& kernel_package);

  std::unique_ptr<tb::Guest> guest_;
  std::unique_ptr<tb::Guest> neighbour_;  // a second guest, watched along (seed_case1)
  // How long seed_case1 watches the domain before it checks the libvirt log for a taint. A
  // monitor command taints at once, so every variant's check at its end catches one; the issue-11
  // acceptance figure (60 s of watching) is kept by the plain seed-case-1 test only, which saves
  // the variants ~20 s each of CI time.
  std::chrono::seconds taint_watch_{0};
  core::MonitorConfig monitor_config_{};  // the monitor seed_case1 starts
};

bool has_cpus(const Finding& f, std::vector<int> cpus) { return f.cpus == cpus; }

// A quiet guest (sleepers only) that stays panicked: no reboot, libvirt keeps it (pvpanic).
tb::GuestOptions kept_after_panic(const std::string& tag) {
  tb::GuestOptions o;
  o.tag = tag;
  o.scenario = "sleepers";
  o.panic = 0;
  o.on_crash = "preserve";
  return o;
}

// Issue 10: under hostile guests the monitor's memory stays within its budgets. This process is
// the monitor (one domain: 64 MiB introspection budget, history, libvirt, gtest): its peak RSS.
constexpr uint64_t kRssBoundKib = 256 * 1024;

// Busy time of the whole host in clock ticks: the /proc/stat "cpu" line without idle and iowait
// (guest time is already inside user).
uint64_t host_busy_ticks() {
  std::istringstream in(tb::read_text("/proc/stat"));
  std::string label;
  uint64_t v[8] = {};
  in >> label;
  for (auto& x : v) in >> x;
  return v[0] + v[1] + v[2] + v[5] + v[6] + v[7];  // user nice system irq softirq steal
}

// utime + stime of a whole process in clock ticks (fields 14 and 15 of /proc/PID/stat).
uint64_t process_ticks(pid_t pid) {
  const std::string s = tb::read_text("/proc/" + std::to_string(pid) + "/stat");
  const size_t p = s.rfind(')');
  if (p == std::string::npos) return 0;
  std::istringstream in(s.substr(p + 1));
  std::vector<std::string> f;
  for (std::string x; in >> x;) f.push_back(x);
  return f.size() > 12 ? std::stoull(f[11]) + std::stoull(f[12]) : 0;
}

// ---------------------------------------------------------------------------------------------
// Seed case 1: freeze vCPU 2, idle, under the on_each_cpu module load (it waits for every online
// CPU, idle lazy-TLB ones included, as the seed's flush did). The acceptance figures of issue 5.
// The freeze waits for vCPU 2 to halt (want_idle) and for the rest of the VM to keep running
// (want_case), both decided by the injector from host thread states. `expect_build_id`: the
// BUILD-ID the monitor must have found (the real kernel's), when the guest planted forgeries.
void Scenario::freeze_idle_vcpu2(tb::Injector& f, std::optional<Clock::time_point>& t_freeze) {
  // No process on CPU 2 (ipigen, the load's kthread, is bound to CPU 0): the injector's "halted"
  // is its thread asleep, which under TCG is also a vCPU waiting for QEMU's lock or for another
  // vCPU's exclusive work. Seen 2026-12-06 (i440fx variant, 1 run): a freeze "while halted"
  // stopped CPU 2 in the testbed's control loop (tb-ctl, mid page fault), so CPU 2 was not idle
  // and GUEST_IDLE_WITH_PENDING_WORK could not be. With only kernel threads left there, asleep
  // means halted.
  ASSERT_TRUE(guest().leave_cpu_to(2, "ipigen"));
  FirstSeen frozen = state_watch(guest().qemu_pid(), guest().vcpu_tid(2), 'D');
  f = guest().freeze_vcpu(2, {.want_case = "vcpu-only", .attempts = 5, .want_idle = true});
  ASSERT_TRUE(f.applied()) << f.error();
  std::cout << "freeze: " << f.status().dump() << std::endl;
  ASSERT_EQ(f.freeze_case(), "vcpu-only") << "every freeze caught QEMU's big lock";
  ASSERT_TRUE(f.status().value("frozen_idle", false)) << "vCPU 2 never seen halted before a freeze";
  t_freeze = frozen.wait(5s);
  ASSERT_TRUE(t_freeze) << "vCPU 2's thread never showed D";
}

void Scenario::seed_case1(tb::GuestOptions o, const std::string& expect_build_id_from,
                          const std::function<void()>& before_monitor) {
  ASSERT_TRUE(boot(o));
  if (before_monitor) {
    before_monitor();
    if (HasFatalFailure()) return;
  }
  Monitored m(guest(), monitor_config_, neighbour_.get());
  const auto watched_from = Clock::now();
  ASSERT_TRUE(m.ready(120s));
  if (neighbour_) {
    ASSERT_TRUE(m.ready(120s, neighbour_->name()));
  }
  if (!expect_build_id_from.empty()) {
    auto out = guest().run("cat " + expect_build_id_from);
    ASSERT_EQ(out.exit_code, 0) << out.err;
    const size_t at = out.out.find("build-id=");
    ASSERT_NE(at, std::string::npos) << out.out;
    const std::string real = out.out.substr(at + 9, out.out.find_first_of("\n ", at + 9) - at - 9);
    auto h = m.monitor().wait_introspection(guest().name(), 1000ms);
    ASSERT_TRUE(h.ok()) << h.error().to_string();
    EXPECT_EQ(h->build_id, real) << "the monitor took a planted note";
  }
  std::this_thread::sleep_for(3s);
  EXPECT_TRUE(m.active().empty()) << "findings before any fault:\n" << m.log.dump();

  {
    const size_t from_log = m.log.size();
    const size_t from_console = guest().console_size();
    tb::Injector f;
    std::optional<Clock::time_point> t_freeze;
    freeze_idle_vcpu2(f, t_freeze);
    if (HasFatalFailure()) return;

    auto ipi = m.log.wait(
        [](const Finding& x) {
          return x.kind == FindingKind::kGuestIpiStall && roots_of(x) == "2" && x.cause == Cause::kHostBlocked;
        },
        30s, from_log);
    auto idle = m.log.wait(
        [](const Finding& x) { return x.kind == FindingKind::kGuestIdleWithPendingWork && has_cpus(x, {2}); }, 30s,
        from_log);
    auto blocked = m.log.wait(
        [](const Finding& x) { return x.kind == FindingKind::kVcpuHostBlocked && has_cpus(x, {2}); }, 30s, from_log);
    // The guest's own report: a soft lockup on a CPU spinning in csd_lock_wait.
    auto report = guest().wait_console(std::regex("soft lockup - CPU#[0-9]+ stuck for [0-9]+s"), 120s, from_console);
    const auto t_report = Clock::now();
    std::cout << "findings after the freeze:\n" << m.log.dump(from_log) << std::flush;
    ASSERT_TRUE(ipi) << "no GUEST_IPI_STALL rooted at CPU2 with cause host-blocked";
    ASSERT_TRUE(idle) << "no GUEST_IDLE_WITH_PENDING_WORK on CPU2";
    ASSERT_TRUE(blocked) << "no VCPU_HOST_BLOCKED on vCPU 2";
    ASSERT_TRUE(report) << "the guest never reported a soft lockup; console:\n" << guest().console(from_console);

    const double to_blocked = seconds(blocked->at - *t_freeze);
    const double to_ipi = seconds(ipi->at - *t_freeze);
    const double to_idle = seconds(idle->at - *t_freeze);
    const double to_guest = seconds(t_report - *t_freeze);
    std::cout << "DETECTION LATENCY (freeze -> ...): VCPU_HOST_BLOCKED " << to_blocked
              << " s, GUEST_IPI_STALL(root CPU2, host) " << to_ipi << " s, GUEST_IDLE_WITH_PENDING_WORK "
              << to_idle << " s; guest's own report " << to_guest << " s (\"" << *report
              << "\"): stallmon " << to_guest / to_ipi << "x sooner" << std::endl;
    RecordProperty("seconds_to_host_blocked", std::to_string(to_blocked));
    RecordProperty("seconds_to_ipi_stall", std::to_string(to_ipi));
    RecordProperty("seconds_to_guest_report", std::to_string(to_guest));
    if (ipi->event.finding.predicted_guest_report_in) {
      std::cout << "predicted guest report in "
                << seconds(*ipi->event.finding.predicted_guest_report_in) << " s at detection" << std::endl;
    }
    // Issue 12: onsets are host times that never precede the fault (a TCG guest's clock lags the
    // host's, and the watchdog's last touch can come a period before the stall). Placed on this
    // test's clock through the event: received at `at`, `last_update - onset` after its onset.
    // The margin is the sampling period: the freeze is seen by polling, both here and there.
    for (const auto& e : m.log.entries(from_log)) {
      const Finding& x = e.event.finding;
      const auto onset = e.at - std::chrono::duration_cast<Clock::duration>(x.last_update - x.onset);
      EXPECT_GE(onset, *t_freeze - 300ms) << to_string(x.kind) << " on CPUs " << ::testing::PrintToString(x.cpus)
                                          << " dated " << seconds(*t_freeze - onset) << " s before the freeze";
    }
    // Acceptance (issue 5): within 2 s of the freeze, and at least 5x sooner than the guest.
    EXPECT_LE(to_ipi, 2.0);
    EXPECT_GE(to_guest / to_ipi, 5.0);
    // The IPI stall may name the host before VCPU_HOST_BLOCKED opens: once the thread has been
    // in D for host_blocked_min / 5 (100 ms) a csd wait already old enough is explained by it
    // (host_verdict). Seen 2026-12-05: 0.44 s vs 0.55 s, 1 run in 8. Never before those 100 ms
    // (less the 1 ms state poll that dates the freeze); the host's own finding within the same
    // 2 s as the IPI stall.
    EXPECT_GE(to_ipi, 0.09);
    EXPECT_LE(to_blocked, 2.0);

    // Issue 12: where the waiter is. The IPI stall's evidence carries the kernel trace of each
    // CPU it involves (read from guest memory, refreshed once a second); the CPU the guest
    // reports stuck shows the csd wait, and one of its traces starts in the function the guest's
    // own report names (the RIP of its soft-lockup dump; our trace starts there only when the
    // newest interrupt frame on the stack is the timer's, which a spinning CPU gets every tick).
    {
      // The report's first line is what was waited for above; its register dump follows a few
      // lines later, which a TCG guest may still be printing.
      guest().wait_console_until(
          [](const std::string& c) {
            const size_t r = c.find("RIP: 0010:", c.find("soft lockup - CPU#"));
            return r != std::string::npos && c.find('\n', r) != std::string::npos;
          },
          20s, from_console);
      const std::string con = guest().console(from_console);
      std::smatch sm;
      ASSERT_TRUE(std::regex_search(con, sm, std::regex("soft lockup - CPU#([0-9]+) stuck"))) << con;
      const int stuck_cpu = std::stoi(sm[1].str());
      const size_t rip = con.find("RIP: 0010:", static_cast<size_t>(sm.position(0)));
      ASSERT_NE(rip, std::string::npos) << con;
      const std::string guest_fn = con.substr(rip + 10, con.find_first_of("+\n", rip + 10) - rip - 10);
      std::cout << "guest soft-lockup report: CPU" << stuck_cpu << " RIP in " << guest_fn << std::endl;
      auto csd_wait = [&](const Finding& x) {
        if (x.kind != FindingKind::kGuestIpiStall || roots_of(x) != "2") return false;
        for (const auto& fr : trace_frames(x, stuck_cpu))
          if (function_of(fr) == "smp_call_function_many_cond" || function_of(fr) == "csd_lock_wait") return true;
        return false;
      };
      auto same_innermost = [&](const Finding& x) {
        const auto frames = trace_frames(x, stuck_cpu);
        return csd_wait(x) && function_of(frames.front()) == guest_fn;
      };
      auto with_wait = m.log.wait(csd_wait, 5s, from_log);
      auto matching = m.log.wait(same_innermost, 5s, from_log);
      std::set<std::string> seen;  // every trace of that CPU the finding carried
      for (const auto& x : m.monitor().engine().list_findings({.domain = guest().name()})) {
        if (x.kind != FindingKind::kGuestIpiStall) continue;
        for (const auto& e : x.evidence)
          if (has_trace(e) && e.cpu == stuck_cpu) seen.insert(e.text);
      }
      for (const auto& t : seen) std::cout << "latest trace: " << t << std::endl;
      ASSERT_TRUE(with_wait) << "no trace of CPU" << stuck_cpu << " in the csd wait:\n" << m.log.dump(from_log);
      for (const auto& e : with_wait->event.finding.evidence)
        if (has_trace(e) && e.cpu == stuck_cpu)
          std::cout << "first trace in the csd wait (" << seconds(with_wait->at - *t_freeze)
                    << " s after the freeze, " << seconds(with_wait->at - ipi->at)
                    << " s after the finding): " << e.text << std::endl;
      EXPECT_TRUE(matching) << "no trace of CPU" << stuck_cpu << " starting in " << guest_fn;
      core::AgentStats st = m.monitor().stats();
      std::cout << "kernel traces: " << st.kernel_traces << " read (" << st.kernel_trace_failures
                << " unavailable), mean " << (st.kernel_traces ? st.kernel_trace_seconds / st.kernel_traces * 1e6 : 0)
                << " us per CPU (the first includes the ORC tables)" << std::endl;
    }

    // The full snapshot on demand, while frozen.
    auto ins = m.monitor().inspect(guest().name(), 5000ms);
    ASSERT_TRUE(ins.ok()) << ins.error().to_string();
    ASSERT_GT(ins->snapshot.cpus.size(), 2u);
    EXPECT_TRUE(ins->snapshot.cpus[2].rq.curr_is_idle);

    auto undo = f.release();
    EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
    EXPECT_TRUE(m.all_resolved(30s)) << "still active after the thaw:\n" << m.log.dump(from_log);
    // Issue 11: neither the monitor nor the testbed sent a monitor command, so libvirt did not
    // mark the domain (it logs "Domain id=N is tainted: custom-monitor" on the first one), after
    // at least taint_watch_ of monitoring (60 s, the acceptance's figure, in the plain test; the
    // rest of the test takes ~40 s).
    std::this_thread::sleep_until(watched_from + taint_watch_);
    const std::string log = tb::read_text("/var/log/libvirt/qemu/" + guest().name() + ".log");
    EXPECT_FALSE(log.empty());
    EXPECT_EQ(log.find("custom-monitor"), std::string::npos) << "the domain was tainted:\n" << log;
    m.print_stats();
  }
  if (neighbour_) {
    // The neighbour was read with its own tables all along: every snapshot clean, nothing found.
    auto h = m.monitor().wait_introspection(neighbour_->name(), 1000ms);
    ASSERT_TRUE(h.ok()) << h.error().to_string();
    EXPECT_EQ(h->state, core::IntrospectionState::kReady) << h->error;
    EXPECT_GT(h->snapshots, 20u);
    EXPECT_EQ(h->snapshot_errors, 0u) << h->last_snapshot_error;
    EXPECT_TRUE(m.monitor().engine().active_findings(neighbour_->name()).empty());
    // It did claim the victim's BUILD-ID, with another kernel behind it.
    auto v = m.monitor().wait_introspection(guest().name(), 1000ms);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(h->build_id, v->build_id);
    EXPECT_NE(h->kernel_release, v->kernel_release);
    std::cout << "neighbour: kernel " << h->kernel_release << " build-id " << h->build_id << ", "
              << h->snapshots << " snapshots, " << h->snapshot_errors << " with errors" << std::endl;
  }
}

TEST_F(Scenario, SeedCase1FrozenVcpuIsAHostCausedIpiStallLongBeforeTheGuestReports) {
  tb::GuestOptions o;
  o.tag = "dx-seed1";
  o.scenario = "ipi-module";
  o.watchdog_thresh = 5;
  taint_watch_ = 60s;
  seed_case1(o);
}

// Issue 13: seed case 1 on Debian's PREEMPT_RT kernels (6.1 and 6.12). The guest's own report
// cannot be the yardstick there: its soft lockup reaches the ring buffer (read by stallctl 14 s
// after the freeze) but not the console, whose printer thread does not run while CPU0 spins with
// preemption off, and the guest's userspace (the testbed's control channel) stops answering too
// (3 of 3 runs of 6.1-rt, 2026-12-05). The diagnosis is asserted as on the default kernel: the
// IPI stall rooted at the frozen CPU with cause host within 2 s, CPU0 the waiter, all resolved at
// the thaw.
void Scenario::seed_case1_preempt_rt(const std::string& tag, const std::string& kernel_package) {
  tb::GuestOptions o;
  o.tag = tag;
  o.kernel_package = kernel_package;
  o.scenario = "ipi-module";
  o.watchdog_thresh = 5;
  ASSERT_TRUE(boot(o));
  Monitored m(guest(), monitor_config_, nullptr);
  ASSERT_TRUE(m.ready(120s));
  std::this_thread::sleep_for(3s);
  EXPECT_TRUE(m.active().empty()) << "findings before any fault:\n" << m.log.dump();
  const size_t from_log = m.log.size();
  const size_t from_console = guest().console_size();
  tb::Injector f;
  std::optional<Clock::time_point> t_freeze;
  freeze_idle_vcpu2(f, t_freeze);
  if (HasFatalFailure()) return;
  auto ipi = m.log.wait(
      [](const Finding& x) {
        return x.kind == FindingKind::kGuestIpiStall && roots_of(x) == "2" && x.cause == Cause::kHostBlocked &&
               has_cpus(x, {0, 2});
      },
      30s, from_log);
  auto blocked = m.log.wait(
      [](const Finding& x) { return x.kind == FindingKind::kVcpuHostBlocked && has_cpus(x, {2}); }, 30s, from_log);
  // What the guest's console shows meanwhile (printed, not asserted: it is the kernel's business).
  auto console_report = guest().wait_console(std::regex("soft lockup - CPU#[0-9]+ stuck for [0-9]+s"), 20s, from_console);
  std::cout << "findings after the freeze:\n" << m.log.dump(from_log) << std::flush;
  ASSERT_TRUE(ipi) << "no GUEST_IPI_STALL of CPU0 rooted at CPU2 with cause host-blocked";
  ASSERT_TRUE(blocked) << "no VCPU_HOST_BLOCKED on vCPU 2";
  const double to_ipi = seconds(ipi->at - *t_freeze);
  std::cout << "DETECTION LATENCY (freeze -> GUEST_IPI_STALL): " << to_ipi << " s; the guest's console "
            << (console_report ? "reported \"" + *console_report + "\"" : std::string("reported nothing in 20 s"))
            << std::endl;
  RecordProperty("seconds_to_ipi_stall", std::to_string(to_ipi));
  EXPECT_LE(to_ipi, 2.0);
  EXPECT_LE(seconds(blocked->at - *t_freeze), 2.0);
  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  EXPECT_TRUE(m.all_resolved(30s)) << "still active after the thaw:\n" << m.log.dump(from_log);
  m.print_stats();
}

TEST_F(Scenario, SeedCase1OnThePreemptRtKernel) { seed_case1_preempt_rt("dx-rt", kKernel61Rt); }

TEST_F(Scenario, SeedCase1OnThePreemptRtKernel612) { seed_case1_preempt_rt("dx-rt612", kKernel612Rt); }

// Issue 13: the same with the guest's BTF ignored and no host debuginfo, the types only from a
// profile made from Debian's -dbg vmlinux (`stallctl profile make`) in STALLMON_PROFILE_DIR: the
// monitor is ready only if discovery took the profile. On demand (label `ondemand`): the -dbg
// package is ~860 MB; tests/integration/introspect/profile_acceptance.sh fetches it.
TEST_F(Scenario, SeedCase1WithGuestBtfIgnoredAndTypesFromAProfile) {
  const char* dir = std::getenv("STALLMON_PROFILE_DIR");
  ASSERT_TRUE(dir && *dir) << "set STALLMON_PROFILE_DIR to a directory holding <BUILD-ID>.profile of the 6.1 guest "
                              "kernel (stallctl profile make vmlinux-6.1.0-57-amd64 --dir DIR)";
  ASSERT_FALSE(std::filesystem::is_empty(dir)) << dir;
  monitor_config_.ignore_guest_btf = true;
  monitor_config_.profile_dir = dir;
  monitor_config_.debug_dir = "";
  tb::GuestOptions o;
  o.tag = "dx-profile";
  o.scenario = "ipi-module";
  o.watchdog_thresh = 5;
  seed_case1(o);
}

// Issue 11: the same on an i440fx guest of 4 GiB (RAM split at 3 GiB below 4 GiB and 1 GiB
// above it, unlike q35's 2 GiB split) with memfd-backed RAM, running Debian's 6.1 cloud kernel: the layout the monitor derives from
// the domain XML and /proc/PID/maps, with no monitor command, reads the right guest memory.
TEST_F(Scenario, SeedCase1OnAnI440fxGuestWithRamAbove4GiB) {
  tb::GuestOptions o;
  o.tag = "dx-pc4g";
  o.kernel_package = kKernel61Cloud;
  o.scenario = "ipi-module";
  o.watchdog_thresh = 5;
  o.machine = "pc";
  o.memory_mib = 4096;
  o.memory_backing = "memfd";
  seed_case1(o);
}

// Issue 11: the same on a guest with a hotplugged DIMM (256 MiB into a q35 guest started with
// room for it, attached before the monitor starts and onlined by the guest): the layout the
// monitor derives without a monitor command has the DIMM at its base, and the diagnosis holds.
TEST_F(Scenario, SeedCase1OnAGuestWithAHotpluggedDimm) {
  tb::GuestOptions o;
  o.tag = "dx-dimm";
  o.scenario = "ipi-module";
  o.watchdog_thresh = 5;
  o.max_memory_mib = 2048;
  seed_case1(o, {}, [&] {
    auto att = tb::run_testbed({"attach-dimm", guest().name(), "--size", "256"}, 180s, false);
    ASSERT_EQ(att.exit_code, 0) << att.err;
    // Online whatever the guest did not online by itself, then check it counts the DIMM.
    auto on = guest().run(
        "for m in /sys/devices/system/memory/memory*/state; do grep -q offline $m && echo online > $m; done; "
        "grep MemTotal /proc/meminfo");
    ASSERT_EQ(on.exit_code, 0) << on.out << on.err;
    std::cout << "after the hotplug: " << on.out << std::flush;
    // 512 MiB of boot RAM shows as less than 512 MiB: more means the guest uses the DIMM.
    EXPECT_GT(std::stoull(on.out.substr(on.out.find(':') + 1)), 512ull * 1024) << on.out;
  });
  if (HasFatalFailure()) return;
  // The layout the monitor's watcher derives (default options: read-only, no monitor command).
  lv::DomainWatcher w(lv::WatcherOptions{});
  ASSERT_TRUE(w.start().ok());
  std::optional<lv::DomainInfo> d;
  ASSERT_TRUE(tb::eventually([&] { return (d = w.domain(guest().name())) && d->ram_layout; }, 30s));
  ASSERT_FALSE(d->ram_layout->empty());
  EXPECT_EQ(d->ram_layout->back().name, "memdimm0");
  w.stop();
}

// Issue 10: the guest's root planted 40 forged VMCOREINFO notes (another KASLR slide, another
// BUILD-ID, another phys_base, every field right plus one line) before the monitor started.
// The monitor must find the real kernel and diagnose seed case 1 exactly as on a clean guest.
TEST_F(Scenario, SeedCase1OnAGuestThatPlantedForgedVmcoreinfoNotes) {
  tb::GuestOptions o;
  o.tag = "dx-forged";
  o.scenario = "notespray,ipi-module";
  o.watchdog_thresh = 5;
  seed_case1(o, "/run/tb/notespray.out");
  EXPECT_LE(Monitored::status_kib("VmHWM"), kRssBoundKib);
}

// Issue 10: a neighbour running another kernel (6.12) whose kernel claims the victim's BUILD-ID
// in its own VMCOREINFO (kmod/buildidforge.c, loaded before the monitor starts). Symbols and
// types are shared only by the content of the tables, so each guest keeps its own: the victim's
// seed case 1 is diagnosed as on its own (the victim runs the 6.12 cloud kernel), and the
// neighbour's snapshots stay clean.
TEST_F(Scenario, SeedCase1UnchangedNextToAGuestClaimingItsBuildId) {
  tb::GuestOptions o;
  o.tag = "dx-victim";
  o.kernel_package = kKernel612Cloud;
  o.scenario = "ipi-module";
  o.watchdog_thresh = 5;
  seed_case1(o, {}, [&] {
    // The victim's BUILD-ID, from its VMCOREINFO (notespray 0 prints it and plants nothing).
    auto v = guest().run("timeout 5 notespray 0");
    const size_t at = v.out.find("build-id=");
    ASSERT_NE(at, std::string::npos) << v.out << v.err;
    const std::string victim_id = v.out.substr(at + 9, 40);
    tb::GuestOptions f;
    f.tag = "dx-forger";
    f.scenario = "sleepers";
    f.kernel_package = kKernel612;
    try {
      neighbour_ = tb::Guest::boot(f);
    } catch (const std::exception& e) {
      FAIL() << "neighbour boot failed: " << e.what();
    }
    auto r = neighbour_->run("insmod /buildidforge.ko build_id=" + victim_id + " && dmesg | tail -1");
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    ASSERT_NE(r.out.find("now claims BUILD-ID=" + victim_id), std::string::npos) << r.out;
    std::cout << "neighbour " << neighbour_->name() << " (6.12) claims BUILD-ID " << victim_id << std::endl;
  });
  EXPECT_LE(Monitored::status_kib("VmHWM"), kRssBoundKib);
}

// ---------------------------------------------------------------------------------------------
// Issue 10: a warm reboot inside the guest (`reboot -f`; libvirt <on_reboot>restart</on_reboot>
// keeps the qemu process, the new kernel gets a new KASLR slide). The monitor must drop the old
// kernel, open no finding from the previous boot's memory while the new one comes up, and
// rediscover the new kernel within 10 s of its first console line.
TEST_F(Scenario, WarmRebootIsRediscoveredAndOpensNoFindingFromStaleMemory) {
  tb::GuestOptions o;
  o.tag = "dx-reboot";
  o.scenario = "sleepers";
  o.on_reboot = "restart";
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  auto before = m.monitor().wait_introspection(guest().name(), 1000ms);
  ASSERT_TRUE(before.ok() && before->ok());
  const uint64_t reboots0 = before->reboots_detected;
  const size_t from_log = m.log.size();
  const size_t from_console = guest().console_size();
  // Detached, so that the control channel's reply does not race the reset.
  guest().run("(sleep 0.5; reboot -f) </dev/null >/dev/null 2>&1 &", 10s);
  const auto t_reboot = Clock::now();
  auto linux = guest().wait_console(std::regex("Linux version [^ ]+"), 120s, from_console);
  const auto t_kernel = Clock::now();  // the console is polled: at most a poll late
  ASSERT_TRUE(linux) << "the guest did not boot again; console:\n" << guest().console(from_console);

  std::optional<core::IntrospectionHealth> after;
  while (Clock::now() < t_kernel + 120s) {
    auto h = m.monitor().wait_introspection(guest().name(), 100ms);
    if (h.ok() && h->ok() && h->reboots_detected > reboots0) {
      after = *h;
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  const auto t_ready = Clock::now();
  ASSERT_TRUE(after) << "the new kernel was not rediscovered within 120 s of its boot";
  std::cout << "WARM REBOOT: kernel line " << seconds(t_kernel - t_reboot) << " s after reboot -f, rediscovered "
            << seconds(t_ready - t_kernel) << " s after it (" << after->reboots_detected - reboots0
            << " reboot(s) detected, " << after->discovery_attempts << " discovery attempts)" << std::endl;
  EXPECT_LE(seconds(t_ready - t_kernel), 10.0);
  EXPECT_EQ(after->reboots_detected - reboots0, 1u) << "one reboot, counted once";
  // A few more ticks on the new kernel, then: nothing at all was reported across the reboot.
  auto r = guest().wait_console(std::regex("STALLMON-READY"), 120s, from_console);
  ASSERT_TRUE(r) << "the rebooted guest never got ready";
  std::this_thread::sleep_for(5s);
  EXPECT_EQ(m.log.size(), from_log) << "findings across the reboot:\n" << m.log.dump(from_log);
  m.print_stats();
  EXPECT_LE(Monitored::status_kib("VmHWM"), kRssBoundKib);
}

// ---------------------------------------------------------------------------------------------
// Issue 10: a guest without Linux (firmware with nothing to boot). Host-side monitoring goes on;
// discovery backs off (each attempt scans all guest RAM), the status says so, and what that
// guest costs the monitor in CPU is measured: the monitor runs in this process, so this
// process's CPU time over the window (minus nothing: no other guest is watched) bounds it.
TEST_F(Scenario, GuestWithoutLinuxIsMonitoredHostOnlyWhileDiscoveryBacksOff) {
  tb::GuestOptions o;
  o.tag = "dx-nokernel";
  o.no_kernel = true;
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  const auto t0 = Clock::now();
  const uint64_t self0 = process_ticks(getpid());
  std::optional<core::IntrospectionHealth> h;
  uint64_t ticks = 0;
  size_t vcpus = 0;
  // Watched for 30 s: with the default backoff (1 s doubling) that is about 5 full-RAM scans.
  while (Clock::now() < t0 + 30s) {
    std::this_thread::sleep_for(1s);
    auto d = m.monitor().domain(guest().name());
    if (!d.ok()) continue;
    h = d->summary.introspection;
    ticks = d->summary.ticks;
    vcpus = d->vcpus.size();
  }
  const double cpu_s = static_cast<double>(process_ticks(getpid()) - self0) / sysconf(_SC_CLK_TCK);
  const double wall_s = seconds(Clock::now() - t0);
  ASSERT_TRUE(h) << "the domain was never watched";
  const auto now = std::chrono::time_point_cast<diagnosis::Duration>(std::chrono::system_clock::now());
  const std::string status = core::describe(*h, now);
  std::cout << "NO KERNEL: status \"" << status << "\"; " << h->discovery_attempts << " discovery attempts, "
            << h->discovery_bytes_read / 1048576.0 << " MiB read by them, " << seconds(h->discovery_time)
            << " s spent; monitor process CPU " << cpu_s << " s over " << wall_s << " s ("
            << 100.0 * cpu_s / wall_s << "% of one core), " << ticks << " host ticks" << std::endl;
  EXPECT_EQ(h->state, core::IntrospectionState::kNoKernel) << status;
  EXPECT_NE(status.find("no Linux kernel found"), std::string::npos) << status;
  EXPECT_NE(status.find("next try in"), std::string::npos) << status;
  ASSERT_TRUE(h->next_attempt_at);
  // Backing off: doubling from 1 s gives at most 6 attempts in 30 s (a fixed 1 s retry: 30).
  EXPECT_GE(h->discovery_attempts, 3u);
  EXPECT_LE(h->discovery_attempts, 6u);
  // Host-side monitoring went on throughout: every vCPU sampled, ticks at the sampling rate.
  EXPECT_EQ(vcpus, 4u);
  EXPECT_GE(ticks, 200u);
  EXPECT_TRUE(m.active().empty()) << m.log.dump();
  // What scanning costs: every attempt reads at most the guest's RAM (512 MiB) once.
  EXPECT_LE(h->discovery_bytes_read, h->discovery_attempts * (512ull << 20) + (64ull << 20));
  m.print_stats();
  // Scans read in bounded chunks: the process never holds the guest's RAM.
  EXPECT_LE(Monitored::status_kib("VmHWM"), kRssBoundKib);
}

// ---------------------------------------------------------------------------------------------
// The freeze lands while the vCPU holds QEMU's big lock: the whole VM stops behind that thread.
TEST_F(Scenario, FreezeHoldingTheBigLockIsAVmWideStallNamingTheThread) {
  tb::GuestOptions o;
  o.tag = "dx-vmwide";
  o.scenario = "sleepers";
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  // Keep vCPU 1 busy with port I/O, which QEMU emulates holding the big lock.
  auto r = guest().run("insmod /bqlhog.ko cpu=1", 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::this_thread::sleep_for(1s);

  const size_t from_log = m.log.size();
  tb::FreezeOptions fo;
  fo.when_idle = 0ms;
  fo.want_case = "vm-wide";
  fo.attempts = 25;
  const auto t0 = Clock::now();
  auto f = guest().freeze_vcpu(1, fo);
  ASSERT_TRUE(f.applied()) << f.error();
  std::cout << "freeze after " << seconds(Clock::now() - t0) << " s: " << f.status().dump() << std::endl;
  ASSERT_EQ(f.freeze_case(), "vm-wide")
      << "no freeze of the busy vCPU 1 landed inside QEMU's big lock in " << fo.attempts
      << " attempts (cases: " << f.status().value("cases", nlohmann::json::array()).dump() << ")";
  const auto t_applied = Clock::now();
  const pid_t tid = f.tid();

  auto vm = m.log.wait(
      [&](const Finding& x) {
        if (x.kind != FindingKind::kVmWideStall) return false;
        return std::any_of(x.evidence.begin(), x.evidence.end(), [&](const diagnosis::Evidence& e) {
          auto t = e.facts.find("tid");
          auto s = e.facts.find("state");
          return t != e.facts.end() && t->second == std::to_string(tid) && s != e.facts.end() && s->second == "D";
        });
      },
      30s, from_log);
  std::cout << "findings:\n" << m.log.dump(from_log) << std::flush;
  ASSERT_TRUE(vm) << "no VM_WIDE_STALL naming thread " << tid;
  std::cout << "VM_WIDE_STALL " << seconds(vm->at - t_applied)
            << " s after the injector reported (it measures ~1 s after the freeze)" << std::endl;
  EXPECT_NE(vm->event.finding.summary.find(std::to_string(tid)), std::string::npos) << vm->event.finding.summary;
  EXPECT_EQ(vm->event.finding.cause, Cause::kHostBlocked);

  auto undo = f.release();
  EXPECT_TRUE(undo.value("ok", false)) << undo.dump();
  EXPECT_TRUE(m.all_resolved(60s)) << "still active after the thaw:\n" << m.log.dump(from_log);
  m.print_stats();
}

// ---------------------------------------------------------------------------------------------
// A vCPU that wants to run, capped at 5 ms per 100 ms by a cgroup quota.
TEST_F(Scenario, ThrottledVcpuIsHostStarved) {
  tb::GuestOptions o;
  o.tag = "dx-throttle";
  o.scenario = "sleepers";
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  auto r = guest().run("tb-load start 1", 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::this_thread::sleep_for(2s);

  const size_t from_log = m.log.size();
  const auto t0 = Clock::now();
  auto t = guest().throttle_vcpu(1, 5000, 100000);
  ASSERT_TRUE(t.applied()) << t.error();
  auto starved = m.log.wait(
      [](const Finding& x) { return x.kind == FindingKind::kVcpuHostStarved && has_cpus(x, {1}); }, 60s, from_log);
  std::cout << "findings:\n" << m.log.dump(from_log) << std::flush;
  ASSERT_TRUE(starved) << "no VCPU_HOST_STARVED on vCPU 1";
  std::cout << "VCPU_HOST_STARVED " << seconds(starved->at - t0) << " s after the throttle" << std::endl;
  EXPECT_EQ(starved->event.finding.cause, Cause::kHostStarved);

  t.release();
  (void)guest().run("tb-load stop", 60s);
  EXPECT_TRUE(m.all_resolved(60s)) << "still active after the release:\n" << m.log.dump(from_log);
  m.print_stats();
}

// ---------------------------------------------------------------------------------------------
// Seed cases 2 and 4: a guest CPU spinning with interrupts off. The guest blames the others.
// Shipped configuration (irqs_off_min_run_fraction included) and an asserted bound: the root
// cause within 3 s of the spinner's start, before the guest's own soft-lockup report.
// IPI load: ipi-module (on_each_cpu every 10 ms from a kthread), which interrupts CPU 1 whatever
// it runs, so the IPI stall forms at once; plus the usual wakeups and sleepers.
//
// Issue 12 item 1: where each CPU is. The spinner's trace (CPU1) shows the module's thread
// function, `irqoff_fn [irqoff]` (module symbols and ORC read from guest memory; the function
// calls nothing while it spins, so it is the kthread's threadfn inferred from struct kthread, or
// a verified frame when the return address of its earlier printk call still chains), and every
// CPU waiting on it shows the csd wait path.
void Scenario::irqs_off_root(const std::string& tag, const std::string& kernel_package) {
  tb::GuestOptions o;
  o.tag = tag;
  o.scenario = "ipi-module,wakeups,sleepers";
  o.watchdog_thresh = 5;
  o.kernel_package = kernel_package;
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  std::this_thread::sleep_for(2s);

  const size_t from_log = m.log.size();
  const size_t from_console = guest().console_size();
  // Host clocks for the spinner's start (its last message before local_irq_disable) and the
  // guest's own first report, independent of stallmon.
  FirstSeen spin = console_watch(guest(), std::regex("stallmon-irqoff: spinning with IRQs off on CPU1"), from_console);
  FirstSeen report = console_watch(guest(), std::regex("soft lockup - CPU#[0-9]+ stuck for [0-9]+s"), from_console);
  // The spinner's vCPU gets a host core. Three of the guest's four vCPUs spin here (the spinner,
  // the IPI waiter, the insmod that IPIs CPU 1) on a 2-core host: without this the host holds CPU
  // 1's vCPU back 35-64 % of the time, and the engine rightly does not call the cause the guest's
  // (measured 2026-12-05 on both kernels, load average ~3: "cause: undetermined, evaluating" for
  // 110 s). A starved vCPU is diagnosis_starved's case and the matrix's, not this one.
  ASSERT_EQ(setpriority(PRIO_PROCESS, static_cast<id_t>(guest().vcpu_tid(1)), -10), 0) << std::strerror(errno);
  // CPU 1 (mask d: CPUs 0, 2, 3 keep the rest) spins with IRQs off from here on.
  auto r = insmod_off_cpus(guest(), "d", "/irqoff.ko cpu=1");
  ASSERT_EQ(r.exit_code, 0) << r.err;

  auto ipi = m.log.wait(
      [](const Finding& x) {
        return x.kind == FindingKind::kGuestIpiStall && roots_of(x) == "1" && x.cause == Cause::kGuestIrqsOff;
      },
      60s, from_log);
  auto irqs = m.log.wait(
      [](const Finding& x) { return x.kind == FindingKind::kGuestIrqsOff && has_cpus(x, {1}); }, 30s, from_log);
  ASSERT_TRUE(tb::eventually([&] { return report.at().has_value(); }, 60s))
      << "the guest never reported a soft lockup; console:\n" << guest().console(from_console);
  std::cout << "findings:\n" << m.log.dump(from_log) << std::flush;
  // Where each CPU is (issue 12), whatever the cause: on a host that starves the vCPUs the
  // cause becomes the host's, the traces stay. Refreshed once a second for the CPUs of active
  // findings.
  auto spinner_shown = [](const Finding& x) {
    for (const auto& fr : trace_frames(x, 1))
      if (function_of(fr) == "irqoff_fn" && fr.find(" [irqoff]") != std::string::npos) return true;
    return false;
  };
  auto waiters_of = [](const Finding& x) {
    std::vector<int> w;
    for (const auto& e : x.evidence)
      if (e.wait_roots) w.insert(w.end(), e.wait_roots->waiters.begin(), e.wait_roots->waiters.end());
    return w;
  };
  auto in_csd_wait = [](const Finding& x, int cpu) {
    for (const auto& fr : trace_frames(x, cpu))
      if (function_of(fr) == "smp_call_function_many_cond" || function_of(fr) == "csd_lock_wait") return true;
    return false;
  };
  auto where = m.log.wait(
      [&](const Finding& x) {
        if (x.kind != FindingKind::kGuestIpiStall || roots_of(x) != "1" || !spinner_shown(x)) return false;
        const auto w = waiters_of(x);
        return !w.empty() && std::all_of(w.begin(), w.end(), [&](int c) { return in_csd_wait(x, c); });
      },
      30s, from_log);
  // What the findings showed, for the record (and the diagnosis when the wait failed).
  std::set<std::string> shown;
  for (const auto& entry : m.log.entries(from_log))
    for (const auto& e : entry.event.finding.evidence)
      if (has_trace(e)) shown.insert("CPU" + std::to_string(*e.cpu) + ": " + e.text);
  for (const auto& t : shown) std::cout << "trace seen: " << t << std::endl;
  EXPECT_TRUE(where) << "no GUEST_IPI_STALL whose CPU1 trace shows irqoff_fn [irqoff] and whose waiters' traces "
                        "show the csd wait";
  ASSERT_TRUE(spin.at()) << "no spinner start line on the console";
  ASSERT_TRUE(ipi) << "no GUEST_IPI_STALL rooted at CPU1 with cause guest-irqs-off";
  const double to_root = seconds(ipi->at - *spin.at());
  const double to_guest = seconds(*report.at() - *spin.at());
  std::cout << "host load average: " << tb::read_text("/proc/loadavg");
  std::cout << "DETECTION LATENCY (spinner start -> ...): GUEST_IPI_STALL(root CPU1, irqs off) " << to_root
            << " s, GUEST_IRQS_OFF " << (irqs ? std::to_string(seconds(irqs->at - *spin.at())) : std::string("none"))
            << " s; guest's own first report " << to_guest << " s" << std::endl;
  RecordProperty("seconds_to_irqs_off_root", std::to_string(to_root));
  RecordProperty("seconds_to_guest_report", std::to_string(to_guest));
  EXPECT_LE(to_root, 3.0);
  EXPECT_LT(ipi->at, *report.at()) << "stallmon named the root after the guest's own report";
  EXPECT_TRUE(irqs) << "no GUEST_IRQS_OFF on CPU1";
  const std::string text = guest().console(from_console);
  const auto at = text.find("soft lockup - CPU#");
  EXPECT_EQ(text.substr(at, 24).find("CPU#1 "), std::string::npos) << "the culprit cannot report itself";

  m.print_stats();
}

TEST_F(Scenario, IrqsOffCpuIsTheRootOfTheIpiStallWithCauseGuest) { irqs_off_root("dx-irqoff", ""); }

// The same on Debian's 6.12 (struct module's mem[] instead of core_layout, the 6.4+ ORC format).
TEST_F(Scenario, IrqsOffCpuIsTheRootOfTheIpiStallWithCauseGuest612) {
  irqs_off_root("dx-irqoff612", kKernel612);
}

// ---------------------------------------------------------------------------------------------
// Issue 12 item 3 (seed case 5): the test module's kthread on CPU1 overwrites its own
// STACK_END_MAGIC, spins 8 s with preemption off (it must not schedule: Debian's kernels panic
// on a corrupted stack end in the scheduler) while touching the soft-lockup watchdog, then
// restores it and exits (stackend.ko mode=spin). Twice, to show the module is repeatable and a
// second overflow is a second finding: each time GUEST_STACK_OVERFLOW on CPU1 naming the
// kthread within a few seconds, one finding, resolved once the magic is back. watchdog_thresh
// 20: CPU1's watchdog thread cannot run during the spin, and its touch must stay under half the
// limit (8 s + a period of 8 s + 1 s < 20 s) so that no soft-lockup finding blurs the picture.
void Scenario::stack_end_overwritten_twice(const std::string& tag, const std::string& kernel_package) {
  tb::GuestOptions o;
  o.tag = tag;
  o.scenario = "sleepers";
  o.watchdog_thresh = 20;
  o.kernel_package = kernel_package;
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  std::this_thread::sleep_for(2s);
  const size_t from_all = m.log.size();
  auto on_cpu1 = [](const Finding& x) { return x.kind == FindingKind::kGuestStackOverflow && has_cpus(x, {1}); };
  std::set<std::string> ids;
  for (int round = 1; round <= 2; ++round) {
    const size_t from_log = m.log.size();
    const size_t from_console = guest().console_size();
    const std::regex started("stallmon-stackend: STACK_END_MAGIC overwritten on CPU1 by pid ([0-9]+)");
    FirstSeen start = console_watch(guest(), started, from_console);
    FirstSeen restored =
        console_watch(guest(), std::regex("stallmon-stackend: restored STACK_END_MAGIC on CPU1"), from_console);
    auto r = guest().run("insmod /stackend.ko cpu=1 seconds=8 </dev/null >/dev/null 2>&1 &", 60s);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto opened = m.log.wait(on_cpu1, 30s, from_log);
    ASSERT_TRUE(tb::eventually([&] { return restored.at().has_value(); }, 60s))
        << "round " << round << ": the module never restored the magic; console:\n" << guest().console(from_console);
    auto resolved = m.log.wait_resolved(on_cpu1, 20s, from_log);
    std::cout << "round " << round << " findings:\n" << m.log.dump(from_log) << std::flush;
    ASSERT_TRUE(start.at()) << "no start line on the console";
    ASSERT_TRUE(opened) << "round " << round << ": no GUEST_STACK_OVERFLOW on CPU1";
    ASSERT_TRUE(resolved) << "round " << round << ": GUEST_STACK_OVERFLOW on CPU1 not resolved after the restore";
    std::smatch sm;
    const std::string console = guest().console(from_console);
    ASSERT_TRUE(std::regex_search(console, sm, started));
    const Finding& f = opened->event.finding;
    ids.insert(f.id);
    EXPECT_EQ(resolved->event.finding.id, f.id);
    EXPECT_EQ(f.severity, diagnosis::Severity::kCritical);
    ASSERT_FALSE(f.evidence.empty());
    EXPECT_EQ(f.evidence[0].facts.at("pid"), sm[1].str()) << "not the module's kthread";
    EXPECT_EQ(f.evidence[0].facts.at("comm"), "stackend/1");
    EXPECT_NE(f.evidence[0].text.find("STACK_END_MAGIC"), std::string::npos) << f.evidence[0].text;
    // From the start line on the host's copy of the serial console (written just before the
    // magic is overwritten) and from the restore line: host clocks, independent of stallmon.
    const double to_open = seconds(opened->at - *start.at());
    const double to_resolve = seconds(resolved->at - *restored.at());
    std::cout << "round " << round << ": GUEST_STACK_OVERFLOW " << to_open << " s after the start line, resolved "
              << to_resolve << " s after the restore line; host load average " << tb::read_text("/proc/loadavg");
    RecordProperty("seconds_to_stack_overflow_round" + std::to_string(round), std::to_string(to_open));
    EXPECT_LE(to_open, 5.0);
    EXPECT_LT(opened->at, *restored.at()) << "seen only after the spin ended";
    EXPECT_LE(to_resolve, 5.0);
    EXPECT_EQ(m.log.count_if([&](const Finding& x) { return x.id == f.id && x.active; }),
              m.log.count_if([&](const Finding& x) { return x.id == f.id; }) - 1)
        << "one finding: opened (and maybe updated), resolved once";
    auto rm = guest().run("rmmod stackend", 60s);
    EXPECT_EQ(rm.exit_code, 0) << rm.err;
  }
  EXPECT_EQ(ids.size(), 2u);
  std::set<std::string> all_ids;  // on any CPU, over the whole test: only the two
  m.log.count_if([&](const Finding& x) {
    if (x.kind == FindingKind::kGuestStackOverflow) all_ids.insert(x.id);
    return false;
  });
  EXPECT_EQ(all_ids, ids);
  // No panic: the spin never schedules with the magic overwritten.
  const std::string console = guest().console();
  EXPECT_EQ(console.find("corrupted stack end"), std::string::npos);
  EXPECT_EQ(console.find("Kernel panic"), std::string::npos);
  std::cout << "all findings of the test:\n" << m.log.dump(from_all) << std::flush;
  m.print_stats();
}

TEST_F(Scenario, OverwrittenStackEndIsAGuestStackOverflowOnItsCpu) { stack_end_overwritten_twice("dx-stackend", ""); }

// The same on Debian's 6.12 (another task_struct layout, read from its BTF).
TEST_F(Scenario, OverwrittenStackEndIsAGuestStackOverflowOnItsCpu612) {
  stack_end_overwritten_twice("dx-stackend612", kKernel612);
}

// ---------------------------------------------------------------------------------------------
// Issue 12 item 3, the guest's own verdict: stackend.ko mode=schedule sleeps with its magic
// overwritten, and Debian's scheduler (CONFIG_SCHED_STACK_END_CHECK) panics: "Kernel panic - not
// syncing: corrupted stack end detected inside scheduler". GUEST_PANIC names a kernel stack
// overflow on CPU1 and the kthread; the panicked CPU's current task is still the kthread with its
// word overwritten, so GUEST_STACK_OVERFLOW reads it from memory too.
TEST_F(Scenario, SchedulingWithAnOverwrittenStackEndIsAPanicNamingTheStackOverflow) {
  ASSERT_TRUE(boot(kept_after_panic("dx-stackpanic")));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  const size_t from_log = m.log.size();
  const size_t from_console = guest().console_size();
  const auto t0 = Clock::now();
  // Delayed: the reply to this command must leave the guest before it panics.
  auto r = guest().run("(sleep 1; insmod /stackend.ko cpu=1 mode=schedule) </dev/null >/dev/null 2>&1 &", 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto panic = m.log.wait(
      [](const Finding& x) {
        return x.kind == FindingKind::kGuestPanic &&
               std::any_of(x.evidence.begin(), x.evidence.end(),
                           [](const diagnosis::Evidence& e) { return e.stack_overflow.has_value(); });
      },
      90s, from_log);
  auto overflow = m.log.wait(
      [](const Finding& x) { return x.kind == FindingKind::kGuestStackOverflow && has_cpus(x, {1}); }, 10s, from_log);
  std::cout << "findings:\n" << m.log.dump(from_log) << std::flush;
  const std::string console = guest().console(from_console);
  ASSERT_NE(console.find("corrupted stack end detected inside scheduler"), std::string::npos)
      << "the guest did not panic in the scheduler; console:\n" << console;
  std::smatch sm;
  ASSERT_TRUE(std::regex_search(console, sm, std::regex("stallmon-stackend: STACK_END_MAGIC overwritten on CPU1 by pid ([0-9]+)")));
  const std::string pid = sm[1].str();
  ASSERT_TRUE(panic) << "no GUEST_PANIC naming the stack overflow";
  const Finding& f = panic->event.finding;
  std::cout << "GUEST_PANIC naming the stack overflow " << seconds(panic->at - t0)
            << " s after the command (1 s of it a sleep in the guest); GUEST_STACK_OVERFLOW "
            << (overflow ? std::to_string(seconds(overflow->at - t0)) + " s" : std::string("not seen")) << std::endl;
  EXPECT_NE(f.summary.find("corrupted stack end detected inside scheduler\". A kernel stack overflow on CPU1 (stackend/1, pid " + pid + ")"),
            std::string::npos)
      << f.summary;
  for (const auto& e : f.evidence) {
    if (!e.stack_overflow) continue;
    EXPECT_EQ(e.stack_overflow->cpu, 1);
    EXPECT_EQ(std::to_string(e.stack_overflow->pid.value_or(-1)), pid);
    EXPECT_EQ(e.stack_overflow->comm, "stackend/1");
  }
  ASSERT_TRUE(overflow) << "no GUEST_STACK_OVERFLOW on CPU1 read from the panicked guest's memory";
  EXPECT_EQ(overflow->event.finding.evidence.at(0).facts.at("pid"), pid);
  m.print_stats();
}

// ---------------------------------------------------------------------------------------------
// Issue 12 item 4: `echo c > /proc/sysrq-trigger` twice in one domain, the guest rebooting
// between (libvirt <on_crash>restart</on_crash> resets it as soon as pvpanic reports the panic;
// panic=5 resets it anyway): exactly two GUEST_PANIC findings, each resolved at its reboot.
// On main a panic gave two findings (a snapshot failing for a moment ended it).
TEST_F(Scenario, SysrqCrashTwiceWithARebootBetweenIsTwoPanics) {
  tb::GuestOptions o;
  o.tag = "dx-panic2";
  o.scenario = "sleepers";
  o.panic = 5;
  o.on_crash = "restart";
  o.on_reboot = "restart";
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  const size_t from_log = m.log.size();
  // Panic findings so far: distinct ids, and how many of them resolved.
  auto panics = [&] {
    std::set<std::string> ids, resolved;
    m.log.count_if([&](const Finding& f) {
      if (f.kind != FindingKind::kGuestPanic) return false;
      ids.insert(f.id);
      if (!f.active) resolved.insert(f.id);
      return true;
    });
    return std::pair<size_t, size_t>{ids.size(), resolved.size()};
  };
  for (size_t round = 1; round <= 2; ++round) {
    const size_t from_console = guest().console_size();
    const auto t0 = Clock::now();
    auto r = guest().run("(sleep 1; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &", 60s);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto panicked = guest().wait_console(std::regex("Kernel panic - not syncing"), 60s, from_console);
    ASSERT_TRUE(panicked) << "round " << round << ": no panic on the console:\n" << guest().console(from_console);
    auto ready = guest().wait_console(std::regex("STALLMON-READY"), 180s, from_console);
    ASSERT_TRUE(ready) << "round " << round << ": the guest did not boot again:\n" << guest().console(from_console);
    const auto t_ready = Clock::now();
    while (Clock::now() < t_ready + 60s && panics().second < round) std::this_thread::sleep_for(200ms);
    // Whether the daemon side found the new boot's kernel again is agent/core's (printed, not
    // asserted here: the panics are counted from memory or from libvirt's events alike).
    auto h = m.monitor().wait_introspection(guest().name(), 30s);
    std::cout << "round " << round << ": guest ready again " << seconds(t_ready - t0) << " s after the trigger; "
              << panics().first << " panic finding(s), " << panics().second << " resolved; introspection: "
              << (h.ok() ? std::string(core::to_string(h->state)) + (h->error.empty() ? "" : " (" + h->error + ")")
                         : h.error().to_string())
              << std::endl;
    EXPECT_EQ(panics(), (std::pair<size_t, size_t>{round, round})) << m.log.dump(from_log);
  }
  std::this_thread::sleep_for(5s);
  std::cout << "findings:\n" << m.log.dump(from_log) << std::flush;
  EXPECT_EQ(panics(), (std::pair<size_t, size_t>{2, 2})) << "exactly two GUEST_PANIC findings, both resolved";
  m.print_stats();
}

// ---------------------------------------------------------------------------------------------
// echo c > /proc/sysrq-trigger in a guest that does not reboot on panic.
TEST_F(Scenario, SysrqCrashIsAGuestPanicWithTheConsoleTail) {  // ...and its panic text
  ASSERT_TRUE(boot(kept_after_panic("dx-panic")));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));

  const size_t from_log = m.log.size();
  const auto t0 = Clock::now();
  auto r = guest().run("(sleep 1; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &", 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto panic = m.log.wait(
      [](const Finding& x) {
        if (x.kind != FindingKind::kGuestPanic) return false;
        // Wait for the version that carries the oops/panic text (issue 12 item 4).
        return std::any_of(x.evidence.begin(), x.evidence.end(),
                           [](const diagnosis::Evidence& e) { return e.panic_text.has_value(); });
      },
      60s, from_log);
  std::cout << "findings:\n" << m.log.dump(from_log) << std::flush;
  ASSERT_TRUE(panic) << "no GUEST_PANIC with its oops/panic text";
  std::cout << "GUEST_PANIC " << seconds(panic->at - t0) << " s after the trigger (1 s delay in the guest)"
            << std::endl;
  EXPECT_NE(panic->event.finding.summary.find("\"Kernel panic - not syncing: sysrq triggered crash\""),
            std::string::npos)
      << panic->event.finding.summary;
  // The panic text comes from the guest's printk buffer: each line is on its serial console too.
  // (Not every record of the buffer is: the tail before the panic may hold pr_debug records
  // below the console loglevel, e.g. "  with environment:" from boot, so only the panic's own
  // lines are compared.) stallmon reads the buffer in guest memory, where the text is whole the
  // moment it is written; the console gets it at the serial port's pace: wait (the guest's own
  // progress, not stallmon's) until its last line is there too.
  std::string last_line;
  for (const auto& e : panic->event.finding.evidence) {
    if (!e.panic_text) continue;
    std::istringstream in(e.text);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) last_line = line.substr(0, 60);
  }
  guest().wait_console_until([&](const std::string& c) { return c.find(last_line) != std::string::npos; }, 20s);
  const std::string console = guest().console();
  size_t lines = 0;
  for (const auto& e : panic->event.finding.evidence) {
    if (!e.panic_text) continue;
    std::istringstream in(e.text);
    std::string line;
    std::getline(in, line);  // "oops/panic text:"
    while (std::getline(in, line)) {
      ++lines;
      const std::string probe = line.substr(0, 60);
      EXPECT_NE(console.find(probe), std::string::npos) << "not on the console: " << line;
    }
  }
  EXPECT_GE(lines, 5u);
  // The longer tail of inspect() reaches back to the panic message itself.
  auto ins = m.monitor().inspect(guest().name(), 5000ms);
  ASSERT_TRUE(ins.ok()) << ins.error().to_string();
  EXPECT_EQ(ins->snapshot.panic_cpu, panic->event.finding.cpus.empty() ? -2 : panic->event.finding.cpus[0]);
  bool sysrq = false;
  for (const auto& rec : ins->snapshot.printk) sysrq = sysrq || rec.text.find("sysrq triggered crash") != std::string::npos;
  EXPECT_TRUE(sysrq) << "the panic message is not in the printk tail of inspect()";
  // Issue 12 item 1: the panicking CPU's kernel trace (or why there is none) joins the evidence.
  ASSERT_FALSE(panic->event.finding.cpus.empty());
  const int pcpu = panic->event.finding.cpus[0];
  auto traced = m.log.wait(
      [pcpu](const Finding& x) {
        if (x.kind != FindingKind::kGuestPanic) return false;
        for (const auto& e : x.evidence)
          if (e.cpu == pcpu && e.kernel_trace)
            return true;
        return false;
      },
      10s, from_log);
  ASSERT_TRUE(traced) << "no trace link for CPU" << pcpu << ":\n" << m.log.dump(from_log);
  for (const auto& e : traced->event.finding.evidence)
    if (e.cpu && e.kernel_trace)
      std::cout << "panic CPU trace: " << e.text << std::endl;
  m.print_stats();
}

// ---------------------------------------------------------------------------------------------
// A healthy guest with every vCPU busy: nothing to report, for ten minutes.
TEST_F(Scenario, HealthyBusyGuestHasNoFindingAtAll) {
  int secs = 600;
  if (const char* e = std::getenv("STALLMON_HEALTHY_SECONDS")) secs = std::max(1, std::atoi(e));
  // CPU load on every vCPU, TLB-shootdown IPIs to every CPU (ipiload tlb, no kernel text
  // patched), remote wakeups and sleepers, at the kernel's default watchdog_thresh.
  tb::GuestOptions o;
  o.tag = "dx-healthy";
  o.scenario = "ipi,wakeups,sleepers";
  o.watchdog_thresh = std::nullopt;
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  const size_t from_console = guest().console_size();
  auto r = guest().run("tb-load start", 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;

  // How much of the host other work used meanwhile: the guest can only be judged healthy on a
  // host that can run it.
  const uint64_t busy0 = host_busy_ticks(), qemu0 = process_ticks(guest().qemu_pid()),
                 self0 = process_ticks(getpid());
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::seconds(secs);
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::min<Clock::duration>(30s, end - Clock::now()));
    std::cout << "healthy guest: " << static_cast<int>(seconds(Clock::now() - t0)) << " s, "
              << m.log.size() << " finding events" << std::endl;
  }
  const double capacity = seconds(Clock::now() - t0) * static_cast<double>(sysconf(_SC_CLK_TCK)) *
                          static_cast<double>(sysconf(_SC_NPROCESSORS_ONLN));
  const double others = static_cast<double>(host_busy_ticks() - busy0) -
                        static_cast<double>(process_ticks(guest().qemu_pid()) - qemu0) -
                        static_cast<double>(process_ticks(getpid()) - self0);
  const double others_fraction = std::max(0.0, others / capacity);
  std::cout << "host CPU used by other work during the run: " << others_fraction * 100 << " % (load average "
            << tb::read_text("/proc/loadavg").substr(0, 14) << ")" << std::endl;
  auto d = m.monitor().domain(guest().name());
  ASSERT_TRUE(d.ok());
  for (const auto& v : d->vcpus) {
    std::cout << "vCPU " << v.index << ": run " << v.thread.signals.run_fraction << ", steal "
              << v.thread.signals.steal_fraction << std::endl;
  }
  // Whether the guest's own watchdog spoke: a finding matched by its report is no false positive.
  const std::string console = guest().console(from_console);
  if (auto at = console.find("soft lockup"); at != std::string::npos) {
    std::cout << "the guest itself reported: " << console.substr(at > 40 ? at - 40 : 0, 160) << std::endl;
  } else {
    std::cout << "the guest reported no soft lockup" << std::endl;
  }
  // Zero findings, except VCPU_HOST_STARVED whose own evidence shows the host denying that vCPU
  // the CPU (steal or throttled time at or above starved_fraction): a host busy with other work
  // really starves the guest, and saying so is the truth, not a false positive.
  const double threshold = core::MonitorConfig{}.diagnosis.starved_fraction * 100.0;
  const auto starved_with_evidence = [threshold](const Finding& f) {
    if (f.kind != FindingKind::kVcpuHostStarved) return false;
    for (const auto& e : f.evidence) {
      for (const char* key : {"steal_fraction", "throttled_fraction"}) {
        auto it = e.facts.find(key);
        if (it != e.facts.end() && std::atof(it->second.c_str()) >= threshold) return true;
      }
    }
    return false;
  };
  std::cout << "VCPU_HOST_STARVED events with steal/throttle evidence >= " << threshold
            << " %: " << m.log.count_if(starved_with_evidence) << std::endl;
  EXPECT_EQ(m.log.count_if([&](const Finding& f) { return !starved_with_evidence(f); }), 0u)
      << "a healthy busy guest raised findings:\n" << m.log.dump();
  EXPECT_TRUE(d->summary.introspection.ok());
  EXPECT_GE(d->summary.introspection.snapshots, static_cast<uint64_t>(secs) * 9 / 10);
  (void)guest().run("tb-load stop", 60s);
  m.print_stats();
}


// ---------------------------------------------------------------------------------------------
// Issue 12 item 2: a spinlock held forever with interrupts off (spinhold.ko: CPU1 takes it with
// spin_lock_irq and spins), contended by CPU2 (spin_lock_irqsave: interrupts off too, spinning
// in the lock's slow path); insmod on CPU3 then waits forever for both to take its TLB-flush
// IPI. Both CPUs run with interrupts off, and both are the target of a csd wait: without the
// lock wait each would be a root. Asserted: CPU2 shown spinning on the lock (its trace starts in
// a spinlock function, the evidence names CPU1 as the holder) in a finding that is a symptom in
// an incident rooted at CPU1, before the guest's own first report (a soft lockup on CPU3, or an
// RCU stall), within 25 s of the contention; then no root of CPU2's own stays active.
// watchdog_thresh 10: the holder is inferred once the waiter's watchdog touch is 2 x (period 4 s
// + 2 s) old, well before the guest's 20-s soft-lockup limit.
void Scenario::spinlock_held_with_irqs_off(const std::string& tag, const std::string& kernel_package) {
  tb::GuestOptions o;
  o.tag = tag;
  o.scenario = "sleepers";
  o.watchdog_thresh = 10;
  o.kernel_package = kernel_package;
  ASSERT_TRUE(boot(o));
  Monitored m(guest());
  ASSERT_TRUE(m.ready(120s));
  std::this_thread::sleep_for(2s);

  const size_t from_log = m.log.size();
  const size_t from_console = guest().console_size();
  FirstSeen contend = console_watch(
      guest(), std::regex("stallmon-spinhold: CPU2 contends for the lock held by CPU1"), from_console);
  FirstSeen report = console_watch(
      guest(), std::regex("soft lockup - CPU#[0-9]+ stuck|rcu: INFO: .* detected stall|self-detected stall"),
      from_console);
  // Everything the control channel needs stays on CPUs 0 and 3 (mask 9): CPUs 1 and 2 are lost.
  auto r = insmod_off_cpus(guest(), "9", "/spinhold.ko holder_cpu=1 waiter_cpu=2");
  ASSERT_EQ(r.exit_code, 0) << r.err;

  // A root that stands for CPU1: its per-CPU finding, or the IPI stall rooted at it.
  auto roots_at = [](const Finding& x, int cpu) {
    return x.is_incident_root() && (has_cpus(x, {cpu}) || roots_of(x) == std::to_string(cpu));
  };
  auto names_holder = [](const Finding& x) {
    return std::any_of(x.evidence.begin(), x.evidence.end(), [](const diagnosis::Evidence& e) {
      return e.lock_wait && e.lock_wait->waiter_cpu == 2 && e.lock_wait->holder_cpu == 1;
    });
  };
  // CPU2's own finding, a symptom in an incident rooted at CPU1 (ids are domain/KIND/key/seq:
  // CPU1's own finding, or the IPI stall rooted at it), its trace in a spinlock function, the
  // holder named.
  auto waiter_shown = [&](const Finding& x) {
    if (!has_cpus(x, {2}) || x.is_incident_root()) return false;
    if (x.incident_id.find("/cpu1/") == std::string::npos && x.incident_id.find("/root=cpu1/") == std::string::npos)
      return false;
    const auto frames = trace_frames(x, 2);
    return !frames.empty() && function_of(frames.front()).find("spin_lock") != std::string::npos && names_holder(x);
  };
  auto waiter = m.log.wait(waiter_shown, 45s, from_log);
  (void)report.wait(waiter ? 1s : 30s);
  std::cout << "findings:\n" << m.log.dump(from_log) << std::flush;
  ASSERT_TRUE(contend.at()) << "no contention line on the console:\n" << guest().console(from_console);
  ASSERT_TRUE(waiter) << "CPU2 not shown spinning on CPU1's lock";
  const double to_waiter = seconds(waiter->at - *contend.at());
  std::cout << "host load average: " << tb::read_text("/proc/loadavg");
  std::cout << "DETECTION LATENCY (contention start -> ...): CPU2 shown waiting on CPU1's lock " << to_waiter
            << " s (" << to_string(waiter->event.finding.kind) << "); guest's own first report "
            << (report.at() ? std::to_string(seconds(*report.at() - *contend.at())) : std::string("none yet")) << " s"
            << std::endl;
  for (const auto& fr : trace_frames(waiter->event.finding, 2)) std::cout << "  CPU2 frame: " << fr << std::endl;
  RecordProperty("seconds_to_lock_waiter_edge", std::to_string(to_waiter));
  EXPECT_LE(to_waiter, 25.0);
  // Steady state (a root of CPU2's own, seen before the holder was inferred, is held 5 s after
  // its end): no guest finding is rooted at CPU2, CPU2's guest findings are symptoms of a root at
  // CPU1, and an IPI stall CPU2 is part of is rooted at CPU1. Host verdicts are the host's: a
  // loaded host (2 cores, several TCG guests) starves the spinning vCPUs, and VCPU_HOST_STARVED
  // with what it explains is then true (seen on both kernels at load 11-19).
  auto host_side = [](const Finding& f) {
    return f.kind == FindingKind::kVcpuHostStarved || f.kind == FindingKind::kVcpuHostBlocked ||
           f.kind == FindingKind::kVmWideStall || f.cause == Cause::kHostStarved || f.cause == Cause::kHostBlocked;
  };
  std::string why;
  const bool settled = tb::eventually(
      [&] {
        const std::vector<Finding> active = m.active();
        why.clear();
        for (const auto& f : active) {
          if (f.kind == FindingKind::kGuestIpiStall && std::find(f.cpus.begin(), f.cpus.end(), 2) != f.cpus.end() &&
              roots_of(f) != "1")
            why += "an IPI stall CPU2 is in is not rooted at CPU1: " + describe(f) + "\n";
          if (host_side(f)) continue;
          if (roots_at(f, 2)) why += "CPU2 is a root: " + describe(f) + "\n";
          if (!has_cpus(f, {2})) continue;
          auto root = std::find_if(active.begin(), active.end(), [&](const Finding& x) { return x.id == f.incident_id; });
          if (root == active.end() || !roots_at(*root, 1)) why += "not in CPU1's incident: " + describe(f) + "\n";
        }
        return why.empty();
      },
      20000ms);
  EXPECT_TRUE(settled) << why;
  for (const auto& f : m.active()) std::cout << "active at the end: " << describe(f).substr(0, 200) << std::endl;
  std::cout << "guest's own first report: "
            << (report.at() ? std::to_string(seconds(*report.at() - *contend.at())) + " s after the contention"
                            : std::string("none"))
            << std::endl;
  if (report.at()) {
    EXPECT_LT(waiter->at, *report.at()) << "stallmon showed the lock wait after the guest's own report";
  }
  m.print_stats();
}

TEST_F(Scenario, SpinlockHeldWithIrqsOffIsTheRootAndTheContenderItsSymptom) {
  spinlock_held_with_irqs_off("dx-spinlock", "");
}
// The same on Debian's 6.12 (the 6.4+ ORC format and module layout).
TEST_F(Scenario, SpinlockHeldWithIrqsOffIsTheRootAndTheContenderItsSymptom612) {
  spinlock_held_with_irqs_off("dx-spinlock612", kKernel612);
}

}  // namespace
}  // namespace stallmon
