// SPDX-License-Identifier: Apache-2.0
// Side by side on the same running guests: stallmon's host sampler versus libvirt's bulk stats
// call with VIR_DOMAIN_STATS_VCPU (what libvirt exporters call every scrape).
//
//   host_vs_libvirt_bench [-c URI] [-n LIBVIRT_CALLS] [-m SAMPLER_TICKS] [-p TICK_MS] DOMAIN...
//
// Sampler ticks and libvirt calls are paced TICK_MS apart (default 20; 0 = back to back): at the
// daemon's 10 Hz caches are cold at every tick and threads make progress between samples. Only
// CPU time of the calls themselves is compared, so the pauses do not count.
//
// Only the named domains are touched (a shared libvirtd may run other people's guests): the
// libvirt side is virDomainListGetStats() on exactly those domains, the same driver entry point
// as virConnectGetAllDomainStats() restricted to them. With -a it calls
// virConnectGetAllDomainStats() itself, on every active domain of the connection (per-vCPU cost
// is then divided by the vCPUs it reported); use that only on a host that is yours. Host CPU counts both sides of libvirt's
// call: this client and libvirtd (from /proc/<libvirtd>/stat). qemu pids come from libvirt's pid
// files, vCPU threads from their names ("CPU n/KVM", "CPU n/TCG"): the monitor is not used.
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "stallmon/host/proc_parse.h"
#include "stallmon/host/sampler.h"

namespace {

using stallmon::host::MonotonicClock;
using stallmon::host::ProcessSampler;
using stallmon::host::RealHostFs;
using stallmon::host::SamplerOptions;

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// utime + stime of a whole process, in ns (clock-tick resolution); -1 when unreadable.
int64_t process_cpu_ns(pid_t pid) {
  if (pid <= 0) return -1;
  auto st = stallmon::host::parse_task_stat(slurp("/proc/" + std::to_string(pid) + "/stat"));
  if (!st.ok()) return -1;
  return static_cast<int64_t>(st->utime_ticks + st->stime_ticks) * (1'000'000'000 / sysconf(_SC_CLK_TCK));
}

int64_t wall_ns() { return MonotonicClock().now_ns(); }

// This thread's CPU time (user + system), ns: brackets the sampling alone, not the pauses.
int64_t thread_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1'000'000'000LL + ts.tv_nsec;
}

std::map<int32_t, int32_t> vcpu_threads_by_name(pid_t pid) {
  std::map<int32_t, int32_t> out;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string comm = slurp(dir + "/" + e->d_name + "/comm");
    int index = -1;
    char kind[8] = {};
    if (std::sscanf(comm.c_str(), "CPU %d/%7s", &index, kind) == 2 && index >= 0) {
      out[index] = std::atoi(e->d_name);
    }
  }
  closedir(d);
  return out;
}

struct Cost {
  double wall_ns = 0, client_cpu_ns = 0, daemon_cpu_ns = 0;
};

