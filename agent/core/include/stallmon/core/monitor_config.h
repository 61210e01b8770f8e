// SPDX-License-Identifier: Apache-2.0
// Configuration of the StallMonitor: how often it samples, snapshots and re-discovers, and the
// options it hands to the sampler, the snapshot reader and the diagnosis engine.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/diagnosis/config.h"
#include "stallmon/diagnosis/incident_bundle.h"
#include "stallmon/host/sampler.h"
#include "stallmon/introspect/memory_budget.h"
#include "stallmon/introspect/physical_memory.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/libvirt/domain.h"

namespace stallmon::core {

using namespace std::chrono_literals;

struct MonitorConfig {
  // --- Sampling ---------------------------------------------------------------------------
  // One tick per domain: sample every qemu thread, maybe snapshot the guest, observe.
  std::chrono::nanoseconds sample_interval = 100ms;
  // Guest snapshot rate of a domain without suspect signals. Copied into
  // diagnosis.baseline_snapshot_interval at construction (this field wins): the engine decides
  // per tick (wants_guest_snapshot) and snapshots every tick while anything looks suspect.
  // Default: every tick (an IPI stall is then seen without waiting for a baseline snapshot;
  // a snapshot costs ~15-40 µs of CPU).
  std::chrono::nanoseconds baseline_snapshot_interval = 100ms;
  diagnosis::DiagnosisConfig diagnosis;
  host::SamplerOptions sampler;
  // Incident bundles of critical findings (StallMonitor::incidents()): bounds and lookback.
  diagnosis::IncidentLimits incidents;

  // --- Guest introspection ----------------------------------------------------------------
  // Off: no guest memory is read; only host-side findings (blocked, starved, monitor, VM-wide,
  // crashed events) are possible and inspect() fails with kUnsupported.
  bool introspection = true;
  // Options of the per-tick snapshot. The printk tail is kept short here: it is only needed for
  // GUEST_PANIC, and a tick should stay around 100 µs.
  introspect::SnapshotOptions snapshot = [] {
    introspect::SnapshotOptions o;
    o.printk_records = 20;
    return o;
  }();
  // Options of inspect() (on demand, not on the tick budget): a longer printk tail, enough to
  // reach back past an oops and its stack dump to the panic message.
  introspect::SnapshotOptions inspect_snapshot = [] {
    introspect::SnapshotOptions o;
    o.printk_records = 200;
    return o;
  }();
  // Kernel discovery (VMCOREINFO scan, kallsyms, BTF) retries with exponential backoff while it
  // fails (guest still booting, not a Linux guest, ...), from `initial` up to `max`.
  std::chrono::nanoseconds discovery_retry_initial = 1s;
  std::chrono::nanoseconds discovery_retry_max = 30s;
  // A guest in which no Linux kernel is found (no VMCOREINFO note: another OS, firmware with
  // nothing to boot, a stuck boot) backs off further, doubling up to this (a scan reads all of
  // its RAM). A reboot/start event or a new qemu process retries at once.
  std::chrono::nanoseconds no_kernel_retry_max = 4h;
  // A guest read (snapshot, re-validation, inspect, each discovery read) not returned after
  // this is abandoned: the domain's introspection pauses, its host sampling goes on on other
  // workers, and the late result is dropped.
  std::chrono::nanoseconds read_deadline = 250ms;
  // Per domain: everything its guest decides the size of (symbols, types, tables, buffers) is
  // charged to a budget of this size; over it, that domain's introspection stops (kOverBudget).
  uint64_t introspection_budget_bytes = introspect::MemoryBudget::kDefaultLimit;
  // After a reboot, a rediscovered kernel must show its clock (jiffies or rq clock) advancing
  // within this, or it is taken for the previous boot's memory and discovered again.
  std::chrono::nanoseconds reboot_proof_timeout = 2s;
  // Where the last good VMCOREINFO location of each domain is kept (<state_dir>/hints/<uuid>)
  // and tried first on the next start. Empty: nothing is written.
  std::string state_dir;
  // Where types come from for a guest without BTF (introspect::DiscoverOptions): type profiles
  // by BUILD-ID, then host debuginfo by BUILD-ID. Empty: that step is skipped.
  std::string profile_dir;
  std::string debug_dir = "/usr/lib/debug";
  bool ignore_guest_btf = false;  // types from the fallbacks even when the guest has BTF (comparisons)
  // A ready kernel is re-validated (Kernel::still_valid, a re-read of the VMCOREINFO note) this
  // often, and after every reboot/start event; invalid → discovered again.
  std::chrono::nanoseconds revalidate_interval = 10s;
  // This many consecutive snapshots whose every CPU failed to read → discover again (e.g. the
  // guest rebooted without an event reaching us).
  uint32_t rediscover_after_failed_snapshots = 20;

  // --- Which domains ----------------------------------------------------------------------
  // Watch a domain only if this returns true (empty: every domain). Called on the watcher's
  // dispatch thread with each update; must be cheap and must not call back into the monitor.
  // Tests use it to ignore other engineers' guests on a shared libvirtd.
  std::function<bool(const libvirt::DomainInfo&)> domain_filter;

  // --- Self-health --------------------------------------------------------------------------
  // Upper bounds (seconds) of the tick-latency histogram buckets in AgentStats (+Inf implied).
  std::vector<double> tick_latency_buckets_s = {0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                                                0.0025, 0.005, 0.01, 0.025, 0.05, 0.1};

  // --- Execution --------------------------------------------------------------------------
  // true (production): every domain's tick runs on a fixed pool of `workers` threads, and
  // discovery on `discovery_max_concurrent` more. false: no threads are started and the caller
  // drives every domain with StallMonitor::tick_all() (unit tests, benchmarks, replays);
  // discovery then runs inline and inspect() is served by the next tick_all().
  bool threads = true;
  // Tick workers; 0: the CPUs stallmond may run on (sched_getaffinity), at most 2.
  size_t workers = 0;
  // Discoveries (RAM scans, kallsyms, BTF) running at once, over all domains.
  size_t discovery_max_concurrent = 1;
};

// Opens guest-physical memory of a running qemu. Default: introspect::QemuProcessMemory
// (process_vm_readv on the qemu pid over the cached RAM layout). Tests inject an in-memory image.
using GuestMemoryOpener = std::function<Result<std::shared_ptr<introspect::PhysicalMemory>>(
    pid_t qemu_pid, const std::vector<introspect::RamRange>& ram)>;

}  // namespace stallmon::core
