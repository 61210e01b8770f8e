// SPDX-License-Identifier: Apache-2.0
// Full snapshot latency (runqueues, csd queues and cfd targets, watchdogs, steal; printk off
// unless the name says so), and the cost of each additional CPU.
//   snapshot_bench                                   synthetic kernels only
//   snapshot_bench --qemu-pid PID --ranges FILE      + live qemu (process_vm_readv)
//   snapshot_bench --core FILE                       + in-memory image of an ELF core
// The real-guest variants take `max_cpus` 1..nr_cpu_ids as their argument: the slope is the
// per-CPU cost on a real kernel; the synthetic one scales to 64 CPUs.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "stallmon/introspect/kernel.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/introspect/snapshot_kernel_access.h"
#include "orc_fixture.h"
#include "synthetic_kernel.h"

using namespace stallmon::introspect;

namespace {

pid_t g_pid = 0;
std::string g_ranges, g_core;

void BM_SnapshotSynthetic(benchmark::State& state) {
  const uint32_t n = static_cast<uint32_t>(state.range(0));
  testing::SyntheticKernel k(n, testing::SyntheticKernel::Layout::kLinux61);
  uint64_t f = k.func("do_sync_core");
  for (uint32_t c = 0; c < n; ++c) {
    uint64_t t = k.task(100 + static_cast<int32_t>(c), "worker");
    k.mem.put<uint32_t>(t + k.off("task_struct", "wake_entry.u_flags"), 0x30);
    k.set_queue(c, {k.csd_node(k.csd(0x11, f)), k.task_node(t)});
  }
  k.set_cfd_mask(0, {});
  SnapshotOptions o;
  o.read_printk = false;
  auto r = SnapshotReader::create(k, o);
  if (!r) {
    state.SkipWithError(r.error().to_string().c_str());
    return;
  }
  for (auto _ : state) {
    GuestSnapshot s = (*r)->take();
    benchmark::DoNotOptimize(s);
  }
  state.counters["cpus"] = n;
}
BENCHMARK(BM_SnapshotSynthetic)->RangeMultiplier(2)->Range(1, 64)->Unit(benchmark::kMicrosecond);

// One task's backtrace over a 16 KiB stack (the ORC fixture's chain behind an interrupt frame),
// against reading that stack alone: the scan's cost on top of the read it needs anyway.
// Arg 0: the interrupt frame is there (found by the pt_regs scan). Arg 1: it is not, and the
// scan goes on to the return-address chains (the common case of a task that was not interrupted).
void BM_BacktraceOneTask(benchmark::State& state) {
  testing::SyntheticKernel k(2, testing::SyntheticKernel::Layout::kLinux61);
  testing::OrcStack g{k};
  g.install_orc(true);
  if (state.range(0) == 1) g.clear_pt_regs();
  auto r = BacktraceReader::create(k);
  if (!r) {
    state.SkipWithError(r.error().to_string().c_str());
    return;
  }
  for (auto _ : state) {
    auto bt = (*r)->backtrace_task(g.task);
    benchmark::DoNotOptimize(bt);
  }
}
BENCHMARK(BM_BacktraceOneTask)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

void BM_StackReadOnly(benchmark::State& state) {
  testing::SyntheticKernel k(2, testing::SyntheticKernel::Layout::kLinux61);
  testing::OrcStack g{k};
  std::vector<uint8_t> stack(testing::OrcStack::kStackSize);
  for (auto _ : state) {
    auto r = k.read(testing::OrcStack::kStack, stack.data(), stack.size());
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(stack.data());
  }
}
BENCHMARK(BM_StackReadOnly)->Unit(benchmark::kMicrosecond);

struct Real {
  std::shared_ptr<PhysicalMemory> mem;
  std::unique_ptr<Kernel> kernel;
  std::unique_ptr<KernelAccess> access;
};

std::unique_ptr<Real> open_real(bool live, std::string& err) {
  auto r = std::make_unique<Real>();
  if (live) {
    std::ifstream f(g_ranges);
    std::vector<RamRange> ranges;
    std::string line;
    while (std::getline(f, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream ls(line);
      std::string a, b, c, name;
      ls >> a >> b >> c >> name;
      ranges.push_back(RamRange{std::stoull(a, nullptr, 0), std::stoull(b, nullptr, 0), std::stoull(c, nullptr, 0), name});
    }
    auto m = QemuProcessMemory::create(g_pid, ranges);
    if (!m) {
      err = m.error().to_string();
      return nullptr;
    }
    r->mem = std::move(m).value();
  } else {
    auto core = ElfCoreMemory::open(g_core);
    if (!core) {
      err = core.error().to_string();
      return nullptr;
    }
    // Copy the whole image into memory: the "in-memory image" case (no pread per read).
    std::vector<RawImageMemory::Segment> segs;
    for (const PhysRange& pr : (*core)->ranges()) {
      RawImageMemory::Segment s;
      s.gpa = pr.gpa;
      s.bytes.resize(pr.size);
      if (auto rd = (*core)->read(pr.gpa, s.bytes.data(), pr.size); !rd) {
        err = rd.error().to_string();
        return nullptr;
      }
      segs.push_back(std::move(s));
    }
    auto raw = RawImageMemory::from_segments(std::move(segs));
    if (!raw) {
      err = raw.error().to_string();
      return nullptr;
    }
    r->mem = std::move(raw).value();
  }
  // An in-memory copy has no ELF note: discovery scans its RAM for VMCOREINFO, as live.
  auto k = Kernel::discover(r->mem);
  if (!k) {
    err = k.error().to_string();
    return nullptr;
  }
  r->kernel = std::move(k).value();
  r->access = make_kernel_access(*r->kernel);
  return r;
}

Real* real(bool live, std::string& err) {
  static std::unique_ptr<Real> l, i;
  static std::string lerr, ierr;
  auto& slot = live ? l : i;
  auto& e = live ? lerr : ierr;
  if (!slot && e.empty()) {
    slot = open_real(live, e);
    if (!slot && e.empty()) e = "failed";
  }
  err = e;
  return slot.get();
}

void run_real(benchmark::State& state, bool live, bool printk) {
  if (live ? (g_pid == 0 || g_ranges.empty()) : g_core.empty()) {
    state.SkipWithError(live ? "needs --qemu-pid and --ranges" : "needs --core");
    return;
  }
  std::string err;
  Real* r = real(live, err);
  if (!r) {
    state.SkipWithError(err.c_str());
    return;
  }
  SnapshotOptions o;
  o.max_cpus = static_cast<uint32_t>(state.range(0));
  o.read_printk = printk;
  o.printk_records = 50;
  auto reader = SnapshotReader::create(*r->access, o);
  if (!reader) {
    state.SkipWithError(reader.error().to_string().c_str());
    return;
  }
  auto* q = dynamic_cast<QemuProcessMemory*>(r->mem.get());
  uint64_t sc0 = q ? q->syscall_count() : 0;
  size_t errors = 0;
  // Per-snapshot wall times: on a shared, oversubscribed machine the mean mostly measures the
  // other tenants; the median and the minimum say more about the snapshot itself.
  std::vector<double> us;
  us.reserve(1 << 16);
  for (auto _ : state) {
    GuestSnapshot s = (*reader)->take();
    errors += s.errors.size();
    if (us.size() < us.capacity()) us.push_back(static_cast<double>(s.duration_ns) / 1000.0);
    benchmark::DoNotOptimize(s);
  }
  if (!us.empty()) {
    std::sort(us.begin(), us.end());
    state.counters["min_us"] = us.front();
    state.counters["p50_us"] = us[us.size() / 2];
    state.counters["p99_us"] = us[us.size() * 99 / 100];
  }
  state.counters["cpus"] = static_cast<double>(o.max_cpus);
  state.counters["errors/snap"] = static_cast<double>(errors) / static_cast<double>(state.iterations());
  if (q)
    state.counters["syscalls/snap"] =
        static_cast<double>(q->syscall_count() - sc0) / static_cast<double>(state.iterations());
}

void BM_SnapshotLive(benchmark::State& s) { run_real(s, true, false); }
void BM_SnapshotLiveWithPrintk50(benchmark::State& s) { run_real(s, true, true); }
void BM_SnapshotImage(benchmark::State& s) { run_real(s, false, false); }
void BM_SnapshotImageWithPrintk50(benchmark::State& s) { run_real(s, false, true); }
BENCHMARK(BM_SnapshotLive)->DenseRange(1, 4)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SnapshotLiveWithPrintk50)->Arg(4)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SnapshotImage)->DenseRange(1, 4)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SnapshotImageWithPrintk50)->Arg(4)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](std::string& out) {
      if (i + 1 < argc) out = argv[++i];
    };
    std::string v;
    if (a == "--qemu-pid") {
      val(v);
      g_pid = static_cast<pid_t>(std::atoi(v.c_str()));
    } else if (a == "--ranges") {
      val(g_ranges);
    } else if (a == "--core") {
      val(g_core);
    } else {
      rest.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