void usage() {
  std::fprintf(stderr, "usage: host_vs_libvirt_bench [-a] [-c URI] [-n LIBVIRT_CALLS] [-m TICKS] [-p TICK_MS] "
               "DOMAIN...\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string uri = "qemu:///system";
  int libvirt_calls = 500, ticks = 250, tick_ms = 20;
  bool all_domains = false;
  int opt;
  while ((opt = getopt(argc, argv, "ac:n:m:p:h")) != -1) {
    switch (opt) {
      case 'a': all_domains = true; break;
      case 'p': tick_ms = std::atoi(optarg); break;
      case 'c': uri = optarg; break;
      case 'n': libvirt_calls = std::atoi(optarg); break;
      case 'm': ticks = std::atoi(optarg); break;
      default: usage(); return 2;
    }
  }
  if (optind >= argc || libvirt_calls <= 0 || ticks <= 0) {
    usage();
    return 2;
  }
  virConnectPtr conn = virConnectOpen(uri.c_str());
  if (!conn) {
    std::fprintf(stderr, "cannot connect to %s\n", uri.c_str());
    return 1;
  }
  std::vector<virDomainPtr> doms;
  std::vector<pid_t> pids;
  std::vector<std::map<int32_t, int32_t>> vcpus;
  size_t total_vcpus = 0;
  for (int i = optind; i < argc; ++i) {
    virDomainPtr d = virDomainLookupByName(conn, argv[i]);
    if (!d || virDomainIsActive(d) != 1) {
      std::fprintf(stderr, "%s: not a running domain\n", argv[i]);
      return 1;
    }
    pid_t pid = std::atoi(slurp(std::string("/run/libvirt/qemu/") + argv[i] + ".pid").c_str());
    auto v = vcpu_threads_by_name(pid);
    if (pid <= 0 || v.empty()) {
      std::fprintf(stderr, "%s: no qemu pid or vCPU threads found\n", argv[i]);
      return 1;
    }
    doms.push_back(d);
    pids.push_back(pid);
    total_vcpus += v.size();
    vcpus.push_back(std::move(v));
  }
  doms.push_back(nullptr);  // virDomainListGetStats takes a NULL-terminated array
  pid_t libvirtd = std::atoi(slurp("/run/libvirtd.pid").c_str());

  // ---- libvirt ----
  size_t libvirt_vcpus = 0;  // vCPUs the stats call reported (vcpu.current)
  auto libvirt_call = [&]() -> size_t {
    virDomainStatsRecordPtr* recs = nullptr;
    int n = all_domains ? virConnectGetAllDomainStats(conn, VIR_DOMAIN_STATS_VCPU, &recs,
                                                      VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
                        : virDomainListGetStats(doms.data(), VIR_DOMAIN_STATS_VCPU, &recs, 0);
    if (n < 0) {
      virErrorPtr e = virGetLastError();
      std::fprintf(stderr, "libvirt stats call failed: %s\n", e ? e->message : "?");
      std::exit(1);
    }
    size_t params = 0;
    libvirt_vcpus = 0;
    for (int i = 0; i < n; ++i) {
      params += static_cast<size_t>(recs[i]->nparams);
      unsigned int cur = 0;
      if (virTypedParamsGetUInt(recs[i]->params, recs[i]->nparams, "vcpu.current", &cur) == 1) {
        libvirt_vcpus += cur;
      }
    }
    virDomainStatsRecordListFree(recs);
    return params;
  };
  size_t params = libvirt_call();  // warm up (and check it works)
  if (libvirt_vcpus == 0) libvirt_vcpus = total_vcpus;
  Cost lv;
  {
    // libvirtd's CPU is read from /proc at clock-tick resolution over the whole run; pauses cost
    // it nothing (it sleeps in poll), so pacing does not distort it.
    int64_t wall = 0, cpu = 0, d0 = process_cpu_ns(libvirtd);
    for (int i = 0; i < libvirt_calls; ++i) {
      int64_t w0 = wall_ns(), c0 = thread_cpu_ns();
      libvirt_call();
      cpu += thread_cpu_ns() - c0;
      wall += wall_ns() - w0;
      if (tick_ms > 0) usleep(static_cast<useconds_t>(tick_ms) * 1000);
    }
    int64_t d1 = process_cpu_ns(libvirtd);
    lv.wall_ns = double(wall) / libvirt_calls;
    lv.client_cpu_ns = double(cpu) / libvirt_calls;
    lv.daemon_cpu_ns = d0 >= 0 && d1 >= 0 ? double(d1 - d0) / libvirt_calls : 0;
  }

  // ---- stallmon ----
  RealHostFs fs("/");
  MonotonicClock clock;
  auto measure = [&](bool all_threads, bool skip_stat, size_t* threads_per_tick) {
    SamplerOptions o;
    o.sample_other_threads = all_threads;
    o.skip_stat_while_running = skip_stat;
    o.vcpu_history = 64;
    std::vector<std::unique_ptr<ProcessSampler>> samplers;
    for (size_t i = 0; i < pids.size(); ++i) {
      samplers.push_back(std::make_unique<ProcessSampler>(fs, clock, pids[i], vcpus[i], o));
      (void)samplers.back()->sample_once();
    }
    *threads_per_tick = 0;
    for (auto& s : samplers) *threads_per_tick += s->vcpus().size() + s->other_threads().size();
    int64_t wall = 0, cpu = 0;
    for (int t = 0; t < ticks; ++t) {
      int64_t w0 = wall_ns(), c0 = thread_cpu_ns();
      for (auto& s : samplers) (void)s->sample_once();
      cpu += thread_cpu_ns() - c0;
      wall += wall_ns() - w0;
      if (tick_ms > 0) usleep(static_cast<useconds_t>(tick_ms) * 1000);
    }
    Cost c;
    c.wall_ns = double(wall) / ticks;
    c.client_cpu_ns = double(cpu) / ticks;
    return c;
  };
  size_t vcpu_threads = 0, all_threads = 0;
  Cost sv = measure(false, false, &vcpu_threads);
  Cost sk = measure(false, true, &vcpu_threads);
  Cost sa = measure(true, false, &all_threads);

  double lv_cpu = lv.client_cpu_ns + lv.daemon_cpu_ns;
  std::printf("guests: %zu, vCPUs: %zu, libvirtd pid %d\n", pids.size(), total_vcpus, libvirtd);
  std::printf("libvirt %s(VCPU), %d calls, %zu typed params and %zu vCPUs per call:\n",
              all_domains ? "virConnectGetAllDomainStats" : "virDomainListGetStats", libvirt_calls,
              params, libvirt_vcpus);
  std::printf("  per call: wall %.1f us, host CPU %.1f us (client %.1f + libvirtd %.1f)\n",
              lv.wall_ns / 1e3, lv_cpu / 1e3, lv.client_cpu_ns / 1e3, lv.daemon_cpu_ns / 1e3);
  std::printf("  per vCPU: host CPU %.2f us\n", lv_cpu / libvirt_vcpus / 1e3);
  std::printf("stallmon ProcessSampler, vCPU threads only, %d ticks:\n", ticks);
  std::printf("  per tick: wall %.1f us, host CPU %.1f us; per vCPU sample: %.2f us\n",
              sv.wall_ns / 1e3, sv.client_cpu_ns / 1e3, sv.client_cpu_ns / vcpu_threads / 1e3);
  std::printf("stallmon ProcessSampler, vCPU threads only, skip_stat_while_running, %d ticks:\n",
              ticks);
  std::printf("  per tick: wall %.1f us, host CPU %.1f us; per vCPU sample: %.2f us\n",
              sk.wall_ns / 1e3, sk.client_cpu_ns / 1e3, sk.client_cpu_ns / vcpu_threads / 1e3);
  std::printf("stallmon ProcessSampler, all %zu qemu threads, %d ticks:\n", all_threads, ticks);
  std::printf("  per tick: wall %.1f us, host CPU %.1f us; per thread sample: %.2f us\n",
              sa.wall_ns / 1e3, sa.client_cpu_ns / 1e3, sa.client_cpu_ns / all_threads / 1e3);
  std::printf("ratio (libvirt host CPU per vCPU / stallmon host CPU per vCPU sample): %.1fx "
              "(skip_stat_while_running: %.1fx)\n",
              (lv_cpu / libvirt_vcpus) / (sv.client_cpu_ns / vcpu_threads),
              (lv_cpu / libvirt_vcpus) / (sk.client_cpu_ns / vcpu_threads));
  for (size_t i = 0; i + 1 < doms.size(); ++i) virDomainFree(doms[i]);
  virConnectClose(conn);
  return 0;
}
