// SPDX-License-Identifier: Apache-2.0
#include "stallmon/store/finding_db.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "codec.h"

namespace stallmon::store {
namespace {

using diagnosis::Finding;
using diagnosis::FindingEvent;

// "STLM": PRAGMA application_id of a stallmon finding store; any other value is a foreign file.
constexpr int32_t kApplicationId = 0x53544c4d;
constexpr int kSchemaVersion = 1;
constexpr std::size_t kMaxActiveLoaded = 100000;

const char* const kSchema = R"sql(
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- One row per finding: its latest state. at_ns: resolved_at, or last_update while active.
CREATE TABLE findings (
  id TEXT PRIMARY KEY,
  condition_key TEXT NOT NULL,
  active INTEGER NOT NULL,
  at_ns INTEGER NOT NULL,
  revision INTEGER NOT NULL,
  body TEXT NOT NULL);
CREATE INDEX findings_by_time ON findings (active, at_ns);
-- The event log (WatchFindings resume): the finding as of each event.
CREATE TABLE events (
  revision INTEGER PRIMARY KEY,
  at_ns INTEGER NOT NULL,
  type INTEGER NOT NULL,
  finding_id TEXT NOT NULL,
  condition_key TEXT NOT NULL,
  body TEXT NOT NULL);
CREATE INDEX events_by_time ON events (at_ns);
)sql";

// Added to schema version 1 (an older file gains it at open; an older stallmond ignores it):
// the incident bundle of a critical finding, its newest state. at_ns: the window's end, or the
// finding's last update while open. Deleted with its finding.
const char* const kIncidentSchema = R"sql(
CREATE TABLE IF NOT EXISTS incidents (
  finding_id TEXT PRIMARY KEY,
  complete INTEGER NOT NULL,
  at_ns INTEGER NOT NULL,
  body TEXT NOT NULL);
)sql";

// A bundle goes with its finding (retention of the findings is the bundles' retention).
const char* const kOrphanIncidents = "DELETE FROM incidents WHERE finding_id NOT IN (SELECT id FROM findings)";

Error sql_error(sqlite3* db, const std::string& what) {
  const int code = sqlite3_errcode(db);
  const ErrorCode ec = (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) ? ErrorCode::kCorrupt : ErrorCode::kIo;
  return Error(ec, what + ": " + sqlite3_errmsg(db));
}

Result<void> exec(sqlite3* db, const std::string& sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg) != SQLITE_OK) {
    Error e = sql_error(db, sql.substr(0, sql.find_first_of("(\n")));
    if (msg) {
      e.message += std::string(" (") + msg + ")";
      sqlite3_free(msg);
    }
    return e;
  }
  return {};
}

// A prepared statement, finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) s_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return s_ != nullptr; }
  sqlite3_stmt* get() { return s_; }
  void bind(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  void bind(int i, const std::string& v) { sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int step() { return sqlite3_step(s_); }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  int64_t integer(int col) { return sqlite3_column_int64(s_, col); }
  std::string text(int col) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, col))) : std::string();
  }

 private:
  sqlite3_stmt* s_ = nullptr;
};

Result<int64_t> query_int(sqlite3* db, const char* sql) {
  Stmt s(db, sql);
  if (!s.ok()) return sql_error(db, sql);
  const int rc = s.step();
  if (rc == SQLITE_ROW) return s.integer(0);
  if (rc == SQLITE_DONE) return int64_t{0};
  return sql_error(db, sql);
}

Result<std::string> meta(sqlite3* db, const std::string& key) {
  Stmt s(db, "SELECT value FROM meta WHERE key = ?1");
  if (!s.ok()) return sql_error(db, "read meta");
  s.bind(1, key);
  const int rc = s.step();
  if (rc == SQLITE_ROW) return s.text(0);
  if (rc == SQLITE_DONE) return std::string();
  return sql_error(db, "read meta " + key);
}

Result<void> set_meta(sqlite3* db, const std::string& key, const std::string& value) {
  Stmt s(db, "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value");
  if (!s.ok()) return sql_error(db, "write meta");
  s.bind(1, key);
  s.bind(2, value);
  if (s.step() != SQLITE_DONE) return sql_error(db, "write meta " + key);
  return {};
}

