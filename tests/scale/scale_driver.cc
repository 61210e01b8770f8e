// SPDX-License-Identifier: Apache-2.0
// Scale harness: runs a StallMonitor over N fake qemu processes (fake_qemu: threads named
// "CPU n/KVM" with a run/sleep pattern) and reports what the monitor costs and how fast it sees
// a frozen vCPU.
//
//   scale_driver FAKE_QEMU DOMAINS [VCPUS=16] [SECONDS=20] [FREEZES=3] [PERIOD_MS=100] [BUSY_US=50]
//
// Domains are fed to the monitor the way the libvirt watcher feeds them (DomainObserver
// on_domain_updated with pid, vCPU → tid from thread names), host-side only (introspection off:
// the fakes hold no guest kernel). Measured over SECONDS after a 3 s warm-up: the monitor
// process's CPU share (user + system of this process, whose only work is the monitor), RSS and
// thread count, tick latency p50/p99 from its own histogram (interpolated within buckets);
// then FREEZES times: vCPU 0 of domain 0 is blocked in the host kernel (D), dated by a 1 ms
// poller of its /proc stat, and the time until VCPU_HOST_BLOCKED is active is recorded.
// Prints one line per figure and a final machine-readable "RESULT" line.
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "stallmon/core/stall_monitor.h"
#include "stallmon/diagnosis/finding.h"
#include "stallmon/host/proc_parse.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Fake {
  pid_t pid = 0;
  FILE* out = nullptr;
  std::vector<stallmon::libvirt::VcpuThread> vcpus;
};

Fake spawn_fake(const std::string& exe, int vcpus, int period_ms, int busy_us) {
  int fds[2];
  if (pipe(fds) != 0) std::exit(1);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::string a1 = std::to_string(vcpus), a2 = std::to_string(period_ms),
              a3 = std::to_string(busy_us);
  char* argv[] = {const_cast<char*>(exe.c_str()), a1.data(), a2.data(), a3.data(), nullptr};
  Fake f;
  if (posix_spawn(&f.pid, exe.c_str(), &fa, nullptr, argv, environ) != 0) {
    std::perror("posix_spawn");
    std::exit(1);
  }
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  f.out = fdopen(fds[0], "r");
  return f;
}

// vCPU threads by name, as the libvirt watcher resolves them without a monitor.
void resolve_vcpus(Fake& f) {
  std::string dir = "/proc/" + std::to_string(f.pid) + "/task";
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string comm = slurp(dir + "/" + e->d_name + "/comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    int index = -1;
    if (std::sscanf(comm.c_str(), "CPU %d/KVM", &index) == 1) {
      f.vcpus.push_back({index, static_cast<pid_t>(std::atoi(e->d_name)), comm});
    }
  }
  closedir(d);
  std::sort(f.vcpus.begin(), f.vcpus.end(),
            [](const auto& a, const auto& b) { return a.index < b.index; });
}

double cpu_seconds() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
         static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

long status_field_kb(const char* key) {
  std::string s = slurp("/proc/self/status");
  size_t p = s.find(key);
  return p == std::string::npos ? -1 : std::atol(s.c_str() + p + std::strlen(key));
}

// Quantile of the observations between two snapshots of a cumulative histogram (counts[i] =
// observations <= bounds_s[i]), linear within the bucket; beyond the last bound: that bound.
double quantile(const stallmon::core::LatencyHistogram& a,
                const stallmon::core::LatencyHistogram& b, double q) {
  uint64_t total = b.count - a.count;
  if (total == 0) return 0;
  double want = q * static_cast<double>(total);
  uint64_t prev = 0;
  for (size_t i = 0; i < b.counts.size() && i < b.bounds_s.size(); ++i) {
    uint64_t cum = b.counts[i] - (i < a.counts.size() ? a.counts[i] : 0);
    if (static_cast<double>(cum) >= want) {
      double lo = i == 0 ? 0 : b.bounds_s[i - 1];
      uint64_t in = cum - prev;
      double frac = in ? (want - static_cast<double>(prev)) / static_cast<double>(in) : 0;
      return lo + frac * (b.bounds_s[i] - lo);
    }
    prev = cum;
  }
  return b.bounds_s.empty() ? 0 : b.bounds_s.back();
}

