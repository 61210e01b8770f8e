// SPDX-License-Identifier: Apache-2.0
// The rules: each reads the domain's trackers at one tick and proposes findings (candidates).
// The engine then reconciles candidates with the active findings (open / update / resolve).
// Internal to the engine.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "domain_state.h"
#include "finding_store.h"
#include "lock_waits.h"
#include "stallmon/diagnosis/config.h"
#include "stallmon/diagnosis/finding.h"

namespace stallmon::diagnosis {

struct Candidate {
  std::string condition_key;
  Finding finding;
  std::string signature;  // what makes a change material (see FindingStore::upsert)
};

// How the host treats one vCPU at this tick, phrased for a summary ("its host thread 18060 has
// been in D state for 1.5 s (host stack: ...)").
struct HostVerdict {
  Cause cause = Cause::kUnspecified;  // kHostBlocked, kHostStarved, or unspecified (host runs it)
  bool not_running = false;           // the host does not run this vCPU at all
  std::string phrase;
  std::string explained_by;  // the host finding's id
  std::vector<Evidence> evidence;
};

class TickContext {
 public:
  TickContext(const DiagnosisConfig& cfg, DomainState& domain, FindingStore& store, Timestamp at)
      : config(cfg), d(domain), now(at), store_(store) {}

  const DiagnosisConfig& config;
  DomainState& d;
  const Timestamp now;

  std::string condition_key(FindingKind kind, const std::string& key) const;
  // The id the finding for (kind, key) has or will get this tick.
  std::string id(FindingKind kind, const std::string& key);
  Candidate& propose(FindingKind kind, const std::string& key, Severity severity, Cause cause);

  HostVerdict host_verdict(int vcpu) const;
  // For a guest stall that began at `since`: when the host runs the vCPU now but stopped it at
  // some point since then (a stop that ended less than kRecentStop ago), the verdict names that
  // stop: the stall is its symptom.
  HostVerdict host_verdict(int vcpu, Timestamp since) const;
  static constexpr Duration kRecentStop = std::chrono::seconds(30);
  // The onset of the finding proposed this tick under `id` (an explained_by), if any.
  std::optional<Timestamp> onset_of(const std::string& id) const;
  const ThreadTracker* vcpu_thread(int vcpu) const;

  std::vector<Candidate> candidates;

  // Cross-rule facts of this tick, filled in rule order.
  std::string vm_wide_id;                      // set when VM_WIDE_STALL holds
  std::string vm_wide_phrase;
  std::map<int, std::string> blocked_id;       // vCPU -> its VCPU_HOST_BLOCKED finding
  std::map<int, const ThreadTracker*> blocked_behind;  // vCPU -> the stuck qemu thread it waits on
  std::map<int, std::string> starved_id;       // vCPU -> VCPU_HOST_STARVED finding
  std::map<int, std::string> irqs_off_id;      // CPU -> GUEST_IRQS_OFF finding
  struct WaiterLink {
    std::string ipi_id;
    Cause cause = Cause::kUnknown;
    bool evaluating = false;
    std::vector<int> roots;
  };
  std::map<int, WaiterLink> waiter_of;  // CPU waiting in an IPI stall -> that stall
  std::map<int, LockWait> lock_waits;   // CPU spinning on a spinlock -> the wait (find_lock_waits)

 private:
  FindingStore& store_;
};

// Host rules: run every tick, in this order.
void rule_vm_wide_stall(TickContext& t);
void rule_host_blocked(TickContext& t);
void rule_host_starved(TickContext& t);
void rule_monitor_unresponsive(TickContext& t);
void rule_panic(TickContext& t);
// Kinds raised by the guest-snapshot rules: they stand until a snapshot (or a new boot) says
// otherwise. Not PANIC or MONITOR, which run from sticky state every tick.
bool is_guest_kind(FindingKind k);

// After the host rules: remembers each vCPU's host stop (DomainState::last_host_stop).
void remember_host_stops(TickContext& t);
// Guest rules: run on ticks with a guest snapshot, in this order.
void find_lock_waits(TickContext& t);  // fills t.lock_waits from the CPUs' kernel traces
void rule_irqs_off(TickContext& t);
void rule_ipi_stall(TickContext& t);
void rule_idle_with_pending_work(TickContext& t);
void rule_softlockup(TickContext& t);
void rule_stack_overflow(TickContext& t);
// After them: a lock waiter's own findings are explained by the holder's, and both say so.
void link_lock_waits(TickContext& t);

// Guest ns since the CPU's watchdog_touch_ts at the snapshot's guest clock, as the guest's
// soft-lockup watchdog computes it; nullopt when the watchdog is off (thresh 0, disabled), the
// CPU is offline, or the touch is unset / 0 / in the future.
std::optional<Duration> softlockup_touch_age(const GuestView& view, const GuestCpuView& cpu);

// The guest watchdog's hrtimer period: how often hrtimer_interrupts moves on a CPU whose timer
// runs (0 when the watchdog is off).
Duration watchdog_period(const GuestView& g);
// The oldest touch of a healthy CPU: a watchdog period and a half plus the 1-s granularity of
// the guest's touch timestamps. Older is a stale touch (the soft-lockup rules' floor).
Duration healthy_touch_max(const GuestView& g);

// One Evidence link per CPU of the candidate with a kernel trace in the domain's last guest view
// (`guest`, null before any), for the kinds that carry traces, saying how many consecutive reads
// confirmed its outer frames (TraceHistory); a trace appearing is a material change.
void attach_kernel_traces(const GuestState* guest, Timestamp now, Candidate& c);
// Compares the CPU's new trace (if this snapshot's view hands in a new read) with the earlier
// ones: the outer frames they share stay confirmed; another task, an error, an unverified trace,
// no trace, or no shared outer frame starts over.
void update_trace_history(GuestCpuTracker& tr, const GuestCpuView& cv);

// Text helpers shared by the rules.
std::string cpu_list(const std::vector<int>& cpus);  // "CPU0, CPU1 and CPU3"
std::string stack_line(const std::vector<std::string>& stack, std::size_t max_frames);
std::string thread_phrase(const ThreadTracker& t);    // "host thread 18060 (CPU 2/TCG)"
std::string percent(double fraction);
// Whether the host held the thread back (ThreadTracker::impeded) now or at any tick since `since`.
bool impeded_since(const ThreadTracker& t, Timestamp since);
// "its host thread 18003 (CPU 3/KVM) is held back by the host (its cgroup was throttled 12
// times in the last 3.0 s; denied the CPU 76% of the last 500 ms)"
std::string impeded_phrase(const ThreadTracker& t);
// "Cause: host." / "Cause: undetermined, evaluating." - the summary's last sentence.
std::string cause_sentence(Cause c, bool evaluating);

}  // namespace stallmon::diagnosis
