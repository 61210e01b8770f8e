// SPDX-License-Identifier: Apache-2.0
// DiagnosisEngine: joins the host view of a domain's qemu threads with the guest kernel's view
// of its CPUs into findings - verdicts with a causal chain - tick by tick.
//
// Knows no transport: no gRPC, libvirt, /proc or guest memory. It is fed DomainObservations and
// reads time from an injected Clock; its output goes to list/events queries and an optional
// FindingListener, which the server adapts to stallmon.v1.
//
// Thread safety: every public method takes an internal mutex, so a server thread may query while
// the sampling thread observes. The listener is called with that mutex held: it must not call
// back into the engine.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/diagnosis/config.h"
#include "stallmon/diagnosis/finding.h"
#include "stallmon/diagnosis/observation.h"
#include "stallmon/diagnosis/time.h"

namespace stallmon::diagnosis {

class FindingListener {
 public:
  virtual ~FindingListener() = default;
  virtual void on_finding_event(const FindingEvent& event) = 0;
};

struct FindingQuery {
  std::string domain;              // name or uuid; empty: all domains
  std::vector<FindingKind> kinds;  // empty: all kinds
  bool active_only = false;
  std::optional<Timestamp> since;  // updated (or resolved) at or after this time
  std::size_t limit = 1000;        // 0: the default, 1000
};

struct EventsSince {
  std::vector<FindingEvent> events;  // revision > after_revision, oldest first
  // False when after_revision predates the retained event log (events were dropped): the
  // caller must resynchronise from the active findings and continue from `revision`.
  bool complete = true;
  uint64_t revision = 0;  // the latest revision at the time of the call
};

// One guest CPU's stall ages as of the domain's last guest snapshot (for the exporter's gauges).
struct GuestCpuAges {
  int cpu = 0;
  // The longest csd wait this CPU is in as the sender: a locked csd in its cfd_data, tracked
  // across consecutive snapshots as GUEST_IPI_STALL does (same waiter, target, csd, function),
  // aged from the first snapshot that showed it to the last one (a lower bound of the real
  // wait). Unset when the CPU waits on no csd. csd_wait_target: the CPU it waits for, or -1.
  std::optional<Duration> csd_wait_age;
  int csd_wait_target = -1;
  // Guest running clock minus watchdog_touch_ts (in the guest's own nanoseconds, the soft-lockup
  // watchdog's arithmetic). Unset when the watchdog does not run on this CPU (disabled,
  // watchdog_thresh 0, nohz_full / not in watchdog_cpumask, offline) or has no touch timestamp.
  std::optional<Duration> softlockup_touch_age;
  Timestamp snapshot_at{};  // when the snapshot these ages come from was taken (host clock)
};

// What a previous run of the daemon left (agent/store loads it): the engine continues from it.
struct RestoredFindings {
  struct Active {
    std::string condition_key;  // FindingEvent::condition_key of its last event
    Finding finding;
  };
  std::vector<Finding> resolved;     // oldest first; the newest max_resolved_history are kept
  std::vector<Active> active;        // re-evaluated, see DiagnosisConfig::restored_*
  std::vector<FindingEvent> events;  // a contiguous run of revisions ending at `revision`, oldest first
  uint64_t revision = 0;             // the last revision the previous run issued
  uint64_t next_seq = 1;             // above every finding id's sequence number issued so far
};

class DiagnosisEngine {
 public:
  DiagnosisEngine(DiagnosisConfig config, const Clock& clock);
  ~DiagnosisEngine();
  DiagnosisEngine(const DiagnosisEngine&) = delete;
  DiagnosisEngine& operator=(const DiagnosisEngine&) = delete;

  // One tick of one domain, at clock.now(). Returns the events it produced (also delivered to
  // the listener). Host-side rules run every tick; guest-side rules on ticks that carry a
  // guest view (their findings are neither updated nor resolved on ticks without one).
  std::vector<FindingEvent> observe(const DomainObservation& observation);

  // Whether the daemon should take a guest snapshot of `domain` (name or uuid) this tick:
  // always for a domain never snapshotted or with a suspect signal (a vCPU thread in D/T/t,
  // high steal, monitor unresponsive, a csd wait / stale watchdog touch / idle CPU with pending
  // work in the last snapshot, any active finding), else at the baseline interval.
  bool wants_guest_snapshot(const std::string& domain, Timestamp now) const;

  // The domain is gone (undefined, or no longer watched): resolve its findings, drop its state.
  std::vector<FindingEvent> forget_domain(const std::string& domain);

  // Active findings first (by onset), then resolved ones, newest first.
  std::vector<Finding> list_findings(const FindingQuery& query = {}) const;
  std::vector<Finding> active_findings(const std::string& domain = "") const;
  // Per guest CPU of `domain` (name or uuid), by CPU number, from the last guest snapshot of the
  // current boot; empty for an unknown domain or one without such a snapshot (never taken,
  // paused, rebooted since). Read-only.
  std::vector<GuestCpuAges> guest_cpu_ages(const std::string& domain) const;
  EventsSince events_since(uint64_t after_revision) const;
  uint64_t revision() const;
  std::size_t resolved_history_size() const;
  std::size_t event_log_size() const;

  // Before the first observe(): the previous run's findings. Resolved ones are listed again;
  // revisions go on from `revision` (events_since() serves the restored events); ids never
  // repeat. Each active one stays active, unconfirmed, until its domain's first evaluation
  // decides: continued with the same id (an UPDATED event) when a rule proposes its condition
  // within restored_reevaluate_within, else resolved. Restoring over a used engine: kInvalidArgument.
  Result<void> restore(RestoredFindings restored);
  // Resolves the restored findings of domains that have not ticked within restored_domain_wait
  // of the restore (the daemon calls it periodically). Returns the events (also delivered).
  std::vector<FindingEvent> expire_restored();

  void set_listener(FindingListener* listener);  // nullptr to detach
  const DiagnosisConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stallmon::diagnosis