char thread_state(pid_t pid, pid_t tid) {
  auto st = stallmon::host::parse_task_stat(
      slurp("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat"));
  return st.ok() ? st->state : '?';
}

bool blocked_finding(stallmon::core::StallMonitor& m, const std::string& domain) {
  for (const auto& f : m.engine().active_findings(domain)) {
    if (f.kind == stallmon::diagnosis::FindingKind::kVcpuHostBlocked) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: scale_driver FAKE_QEMU DOMAINS [VCPUS=16] [SECONDS=20] [FREEZES=3] "
                 "[PERIOD_MS=100] [BUSY_US=50] [THREAD_STATS=proc|auto|bpf]\n");
    return 2;
  }
  const std::string exe = argv[1];
  const int domains = std::atoi(argv[2]);
  const int vcpus = argc > 3 ? std::atoi(argv[3]) : 16;
  const int seconds = argc > 4 ? std::atoi(argv[4]) : 20;
  const int freezes = argc > 5 ? std::atoi(argv[5]) : 3;
  const int period_ms = argc > 6 ? std::atoi(argv[6]) : 100;
  const int busy_us = argc > 7 ? std::atoi(argv[7]) : 50;
  // Where the monitor takes per-thread statistics from, as stallmond's host.thread_stats.
  const std::string thread_stats = argc > 8 ? argv[8] : "proc";
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, nullptr, _IOLBF, 0);

  std::vector<Fake> fakes;
  for (int i = 0; i < domains; ++i) fakes.push_back(spawn_fake(exe, vcpus, period_ms, busy_us));
  for (Fake& f : fakes) {
    char line[32];
    if (!std::fgets(line, sizeof line, f.out)) {
      std::fprintf(stderr, "fake qemu %d did not start\n", f.pid);
      return 1;
    }
    resolve_vcpus(f);
    if (static_cast<int>(f.vcpus.size()) != vcpus) {
      std::fprintf(stderr, "fake qemu %d: %zu vCPU threads\n", f.pid, f.vcpus.size());
      return 1;
    }
  }
  std::printf("started %d fake qemus x %d vCPUs\n", domains, vcpus);

  const long rss0 = status_field_kb("VmRSS:");
  {
    stallmon::core::MonitorConfig cfg;
    cfg.introspection = false;
    stallmon::core::MonitorDependencies deps;
    if (thread_stats != "proc") {
      deps.thread_stats = stallmon::host::choose_thread_stat_source();
      if (thread_stats == "bpf" && !deps.thread_stats.source) {
        std::fprintf(stderr, "no BPF source: %s\n", deps.thread_stats.reason.c_str());
        return 1;
      }
    }
    stallmon::core::StallMonitor monitor(cfg, std::move(deps));
    std::printf("thread stats: %s (%s)\n", monitor.stats().thread_stats_source.c_str(),
                monitor.stats().thread_stats_reason.c_str());
    for (int i = 0; i < domains; ++i) {
      stallmon::libvirt::DomainInfo d;
      char uuid[40];
      std::snprintf(uuid, sizeof uuid, "00000000-0000-4000-8000-%012x", i);
      d.uuid = uuid;
      d.name = "fake-" + std::to_string(i);
      d.id = i + 1;
      d.state = stallmon::libvirt::DomainRunState::kRunning;
      d.qemu_pid = fakes[static_cast<size_t>(i)].pid;
      d.pid_source = "scale harness";
      d.vcpus = fakes[static_cast<size_t>(i)].vcpus;
      d.vcpu_source = stallmon::libvirt::VcpuSource::kThreadNames;
      d.generation = 1;
      monitor.on_domain_updated(d);
      // SCALE_STAGGER_MS: domains appear that far apart (as a daemon finds them over time)
      // instead of all at once, so their first ticks fall at different phases of the period.
      if (const char* st = std::getenv("SCALE_STAGGER_MS")) std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(st)));
    }
    std::this_thread::sleep_for(3s);

    auto s0 = monitor.stats();
    double c0 = cpu_seconds();
    auto w0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(seconds));
    double c1 = cpu_seconds();
    auto w1 = Clock::now();
    auto s1 = monitor.stats();
    double wall = std::chrono::duration<double>(w1 - w0).count();
    double share = (c1 - c0) / wall;
    long rss = status_field_kb("VmRSS:");
    long threads = status_field_kb("Threads:");
    double p50 = quantile(s0.tick_latency, s1.tick_latency, 0.50);
    double p99 = quantile(s0.tick_latency, s1.tick_latency, 0.99);
    uint64_t ticks = s1.ticks - s0.ticks;
    uint64_t overruns = s1.overruns - s0.overruns;
    const double periods = wall / std::chrono::duration<double>(cfg.sample_interval).count();
    const double passes_per_period = static_cast<double>(s1.thread_stats_passes - s0.thread_stats_passes) / periods;
    std::printf("cpu share %.2f%% of a core over %.1f s (%.1f us per domain tick)\n",
                share * 100, wall, ticks ? (c1 - c0) / static_cast<double>(ticks) * 1e6 : 0);
    std::printf("rss %ld kB (before the monitor %ld kB), threads %ld\n", rss, rss0, threads);
    std::printf("ticks %llu (%.1f/s per domain), overruns %llu, tick p50 %.3f ms p99 %.3f ms\n",
                static_cast<unsigned long long>(ticks),
                static_cast<double>(ticks) / wall / domains, static_cast<unsigned long long>(overruns),
                p50 * 1e3, p99 * 1e3);
    std::printf("thread-stat passes %.2f per period, fallbacks to /proc %llu\n", passes_per_period,
                static_cast<unsigned long long>(s1.thread_stats_fallbacks - s0.thread_stats_fallbacks));

    std::vector<double> latencies;
    const Fake& f0 = fakes[0];
    for (int k = 0; k < freezes; ++k) {
      kill(f0.pid, SIGUSR1);
      auto deadline = Clock::now() + 5s;
      while (thread_state(f0.pid, f0.vcpus[0].tid) != 'D' && Clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
      }
      auto onset = Clock::now();
      while (!blocked_finding(monitor, "fake-0") && Clock::now() < onset + 10s) {
        std::this_thread::sleep_for(5ms);
      }
      double lat = std::chrono::duration<double>(Clock::now() - onset).count();
      latencies.push_back(lat);
      std::printf("freeze %d: VCPU_HOST_BLOCKED after %.3f s\n", k + 1, lat);
      kill(f0.pid, SIGUSR2);
      auto until = Clock::now() + 10s;
      while (blocked_finding(monitor, "fake-0") && Clock::now() < until) {
        std::this_thread::sleep_for(20ms);
      }
      std::this_thread::sleep_for(500ms);
    }
    std::sort(latencies.begin(), latencies.end());
    double worst = latencies.empty() ? 0 : latencies.back();
    double median = latencies.empty() ? 0 : latencies[latencies.size() / 2];
    std::printf(
        "RESULT domains=%d vcpus=%d cpu_share=%.4f rss_kb=%ld threads=%ld tick_p50_ms=%.3f "
        "tick_p99_ms=%.3f overruns=%llu detect_median_s=%.3f detect_max_s=%.3f thread_stats=%s "
        "passes_per_period=%.2f\n",
        domains, vcpus, share, rss, threads, p50 * 1e3, p99 * 1e3,
        static_cast<unsigned long long>(overruns), median, worst, monitor.stats().thread_stats_source.c_str(),
        passes_per_period);
    monitor.stop();
  }
  for (Fake& f : fakes) {
    kill(f.pid, SIGKILL);
    waitpid(f.pid, nullptr, 0);
    if (f.out) fclose(f.out);
  }
  return 0;
}
