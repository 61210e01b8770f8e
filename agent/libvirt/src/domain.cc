// SPDX-License-Identifier: Apache-2.0
#include "stallmon/libvirt/domain.h"

namespace stallmon::libvirt {

const char* to_string(VcpuSource source) {
  switch (source) {
    case VcpuSource::kNone: return "none";
    case VcpuSource::kQmp: return "qmp";
    case VcpuSource::kThreadNames: return "thread-names";
  }
  return "?";
}

const char* to_string(DomainRunState state) {
  switch (state) {
    case DomainRunState::kUnknown: return "unknown";
    case DomainRunState::kRunning: return "running";
    case DomainRunState::kBlocked: return "blocked";
    case DomainRunState::kPaused: return "paused";
    case DomainRunState::kShutdown: return "shutting-down";
    case DomainRunState::kShutoff: return "shut-off";
    case DomainRunState::kCrashed: return "crashed";
    case DomainRunState::kPmSuspended: return "pm-suspended";
  }
  return "?";
}

const char* to_string(DomainEventKind kind) {
  switch (kind) {
    case DomainEventKind::kDefined: return "defined";
    case DomainEventKind::kUndefined: return "undefined";
    case DomainEventKind::kStarted: return "started";
    case DomainEventKind::kSuspended: return "suspended";
    case DomainEventKind::kResumed: return "resumed";
    case DomainEventKind::kStopped: return "stopped";
    case DomainEventKind::kShutdown: return "shutdown";
    case DomainEventKind::kPmSuspended: return "pm-suspended";
    case DomainEventKind::kCrashed: return "crashed";
    case DomainEventKind::kRebooted: return "rebooted";
    case DomainEventKind::kMigrated: return "migrated";
    case DomainEventKind::kDeviceAdded: return "device-added";
    case DomainEventKind::kDeviceRemoved: return "device-removed";
    case DomainEventKind::kMemoryDeviceResized: return "memory-device-resized";
  }
  return "?";
}

const char* to_string(ConnectionState state) {
  switch (state) {
    case ConnectionState::kDisconnected: return "disconnected";
    case ConnectionState::kConnecting: return "connecting";
    case ConnectionState::kConnected: return "connected";
  }
  return "?";
}

}  // namespace stallmon::libvirt