uint64_t to_u64(const std::string& s) {
  try {
    return s.empty() ? 0 : std::stoull(s);
  } catch (const std::exception&) {
    return 0;
  }
}

// The sequence number ending a finding id ("vm1/GUEST_IPI_STALL/cpu2/17" → 17), or 0.
uint64_t id_seq(const std::string& id) {
  const auto slash = id.rfind('/');
  const std::string tail = slash == std::string::npos ? id : id.substr(slash + 1);
  if (tail.empty() || tail.size() > 19 || tail.find_first_not_of("0123456789") != std::string::npos) return 0;
  return std::stoull(tail);
}

int64_t event_time(const Finding& f) {
  return (f.resolved_at ? *f.resolved_at : f.last_update).time_since_epoch().count();
}

uint64_t random_incarnation() {
  std::random_device rd;
  uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
               static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  return v == 0 ? 1 : v;
}

struct OpenState {
  bool resumable = false;
  std::string why;
};

}  // namespace

FindingDb::FindingDb(StoreOptions options, const diagnosis::Clock& clock, sqlite3* db)
    : options_(std::move(options)), clock_(clock), db_(db) {}

FindingDb::~FindingDb() {
  stop();
}

Result<std::unique_ptr<FindingDb>> FindingDb::open(StoreOptions options, const diagnosis::Clock& clock) {
  if (options.path.empty()) return Error(ErrorCode::kInvalidArgument, "finding store: no path");
  if (options.queue_max == 0 || options.batch_max == 0 || options.flush_interval <= diagnosis::Duration::zero())
    return Error(ErrorCode::kInvalidArgument, "finding store: queue_max, batch_max and flush_interval must be positive");
  // A new store is created 0600: it holds what the API serves on a 0660 socket (guest task
  // names, console text), and SQLite gives its WAL the database file's mode.
  if (int fd = ::open(options.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600); fd >= 0) {
    ::close(fd);
  }
  sqlite3* raw = nullptr;
  // No symlink in place of the file (the state directory is root's; a link there is not ours).
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW;
  if (sqlite3_open_v2(options.path.c_str(), &raw, flags, nullptr) != SQLITE_OK) {
    Error e(ErrorCode::kIo, options.path + ": " + (raw ? sqlite3_errmsg(raw) : "cannot open"));
    sqlite3_close_v2(raw);
    return e;
  }
  std::unique_ptr<FindingDb> self(new FindingDb(std::move(options), clock, raw));
  auto fail = [&](Error e) -> Error {
    sqlite3_close_v2(self->db_);
    self->db_ = nullptr;
    self->stopped_ = true;
    return std::move(e).context(self->options_.path);
  };
  sqlite3* db = self->db_;
  sqlite3_extended_result_codes(db, 0);
  // One daemon per store: the lock is held from the first read to close (a second stallmond
  // gets "database is locked" rather than writing into the first one's file).
  if (auto r = exec(db, "PRAGMA locking_mode = EXCLUSIVE"); !r.ok()) return fail(r.error());
  // Identify the file before changing anything in it: a foreign or corrupt file stays as it is.
  auto app_id = query_int(db, "PRAGMA application_id");
  if (!app_id.ok()) return fail(app_id.error());
  auto tables = query_int(db, "SELECT count(*) FROM sqlite_schema");
  if (!tables.ok()) return fail(tables.error());
  const bool fresh = *app_id == 0 && *tables == 0;
  if (!fresh && *app_id != kApplicationId)
    return fail(Error(ErrorCode::kCorrupt, "not a stallmon finding store (application_id " + std::to_string(*app_id) +
                                               ", " + std::to_string(*tables) + " schema objects); move it away"));
  auto version = query_int(db, "PRAGMA user_version");
  if (!version.ok()) return fail(version.error());
  if (!fresh && *version != kSchemaVersion)
    return fail(Error(ErrorCode::kUnsupported, "finding store schema version " + std::to_string(*version) +
                                                   " (this stallmond reads " + std::to_string(kSchemaVersion) + ")"));
  if (fresh) {
    // auto_vacuum must be chosen before the first table: retention gives pages back with
    // incremental_vacuum.
    for (const char* sql : {"PRAGMA auto_vacuum = INCREMENTAL", "PRAGMA application_id = 1398033485",
                            "PRAGMA user_version = 1"}) {
      if (auto r = exec(db, sql); !r.ok()) return fail(r.error());
    }
  }
  static_assert(kApplicationId == 1398033485);
  // WAL + synchronous=NORMAL: a commit is one append to the WAL, never corrupting the file; an
  // application crash loses nothing committed, a power loss at most the last commits.
  auto mode = [&]() -> Result<void> {
    Stmt s(db, "PRAGMA journal_mode = WAL");
    if (!s.ok() || s.step() != SQLITE_ROW) return sql_error(db, "journal_mode = WAL");
    if (s.text(0) != "wal") return Error(ErrorCode::kUnsupported, "journal_mode is " + s.text(0) + ", not wal");
    return {};
  }();
  if (!mode.ok()) return fail(mode.error());
  for (const char* sql : {"PRAGMA synchronous = NORMAL", "PRAGMA journal_size_limit = 4194304",
                          "PRAGMA busy_timeout = 0"}) {
    if (auto r = exec(db, sql); !r.ok()) return fail(r.error());
  }
  if (fresh) {
    if (auto r = exec(db, std::string("BEGIN;") + kSchema + "COMMIT;"); !r.ok()) return fail(r.error());
  }
  if (auto r = exec(db, kIncidentSchema); !r.ok()) return fail(r.error());

  // Whether the previous run closed cleanly with every event written; then its revisions and
  // incarnation go on. The mark is cleared at once: a crash from here on is unclean.
  auto clean = meta(db, "clean_shutdown");
  auto inc = meta(db, "incarnation");
  auto seq = meta(db, "next_seq");
  if (!clean.ok()) return fail(clean.error());
  if (!inc.ok()) return fail(inc.error());
  if (!seq.ok()) return fail(seq.error());
  OpenState st;
  if (fresh) {
    st.why = "a new store";
  } else if (*clean != "1") {
    st.why = "the previous run did not stop cleanly (or lost events)";
  } else if (to_u64(*inc) == 0) {
    st.why = "no incarnation recorded";
  } else {
    st.resumable = true;
  }
  self->incarnation_ = st.resumable ? to_u64(*inc) : random_incarnation();
  self->next_seq_ = std::max<uint64_t>(1, to_u64(*seq));
  if (auto r = exec(db, "BEGIN"); !r.ok()) return fail(r.error());
  for (const auto& [k, v] : {std::pair<std::string, std::string>{"clean_shutdown", "0"},
                             {"incarnation", std::to_string(self->incarnation_)}}) {
    if (auto r = set_meta(db, k, v); !r.ok()) return fail(r.error());
  }
  if (auto r = exec(db, "COMMIT"); !r.ok()) return fail(r.error());
  if (auto r = self->enforce_retention(); !r.ok()) return fail(r.error());
  self->prev_resumable_ = st.resumable;
  self->prev_why_ = st.why;
  return self;
}

