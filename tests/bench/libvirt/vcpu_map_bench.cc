// SPDX-License-Identifier: Apache-2.0
// vCPU index -> host thread: QMP `query-cpus-fast` through virDomainQemuMonitorCommand (a libvirt
// RPC, a domain job and a monitor round trip) vs listing /proc/PID/task/*/comm.
//   libvirt_vcpu_map_bench [--benchmark_min_time=2]   (root; STALLMON_BENCH_DOMAIN=NAME optional)
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <iostream>

#include "stallmon/libvirt/domain_watcher.h"
#include "stallmon/libvirt/qemu_process.h"

namespace lv = stallmon::libvirt;
using namespace std::chrono_literals;

namespace {

struct Target {
  std::unique_ptr<lv::DomainWatcher> watcher;
  lv::DomainInfo domain;
  std::string error;
};

Target& target() {
  static Target t = [] {
    Target made;
    made.watcher = std::make_unique<lv::DomainWatcher>(lv::WatcherOptions{});
    if (auto r = made.watcher->start(); !r.ok()) {
      made.error = r.error().to_string();
      return made;
    }
    if (made.watcher->wait_synced(0, 10s) == 0) {
      made.error = "no domain list from libvirtd: " + made.watcher->connection().reason;
      return made;
    }
    made.watcher->wait_probes_idle(10s);
    const char* want = std::getenv("STALLMON_BENCH_DOMAIN");
    for (const auto& d : made.watcher->domains()) {
      if (d.qemu_pid > 0 && d.monitor.responsive && (!want || d.name == want)) {
        made.domain = d;
        break;
      }
    }
    if (made.domain.qemu_pid <= 0) made.error = "no running domain with a qemu pid (set STALLMON_BENCH_DOMAIN)";
    return made;
  }();
  return t;
}

void BM_VcpuMapViaQmp(benchmark::State& state) {
  auto& t = target();
  if (!t.error.empty()) {
    state.SkipWithError(t.error.c_str());
    return;
  }
  for (auto _ : state) {
    auto reply = t.watcher->qmp(t.domain.uuid, R"({"execute":"query-cpus-fast"})", 5s).wait();
    if (!reply.ok()) {
      state.SkipWithError(reply.error().message.c_str());
      return;
    }
    auto vcpus = lv::parse_query_cpus_fast(*reply);
    if (!vcpus.ok()) {
      state.SkipWithError(vcpus.error().message.c_str());
      return;
    }
    lv::fill_thread_names("/proc", t.domain.qemu_pid, *vcpus);
    benchmark::DoNotOptimize(vcpus);
  }
  state.SetLabel(t.domain.name + ", " + std::to_string(t.domain.vcpus.size()) + " vCPUs");
}
BENCHMARK(BM_VcpuMapViaQmp)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_VcpuMapViaProcNames(benchmark::State& state) {
  auto& t = target();
  if (!t.error.empty()) {
    state.SkipWithError(t.error.c_str());
    return;
  }
  for (auto _ : state) {
    auto vcpus = lv::vcpu_threads_from_proc("/proc", t.domain.qemu_pid);
    if (!vcpus.ok()) {
      state.SkipWithError(vcpus.error().message.c_str());
      return;
    }
    benchmark::DoNotOptimize(vcpus);
  }
  state.SetLabel(t.domain.name + ", " + std::to_string(t.domain.vcpus.size()) + " vCPUs");
}
BENCHMARK(BM_VcpuMapViaProcNames)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_ParseQueryCpusFast(benchmark::State& state) {
  std::string reply = R"({"return":[)";
  for (int i = 0; i < state.range(0); ++i) {
    if (i) reply += ",";
    reply += R"({"thread-id":)" + std::to_string(10000 + i) +
             R"(,"props":{"core-id":0,"thread-id":0,"node-id":0,"socket-id":)" + std::to_string(i) +
             R"(},"qom-path":"/machine/unattached/device[)" + std::to_string(i) + R"(]","cpu-index":)" +
             std::to_string(i) + R"(,"target":"x86_64"})";
  }
  reply += R"(],"id":"libvirt-1"})";
  for (auto _ : state) {
    auto v = lv::parse_query_cpus_fast(reply);
    benchmark::DoNotOptimize(v);
  }
}
BENCHMARK(BM_ParseQueryCpusFast)->Arg(4)->Arg(64)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
