// SPDX-License-Identifier: Apache-2.0
// Shared by the store tests: a temporary directory, findings and events built by hand, and a
// look into the file with plain SQLite (what an operator's sqlite3 would see).
#pragma once

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "stallmon/store/finding_db.h"

namespace stallmon::store::testing {

using namespace std::chrono_literals;
using diagnosis::Finding;
using diagnosis::FindingEvent;
using diagnosis::FindingKind;
using diagnosis::Timestamp;

class TempDir {
 public:
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "stallmon-store-XXXXXX").string();
    path_ = mkdtemp(t.data()) ? t : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline Finding finding(const std::string& id, FindingKind kind, Timestamp at, bool active = true) {
  Finding f;
  f.id = id;
  f.kind = kind;
  f.severity = diagnosis::Severity::kCritical;
  f.cause = diagnosis::Cause::kHostBlocked;
  f.domain = "vm1";
  f.domain_uuid = "uuid-vm1";
  f.cpus = {2};
  f.onset = at - 500ms;
  f.opened_at = at;
  f.last_update = at;
  f.active = active;
  if (!active) f.resolved_at = at;
  f.duration = 500ms;
  f.summary = "vCPU 2's host thread 18002 (CPU 2/KVM) has been in D state";
  diagnosis::Evidence e;
  e.text = "vCPU 2 blocked";
  e.vcpu = 2;
  e.facts["state"] = "D";
  e.durations["no_run_progress"] = 500ms;
  e.host_stack = {"__refrigerator", "get_signal"};
  f.evidence.push_back(e);
  f.incident_id = id;
  return f;
}

inline FindingEvent event(FindingEvent::Type type, uint64_t revision, Finding f, std::string key) {
  FindingEvent ev;
  ev.type = type;
  ev.revision = revision;
  ev.finding = std::move(f);
  ev.condition_key = std::move(key);
  return ev;
}

// One integer from the file, opened read-only beside (or after) the store.
inline int64_t sql_int(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  int64_t v = -1;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
      v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
  }
  sqlite3_close_v2(db);
  return v;
}

inline std::string sql_text(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  std::string v = "(error)";
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
      v = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    else
      v = sqlite3_errmsg(db);
    sqlite3_finalize(s);
  }
  sqlite3_close_v2(db);
  return v;
}

}  // namespace stallmon::store::testing
