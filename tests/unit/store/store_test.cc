// SPDX-License-Identifier: Apache-2.0
// FindingDb and its codec: round trips, bounds on guest-sourced text, retention by age and by
// size, clean and unclean restarts, and files that are not ours. Simulated time (ManualClock);
// no writer thread (flush() writes), so nothing here waits.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "codec.h"
#include "store_fixture.h"

namespace stallmon::store::testing {
namespace {

using T = FindingEvent::Type;

StoreOptions options(const TempDir& dir) {
  StoreOptions o;
  o.path = dir.file("findings.db");
  return o;
}

std::unique_ptr<FindingDb> open_ok(const StoreOptions& o, const diagnosis::Clock& clock) {
  auto db = FindingDb::open(o, clock);
  EXPECT_TRUE(db.ok()) << db.error().to_string();
  return db.ok() ? std::move(*db) : nullptr;
}

// A closed store holding these resolved findings, resolved one a second from now on.
bool store_resolved(const StoreOptions& o, const diagnosis::Clock& clock, const std::vector<std::string>& ids) {
  auto db = open_ok(o, clock);
  if (!db) return false;
  uint64_t rev = 0;
  for (const auto& id : ids) {
    ++rev;
    const Timestamp at = clock.now() + static_cast<int64_t>(rev) * 1s;
    db->on_finding_event(event(T::kResolved, rev, finding(id, FindingKind::kVcpuHostBlocked, at, false), id));
  }
  db->stop();
  return db->stats().events_written == ids.size();
}

TEST(StoreCodec, EveryFieldRoundTrips) {
  const Timestamp t0(std::chrono::seconds(1'700'000'000));
  Finding f = finding("vm1/GUEST_IPI_STALL/root=cpu2/3", FindingKind::kGuestIpiStall, t0, false);
  f.cpus = {0, 2};
  f.predicted_guest_report_in = 14s;
  f.explained_by = "vm1/VCPU_HOST_BLOCKED/vcpu2/1";
  f.incident_id = "vm1/VCPU_HOST_BLOCKED/vcpu2/1";
  f.symptom_ids = {"a", "b"};
  f.recurrences = 7;
  f.cause_evaluating = true;
  diagnosis::Evidence e;
  e.text = "CPU0 waits on CPU2";
  e.cpu = 0;
  e.csd_wait = diagnosis::CsdWaitEvidence{0, 2, 4216ms, "do_sync_core", 0xffff8a20df5384e0ull, 0x11};
  e.lock_wait = diagnosis::LockWaitEvidence{2, "native_queued_spin_lock_slowpath+0x5d/0x190", 1, {1, 3}, "the only other stuck CPU"};
  e.wait_roots = diagnosis::WaitRootsEvidence{{2}, {0, 1}, false};
  diagnosis::KernelTraceEvidence kt;
  kt.trace.frames = {"csd_lock_wait+0x1f/0x30", "smp_call_function_many_cond+0x1a0/0x420"};
  kt.trace.truncated = true;
  kt.trace.verification = diagnosis::TraceVerification::kInterruptFrame;
  kt.trace.pid = 138;
  kt.trace.comm = "sh";
  kt.trace.taken_at = t0;
  kt.trace.irq_frames = 1;
  kt.trace.interrupted = 1;
  kt.age = 20ms;
  kt.stable_frames = 2;
  kt.stable_snapshots = 4;
  e.kernel_trace = kt;
  e.panic_text = diagnosis::PanicTextEvidence{12, "Kernel panic - not syncing: x"};
  e.stack_overflow = diagnosis::StackOverflowEvidence{1, 77, "stackend/1"};
  f.evidence.push_back(e);

  auto back = decode_finding(encode_finding(f));
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  const Finding& g = *back;
  EXPECT_EQ(g.id, f.id);
  EXPECT_EQ(g.kind, f.kind);
  EXPECT_EQ(g.severity, f.severity);
  EXPECT_EQ(g.cause, f.cause);
  EXPECT_EQ(g.cpus, f.cpus);
  EXPECT_EQ(g.onset, f.onset);
  EXPECT_EQ(g.opened_at, f.opened_at);
  EXPECT_EQ(g.last_update, f.last_update);
  EXPECT_EQ(g.resolved_at, f.resolved_at);
  EXPECT_EQ(g.active, f.active);
  EXPECT_EQ(g.duration, f.duration);
  EXPECT_EQ(g.summary, f.summary);
  EXPECT_EQ(g.predicted_guest_report_in, f.predicted_guest_report_in);
  EXPECT_EQ(g.explained_by, f.explained_by);
  EXPECT_EQ(g.incident_id, f.incident_id);
  EXPECT_EQ(g.symptom_ids, f.symptom_ids);
  EXPECT_EQ(g.recurrences, 7u);
  EXPECT_TRUE(g.cause_evaluating);
  ASSERT_EQ(g.evidence.size(), 2u);
  // The API's view of each link is the same (every typed field rendered under its key).
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(diagnosis::evidence_facts(g.evidence[i]), diagnosis::evidence_facts(f.evidence[i]));
    EXPECT_EQ(g.evidence[i].text, f.evidence[i].text);
    EXPECT_EQ(g.evidence[i].host_stack, f.evidence[i].host_stack);
  }
  const auto& t = g.evidence[1].kernel_trace->trace;
  EXPECT_EQ(t.frames, kt.trace.frames);
  EXPECT_EQ(t.interrupted, std::optional<std::size_t>(1));
  EXPECT_EQ(t.verification, diagnosis::TraceVerification::kInterruptFrame);
  EXPECT_EQ(g.evidence[1].lock_wait->holder_candidates, (std::vector<int>{1, 3}));
  EXPECT_EQ(g.evidence[1].stack_overflow->comm, "stackend/1");
}

TEST(StoreCodec, GuestSizedTextIsBoundedAndValid) {
  Finding f = finding("vm1/GUEST_PANIC/5", FindingKind::kGuestPanic, Timestamp(std::chrono::seconds(1)));
  f.cpus.assign(100000, 1);
  f.summary = std::string(1 << 20, 'x') + "\xff\xfe";  // a megabyte, then invalid UTF-8
  f.domain = "vm\xc3";                                 // a split character
  f.evidence.clear();
  for (int i = 0; i < 200; ++i) {
    diagnosis::Evidence e;
    e.text = std::string(10000, 'e');
    for (int j = 0; j < 100; ++j) e.host_stack.push_back(std::string(600, 's'));
    f.evidence.push_back(std::move(e));
  }
  const std::string body = encode_finding(f);
  EXPECT_LE(body.size(), kMaxBody);
  auto back = decode_finding(body);
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_LE(back->summary.size(), kMaxText);
  EXPECT_EQ(back->domain, "vm\xEF\xBF\xBD");
  EXPECT_LE(back->evidence.size(), kMaxList);
  EXPECT_GE(back->evidence.size(), 1u) << "the first links are kept";
  for (const auto& e : back->evidence) {
    EXPECT_LE(e.host_stack.size(), kMaxList);
    for (const auto& s : e.host_stack) EXPECT_LE(s.size(), kMaxName);
  }
  EXPECT_EQ(back->cpus.size(), kMaxIds);
  EXPECT_EQ(bounded("ab\xc3\xa9", 3), "ab") << "cut before a split character, never inside it";
  EXPECT_EQ(bounded("a\xff", 10), "a\xEF\xBF\xBD");
}

TEST(StoreCodec, MalformedTextIsAnErrorValue) {
  const std::vector<std::string> bads = {"", "[]", "{\"v\":1}", "{\"v\":2,\"id\":\"x\"}", "not json",
                                         std::string(kMaxBody + 1, ' ')};
  for (const std::string& bad : bads) {
    auto r = decode_finding(bad);
    ASSERT_FALSE(r.ok()) << bad.substr(0, 40);
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  }
  // A list over its bound in a file is refused, not truncated silently.
  Finding f = finding("vm1/X/1", FindingKind::kVcpuHostBlocked, Timestamp(std::chrono::seconds(1)));
  std::string body = encode_finding(f);
  const std::string cpus = "\"cpus\":[2]";
  std::string many = "\"cpus\":[";
  for (int i = 0; i < 1000; ++i) many += (i ? ",1" : "1");
  body.replace(body.find(cpus), cpus.size(), many + "]");
  auto r = decode_finding(body);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("cpus"), std::string::npos) << r.error().message;
}

TEST(StoreCodec, TheFuzzSeedsDecodeAsIntended) {
  // tests/fuzz/corpus/finding_codec: the full seed reaches every field, the others are refused.
  const std::string dir = std::string(STALLMON_SOURCE_DIR) + "/tests/fuzz/corpus/finding_codec/";
  auto read = [&](const char* name) {
    std::ifstream in(dir + name, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  auto full = decode_finding(read("full.json"));
  ASSERT_TRUE(full.ok()) << full.error().to_string();
  ASSERT_EQ(full->evidence.size(), 1u);
  EXPECT_TRUE(full->evidence[0].csd_wait && full->evidence[0].lock_wait && full->evidence[0].kernel_trace &&
              full->evidence[0].stack_overflow && full->evidence[0].panic_text && full->evidence[0].wait_roots);
  EXPECT_EQ(full->evidence[0].csd_wait->csd_address, 0xffff8a20df5384e0ull);
  EXPECT_TRUE(decode_finding(read("minimal.json")).ok());
  EXPECT_FALSE(decode_finding(read("wrong_type.json")).ok());
  EXPECT_FALSE(decode_finding(read("garbage.txt")).ok());
}

TEST(FindingDbTest, FindingsAndEventsRoundTripAcrossACleanRestart) {
  TempDir dir;
  diagnosis::ManualClock clock;
  const Timestamp t0 = clock.now();
  uint64_t incarnation = 0;
  {
    auto db = open_ok(options(dir), clock);
    ASSERT_TRUE(db);
    incarnation = db->incarnation();
    EXPECT_EQ(std::filesystem::status(dir.file("findings.db")).permissions(),
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write)
        << "guest-sourced text: not world-readable";
    auto loaded = db->load(1000, 10000);
    ASSERT_TRUE(loaded.ok());
    EXPECT_FALSE(loaded->resumable) << "a new file has nothing to resume";
    EXPECT_EQ(loaded->findings.revision, 0u);
    const std::string a = "vm1/VCPU_HOST_BLOCKED/vcpu2/1", b = "vm1/GUEST_IPI_STALL/root=cpu2/2";
    db->on_finding_event(event(T::kOpened, 1, finding(a, FindingKind::kVcpuHostBlocked, t0), "uuid-vm1|VCPU_HOST_BLOCKED|2"));
    db->on_finding_event(event(T::kUpdated, 2, finding(a, FindingKind::kVcpuHostBlocked, t0 + 1s), "uuid-vm1|VCPU_HOST_BLOCKED|2"));
    db->on_finding_event(event(T::kOpened, 3, finding(b, FindingKind::kGuestIpiStall, t0 + 1s), "uuid-vm1|GUEST_IPI_STALL|root=2"));
    ASSERT_TRUE(db->flush().ok());
    db->on_finding_event(event(T::kResolved, 4, finding(a, FindingKind::kVcpuHostBlocked, t0 + 2s, false), "uuid-vm1|VCPU_HOST_BLOCKED|2"));
    db->stop();  // writes what is queued, marks the file clean
    EXPECT_EQ(db->stats().events_written, 4u);
    EXPECT_EQ(db->stats().batches, 2u);
  }
  auto db = open_ok(options(dir), clock);
  ASSERT_TRUE(db);
  EXPECT_EQ(db->incarnation(), incarnation) << "a clean restart keeps the revision sequence";
  auto loaded = db->load(1000, 10000);
  ASSERT_TRUE(loaded.ok()) << loaded.error().to_string();
  EXPECT_TRUE(loaded->resumable) << loaded->why_not_resumable;
  EXPECT_EQ(loaded->rows_skipped, 0u);
  const auto& r = loaded->findings;
  EXPECT_EQ(r.revision, 4u);
  EXPECT_EQ(r.next_seq, 3u) << "above the highest id sequence (2)";
  ASSERT_EQ(r.resolved.size(), 1u);
  EXPECT_EQ(r.resolved[0].id, "vm1/VCPU_HOST_BLOCKED/vcpu2/1");
  EXPECT_FALSE(r.resolved[0].active);
  EXPECT_EQ(r.resolved[0].resolved_at, t0 + 2s);
  EXPECT_EQ(r.resolved[0].evidence.at(0).host_stack, (std::vector<std::string>{"__refrigerator", "get_signal"}));
  ASSERT_EQ(r.active.size(), 1u);
  EXPECT_EQ(r.active[0].condition_key, "uuid-vm1|GUEST_IPI_STALL|root=2");
  EXPECT_EQ(r.active[0].finding.id, "vm1/GUEST_IPI_STALL/root=cpu2/2");
  ASSERT_EQ(r.events.size(), 4u);
  for (uint64_t i = 0; i < 4; ++i) EXPECT_EQ(r.events[i].revision, i + 1);
  EXPECT_EQ(r.events[1].type, T::kUpdated);
  EXPECT_EQ(r.events[1].finding.last_update, t0 + 1s);
  EXPECT_EQ(r.events[3].condition_key, "uuid-vm1|VCPU_HOST_BLOCKED|2");
  // The event log holds at most what was asked, newest kept.
  auto two = db->load(1, 2);
  ASSERT_TRUE(two.ok());
  ASSERT_EQ(two->findings.events.size(), 2u);
  EXPECT_EQ(two->findings.events[0].revision, 3u);
}

TEST(FindingDbTest, ADroppedEventMakesTheNextStartResync) {
  TempDir dir;
  diagnosis::ManualClock clock;
  uint64_t incarnation = 0;
  {
    StoreOptions o = options(dir);
    o.queue_max = 2;  // a disk slower than the events
    auto db = open_ok(o, clock);
    ASSERT_TRUE(db);
    ASSERT_TRUE(db->load(10, 10).ok());
    incarnation = db->incarnation();
    for (uint64_t rev = 1; rev <= 5; ++rev)
      db->on_finding_event(event(T::kUpdated, rev, finding("vm1/K/1", FindingKind::kVcpuHostBlocked, clock.now()), "k"));
    EXPECT_EQ(db->stats().events_dropped, 3u);
    EXPECT_EQ(db->stats().queue_length, 2u);
    db->stop();
  }
  auto db = open_ok(options(dir), clock);
  ASSERT_TRUE(db);
  auto loaded = db->load(10, 10);
  ASSERT_TRUE(loaded.ok());
  EXPECT_FALSE(loaded->resumable);
  EXPECT_NE(db->incarnation(), incarnation) << "clients must resync: the log has a gap";
  EXPECT_EQ(loaded->findings.revision, 5u);
  ASSERT_EQ(loaded->findings.events.size(), 2u);
  EXPECT_EQ(loaded->findings.events.back().revision, 5u);
  ASSERT_EQ(loaded->findings.active.size(), 1u) << "the newest state of the finding was kept";
}

TEST(FindingDbTest, ALostResolveLeavesTheNewestFindingOfAConditionActive) {
  TempDir dir;
  diagnosis::ManualClock clock;
  const Timestamp t0 = clock.now();
  {
    auto db = open_ok(options(dir), clock);
    ASSERT_TRUE(db);
    // A's RESOLVED (revision 2) never reached the file (a full queue); B reopened the condition.
    db->on_finding_event(event(T::kOpened, 1, finding("vm1/K/1", FindingKind::kVcpuHostBlocked, t0), "key"));
    db->on_finding_event(event(T::kOpened, 3, finding("vm1/K/2", FindingKind::kVcpuHostBlocked, t0 + 5s), "key"));
    db->stop();
  }
  for (int start = 0; start < 2; ++start) {
    auto db = open_ok(options(dir), clock);
    ASSERT_TRUE(db);
    auto loaded = db->load(10, 10);
    ASSERT_TRUE(loaded.ok()) << loaded.error().to_string();
    const auto& r = loaded->findings;
    ASSERT_EQ(r.active.size(), 1u) << "start " << start;
    EXPECT_EQ(r.active[0].finding.id, "vm1/K/2");
    ASSERT_EQ(r.resolved.size(), 1u) << "start " << start;
    EXPECT_EQ(r.resolved[0].id, "vm1/K/1");
    EXPECT_EQ(r.resolved[0].resolved_at, t0) << "closed as of its last confirmation";
    EXPECT_EQ(loaded->rows_skipped, 0u);
    db->stop();
  }
}

TEST(FindingDbTest, RetentionByAgeKeepsActiveFindings) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  o.max_age = std::chrono::hours(24);
  auto db = open_ok(o, clock);
  ASSERT_TRUE(db);
  const Timestamp old = clock.now();
  db->on_finding_event(event(T::kOpened, 1, finding("vm1/A/1", FindingKind::kVcpuHostBlocked, old), "a"));
  db->on_finding_event(event(T::kResolved, 2, finding("vm1/A/1", FindingKind::kVcpuHostBlocked, old, false), "a"));
  db->on_finding_event(event(T::kOpened, 3, finding("vm1/B/2", FindingKind::kVcpuHostStarved, old), "b"));
  ASSERT_TRUE(db->flush().ok());
  clock.advance(std::chrono::hours(25));
  const Timestamp now = clock.now();
  db->on_finding_event(event(T::kOpened, 4, finding("vm1/C/3", FindingKind::kGuestPanic, now), "c"));
  db->on_finding_event(event(T::kResolved, 5, finding("vm1/C/3", FindingKind::kGuestPanic, now, false), "c"));
  ASSERT_TRUE(db->flush().ok());
  ASSERT_TRUE(db->enforce_retention().ok());
  EXPECT_EQ(db->stats().retention_deleted, 4u) << "A's row and the three events older than a day";
  auto loaded = db->load(100, 100);
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->findings.resolved.size(), 1u);
  EXPECT_EQ(loaded->findings.resolved[0].id, "vm1/C/3");
  ASSERT_EQ(loaded->findings.active.size(), 1u);
  EXPECT_EQ(loaded->findings.active[0].finding.id, "vm1/B/2") << "an active finding is never aged out";
  ASSERT_EQ(loaded->findings.events.size(), 2u);
  EXPECT_EQ(loaded->findings.events[0].revision, 4u);
  EXPECT_EQ(loaded->findings.next_seq, 4u) << "ids of deleted findings are not reused";
}

TEST(FindingDbTest, RetentionBySizeDropsTheOldestFirst) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  o.max_bytes = 512 * 1024;
  auto db = open_ok(o, clock);
  ASSERT_TRUE(db);
  db->on_finding_event(event(T::kOpened, 1, finding("vm1/ACTIVE/1", FindingKind::kVcpuHostBlocked, clock.now()), "active"));
  uint64_t rev = 1;
  for (int i = 0; i < 3000; ++i) {
    clock.advance(1s);
    Finding f = finding("vm1/R/" + std::to_string(i + 2), FindingKind::kVcpuHostStarved, clock.now(), false);
    f.summary = std::string(1000, 'a' + static_cast<char>(i % 26));
    db->on_finding_event(event(T::kResolved, ++rev, f, "r" + std::to_string(i)));
  }
  ASSERT_TRUE(db->flush().ok());
  // (The store holds the file exclusively: measured from outside by its size, WAL included.)
  ASSERT_GT(std::filesystem::file_size(o.path) + std::filesystem::file_size(o.path + "-wal"), 3'000'000u)
      << "several MB before retention";
  ASSERT_TRUE(db->enforce_retention().ok());
  const auto s = db->stats();
  EXPECT_LE(s.bytes_used, o.max_bytes);
  EXPECT_GT(s.bytes_used, o.max_bytes / 4) << "not everything went: " << s.bytes_used;
  auto loaded = db->load(10000, 10000);
  ASSERT_TRUE(loaded.ok());
  const auto& r = loaded->findings;
  ASSERT_FALSE(r.resolved.empty());
  EXPECT_LT(r.resolved.size(), 3000u);
  EXPECT_EQ(r.resolved.back().id, "vm1/R/3001") << "the newest stays";
  ASSERT_EQ(r.active.size(), 1u);
  EXPECT_EQ(r.active[0].finding.id, "vm1/ACTIVE/1");
  ASSERT_FALSE(r.events.empty());
  EXPECT_EQ(r.events.back().revision, rev) << "the event log keeps its newest contiguous part";
  db->stop();
  // Pages given back: the file itself shrank (auto_vacuum = INCREMENTAL, WAL truncated at close).
  EXPECT_LE(std::filesystem::file_size(o.path), o.max_bytes + 64 * 1024);
  EXPECT_EQ(sql_text(o.path, "PRAGMA integrity_check"), "ok");
}

TEST(FindingDbTest, OnlyTheEventsARestartCanServeAreKept) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  o.max_events = 5;
  auto db = open_ok(o, clock);
  ASSERT_TRUE(db);
  for (uint64_t rev = 1; rev <= 20; ++rev)
    db->on_finding_event(event(T::kUpdated, rev, finding("vm1/A/1", FindingKind::kVcpuHostBlocked, clock.now()), "a"));
  ASSERT_TRUE(db->flush().ok());
  ASSERT_TRUE(db->enforce_retention().ok());
  auto loaded = db->load(10, 100);
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(loaded->findings.events.size(), 5u);
  EXPECT_EQ(loaded->findings.events.front().revision, 16u);
  EXPECT_EQ(loaded->findings.active.size(), 1u) << "the finding itself stays";
}