Result<LoadedFindings> FindingDb::load(std::size_t max_resolved, std::size_t max_events) {
  std::lock_guard dl(db_mu_);
  if (db_ == nullptr) return Error(ErrorCode::kInvalidArgument, "finding store is closed");
  LoadedFindings out;
  out.resumable = prev_resumable_;
  out.why_not_resumable = prev_why_;
  auto& r = out.findings;
  uint64_t seq = next_seq_;
  auto note_id = [&](const std::string& id) { seq = std::max(seq, id_seq(id) + 1); };

  {
    Stmt s(db_, "SELECT body FROM findings WHERE active = 0 ORDER BY at_ns DESC, rowid DESC LIMIT ?1");
    if (!s.ok()) return sql_error(db_, "load resolved findings");
    s.bind(1, static_cast<int64_t>(std::min<std::size_t>(max_resolved, INT64_MAX)));
    int rc;
    while ((rc = s.step()) == SQLITE_ROW) {
      auto f = decode_finding(s.text(0));
      if (!f.ok() || f->active) {
        ++out.rows_skipped;
        continue;
      }
      note_id(f->id);
      r.resolved.push_back(std::move(*f));
    }
    if (rc != SQLITE_DONE) return sql_error(db_, "load resolved findings");
    std::reverse(r.resolved.begin(), r.resolved.end());
  }
  {
    // Newest first: one condition has one active finding, but a dropped RESOLVED event can
    // leave an older one of the same condition active in the file. The newest is restored; the
    // older ones are closed here as of their last confirmation (else they would stay "active"
    // in the file for ever, out of retention's reach).
    Stmt s(db_, "SELECT condition_key, body FROM findings WHERE active = 1 ORDER BY revision DESC LIMIT ?1");
    if (!s.ok()) return sql_error(db_, "load active findings");
    s.bind(1, static_cast<int64_t>(kMaxActiveLoaded));
    std::set<std::string> keys;
    std::vector<Finding> superseded;
    int rc;
    while ((rc = s.step()) == SQLITE_ROW) {
      std::string key = bounded(s.text(0), kMaxText);
      auto f = decode_finding(s.text(1));
      if (!f.ok() || !f->active || key.empty()) {
        ++out.rows_skipped;
        continue;
      }
      note_id(f->id);
      if (!keys.insert(key).second) {
        superseded.push_back(std::move(*f));
        continue;
      }
      r.active.push_back({std::move(key), std::move(*f)});
    }
    if (rc != SQLITE_DONE) return sql_error(db_, "load active findings");
    std::reverse(r.active.begin(), r.active.end());
    for (Finding& f : superseded) {
      f.active = false;
      f.resolved_at = f.last_update;
      f.duration = f.last_update - f.onset;
      Stmt u(db_, "UPDATE findings SET active = 0, at_ns = ?1, body = ?2 WHERE id = ?3");
      if (!u.ok()) return sql_error(db_, "close superseded finding");
      u.bind(1, event_time(f));
      u.bind(2, encode_finding(f));
      u.bind(3, f.id);
      if (u.step() != SQLITE_DONE) return sql_error(db_, "close superseded finding " + f.id);
      r.resolved.push_back(std::move(f));
    }
    if (!superseded.empty()) {
      std::stable_sort(r.resolved.begin(), r.resolved.end(),
                       [](const Finding& a, const Finding& b) { return event_time(a) < event_time(b); });
      if (r.resolved.size() > max_resolved) r.resolved.erase(r.resolved.begin(), r.resolved.end() - static_cast<std::ptrdiff_t>(max_resolved));
    }
  }
  uint64_t top = 0;
  {
    // The newest events, as long as their revisions run on without a gap (an event dropped
    // from the queue, or one that does not decode, ends the run).
    Stmt s(db_, "SELECT revision, type, condition_key, body FROM events ORDER BY revision DESC LIMIT ?1");
    if (!s.ok()) return sql_error(db_, "load events");
    s.bind(1, static_cast<int64_t>(std::min<std::size_t>(max_events, INT64_MAX)));
    int rc;
    bool gap = false;
    while ((rc = s.step()) == SQLITE_ROW) {
      const auto rev = static_cast<uint64_t>(s.integer(0));
      if (top == 0) top = rev;
      if (gap) continue;
      const int64_t type = s.integer(1);
      auto f = decode_finding(s.text(3));
      const bool next = r.events.empty() || r.events.back().revision == rev + 1;
      if (!f.ok() || !next || type < 1 || type > 3 || rev == 0) {
        if (!f.ok()) ++out.rows_skipped;
        gap = true;
        continue;
      }
      FindingEvent ev;
      ev.revision = rev;
      ev.type = static_cast<FindingEvent::Type>(type);
      ev.condition_key = bounded(s.text(2), kMaxText);
      note_id(f->id);
      ev.finding = std::move(*f);
      r.events.push_back(std::move(ev));
    }
    if (rc != SQLITE_DONE) return sql_error(db_, "load events");
    std::reverse(r.events.begin(), r.events.end());
  }
  auto rev = meta(db_, "revision");
  if (!rev.ok()) return rev.error();
  auto max_finding_rev = query_int(db_, "SELECT coalesce(max(revision), 0) FROM findings");
  if (!max_finding_rev.ok()) return max_finding_rev.error();
  r.revision = std::max({to_u64(*rev), top, static_cast<uint64_t>(std::max<int64_t>(0, *max_finding_rev))});
  // A log that does not reach the last revision cannot serve a resume from within it.
  if (!r.events.empty() && r.events.back().revision != r.revision) r.events.clear();
  r.next_seq = seq;
  {
    std::lock_guard l(mu_);
    last_revision_ = r.revision;
    next_seq_ = seq;
  }
  return out;
}

