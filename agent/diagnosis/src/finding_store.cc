// SPDX-License-Identifier: Apache-2.0
#include "finding_store.h"

#include <algorithm>

namespace stallmon::diagnosis {

std::string FindingStore::id_for(const std::string& condition_key, const std::string& readable_prefix) {
  if (auto it = active_.find(condition_key); it != active_.end()) return it->second.finding.id;
  if (auto it = reserved_.find(condition_key); it != reserved_.end()) return it->second;
  // The sequence number makes a recurrence of the same condition a new finding with a new id;
  // the prefix keeps ids readable in logs ("vm1/GUEST_IPI_STALL/cpu2/17").
  std::string id = readable_prefix + "/" + std::to_string(next_seq_++);
  reserved_.emplace(condition_key, id);
  return id;
}

const Finding* FindingStore::active(const std::string& condition_key) const {
  auto it = active_.find(condition_key);
  return it == active_.end() ? nullptr : &it->second.finding;
}

void FindingStore::emit(FindingEvent::Type type, const Finding& f, const std::string& condition_key,
                        std::vector<FindingEvent>& out) {
  FindingEvent ev;
  ev.type = type;
  ev.revision = ++revision_;
  ev.finding = f;
  ev.condition_key = condition_key;
  events_.push_back(ev);
  while (events_.size() > max_events_) events_.pop_front();
  out.push_back(std::move(ev));
}

void FindingStore::upsert(const std::string& condition_key, Finding finding, const std::string& signature,
                          Timestamp now, Duration refresh, std::vector<FindingEvent>& out) {
  auto it = active_.find(condition_key);
  if (it == active_.end()) {
    // A new condition: its id was reserved by the rule (or is reserved now).
    finding.id = id_for(condition_key, finding.domain + "/" + to_string(finding.kind));
    finding.opened_at = now;
    finding.last_update = now;
    finding.active = true;
    finding.resolved_at.reset();
    finding.duration = now - finding.onset;
    Active a{finding, signature, now};
    active_.emplace(condition_key, a);
    emit(FindingEvent::Type::kOpened, finding, condition_key, out);
    return;
  }
  Active& a = it->second;
  finding.id = a.finding.id;
  finding.opened_at = a.finding.opened_at;
  finding.recurrences = a.finding.recurrences;
  bool recurred = false;
  if (a.absent_since) {
    // The condition ended and came back within its hold: the same stall, continued.
    ++finding.recurrences;
    a.absent_since.reset();
    recurred = true;
  }
  if (finding.recurrences > 0)
    finding.summary += " It has recurred " + std::to_string(finding.recurrences) +
                       (finding.recurrences == 1 ? " time" : " times") + " since it opened " +
                       format_duration(now - finding.opened_at) + " ago.";
  // The onset never moves later: a condition re-dated by a longer window keeps its first date.
  finding.onset = std::min(finding.onset, a.finding.onset);
  finding.last_update = now;
  finding.active = true;
  finding.duration = now - finding.onset;
  // A restored finding confirmed by this run's rules: continued, and said so (material).
  const bool confirmed = a.unconfirmed;
  a.unconfirmed = false;
  const bool material = recurred || confirmed || signature != a.signature;
  a.finding = std::move(finding);
  a.signature = signature;
  if (material || now - a.last_emitted >= refresh) {
    a.last_emitted = now;
    emit(FindingEvent::Type::kUpdated, a.finding, condition_key, out);
  }
}

void FindingStore::resolve(const std::string& condition_key, Timestamp now, std::vector<FindingEvent>& out,
                           std::optional<Timestamp> at) {
  auto it = active_.find(condition_key);
  if (it == active_.end()) return;
  Finding f = std::move(it->second.finding);
  active_.erase(it);
  f.active = false;
  f.resolved_at = at.value_or(now);
  // Duration of the condition as last confirmed, not up to the tick that noticed it was gone.
  f.duration = f.last_update - f.onset;
  emit(FindingEvent::Type::kResolved, f, condition_key, out);
  resolved_.push_back(std::move(f));
  while (resolved_.size() > max_history_) resolved_.pop_front();
}

void FindingStore::mark_absent(const std::string& condition_key, Timestamp now) {
  auto it = active_.find(condition_key);
  if (it != active_.end() && !it->second.absent_since) it->second.absent_since = now;
}

std::optional<Timestamp> FindingStore::absent_since(const std::string& condition_key) const {
  auto it = active_.find(condition_key);
  return it == active_.end() ? std::nullopt : it->second.absent_since;
}

void FindingStore::relink(const std::string& condition_key, const std::string& incident_id,
                          const std::vector<std::string>& symptom_ids, Timestamp now, std::vector<FindingEvent>& out) {
  auto it = active_.find(condition_key);
  if (it == active_.end()) return;
  Finding& f = it->second.finding;
  if (f.incident_id == incident_id && f.symptom_ids == symptom_ids) return;
  f.incident_id = incident_id;
  f.symptom_ids = symptom_ids;
  it->second.last_emitted = now;
  emit(FindingEvent::Type::kUpdated, f, condition_key, out);
}

const Finding* FindingStore::resolved_by_id(const std::string& id) const {
  for (auto it = resolved_.rbegin(); it != resolved_.rend(); ++it)
    if (it->id == id) return &*it;
  return nullptr;
}

std::vector<std::string> FindingStore::active_keys(const std::string& prefix) const {
  std::vector<std::string> keys;
  for (auto it = active_.lower_bound(prefix); it != active_.end() && it->first.compare(0, prefix.size(), prefix) == 0;
       ++it)
    keys.push_back(it->first);
  return keys;
}

std::vector<Finding> FindingStore::all_active() const {
  std::vector<Finding> v;
  v.reserve(active_.size());
  for (const auto& [key, a] : active_) v.push_back(a.finding);
  return v;
}

void FindingStore::restore(RestoredFindings r) {
  revision_ = r.revision;
  next_seq_ = std::max(next_seq_, r.next_seq);
  for (auto& f : r.resolved) resolved_.push_back(std::move(f));
  while (resolved_.size() > max_history_) resolved_.pop_front();
  for (auto& ev : r.events)
    if (ev.revision <= revision_) events_.push_back(std::move(ev));
  while (events_.size() > max_events_) events_.pop_front();
  for (auto& a : r.active) {
    if (a.condition_key.empty() || active_.count(a.condition_key)) continue;
    a.finding.active = true;
    a.finding.resolved_at.reset();
    Active entry{std::move(a.finding), std::string(), {}, std::nullopt, true};
    entry.last_emitted = entry.finding.last_update;
    active_.emplace(a.condition_key, std::move(entry));
  }
}

bool FindingStore::unconfirmed(const std::string& condition_key) const {
  auto it = active_.find(condition_key);
  return it != active_.end() && it->second.unconfirmed;
}

std::vector<std::string> FindingStore::unconfirmed_keys() const {
  std::vector<std::string> keys;
  for (const auto& [key, a] : active_)
    if (a.unconfirmed) keys.push_back(key);
  return keys;
}

EventsSince FindingStore::events_since(uint64_t after) const {
  EventsSince r;
  r.revision = revision_;
  const uint64_t oldest = events_.empty() ? revision_ + 1 : events_.front().revision;
  // Resuming from `after` needs every event after it; if the first of those was dropped the
  // stream has a gap the caller must close with a resync.
  r.complete = after + 1 >= oldest || after >= revision_;
  for (const auto& ev : events_)
    if (ev.revision > after) r.events.push_back(ev);
  return r;
}

}  // namespace stallmon::diagnosis
