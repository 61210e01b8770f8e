// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/pusher.h"

#include <algorithm>

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

void AlertPusher::upsert(const Finding& f, Timestamp now) {
  auto it = active_.find(f.id);
  // An UPDATED event queued before a resync must not take the finding back in time.
  if (it != active_.end() && f.last_update < it->second.last_update) return;
  PostableAlert a = alert_from_finding(f, options_.alert, std::nullopt);
  auto prev = sent_labels_.find(f.id);
  // Only a new alert or a new label set goes out at once. Annotation updates (the ages in the
  // summary change every second while a stall lasts) ride on the next resend: otherwise an
  // ongoing stall would mean a POST per second per URL.
  const bool urgent = prev == sent_labels_.end() || prev->second.labels != a.labels;
  if (prev != sent_labels_.end() && prev->second.labels != a.labels) {
    // Severity, cause or CPUs changed: Alertmanager sees a different alert. Resolve the old
    // label set now instead of letting it linger until its endsAt.
    retire(prev->second, now, now);
  }
  sent_labels_[f.id] = std::move(a);
  active_[f.id] = f;
  if (urgent) mark_dirty();
}

void AlertPusher::resolve(const std::string& id, Timestamp at, Timestamp now) {
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
    return;  // never sent otherwise (opened and resolved between two rounds, or dropped)
  }
  auto prev = sent_labels_.find(id);
  if (prev != sent_labels_.end()) retire(prev->second, at, now);
  sent_labels_.erase(id);
  active_.erase(it);
  mark_dirty();
}

void AlertPusher::apply(const FindingEvent& e, Timestamp now) {
  switch (e.type) {
    case FindingEvent::Type::kOpened:
    case FindingEvent::Type::kUpdated:
      if (e.finding.active) {
        upsert(e.finding, now);
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
    upsert(f, now);
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

  Timestamp next = next_resync_;
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
