// SPDX-License-Identifier: Apache-2.0
// Findings across all domains: active ones by condition key, a bounded history of resolved
// ones, and a bounded log of events with strictly increasing revisions for resumable watches.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/engine.h"

namespace stallmon::diagnosis {

class FindingStore {
 public:
  FindingStore(std::size_t max_history, std::size_t max_events)
      : max_history_(max_history), max_events_(max_events) {}

  // The condition key names one ongoing condition: "<domain key>|<KIND>|<rule key>".
  // Returns the id of the active finding for it, or reserves the id a new one will get, so
  // findings opened in the same tick can refer to each other.
  std::string id_for(const std::string& condition_key, const std::string& readable_prefix);

  const Finding* active(const std::string& condition_key) const;

  // Opens (no active finding for the key) or updates it. `signature` is what makes an update
  // material; an immaterial one is stored but emitted only after `refresh` has passed. Updating
  // a finding marked absent (held) continues it: recurrences + 1, a material update.
  void upsert(const std::string& condition_key, Finding finding, const std::string& signature,
              Timestamp now, Duration refresh, std::vector<FindingEvent>& out);
  // resolved_at = `at` (default: now): a held finding resolves as of when it ended.
  void resolve(const std::string& condition_key, Timestamp now, std::vector<FindingEvent>& out,
               std::optional<Timestamp> at = std::nullopt);

  // Recurrence hold: the condition was not seen this tick, but the finding stays active for a
  // while in case it comes back. absent_since: when it was first missed (unset while seen).
  void mark_absent(const std::string& condition_key, Timestamp now);
  std::optional<Timestamp> absent_since(const std::string& condition_key) const;

  // Sets the incident fields of an active finding the rules did not propose this tick (held,
  // or a guest finding between snapshots); emits UPDATED if they changed.
  void relink(const std::string& condition_key, const std::string& incident_id,
              const std::vector<std::string>& symptom_ids, Timestamp now, std::vector<FindingEvent>& out);

  // A resolved finding by id (newest first), or nullptr if it left the bounded history.
  const Finding* resolved_by_id(const std::string& id) const;

  // Condition keys of the active findings whose key starts with `prefix`.
  std::vector<std::string> active_keys(const std::string& prefix) const;

  std::vector<Finding> all_active() const;
  const std::deque<Finding>& resolved() const { return resolved_; }
  EventsSince events_since(uint64_t after) const;
  uint64_t revision() const { return revision_; }
  std::size_t event_log_size() const { return events_.size(); }
  void end_tick() { reserved_.clear(); }

  // The previous run's findings (DiagnosisEngine::restore). Only on an unused store.
  void restore(RestoredFindings r);
  // Restored active findings not yet proposed by a rule since the restart (upsert confirms one).
  bool unconfirmed(const std::string& condition_key) const;
  std::vector<std::string> unconfirmed_keys() const;
  bool used() const { return revision_ != 0 || !active_.empty() || !resolved_.empty(); }

 private:
  struct Active {
    Finding finding;
    std::string signature;
    Timestamp last_emitted{};
    std::optional<Timestamp> absent_since;
    bool unconfirmed = false;  // restored, not proposed since
  };
  void emit(FindingEvent::Type type, const Finding& f, const std::string& condition_key,
            std::vector<FindingEvent>& out);

  std::size_t max_history_;
  std::size_t max_events_;
  uint64_t revision_ = 0;
  uint64_t next_seq_ = 1;
  std::map<std::string, Active> active_;
  std::map<std::string, std::string> reserved_;  // condition key -> id, this tick only
  std::deque<Finding> resolved_;                 // newest at the back
  std::deque<FindingEvent> events_;
};

}  // namespace stallmon::diagnosis