TEST(FindingDbTest, RetentionRunsAtOpen) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  ASSERT_TRUE(store_resolved(o, clock, {"vm1/A/1"}));  // resolved 1 s from now
  clock.advance(o.max_age + 2s);
  auto db = open_ok(o, clock);
  ASSERT_TRUE(db);
  auto loaded = db->load(10, 10);
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->findings.resolved.empty());
  EXPECT_TRUE(loaded->findings.events.empty());
  EXPECT_EQ(loaded->findings.revision, 1u) << "revisions go on even when every event aged out";
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(FindingDbTest, AGarbageFileIsACorruptErrorAndLeftAlone) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  std::string garbage;
  for (int i = 0; i < 8192; ++i) garbage += static_cast<char>((i * 7919) & 0xff);
  std::ofstream(o.path, std::ios::binary) << garbage;
  auto db = FindingDb::open(o, clock);
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.error().code, ErrorCode::kCorrupt) << db.error().to_string();
  EXPECT_NE(db.error().message.find(o.path), std::string::npos) << db.error().message;
  EXPECT_EQ(read_all(o.path), garbage);
}

TEST(FindingDbTest, AnotherProgramsDatabaseIsRefusedAndLeftAlone) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(o.path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "CREATE TABLE photos (name TEXT); INSERT INTO photos VALUES ('cat')", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  const std::string before = read_all(o.path);
  auto db = FindingDb::open(o, clock);
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(db.error().message.find("not a stallmon finding store"), std::string::npos) << db.error().message;
  EXPECT_EQ(read_all(o.path), before) << "not switched to WAL, no tables added";
  EXPECT_EQ(sql_text(o.path, "SELECT name FROM photos"), "cat");
}

