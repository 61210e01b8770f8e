// SPDX-License-Identifier: Apache-2.0
// Adapters from the agent's plain types (diagnosis findings, introspect snapshots, host samples)
// to stallmon.v1 messages. Pure functions: no gRPC, no locks, no clock reads (the caller passes
// "now" where an age is computed), so they are unit-tested with hand-built values.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "stallmon/core/stall_monitor.h"
#include "stallmon/diagnosis/finding.h"
#include "stallmon/diagnosis/observation.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/v1/stallmon.pb.h"

namespace stallmon::server {

// --- time --------------------------------------------------------------------------------------
void to_proto(std::chrono::nanoseconds d, google::protobuf::Duration* out);
// diagnosis::Timestamp is a system_clock time point with nanosecond precision: this covers it.
void to_proto(std::chrono::system_clock::time_point t, google::protobuf::Timestamp* out);
// Preconditions: the message is valid (see validate.h); out-of-range values are clamped.
std::chrono::nanoseconds from_proto(const google::protobuf::Duration& d);
diagnosis::Timestamp from_proto(const google::protobuf::Timestamp& t);

// --- findings ----------------------------------------------------------------------------------
// The diagnosis enums carry the proto's numbers; an unknown value becomes UNSPECIFIED.
v1::FindingKind to_proto(diagnosis::FindingKind k);
diagnosis::FindingKind from_proto(v1::FindingKind k);
v1::Severity to_proto(diagnosis::Severity s);
v1::Cause to_proto(diagnosis::Cause c);
v1::FindingEvent::Type to_proto(diagnosis::FindingEvent::Type t);
void to_proto(const diagnosis::Finding& f, v1::Finding* out);
void to_proto(const diagnosis::FindingEvent& e, uint64_t incarnation, v1::FindingEvent* out);
// An incident bundle; each lane evenly thinned to max_points (0: all), keeping its first and
// last point. Guest-derived strings are made valid UTF-8.
void to_proto(const diagnosis::IncidentBundle& b, size_t max_points, v1::Incident* out);

// --- host threads ------------------------------------------------------------------------------
v1::ThreadState thread_state_from_letter(char letter);

// --- domains (core) ----------------------------------------------------------------------------
// `worst` is the most severe active finding of the domain (the service computes it).
void to_proto(const core::DomainSummary& d, v1::Severity worst, v1::DomainSummary* out);
void to_proto(const core::DomainSummary& d, v1::DomainHealth* out);
// The latest sample of a thread with its derived signals (GetDomain). wchan and host stack are
// only taken while the blocked detail describes the thread's current state.
void to_proto(const core::ThreadStatus& t, v1::HostSample* out);
std::vector<std::string> current_host_stack(const core::ThreadStatus& t);
// One raw history sample (GetVcpuHistory): counters only, no derived signals.
void to_proto(const core::HistoryPoint& p, v1::HostSample* out);
void to_proto(const core::DomainDetail& d, v1::Severity worst, v1::Domain* out);
// At most `max_samples` points of the history, evenly spaced, always keeping the newest.
void to_proto(const core::VcpuHistory& h, size_t max_samples, v1::VcpuHistory* out);

// --- guest snapshots ---------------------------------------------------------------------------
// Per-CPU summary of one snapshot CPU (GetDomain's Vcpu.guest, InspectDomain's cpus[].state).
// `guest_clock_ns` is the snapshot's estimate of guest time, for the watchdog touch age.
void to_proto(const introspect::CpuSnapshot& cpu, uint64_t guest_clock_ns, v1::GuestCpuState* out);

struct InspectExtras {
  std::string domain;
  std::string domain_uuid;
  std::string kernel_release;
  int printk_records = 20;  // newest N records
  bool include_json = false;
  // Active findings of the domain: GUEST_IPI_STALL evidence dates the csd waits (CsdWait.waited).
  std::vector<diagnosis::Finding> active_findings;
  // Host wall time and monotonic time at the moment of conversion: the snapshot is stamped with
  // CLOCK_MONOTONIC, turned into wall time through this pair.
  std::chrono::system_clock::time_point wall_now{};
  uint64_t monotonic_now_ns = 0;
};
void to_proto(const introspect::GuestSnapshot& snapshot, const InspectExtras& extras,
              v1::InspectDomainResponse* out);

// Turns a CLOCK_MONOTONIC stamp into wall time, given a (wall, monotonic) pair read together.
std::chrono::system_clock::time_point monotonic_to_wall(uint64_t monotonic_ns,
                                                        std::chrono::system_clock::time_point wall_now,
                                                        uint64_t monotonic_now_ns);

// Guest strings (comm, printk text, symbol names) are untrusted bytes; protobuf `string` fields
// must be valid UTF-8 or serialisation fails. Invalid sequences become U+FFFD.
std::string sanitize_utf8(std::string_view s);

}  // namespace stallmon::server
