// SPDX-License-Identifier: Apache-2.0
// FindingDb: the findings and their events, kept in SQLite (WAL) in the daemon's state
// directory so that a restart (upgrade, crash, host reboot) does not lose the evidence an
// operator is investigating (agent/store/README.md).
//
//   auto db = FindingDb::open(options);             // schema, retention; errors are values
//   auto prev = (*db)->load(max_resolved, max_events);
//   engine.restore(std::move(prev->findings));       // before the first tick
//   monitor.add_finding_listener(db->get());         // on_finding_event only enqueues
//   (*db)->start();                                  // the writer thread
//   ...
//   (*db)->stop();                                   // after the last event: drains, marks clean
//
// Writes never hold a tick: on_finding_event (called on a pool worker with the engine's lock
// held) appends to a bounded queue and returns; the writer thread commits what is queued as one
// transaction every flush_interval (or at batch_max events). A full queue drops its oldest
// event and counts it. A kill -9 loses at most what was queued (about one flush_interval);
// WAL with synchronous=NORMAL never leaves a corrupt file (a power loss may also roll back the
// last commits).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/diagnosis/engine.h"
#include "stallmon/diagnosis/incident_recorder.h"

struct sqlite3;

namespace stallmon::store {

struct StoreOptions {
  std::string path;  // the database file, e.g. /var/lib/stallmon/findings.db
  // Retention, enforced at open and every retention_interval: resolved findings and events
  // older than max_age go, then the oldest of them until the database's pages in use fit in
  // max_bytes. Active findings are never dropped.
  diagnosis::Duration max_age = std::chrono::hours(24 * 14);
  uint64_t max_bytes = 256ull << 20;
  diagnosis::Duration retention_interval = std::chrono::minutes(5);
  // Events kept, the newest: what a restart can serve to WatchFindings (the engine's
  // max_event_log). Older events repeat what the findings rows keep (an UPDATED a second per
  // active finding would otherwise fill max_bytes with one long incident's ages).
  std::size_t max_events = 10000;
  std::size_t queue_max = 20000;  // events waiting for the writer (~2 s of a 100-domain storm)
  diagnosis::Duration flush_interval = std::chrono::seconds(1);
  std::size_t batch_max = 2000;  // a commit as soon as this many are queued
  // Incident bundles waiting for the writer: the newest state of each (by finding id). Over it,
  // the oldest waiting one is dropped and counted (the recorder hands it again within its
  // persist interval, or at its resolution).
  std::size_t incident_queue_max = 64;
};

struct LoadedFindings {
  diagnosis::RestoredFindings findings;  // for DiagnosisEngine::restore
  // The previous run stopped cleanly with every event written: its revisions go on and its
  // incarnation is kept, so WatchFindings clients resume without RESYNC. Otherwise (a crash, a
  // dropped event, a new file) incarnation() is new and clients resynchronise.
  bool resumable = false;
  std::string why_not_resumable;
  std::size_t rows_skipped = 0;  // rows whose text did not decode (counted, logged by the caller)
};

struct StoreStats {
  uint64_t events_written = 0;
  uint64_t events_dropped = 0;  // queue full: the disk is slower than the events
  uint64_t batches = 0;
  uint64_t write_errors = 0;    // failed transactions (their events are lost and counted here)
  uint64_t retention_deleted = 0;  // rows removed by retention
  uint64_t incidents_written = 0;  // bundle states committed
  uint64_t incidents_dropped = 0;  // queue full, or a bundle over kMaxIncidentBody encoded
  std::size_t queue_length = 0;
  uint64_t bytes_used = 0;      // database pages in use, as of the last retention pass
  std::string last_error;
};

class FindingDb final : public diagnosis::FindingListener, public diagnosis::IncidentSink {
 public:
  // Opens or creates the file (its directory must exist), checks that it is this store's
  // schema (a foreign or corrupt file is kCorrupt and left untouched), enables WAL and
  // synchronous=NORMAL, applies retention. The clock dates retention (the engine's clock).
  static Result<std::unique_ptr<FindingDb>> open(StoreOptions options, const diagnosis::Clock& clock);
  ~FindingDb() override;
  FindingDb(const FindingDb&) = delete;
  FindingDb& operator=(const FindingDb&) = delete;

  // What previous runs left: the newest `max_resolved` resolved findings, every active one
  // (at most 100 000), and the newest contiguous run of at most `max_events` events.
  Result<LoadedFindings> load(std::size_t max_resolved, std::size_t max_events);
  // The revision sequence's identity: kept across a clean restart, new otherwise.
  uint64_t incarnation() const { return incarnation_; }

  void on_finding_event(const diagnosis::FindingEvent& event) override;
  // Incident bundles (the recorder's sink): queued like events, one row per finding, deleted
  // with their finding by retention.
  void on_incident(std::shared_ptr<const diagnosis::IncidentBundle> bundle) override;
  // The bundles of findings still open in the file (for IncidentRecorder::restore), at most
  // `max`; rows that do not decode are skipped and counted in *skipped.
  Result<std::vector<diagnosis::IncidentBundle>> load_open_incidents(std::size_t max, std::size_t* skipped = nullptr);
  // One stored bundle: kNotFound if none (never recorded, or gone with its finding).
  Result<diagnosis::IncidentBundle> incident(const std::string& finding_id);

  void start();                // the writer thread; without it, flush() writes
  Result<void> flush();        // commits what is queued now (tests; the writer does it itself)
  Result<void> enforce_retention();
  // Retention keys reloaded: applied from the next pass on (thread-safe).
  void set_retention(diagnosis::Duration max_age, uint64_t max_bytes);
  // Stops the writer after it committed the queue, marks the file cleanly closed (if no event
  // was lost this run) and closes it. Idempotent. Events after stop() are dropped.
  void stop();

  StoreStats stats() const;
  const std::string& path() const { return options_.path; }

 private:
  FindingDb(StoreOptions options, const diagnosis::Clock& clock, sqlite3* db);
  void writer_loop();
  Result<void> write_batch(std::deque<diagnosis::FindingEvent>& batch);
  // Returns how many were committed; the ones that could not be encoded are counted dropped.
  Result<uint64_t> write_incidents(const std::map<std::string, std::shared_ptr<const diagnosis::IncidentBundle>>& batch);

  StoreOptions options_;
  const diagnosis::Clock& clock_;
  sqlite3* db_;                // used by one thread at a time: open/load, then the writer
  std::mutex db_mu_;           // flush() from a test or stop() vs the writer
  uint64_t incarnation_ = 0;
  uint64_t next_seq_ = 1;      // above every id's sequence number written
  bool prev_resumable_ = false;  // the previous run stopped cleanly (open() found the mark)
  std::string prev_why_;

  mutable std::mutex mu_;      // the queue, stats, retention settings
  std::condition_variable cv_;
  std::deque<diagnosis::FindingEvent> queue_;
  std::map<std::string, std::shared_ptr<const diagnosis::IncidentBundle>> incidents_;  // by finding id
  std::deque<std::string> incident_order_;  // arrival order of incidents_'s keys
  bool stopping_ = false;
  bool stopped_ = false;
  bool lost_ = false;          // an event of this run never reached the file
  uint64_t last_revision_ = 0;  // the newest revision seen (written or not)
  StoreStats stats_;
  std::thread writer_;
};

}  // namespace stallmon::store
