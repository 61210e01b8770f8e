// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/pusher.h"

#include <algorithm>

#include "stallmon/base/utf8.h"

namespace stallmon::alerting {

using diagnosis::Duration;
using diagnosis::Finding;
using diagnosis::FindingEvent;
using diagnosis::Timestamp;

AlertPusher::AlertPusher(PusherOptions options, AlertTransport& transport,
                         const diagnosis::Clock& clock,
                         std::function<std::vector<Finding>()> active_source)
    : options_(std::move(options)),
      transport_(transport),
      clock_(clock),
      active_source_(std::move(active_source)) {
  if (options_.queue_capacity == 0) options_.queue_capacity = 1;
  for (const auto& u : options_.urls) {
    targets_.push_back(Target{u, Timestamp{}, true});
    stats_.targets.push_back(PusherStats::Target{u});
  }
}

AlertPusher::~AlertPusher() { stop(); }

void AlertPusher::on_finding_event(const FindingEvent& event) {
  {
    std::lock_guard lock(queue_mu_);
    if (queue_.size() >= options_.queue_capacity) {
      // Drop the oldest: the newest events carry the current state, and the resync that
      // follows repairs whatever the dropped ones would have said.
      queue_.pop_front();
      resync_needed_ = true;
      std::lock_guard s(stats_mu_);
      ++stats_.events_dropped;
    }
    queue_.push_back(event);
    std::lock_guard s(stats_mu_);
    ++stats_.events_received;
  }
  wake_.notify_one();
}

namespace {

std::string annotation(const PostableAlert& a, const std::string& key) {
  auto it = a.annotations.find(key);
  return it == a.annotations.end() ? std::string() : it->second;
}

}  // namespace

void AlertPusher::mark_dirty() {
  for (auto& t : targets_) t.dirty = true;
}

Duration AlertPusher::backoff(uint32_t failures) const {
  Duration d = options_.backoff_initial;
  for (uint32_t i = 1; i < failures && d < options_.backoff_max; ++i) d *= 2;
  return std::min(d, options_.backoff_max);
}

void AlertPusher::retire(const PostableAlert& sent, Timestamp at, Timestamp now) {
  PostableAlert a = sent;
  a.ends_at = std::max(at, a.starts_at);  // Alertmanager rejects endsAt before startsAt
  resolutions_.push_back(Resolution{std::move(a), {}, now + options_.ends_at_margin});
}

void AlertPusher::upsert(const Finding& f) {
  auto it = active_.find(f.id);
  // An UPDATED event queued before a resync must not take the finding back in time.
  if (it != active_.end() && f.last_update < it->second.last_update) return;
  active_[f.id] = f;
}

PostableAlert AlertPusher::build_alert(const Finding& root) const {
  PostableAlert a = alert_from_finding(root, options_.alert, std::nullopt);
  // The incident's symptoms, summarised on the root's alert: they are not alerts themselves.
  std::vector<const Finding*> symptoms;
  for (const auto& id : root.symptom_ids)
    if (auto it = active_.find(id); it != active_.end()) symptoms.push_back(&it->second);
  if (symptoms.empty()) return a;
  std::map<std::string, int> by_kind;
  for (const auto* s : symptoms) ++by_kind[kind_label(s->kind)];
  std::string text = std::to_string(symptoms.size()) + (symptoms.size() == 1 ? " symptom" : " symptoms") + " (";
  bool first = true;
  for (const auto& [kind, n] : by_kind) {
    text += (first ? "" : ", ") + std::to_string(n) + " " + kind;
    first = false;
  }
  text += "):";
  for (size_t i = 0; i < symptoms.size() && i < options_.max_symptom_lines; ++i) {
    std::string cpus;
    for (int c : symptoms[i]->cpus) cpus += (cpus.empty() ? "" : ",") + std::to_string(c);
    std::string summary = symptoms[i]->summary;
    if (summary.size() > 240) summary = summary.substr(0, 237) + "...";
    text += "\n- " + kind_label(symptoms[i]->kind) + (cpus.empty() ? "" : " cpus " + cpus) + ": " + summary;
  }
  if (symptoms.size() > options_.max_symptom_lines)
    text += "\n(" + std::to_string(symptoms.size() - options_.max_symptom_lines) + " more)";
  a.annotations["symptoms"] = sanitize_utf8(text);
  a.annotations["symptom_count"] = std::to_string(symptoms.size());
  return a;
}

Timestamp AlertPusher::choose_alerts(Timestamp now) {
  Timestamp next = Timestamp::max();
  for (const auto& [id, f] : active_) {
    auto sent = sent_labels_.find(id);
    if (!f.is_incident_root()) {
      root_since_.erase(id);
      if (sent != sent_labels_.end()) {
        // An alerted root became a symptom of another incident (its root opened later): its
        // page is now the other root's. Resolve it rather than let it linger until endsAt.
        retire(sent->second, now, now);
        sent_labels_.erase(sent);
        mark_dirty();
      }
      continue;
    }
    const Timestamp since = root_since_.try_emplace(id, now).first->second;
    if (sent == sent_labels_.end()) {
      const Timestamp due = since + (f.cause_evaluating ? std::max(options_.root_settle, options_.undetermined_max_wait)
                                                        : options_.root_settle);
      if (now < due) {
        next = std::min(next, due);
        continue;
      }
    }
    PostableAlert a = build_alert(f);
    // Only a new alert, a new label set or a new set of symptoms goes out at once. Annotation
    // updates (the ages in the summary change every second while a stall lasts) ride on the
    // next resend: otherwise an ongoing stall would mean a POST per second per URL.
    bool urgent = sent == sent_labels_.end();
    if (sent != sent_labels_.end()) {
      if (sent->second.labels != a.labels) {
        // Severity, cause or CPUs changed: Alertmanager sees a different alert. Resolve the old
        // label set now instead of letting it linger until its endsAt.
        retire(sent->second, now, now);
        urgent = true;
      } else if (annotation(sent->second, "symptom_count") != annotation(a, "symptom_count")) {
        urgent = true;
      }
    }
    sent_labels_[id] = std::move(a);
    if (urgent) mark_dirty();
  }
  return next;
}

void AlertPusher::resolve(const std::string& id, Timestamp at, Timestamp now) {
  root_since_.erase(id);
  auto it = active_.find(id);
  if (it == active_.end()) {
    // Already resolved by a resync: the event carries the exact resolution time.
    for (auto& r : resolutions_) {
      auto fid = r.alert.labels.find("finding_id");
      if (fid != r.alert.labels.end() && fid->second == id) {
        r.alert.ends_at = std::max(at, r.alert.starts_at);
        r.delivered.clear();
        mark_dirty();
      }
    }
    return;  // never sent otherwise (a symptom, a root resolved before its settle, or dropped)
  }
  auto prev = sent_labels_.find(id);
  if (prev != sent_labels_.end()) {
    retire(prev->second, at, now);
    sent_labels_.erase(prev);
    mark_dirty();
  }
  active_.erase(it);
}

void AlertPusher::apply(const FindingEvent& e, Timestamp now) {
  switch (e.type) {
    case FindingEvent::Type::kOpened:
    case FindingEvent::Type::kUpdated:
      if (e.finding.active) {
        upsert(e.finding);
        break;
      }
      [[fallthrough]];
    case FindingEvent::Type::kResolved:
      resolve(e.finding.id, e.finding.resolved_at.value_or(now), now);
      break;
    case FindingEvent::Type::kUnspecified:
      break;
  }
}

void AlertPusher::resync(Timestamp now) {
  const auto findings = active_source_ ? active_source_() : std::vector<Finding>{};
  std::set<std::string> ids;
  for (const auto& f : findings) {
    if (!f.active) continue;
    ids.insert(f.id);
    upsert(f);
  }
  std::vector<std::string> gone;
  for (const auto& [id, f] : active_) {
    if (!ids.count(id)) gone.push_back(id);
  }
  for (const auto& id : gone) resolve(id, now, now);
  next_resync_ = now + options_.resend_interval;
  std::lock_guard s(stats_mu_);
  ++stats_.resyncs;
}

Timestamp AlertPusher::step() {
  Timestamp now = clock_.now();
  std::deque<FindingEvent> events;
  bool resync_now = false;
  {
    std::lock_guard lock(queue_mu_);
    events.swap(queue_);
    resync_now = resync_needed_;
    resync_needed_ = false;
  }
  if (resync_now || now >= next_resync_) {
    // Resync first, then the queued events: an event queued before the engine was read is
    // at worst re-applied (upsert ignores older updates; a resolution only sharpens endsAt).
    resync(now);
  }
  for (const auto& e : events) apply(e, now);
  const Timestamp held_until = choose_alerts(now);

  for (size_t i = 0; i < targets_.size(); ++i) {
    auto& t = targets_[i];
    uint32_t failures;
    {
      std::lock_guard s(stats_mu_);
      failures = stats_.targets[i].consecutive_failures;
    }
    // A change goes out at once unless the URL is backing off after a failure.
    const bool due = now >= t.next_due || (t.dirty && failures == 0);
    if (!due) continue;
    std::vector<PostableAlert> body;
    for (const auto& [id, a] : sent_labels_) {
      PostableAlert x = a;
      x.ends_at = now + options_.ends_at_margin;
      body.push_back(std::move(x));
    }
    std::vector<size_t> sent_resolutions;
    for (size_t r = 0; r < resolutions_.size(); ++r) {
      if (resolutions_[r].delivered.count(i)) continue;
      body.push_back(resolutions_[r].alert);
      sent_resolutions.push_back(r);
    }
    if (body.empty()) {
      t.dirty = false;
      t.next_due = now + options_.resend_interval;
      continue;
    }
    auto res = transport_.post(t.url, alerts_to_json(body));
    now = clock_.now();
    std::lock_guard s(stats_mu_);
    auto& st = stats_.targets[i];
    if (res.ok()) {
      for (size_t r : sent_resolutions) resolutions_[r].delivered.insert(i);
      ++st.posts_ok;
      st.consecutive_failures = 0;
      st.last_success = now;
      t.dirty = false;
      t.next_due = now + options_.resend_interval;
    } else {
      ++st.posts_failed;
      ++st.consecutive_failures;
      st.last_error = res.error().to_string();
      t.next_due = now + backoff(st.consecutive_failures);
    }
  }

  // Forget resolutions delivered everywhere, or past the point where Alertmanager has expired
  // the alert by itself (its last endsAt).
  std::erase_if(resolutions_, [&](const Resolution& r) {
    return r.delivered.size() >= targets_.size() || now >= r.drop_after;
  });

  Timestamp next = std::min(next_resync_, held_until);
  for (const auto& t : targets_) next = std::min(next, t.next_due);
  std::lock_guard s(stats_mu_);
  stats_.active_alerts = sent_labels_.size();
  stats_.pending_resolutions = resolutions_.size();
  return next;
}

void AlertPusher::start() {
  std::lock_guard lock(queue_mu_);
  if (thread_.joinable() || targets_.empty()) return;
  stopping_ = false;
  thread_ = std::thread([this] {
    std::unique_lock held(queue_mu_);
    while (!stopping_) {
      held.unlock();
      const Timestamp next = step();
      held.lock();
      if (stopping_) break;
      const Duration wait = next - clock_.now();
      if (wait > Duration::zero() && queue_.empty() && !resync_needed_) {
        wake_.wait_for(held, wait, [&] { return stopping_ || !queue_.empty() || resync_needed_; });
      }
    }
  });
}

void AlertPusher::stop() {
  {
    std::lock_guard lock(queue_mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

PusherStats AlertPusher::stats() const {
  PusherStats s;
  {
    std::lock_guard lock(stats_mu_);
    s = stats_;
  }
  std::lock_guard lock(queue_mu_);
  s.queue_length = queue_.size();
  return s;
}

void AlertPusher::write_metrics(ExpositionWriter& w) const {
  const auto s = stats();
  w.family("stallmon_alertmanager_events_dropped_total", MetricType::kCounter,
           "Finding events dropped because the pusher's queue was full (the oldest goes).");
  w.sample({}, static_cast<double>(s.events_dropped));
  w.family("stallmon_alertmanager_queue_length", MetricType::kGauge,
           "Finding events waiting for the pusher thread.");
  w.sample({}, static_cast<double>(s.queue_length));
  w.family("stallmon_alertmanager_active_alerts", MetricType::kGauge,
           "Alerts the pusher re-sends (active findings).");
  w.sample({}, static_cast<double>(s.active_alerts));
  w.family("stallmon_alertmanager_posts_total", MetricType::kCounter,
           "POSTs to /api/v2/alerts by configured Alertmanager URL and result.");
  for (const auto& t : s.targets) {
    w.sample({{"url", t.url}, {"result", "success"}}, static_cast<double>(t.posts_ok));
    w.sample({{"url", t.url}, {"result", "failure"}}, static_cast<double>(t.posts_failed));
  }
  w.family("stallmon_alertmanager_last_success_timestamp_seconds", MetricType::kGauge,
           "When a POST to the Alertmanager URL last succeeded, in seconds since the epoch.");
  for (const auto& t : s.targets) {
    if (t.last_success) {
      w.sample({{"url", t.url}},
               std::chrono::duration<double>(t.last_success->time_since_epoch()).count());
    }
  }
}

}  // namespace stallmon::alerting
