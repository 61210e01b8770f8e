// SPDX-License-Identifier: Apache-2.0
// Adapters from the sources' own types to the diagnosis engine's DomainObservation: host
// sampler threads, guest snapshots, the libvirt layer's monitor health and lifecycle events.
// Pure functions of their inputs (the pipeline calls them every tick; unit tests feed them
// hand-built values).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "stallmon/diagnosis/observation.h"
#include "stallmon/diagnosis/time.h"
#include "stallmon/host/sampler.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/libvirt/domain.h"

namespace stallmon::core {

// Maps host CLOCK_MONOTONIC nanoseconds (sampler and snapshot times) onto the engine's clock:
// the offset is taken once, so both clocks advance together.
struct ClockMapping {
  diagnosis::Timestamp engine_at_zero{};  // engine time at monotonic 0
  diagnosis::Timestamp to_engine(int64_t mono_ns) const {
    return engine_at_zero + diagnosis::Duration(mono_ns);
  }
  static ClockMapping from(diagnosis::Timestamp engine_now, int64_t mono_now_ns) {
    return ClockMapping{engine_now - diagnosis::Duration(mono_now_ns)};
  }
};

// The latest sample of a tracked thread as the engine's HostThreadView. The host stack and
// wchan are copied only while the thread is (and the detail was read) in D, T or t: a stack
// read during an earlier block must not be shown for a running thread. nullopt when the thread
// has never been sampled.
std::optional<diagnosis::HostThreadView> to_host_thread_view(const host::TrackedThread& thread);

// The same from plain parts (what to_host_thread_view reads off a TrackedThread).
diagnosis::HostThreadView to_host_thread_view(int32_t tid, const std::string& comm,
                                              const host::ThreadSample& latest,
                                              const host::StateTracker& tracker,
                                              const host::BlockedDetail& detail);

// A guest snapshot as the engine's GuestView. CPUs beyond the snapshot's range, offline CPUs
// and CPUs whose runqueue could not be read are passed with what is known (the engine treats
// missing optional fields as unknown). Symbol names become `function`; TTWU entries name the
// woken task as "comm/pid".
diagnosis::GuestView to_guest_view(const introspect::GuestSnapshot& snapshot);

diagnosis::CallType to_call_type(introspect::CsdType type);

// The kernel trace of `cpu`'s current task in `snapshot` for the engine: at most `max_frames`
// frames, innermost first, each "function+0xoff/0xlen [module]"; a failed backtrace becomes a
// trace whose `error` says why (a value, never an exception).
diagnosis::KernelTrace to_kernel_trace(const Result<introspect::Backtrace>& backtrace,
                                       const introspect::GuestSnapshot& snapshot, uint32_t cpu,
                                       diagnosis::Timestamp taken_at, size_t max_frames = 16);

// The libvirt layer's monitor health as the engine's MonitorStatus.
diagnosis::MonitorStatus to_monitor_status(const libvirt::MonitorHealth& health,
                                           const ClockMapping& steady_to_engine);

// A libvirt lifecycle event as the engine's DomainEvent; nullopt for events the engine has no
// use for (defined, device added, ...). `at` is when the monitor received it.
std::optional<diagnosis::DomainEvent> to_diagnosis_event(const libvirt::DomainEvent& event,
                                                         diagnosis::Timestamp at);

}  // namespace stallmon::core
