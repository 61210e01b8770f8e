// SPDX-License-Identifier: Apache-2.0
#include "libvirt_events.h"

#include <libvirt/libvirt.h>

namespace stallmon::libvirt {

DomainEvent map_lifecycle_event(int event, int detail) {
  DomainEvent ev;
  auto set = [&](DomainEventKind k, const char* d) {
    ev.kind = k;
    ev.detail = d;
  };
  switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED:
      set(DomainEventKind::kDefined, detail == VIR_DOMAIN_EVENT_DEFINED_UPDATED ? "updated" : "added");
      break;
    case VIR_DOMAIN_EVENT_UNDEFINED:
      set(DomainEventKind::kUndefined, "removed");
      break;
    case VIR_DOMAIN_EVENT_STARTED:
      switch (detail) {
        case VIR_DOMAIN_EVENT_STARTED_MIGRATED: set(DomainEventKind::kMigrated, "migrated in"); break;
        case VIR_DOMAIN_EVENT_STARTED_RESTORED: set(DomainEventKind::kStarted, "restored"); break;
        case VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: set(DomainEventKind::kStarted, "from snapshot"); break;
        case VIR_DOMAIN_EVENT_STARTED_WAKEUP: set(DomainEventKind::kStarted, "wakeup"); break;
        default: set(DomainEventKind::kStarted, "booted"); break;
      }
      break;
    case VIR_DOMAIN_EVENT_SUSPENDED:
      switch (detail) {
        case VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED: set(DomainEventKind::kSuspended, "migrating"); break;
        case VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: set(DomainEventKind::kSuspended, "I/O error"); break;
        case VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: set(DomainEventKind::kSuspended, "watchdog"); break;
        case VIR_DOMAIN_EVENT_SUSPENDED_RESTORED: set(DomainEventKind::kSuspended, "restored"); break;
        case VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT: set(DomainEventKind::kSuspended, "from snapshot"); break;
        case VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: set(DomainEventKind::kSuspended, "API error"); break;
        case VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY: set(DomainEventKind::kSuspended, "post-copy"); break;
        case VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED: set(DomainEventKind::kSuspended, "post-copy failed"); break;
        default: set(DomainEventKind::kSuspended, "paused"); break;
      }
      break;
    case VIR_DOMAIN_EVENT_RESUMED:
      switch (detail) {
        case VIR_DOMAIN_EVENT_RESUMED_MIGRATED: set(DomainEventKind::kResumed, "migrated"); break;
        case VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT: set(DomainEventKind::kResumed, "from snapshot"); break;
        case VIR_DOMAIN_EVENT_RESUMED_POSTCOPY: set(DomainEventKind::kResumed, "post-copy"); break;
        default: set(DomainEventKind::kResumed, "unpaused"); break;
      }
      break;
    case VIR_DOMAIN_EVENT_STOPPED:
      switch (detail) {
        case VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: set(DomainEventKind::kStopped, "shutdown"); break;
        case VIR_DOMAIN_EVENT_STOPPED_DESTROYED: set(DomainEventKind::kStopped, "destroyed"); break;
        case VIR_DOMAIN_EVENT_STOPPED_CRASHED: set(DomainEventKind::kCrashed, "stopped after crash"); break;
        case VIR_DOMAIN_EVENT_STOPPED_MIGRATED: set(DomainEventKind::kMigrated, "migrated out"); break;
        case VIR_DOMAIN_EVENT_STOPPED_SAVED: set(DomainEventKind::kStopped, "saved"); break;
        case VIR_DOMAIN_EVENT_STOPPED_FAILED: set(DomainEventKind::kStopped, "failed"); break;
        case VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: set(DomainEventKind::kStopped, "from snapshot"); break;
        default: set(DomainEventKind::kStopped, "stopped"); break;
      }
      break;
    case VIR_DOMAIN_EVENT_SHUTDOWN:
      set(DomainEventKind::kShutdown, detail == VIR_DOMAIN_EVENT_SHUTDOWN_GUEST ? "by guest" : "finished");
      break;
    case VIR_DOMAIN_EVENT_PMSUSPENDED:
      set(DomainEventKind::kPmSuspended, detail == VIR_DOMAIN_EVENT_PMSUSPENDED_DISK ? "disk" : "memory");
      break;
    case VIR_DOMAIN_EVENT_CRASHED:
      set(DomainEventKind::kCrashed, detail == VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED ? "crash loaded" : "panicked");
      break;
    default:
      set(DomainEventKind::kStopped, "unknown event");
      ev.detail = "unknown event " + std::to_string(event) + "/" + std::to_string(detail);
      break;
  }
  return ev;
}

}  // namespace stallmon::libvirt
