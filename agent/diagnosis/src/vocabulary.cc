// SPDX-License-Identifier: Apache-2.0
// Names, letters and durations: the small vocabulary shared by the engine and its adapters.
#include <cstdio>

#include "stallmon/diagnosis/finding.h"
#include "stallmon/diagnosis/observation.h"
#include "stallmon/diagnosis/time.h"

namespace stallmon::diagnosis {

SteadyWallClock::SteadyWallClock()
    : wall_at_start_(std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now())),
      steady_at_start_(std::chrono::steady_clock::now()) {}

Timestamp SteadyWallClock::now() const {
  return wall_at_start_ +
         std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - steady_at_start_);
}

std::string format_duration(Duration d) {
  using namespace std::chrono;
  char buf[48];
  const bool neg = d < Duration::zero();
  if (neg) d = -d;
  const double ms = duration<double, std::milli>(d).count();
  if (ms < 1000.0) {
    std::snprintf(buf, sizeof buf, "%s%.0f ms", neg ? "-" : "", ms);
  } else if (ms < 10'000.0) {
    std::snprintf(buf, sizeof buf, "%s%.1f s", neg ? "-" : "", ms / 1000.0);
  } else if (ms < 120'000.0) {
    std::snprintf(buf, sizeof buf, "%s%.0f s", neg ? "-" : "", ms / 1000.0);
  } else {
    const auto s = duration_cast<seconds>(d).count();
    std::snprintf(buf, sizeof buf, "%s%lld min %lld s", neg ? "-" : "", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

ThreadState thread_state_from_letter(char letter) {
  switch (letter) {
    case 'R': return ThreadState::kRunning;
    case 'S': return ThreadState::kSleeping;
    case 'D': return ThreadState::kDiskSleep;
    case 'T': return ThreadState::kStopped;
    case 't': return ThreadState::kTracingStop;
    case 'Z': return ThreadState::kZombie;
    case 'I': return ThreadState::kIdle;
    case 'X': return ThreadState::kDead;
    default: return ThreadState::kUnknown;
  }
}

char thread_state_letter(ThreadState s) {
  switch (s) {
    case ThreadState::kRunning: return 'R';
    case ThreadState::kSleeping: return 'S';
    case ThreadState::kDiskSleep: return 'D';
    case ThreadState::kStopped: return 'T';
    case ThreadState::kTracingStop: return 't';
    case ThreadState::kZombie: return 'Z';
    case ThreadState::kIdle: return 'I';
    case ThreadState::kDead: return 'X';
    case ThreadState::kUnknown: break;
  }
  return '?';
}

bool is_host_blocking(ThreadState s) {
  return s == ThreadState::kDiskSleep || s == ThreadState::kStopped || s == ThreadState::kTracingStop;
}

const char* to_string(CallType t) {
  switch (t) {
    case CallType::kAsync: return "ASYNC";
    case CallType::kSync: return "SYNC";
    case CallType::kIrqWork: return "IRQ_WORK";
    case CallType::kTtwu: return "TTWU";
    case CallType::kUnknown: break;
  }
  return "UNKNOWN";
}

const char* to_string(FindingKind k) {
  switch (k) {
    case FindingKind::kVcpuHostBlocked: return "VCPU_HOST_BLOCKED";
    case FindingKind::kVcpuHostStarved: return "VCPU_HOST_STARVED";
    case FindingKind::kGuestIpiStall: return "GUEST_IPI_STALL";
    case FindingKind::kGuestIdleWithPendingWork: return "GUEST_IDLE_WITH_PENDING_WORK";
    case FindingKind::kGuestSoftlockupImminent: return "GUEST_SOFTLOCKUP_IMMINENT";
    case FindingKind::kGuestSoftlockup: return "GUEST_SOFTLOCKUP";
    case FindingKind::kGuestIrqsOff: return "GUEST_IRQS_OFF";
    case FindingKind::kGuestPanic: return "GUEST_PANIC";
    case FindingKind::kHostMonitorUnresponsive: return "HOST_MONITOR_UNRESPONSIVE";
    case FindingKind::kVmWideStall: return "VM_WIDE_STALL";
    case FindingKind::kGuestStackOverflow: return "GUEST_STACK_OVERFLOW";
    case FindingKind::kUnspecified: break;
  }
  return "FINDING_KIND_UNSPECIFIED";
}

const char* to_string(Severity s) {
  switch (s) {
    case Severity::kInfo: return "INFO";
    case Severity::kWarning: return "WARNING";
    case Severity::kCritical: return "CRITICAL";
    case Severity::kUnspecified: break;
  }
  return "SEVERITY_UNSPECIFIED";
}

const char* to_string(Cause c) {
  switch (c) {
    case Cause::kHostBlocked: return "CAUSE_HOST_BLOCKED";
    case Cause::kHostStarved: return "CAUSE_HOST_STARVED";
    case Cause::kGuestIrqsOff: return "CAUSE_GUEST_IRQS_OFF";
    case Cause::kGuestOther: return "CAUSE_GUEST_OTHER";
    case Cause::kUnknown: return "CAUSE_UNKNOWN";
    case Cause::kUnspecified: break;
  }
  return "CAUSE_UNSPECIFIED";
}

const char* to_string(FindingEvent::Type t) {
  switch (t) {
    case FindingEvent::Type::kOpened: return "OPENED";
    case FindingEvent::Type::kUpdated: return "UPDATED";
    case FindingEvent::Type::kResolved: return "RESOLVED";
    case FindingEvent::Type::kUnspecified: break;
  }
  return "TYPE_UNSPECIFIED";
}

}  // namespace stallmon::diagnosis
