// SPDX-License-Identifier: Apache-2.0
// Incident bundles (issue 14 item 2): for every critical finding, the material of its
// post-mortem, kept with it: the vCPU threads' history from `lookback` before onset to
// resolution, the guest snapshots at onset and at the worst point, the printk tail, the host
// stacks of blocked threads, and the findings of the same domain in that window.
//
// Plain data like the findings (no transport): the recorder (incident_recorder.h) fills it from
// what the pipeline already holds, agent/store persists it, the gRPC adapter copies it. Every
// list in it is bounded by IncidentLimits, and what a bound cut is counted in `dropped`: guest
// counts and strings are hostile input.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/finding.h"
#include "stallmon/diagnosis/observation.h"
#include "stallmon/diagnosis/time.h"

namespace stallmon::diagnosis {

// Config keys incidents.* of stallmond (agent/diagnosis/README.md, "Incident bundles").
struct IncidentLimits {
  bool enabled = true;
  // History before the onset: the sampler's full-rate vCPU ring holds 60 s at 10 Hz.
  Duration lookback = std::chrono::seconds(60);
  // One bundle's estimated size (IncidentBundle::bytes). Over it, the lanes are thinned: every
  // other point goes and the sampling stride doubles, so a long incident keeps its whole window
  // at a coarser grain instead of losing its end.
  std::size_t max_bundle_bytes = 256 * 1024;
  // Bundles held in memory (open and completed). An open one is never evicted; the oldest
  // completed one makes room (the store keeps it). All open: a new critical finding gets none
  // (counted as IncidentStats::bundles_refused).
  std::size_t max_bundles = 32;
  std::size_t max_lanes = 64;        // vCPU lanes, and guest CPU lanes, per bundle
  std::size_t max_related = 32;      // findings of the same domain in the window
  std::size_t max_host_stacks = 32;  // threads whose host stack was read while blocked
  std::size_t max_frames = 32;       // per host stack
  std::size_t max_printk_lines = 200;
  std::size_t max_line = 512;        // bytes per console line, frame, comm, name
  // How often an open bundle is handed to the sink (the store) while it grows, besides at its
  // opening and its resolution: a daemon killed mid-incident keeps most of it.
  Duration persist_interval = std::chrono::seconds(10);
};

// One host sample of a vCPU thread.
struct IncidentVcpuPoint {
  Timestamp at{};
  ThreadState state = ThreadState::kUnknown;
  Duration run_time{0};   // cumulative (schedstat)
  Duration run_delay{0};  // cumulative: runnable, not running
};

struct IncidentVcpuLane {
  int vcpu = 0;
  int tid = 0;
  std::vector<IncidentVcpuPoint> points;  // oldest first
};

// One guest CPU as one snapshot showed it: what a timeline lane needs.
struct IncidentGuestPoint {
  Timestamp at{};  // the tick the snapshot was observed on
  bool online = true;
  bool idle = false;
  int csd_target = -1;  // the CPU it waits for in csd_lock_wait (a locked csd it sent), or -1
  // Guest running clock minus the watchdog touch (the soft-lockup watchdog's age); unset when
  // the guest shows no touch timestamp, or one ahead of its clock.
  std::optional<Duration> watchdog_age;
};

struct IncidentGuestLane {
  int cpu = 0;
  std::vector<IncidentGuestPoint> points;  // oldest first
};

// A guest CPU in a snapshot summary.
struct IncidentCpuSummary {
  int cpu = 0;
  bool online = true;
  bool idle = false;
  int pid = 0;
  std::string comm;
  uint32_t nr_running = 0;
  uint32_t queued_calls = 0;     // call_single_queue entries
  std::vector<int> csd_targets;  // locked csds it sent (it waits for these CPUs), bounded
  std::optional<Duration> watchdog_age;
};

// A guest snapshot as the engine saw it, summarised.
struct IncidentSnapshot {
  Timestamp at{};
  uint64_t running_clock_ns = 0;
  int watchdog_thresh = 0;
  int panic_cpu = -1;
  std::vector<IncidentCpuSummary> cpus;
  // How bad it looks: CPUs waiting on a csd or with a watchdog age of at least watchdog_thresh
  // (half the soft-lockup threshold); the worst snapshot has the most, then the oldest touch.
  int troubled_cpus = 0;
  Duration max_watchdog_age{0};
};

// A host thread of the domain seen blocked (D/T/t: the sampler reads its kernel stack).
struct IncidentHostStack {
  int tid = 0;
  int vcpu = -1;  // -1: not a vCPU thread
  std::string name;
  ThreadState state = ThreadState::kUnknown;
  std::string wchan;
  std::vector<std::string> frames;  // innermost first, the latest read
  Timestamp first_seen{}, last_seen{};
};

// A finding of the same domain whose life overlaps the bundle's window.
struct IncidentFindingRef {
  std::string id;
  FindingKind kind = FindingKind::kUnspecified;
  Severity severity = Severity::kUnspecified;
  Timestamp onset{};
  std::optional<Timestamp> resolved_at;
  std::vector<int> cpus;
  std::string summary;
};

// What the bounds cut, by kind (never silently).
struct IncidentDropped {
  uint64_t vcpu_points = 0;   // thinned for the byte budget
  uint64_t guest_points = 0;  // thinned for the byte budget
  uint64_t lanes = 0;         // vCPUs / guest CPUs beyond max_lanes
  uint64_t host_stacks = 0;   // threads beyond max_host_stacks
  uint64_t printk_lines = 0;  // lines beyond max_printk_lines
  uint64_t related = 0;       // findings beyond max_related
};

struct IncidentBundle {
  Finding finding;  // as of its latest event
  Timestamp window_start{};            // onset - lookback
  std::optional<Timestamp> window_end;  // the resolution; unset while the finding is active
  std::vector<IncidentVcpuLane> vcpus;       // by vCPU index
  std::vector<IncidentGuestLane> guest_cpus;  // by CPU number
  std::optional<IncidentSnapshot> at_onset;  // the first snapshot observed once it opened
  std::optional<IncidentSnapshot> at_worst;
  std::vector<std::string> printk_tail;  // the newest tail seen in the window, oldest line first
  std::vector<IncidentHostStack> host_stacks;  // by first_seen
  std::vector<IncidentFindingRef> related;    // this one included, by onset
  // Points closer than this after the last one are not recorded (0: every tick); doubles with
  // every thinning.
  Duration stride{0};
  IncidentDropped dropped;
  std::size_t bytes = 0;  // the estimate max_bundle_bytes bounds

  bool complete() const { return window_end.has_value(); }
};

// A bundle's estimated memory: the structs and their strings.
std::size_t estimate_bytes(const IncidentBundle& b);

}  // namespace stallmon::diagnosis
