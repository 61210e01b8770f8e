// SPDX-License-Identifier: Apache-2.0
#include "libvirt_events.h"

#include <gtest/gtest.h>
#include <libvirt/libvirt.h>

namespace stallmon::libvirt {
namespace {

TEST(LifecycleEvents, MapsWhatTheDaemonCaresAbout) {
  struct Case {
    int event, detail;
    DomainEventKind kind;
    const char* detail_text;
  };
  const Case cases[] = {
      {VIR_DOMAIN_EVENT_STARTED, VIR_DOMAIN_EVENT_STARTED_BOOTED, DomainEventKind::kStarted, "booted"},
      {VIR_DOMAIN_EVENT_STARTED, VIR_DOMAIN_EVENT_STARTED_MIGRATED, DomainEventKind::kMigrated, "migrated in"},
      {VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_DESTROYED, DomainEventKind::kStopped, "destroyed"},
      {VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_CRASHED, DomainEventKind::kCrashed, "stopped after crash"},
      {VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_MIGRATED, DomainEventKind::kMigrated, "migrated out"},
      {VIR_DOMAIN_EVENT_CRASHED, VIR_DOMAIN_EVENT_CRASHED_PANICKED, DomainEventKind::kCrashed, "panicked"},
      {VIR_DOMAIN_EVENT_SUSPENDED, VIR_DOMAIN_EVENT_SUSPENDED_PAUSED, DomainEventKind::kSuspended, "paused"},
      {VIR_DOMAIN_EVENT_SUSPENDED, VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED, DomainEventKind::kSuspended, "migrating"},
      {VIR_DOMAIN_EVENT_RESUMED, VIR_DOMAIN_EVENT_RESUMED_UNPAUSED, DomainEventKind::kResumed, "unpaused"},
      {VIR_DOMAIN_EVENT_SHUTDOWN, VIR_DOMAIN_EVENT_SHUTDOWN_GUEST, DomainEventKind::kShutdown, "by guest"},
      {VIR_DOMAIN_EVENT_PMSUSPENDED, VIR_DOMAIN_EVENT_PMSUSPENDED_MEMORY, DomainEventKind::kPmSuspended, "memory"},
      {VIR_DOMAIN_EVENT_DEFINED, VIR_DOMAIN_EVENT_DEFINED_ADDED, DomainEventKind::kDefined, "added"},
      {VIR_DOMAIN_EVENT_UNDEFINED, VIR_DOMAIN_EVENT_UNDEFINED_REMOVED, DomainEventKind::kUndefined, "removed"},
  };
  for (const auto& c : cases) {
    DomainEvent ev = map_lifecycle_event(c.event, c.detail);
    EXPECT_EQ(ev.kind, c.kind) << c.event << "/" << c.detail;
    EXPECT_EQ(ev.detail, c.detail_text) << c.event << "/" << c.detail;
  }
}

TEST(LifecycleEvents, UnknownEventsAreKeptNotDropped) {
  DomainEvent ev = map_lifecycle_event(999, 3);
  EXPECT_NE(ev.detail.find("999/3"), std::string::npos);
}

TEST(LifecycleEvents, NamesAreStable) {
  EXPECT_STREQ(to_string(DomainEventKind::kRebooted), "rebooted");
  EXPECT_STREQ(to_string(VcpuSource::kThreadNames), "thread-names");
  EXPECT_STREQ(to_string(ConnectionState::kConnected), "connected");
}

}  // namespace
}  // namespace stallmon::libvirt