TEST(FindingDbTest, ADirectoryInPlaceOfTheFileIsAnError) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  std::filesystem::create_directory(o.path);
  auto db = FindingDb::open(o, clock);
  ASSERT_FALSE(db.ok());
  EXPECT_NE(db.error().message.find(o.path), std::string::npos) << db.error().message;
}

TEST(FindingDbTest, ACorruptRowIsSkippedNotFatal) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  ASSERT_TRUE(store_resolved(o, clock, {"vm1/A/1", "vm1/B/2"}));
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(o.path.c_str(), &raw), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(raw, "UPDATE findings SET body = '{\"v\":1,\"id\":[]}' WHERE id = 'vm1/A/1'", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(raw);
  auto db = open_ok(o, clock);
  ASSERT_TRUE(db);
  auto loaded = db->load(10, 10);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->rows_skipped, 1u);
  ASSERT_EQ(loaded->findings.resolved.size(), 1u);
  EXPECT_EQ(loaded->findings.resolved[0].id, "vm1/B/2");
}

TEST(FindingDbTest, ASecondOpenOfTheSameFileIsRefused) {
  TempDir dir;
  diagnosis::ManualClock clock;
  auto first = open_ok(options(dir), clock);
  ASSERT_TRUE(first);
  auto second = FindingDb::open(options(dir), clock);
  ASSERT_FALSE(second.ok()) << "one daemon per store";
  EXPECT_NE(second.error().message.find("locked"), std::string::npos) << second.error().message;
}

TEST(FindingDbTest, TheWriterThreadCommitsWithoutFlush) {
  TempDir dir;
  diagnosis::ManualClock clock;
  StoreOptions o = options(dir);
  o.batch_max = 3;  // a full batch wakes the writer at once
  auto db = open_ok(o, clock);
  ASSERT_TRUE(db);
  db->start();
  for (uint64_t rev = 1; rev <= 3; ++rev)
    db->on_finding_event(event(T::kUpdated, rev, finding("vm1/A/1", FindingKind::kVcpuHostBlocked, clock.now()), "a"));
  db->stop();  // joins the writer after its last batch
  EXPECT_EQ(db->stats().events_written, 3u);
  EXPECT_EQ(sql_int(o.path, "SELECT count(*) FROM events"), 3);
  EXPECT_EQ(sql_text(o.path, "SELECT value FROM meta WHERE key = 'clean_shutdown'"), "1");
}

}  // namespace
}  // namespace stallmon::store::testing
