// SPDX-License-Identifier: Apache-2.0
// WatchFindings across a daemon restart (issue 14 item 1): two hermetic agents one after the
// other (two daemon runs: new monitor, new engine, new server) sharing one finding store, wired
// as stallmond's "open finding store" step does. A client that saw a revision of the first run
// resumes on the second without RESYNC and then sees the restored finding continued live.
// Simulated time; client deadlines are hang guards only.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <stdlib.h>

#include <filesystem>

#include "hermetic_agent.h"
#include "stallmon/server/server.h"
#include "stallmon/store/finding_db.h"
#include "stallmon/v1/stallmon.grpc.pb.h"

namespace stallmon::server {
namespace {

using namespace std::chrono_literals;
using testing::HermeticAgent;

struct Dir {
  Dir() {
    char tmpl[] = "/tmp/stallmon-store-resume-XXXXXX";
    path = mkdtemp(tmpl) ? tmpl : "";
  }
  ~Dir() { std::filesystem::remove_all(path); }
  std::string path;
};

// The daemon's start-up order: open the store, restore the engine, then listen.
std::unique_ptr<store::FindingDb> attach_store(HermeticAgent& agent, const std::string& path,
                                               const diagnosis::Clock& clock, bool* resumable) {
  auto db = store::FindingDb::open(store::StoreOptions{.path = path}, clock);
  EXPECT_TRUE(db.ok()) << db.error().to_string();
  if (!db.ok()) return nullptr;
  const auto& c = agent.monitor.engine().config();
  auto loaded = (*db)->load(c.max_resolved_history, c.max_event_log);
  EXPECT_TRUE(loaded.ok());
  if (!loaded.ok()) return nullptr;
  *resumable = loaded->resumable;
  EXPECT_TRUE(agent.monitor.engine().restore(std::move(loaded->findings)).ok());
  agent.monitor.add_finding_listener(db->get());
  return std::move(*db);
}

TEST(StoreResumeTest, WatchFindingsResumesAcrossACleanRestartWithoutResync) {
  Dir dir;
  ASSERT_FALSE(dir.path.empty());
  const std::string path = dir.path + "/findings.db";
  // Retention is dated by this clock: at the epoch, nothing the simulated runs write is old.
  diagnosis::ManualClock retention_clock(diagnosis::Timestamp{});
  uint64_t incarnation = 0, seen = 0, last = 0;
  std::string active_id;
  {
    HermeticAgent first;
    auto& demo = first.add("demo", "uuid-demo", 4);
    bool resumable = true;
    auto db = attach_store(first, path, retention_clock, &resumable);
    ASSERT_TRUE(db);
    EXPECT_FALSE(resumable);
    first.tick(3);
    first.block(demo, 1);
    seen = first.thaw(demo, 1);  // what the client saw before the restart
    last = first.block(demo, 2);
    ASSERT_GT(last, seen);
    const auto active = first.monitor.engine().active_findings();
    ASSERT_EQ(active.size(), 1u);
    active_id = active[0].id;
    incarnation = db->incarnation();
    // Shutdown: the monitor stops before the store closes (no event after the clean mark).
    first.monitor.stop();
    first.monitor.remove_finding_listener(db.get());
    db->stop();
  }

  HermeticAgent second;
  auto& demo = second.add("demo", "uuid-demo", 4);
  demo.block_vcpu(2);  // still frozen across the restart
  bool resumable = false;
  auto db = attach_store(second, path, retention_clock, &resumable);
  ASSERT_TRUE(db);
  EXPECT_TRUE(resumable);
  ASSERT_EQ(db->incarnation(), incarnation);
  ServerOptions o;
  o.unix_socket = dir.path + "/stallmond.sock";
  o.shutdown_grace = 500ms;
  GrpcServer server(second.backend, o, db->incarnation());
  ASSERT_TRUE(server.start().ok());
  auto stub = v1::Stallmon::NewStub(grpc::CreateChannel("unix:" + o.unix_socket, grpc::InsecureChannelCredentials()));

  // ListFindings before the second run's first tick: the first run's findings, same revision.
  {
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + 60s);
    v1::ListFindingsResponse resp;
    ASSERT_TRUE(stub->ListFindings(&c, {}, &resp).ok());
    EXPECT_EQ(resp.revision(), last);
    EXPECT_EQ(resp.incarnation(), incarnation);
    ASSERT_EQ(resp.findings_size(), 2);
    EXPECT_EQ(resp.findings(0).id(), active_id);
    EXPECT_TRUE(resp.findings(0).active());
    EXPECT_FALSE(resp.findings(1).active());
  }

  grpc::ClientContext c;
  c.set_deadline(std::chrono::system_clock::now() + 60s);
  v1::WatchFindingsRequest req;
  req.set_after_revision(seen);
  req.set_incarnation(incarnation);
  auto reader = stub->WatchFindings(&c, req);
  v1::FindingEvent e;
  uint64_t expect = seen;
  for (;;) {
    ASSERT_TRUE(reader->Read(&e));
    ASSERT_NE(e.type(), v1::FindingEvent::RESYNC) << "the log spans the restart";
    if (e.type() == v1::FindingEvent::SYNCED) break;
    EXPECT_EQ(e.revision(), ++expect) << "every event of the first run after the one seen";
  }
  EXPECT_EQ(expect, last);
  EXPECT_EQ(e.revision(), last);
  // Live: the second run's first ticks confirm the frozen vCPU's finding, same id.
  second.tick(8);
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::FindingEvent::UPDATED);
  EXPECT_EQ(e.revision(), last + 1);
  EXPECT_EQ(e.finding().id(), active_id);
  EXPECT_EQ(e.incarnation(), incarnation);
  c.TryCancel();
  (void)reader->Finish();
  server.shutdown();
  second.monitor.remove_finding_listener(db.get());
  db->stop();
}

}  // namespace
}  // namespace stallmon::server