void FindingDb::on_finding_event(const FindingEvent& event) {
  std::lock_guard l(mu_);
  last_revision_ = std::max(last_revision_, event.revision);
  if (stopped_ || stopping_) {
    lost_ = true;
    ++stats_.events_dropped;
    return;
  }
  if (queue_.size() >= options_.queue_max) {
    // The disk is slower than the events: the oldest goes (a later event carries the finding's
    // newer state); the event log has a gap, so the next start makes clients resync.
    queue_.pop_front();
    ++stats_.events_dropped;
    lost_ = true;
  }
  queue_.push_back(event);
  if (queue_.size() >= options_.batch_max) cv_.notify_one();
}

Result<void> FindingDb::write_batch(std::deque<FindingEvent>& batch) {
  std::lock_guard dl(db_mu_);
  if (db_ == nullptr) return Error(ErrorCode::kInvalidArgument, "finding store is closed");
  uint64_t seq = next_seq_;
  auto tx = [&]() -> Result<void> {
    STALLMON_TRY_VOID(exec(db_, "BEGIN IMMEDIATE"));
    Stmt ev(db_, "INSERT OR REPLACE INTO events (revision, at_ns, type, finding_id, condition_key, body) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
    Stmt fi(db_, "INSERT INTO findings (id, condition_key, active, at_ns, revision, body) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE SET "
                 "condition_key = excluded.condition_key, active = excluded.active, at_ns = excluded.at_ns, "
                 "revision = excluded.revision, body = excluded.body WHERE excluded.revision >= findings.revision");
    if (!ev.ok() || !fi.ok()) return sql_error(db_, "prepare");
    for (const FindingEvent& e : batch) {
      const std::string body = encode_finding(e.finding);
      const std::string id = bounded(e.finding.id, kMaxName);
      const std::string key = bounded(e.condition_key, kMaxText);
      const int64_t at = event_time(e.finding);
      const auto rev = static_cast<int64_t>(e.revision);
      ev.bind(1, rev);
      ev.bind(2, at);
      ev.bind(3, static_cast<int64_t>(e.type));
      ev.bind(4, id);
      ev.bind(5, key);
      ev.bind(6, body);
      if (ev.step() != SQLITE_DONE) return sql_error(db_, "insert event");
      ev.reset();
      fi.bind(1, id);
      fi.bind(2, key);
      fi.bind(3, e.finding.active ? 1 : 0);
      fi.bind(4, at);
      fi.bind(5, rev);
      fi.bind(6, body);
      if (fi.step() != SQLITE_DONE) return sql_error(db_, "upsert finding");
      fi.reset();
      seq = std::max(seq, id_seq(id) + 1);
    }
    STALLMON_TRY_VOID(set_meta(db_, "revision", std::to_string(batch.empty() ? 0 : batch.back().revision)));
    STALLMON_TRY_VOID(set_meta(db_, "next_seq", std::to_string(seq)));
    return exec(db_, "COMMIT");
  }();
  if (!tx.ok()) {
    (void)exec(db_, "ROLLBACK");
    return tx;
  }
  next_seq_ = seq;
  return {};
}

Result<void> FindingDb::flush() {
  std::deque<FindingEvent> batch;
  std::map<std::string, std::shared_ptr<const diagnosis::IncidentBundle>> incidents;
  {
    std::lock_guard l(mu_);
    batch.swap(queue_);
    incidents.swap(incidents_);
    incident_order_.clear();
  }
  // Findings first: a bundle's row is deleted by retention once its finding's row is gone.
  auto r = batch.empty() ? Result<void>() : write_batch(batch);
  if (!incidents.empty()) {
    auto w = write_incidents(incidents);
    std::lock_guard l(mu_);
    if (w.ok()) {
      stats_.incidents_written += *w;
      stats_.incidents_dropped += incidents.size() - *w;
    } else {
      stats_.incidents_dropped += incidents.size();
      stats_.last_error = w.error().message;
    }
  }
  if (batch.empty()) return r;
  std::lock_guard l(mu_);
  if (r.ok()) {
    stats_.events_written += batch.size();
    ++stats_.batches;
  } else {
    stats_.write_errors += batch.size();
    stats_.last_error = r.error().message;
    lost_ = true;
  }
  return r;
}

void FindingDb::on_incident(std::shared_ptr<const diagnosis::IncidentBundle> bundle) {
  if (!bundle) return;
  std::lock_guard l(mu_);
  if (stopped_ || stopping_) {
    ++stats_.incidents_dropped;
    return;
  }
  const std::string id = bundle->finding.id;
  auto it = incidents_.find(id);
  if (it != incidents_.end()) {
    it->second = std::move(bundle);  // the newer state replaces the waiting one
    return;
  }
  if (incidents_.size() >= std::max<std::size_t>(1, options_.incident_queue_max)) {
    incidents_.erase(incident_order_.front());
    incident_order_.pop_front();
    ++stats_.incidents_dropped;
  }
  incidents_.emplace(id, std::move(bundle));
  incident_order_.push_back(id);
}

Result<uint64_t> FindingDb::write_incidents(
    const std::map<std::string, std::shared_ptr<const diagnosis::IncidentBundle>>& batch) {
  // Encoded before the transaction: the database lock is held for the writes only.
  std::vector<std::pair<const diagnosis::IncidentBundle*, std::string>> rows;
  for (const auto& [id, b] : batch) {
    auto text = encode_incident(*b);
    if (text.ok()) rows.emplace_back(b.get(), std::move(text).value());
  }
  std::lock_guard dl(db_mu_);
  if (db_ == nullptr) return Error(ErrorCode::kInvalidArgument, "finding store is closed");
  auto tx = [&]() -> Result<void> {
    STALLMON_TRY_VOID(exec(db_, "BEGIN IMMEDIATE"));
    Stmt s(db_, "INSERT INTO incidents (finding_id, complete, at_ns, body) VALUES (?1, ?2, ?3, ?4) "
                "ON CONFLICT (finding_id) DO UPDATE SET complete = excluded.complete, at_ns = excluded.at_ns, "
                "body = excluded.body");
    if (!s.ok()) return sql_error(db_, "prepare incident upsert");
    for (const auto& [b, text] : rows) {
      s.bind(1, bounded(b->finding.id, kMaxName));
      s.bind(2, b->complete() ? 1 : 0);
      s.bind(3, b->window_end.value_or(b->finding.last_update).time_since_epoch().count());
      s.bind(4, text);
      if (s.step() != SQLITE_DONE) return sql_error(db_, "upsert incident " + b->finding.id);
      s.reset();
    }
    return exec(db_, "COMMIT");
  }();
  if (!tx.ok()) {
    (void)exec(db_, "ROLLBACK");
    return tx.error();
  }
  return static_cast<uint64_t>(rows.size());
}

Result<std::vector<diagnosis::IncidentBundle>> FindingDb::load_open_incidents(std::size_t max, std::size_t* skipped) {
  std::lock_guard dl(db_mu_);
  if (db_ == nullptr) return Error(ErrorCode::kInvalidArgument, "finding store is closed");
  std::vector<diagnosis::IncidentBundle> out;
  // Only bundles whose finding is still active in the file: the others cannot be continued.
  Stmt s(db_, "SELECT i.body FROM incidents i JOIN findings f ON f.id = i.finding_id "
              "WHERE i.complete = 0 AND f.active = 1 ORDER BY i.at_ns DESC LIMIT ?1");
  if (!s.ok()) return sql_error(db_, "load open incidents");
  s.bind(1, static_cast<int64_t>(std::min<std::size_t>(max, INT64_MAX)));
  int rc;
  while ((rc = s.step()) == SQLITE_ROW) {
    auto b = decode_incident(s.text(0));
    if (!b.ok() || b->complete()) {
      if (skipped) ++*skipped;
      continue;
    }
    out.push_back(std::move(b).value());
  }
  if (rc != SQLITE_DONE) return sql_error(db_, "load open incidents");
  return out;
}

Result<diagnosis::IncidentBundle> FindingDb::incident(const std::string& finding_id) {
  std::lock_guard dl(db_mu_);
  if (db_ == nullptr) return Error(ErrorCode::kInvalidArgument, "finding store is closed");
  Stmt s(db_, "SELECT body FROM incidents WHERE finding_id = ?1");
  if (!s.ok()) return sql_error(db_, "read incident");
  s.bind(1, finding_id);
  const int rc = s.step();
  if (rc == SQLITE_DONE) return Error(ErrorCode::kNotFound, "no incident bundle of finding " + finding_id + " in the store");
  if (rc != SQLITE_ROW) return sql_error(db_, "read incident " + finding_id);
  auto b = decode_incident(s.text(0));
  if (!b.ok()) return std::move(b).error().context("incident of finding " + finding_id);
  return b;
}

Result<void> FindingDb::enforce_retention() {
  diagnosis::Duration max_age;
  uint64_t max_bytes;
  {
    std::lock_guard l(mu_);
    max_age = options_.max_age;
    max_bytes = options_.max_bytes;
  }
  std::lock_guard dl(db_mu_);
  if (db_ == nullptr) return Error(ErrorCode::kInvalidArgument, "finding store is closed");
  int64_t deleted = 0;
  auto run = [&](const std::string& sql) -> Result<void> {
    STALLMON_TRY_VOID(exec(db_, sql));
    deleted += sqlite3_changes(db_);
    return {};
  };
  auto used = [&]() -> Result<uint64_t> {
    STALLMON_TRY(int64_t pages, query_int(db_, "PRAGMA page_count"));
    STALLMON_TRY(int64_t free_pages, query_int(db_, "PRAGMA freelist_count"));
    STALLMON_TRY(int64_t page_size, query_int(db_, "PRAGMA page_size"));
    return static_cast<uint64_t>(std::max<int64_t>(0, pages - free_pages) * page_size);
  };
  auto pass = [&]() -> Result<uint64_t> {
    const int64_t cutoff = (clock_.now() - max_age).time_since_epoch().count();
    STALLMON_TRY_VOID(exec(db_, "BEGIN IMMEDIATE"));
    STALLMON_TRY_VOID(run("DELETE FROM events WHERE at_ns < " + std::to_string(cutoff)));
    STALLMON_TRY_VOID(run("DELETE FROM findings WHERE active = 0 AND at_ns < " + std::to_string(cutoff)));
    STALLMON_TRY_VOID(run("DELETE FROM events WHERE revision <= (SELECT max(revision) FROM events) - " +
                          std::to_string(options_.max_events)));
    STALLMON_TRY_VOID(run(kOrphanIncidents));
    STALLMON_TRY_VOID(exec(db_, "COMMIT"));
    // Over the size: the oldest tenth of the events and resolved findings at a time (by time,
    // so the event log keeps a contiguous newest part), until the pages in use fit.
    for (int round = 0; round < 64; ++round) {
      STALLMON_TRY(uint64_t bytes, used());
      if (bytes <= max_bytes) return bytes;
      STALLMON_TRY(int64_t rows, query_int(db_, "SELECT (SELECT count(*) FROM events) + "
                                                "(SELECT count(*) FROM findings WHERE active = 0)"));
      if (rows == 0) return bytes;  // only active findings left: they stay
      const std::string nth = std::to_string(std::max<int64_t>(1, rows / 10) - 1);
      STALLMON_TRY(int64_t upto, query_int(db_, ("SELECT at_ns FROM (SELECT at_ns FROM events UNION ALL "
                                                 "SELECT at_ns FROM findings WHERE active = 0) ORDER BY at_ns "
                                                 "LIMIT 1 OFFSET " + nth).c_str()));
      STALLMON_TRY_VOID(exec(db_, "BEGIN IMMEDIATE"));
      STALLMON_TRY_VOID(run("DELETE FROM events WHERE at_ns <= " + std::to_string(upto)));
      STALLMON_TRY_VOID(run("DELETE FROM findings WHERE active = 0 AND at_ns <= " + std::to_string(upto)));
      STALLMON_TRY_VOID(run(kOrphanIncidents));
      STALLMON_TRY_VOID(exec(db_, "COMMIT"));
      // Freed pages go back to the file system (auto_vacuum = INCREMENTAL).
      STALLMON_TRY_VOID(exec(db_, "PRAGMA incremental_vacuum"));
    }
    return used();
  };
  auto bytes = pass();
  if (!bytes.ok()) {
    (void)exec(db_, "ROLLBACK");
    return bytes.error();
  }
  if (deleted > 0) (void)exec(db_, "PRAGMA incremental_vacuum");
  // Keep the WAL short: its pages count on disk too.
  (void)exec(db_, "PRAGMA wal_checkpoint(TRUNCATE)");
  std::lock_guard l(mu_);
  stats_.retention_deleted += static_cast<uint64_t>(deleted);
  stats_.bytes_used = *bytes;
  return {};
}

void FindingDb::set_retention(diagnosis::Duration max_age, uint64_t max_bytes) {
  std::lock_guard l(mu_);
  options_.max_age = max_age;
  options_.max_bytes = max_bytes;
}

void FindingDb::start() {
  std::lock_guard l(mu_);
  if (writer_.joinable() || stopped_ || stopping_) return;
  writer_ = std::thread([this] { writer_loop(); });
}

void FindingDb::writer_loop() {
  auto next_retention = std::chrono::steady_clock::now() + options_.retention_interval;
  std::unique_lock l(mu_);
  for (;;) {
    cv_.wait_for(l, options_.flush_interval, [&] { return stopping_ || queue_.size() >= options_.batch_max; });
    const bool last = stopping_;
    l.unlock();
    (void)flush();  // failures are counted in stats
    if (std::chrono::steady_clock::now() >= next_retention) {
      if (auto r = enforce_retention(); !r.ok()) {
        std::lock_guard el(mu_);
        stats_.last_error = r.error().message;
      }
      next_retention = std::chrono::steady_clock::now() + options_.retention_interval;
    }
    l.lock();
    if (last && queue_.empty()) return;
  }
}

void FindingDb::stop() {
  std::thread writer;
  {
    std::lock_guard l(mu_);
    if (stopped_) return;
    stopping_ = true;
    writer.swap(writer_);
  }
  cv_.notify_all();
  if (writer.joinable()) {
    writer.join();
  } else {
    (void)flush();
  }
  bool lost;
  uint64_t revision;
  {
    std::lock_guard l(mu_);
    stopped_ = true;
    lost = lost_;
    revision = last_revision_;
  }
  std::lock_guard dl(db_mu_);
  if (db_ == nullptr) return;
  if (!lost) {
    // Every event of this run is in the file: the next run may go on from `revision`.
    if (exec(db_, "BEGIN IMMEDIATE").ok()) {
      const bool ok = set_meta(db_, "revision", std::to_string(revision)).ok() &&
                      set_meta(db_, "clean_shutdown", "1").ok();
      (void)exec(db_, ok ? "COMMIT" : "ROLLBACK");
    }
  }
  (void)exec(db_, "PRAGMA wal_checkpoint(TRUNCATE)");
  sqlite3_close_v2(db_);
  db_ = nullptr;
}

StoreStats FindingDb::stats() const {
  std::lock_guard l(mu_);
  StoreStats s = stats_;
  s.queue_length = queue_.size();
  return s;
}

}  // namespace stallmon::store
