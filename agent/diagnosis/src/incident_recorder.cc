// SPDX-License-Identifier: Apache-2.0
#include "stallmon/diagnosis/incident_recorder.h"

#include <algorithm>
#include <utility>

#include "text.h"

namespace stallmon::diagnosis {
namespace {

using namespace std::chrono_literals;

// Guest points of the recorder's own ring (before any bundle opens) are kept one a second: the
// ring is kept for every domain all the time, the bundles only during incidents.
constexpr Duration kRingStep = 1s;
// The ring reaches this far beyond the lookback: a finding opens its threshold after its onset
// (up to ~20 s for a soft lockup), and its window starts a lookback before the onset.
constexpr Duration kRingMargin = 30s;

// Guest text: valid UTF-8, no control characters, at most `max` bytes (text.h).
std::string bounded(std::string_view s, std::size_t max) { return sanitize_text(s, max); }

// Soft-lockup watchdog age: the guest's running clock minus its touch timestamp (in the guest's
// "seconds", running_clock >> 30). A touch ahead of the clock is not an age (hostile or torn).
std::optional<Duration> watchdog_age(const GuestView& g, const GuestCpuView& c) {
  if (!c.watchdog_touch_ts || g.running_clock_ns == 0) return std::nullopt;
  const uint64_t touch = *c.watchdog_touch_ts;
  if (touch > (g.running_clock_ns >> 30)) return std::nullopt;
  return Duration(static_cast<int64_t>(g.running_clock_ns - (touch << 30)));
}

int csd_target(const GuestCpuView& c) {
  for (const CsdRequest& r : c.cfd_requests) {
    if (r.locked && r.target_cpu >= 0) return r.target_cpu;
  }
  return -1;
}

IncidentSnapshot summarize(const GuestView& g, Timestamp at, const IncidentLimits& lim) {
  IncidentSnapshot s;
  s.at = at;
  s.running_clock_ns = g.running_clock_ns;
  s.watchdog_thresh = g.watchdog_thresh;
  s.panic_cpu = g.panic_cpu;
  const Duration thresh = std::chrono::seconds(std::max(0, g.watchdog_thresh));
  for (std::size_t i = 0; i < g.cpus.size() && i < lim.max_lanes; ++i) {
    const GuestCpuView& c = g.cpus[i];
    IncidentCpuSummary cs;
    cs.cpu = c.cpu;
    cs.online = c.online;
    cs.idle = c.idle;
    cs.pid = c.current_pid;
    cs.comm = bounded(c.current_comm, lim.max_line);
    cs.nr_running = c.nr_running;
    cs.queued_calls = static_cast<uint32_t>(std::min<std::size_t>(c.call_single_queue.size(), UINT32_MAX));
    for (const CsdRequest& r : c.cfd_requests) {
      if (cs.csd_targets.size() >= lim.max_lanes) break;
      if (r.locked && r.target_cpu >= 0) cs.csd_targets.push_back(r.target_cpu);
    }
    cs.watchdog_age = watchdog_age(g, c);
    const bool stale = cs.watchdog_age && g.watchdog_thresh > 0 && *cs.watchdog_age >= thresh;
    if (!cs.csd_targets.empty() || stale) ++s.troubled_cpus;
    if (cs.watchdog_age) s.max_watchdog_age = std::max(s.max_watchdog_age, *cs.watchdog_age);
    s.cpus.push_back(std::move(cs));
  }
  return s;
}

bool worse(const IncidentSnapshot& a, const IncidentSnapshot& b) {
  if (a.troubled_cpus != b.troubled_cpus) return a.troubled_cpus > b.troubled_cpus;
  return a.max_watchdog_age > b.max_watchdog_age;
}

// One snapshot's points, with the CPU each is of.
using GuestPoints = std::vector<std::pair<int, IncidentGuestPoint>>;

GuestPoints guest_points(const GuestView& g, Timestamp at, std::size_t max_lanes) {
  GuestPoints out;
  for (std::size_t i = 0; i < g.cpus.size() && i < max_lanes; ++i) {
    const GuestCpuView& c = g.cpus[i];
    out.emplace_back(c.cpu, IncidentGuestPoint{at, c.online, c.idle, csd_target(c), watchdog_age(g, c)});
  }
  return out;
}

IncidentFindingRef ref_of(const Finding& f, const IncidentLimits& lim) {
  IncidentFindingRef r;
  r.id = bounded(f.id, lim.max_line);
  r.kind = f.kind;
  r.severity = f.severity;
  r.onset = f.onset;
  r.resolved_at = f.resolved_at;
  for (std::size_t i = 0; i < f.cpus.size() && i < lim.max_lanes; ++i) r.cpus.push_back(f.cpus[i]);
  r.summary = bounded(f.summary, 4 * lim.max_line);
  return r;
}

// In the window: still active, or resolved after it began.
bool overlaps(const IncidentFindingRef& r, Timestamp window_start) {
  return !r.resolved_at || *r.resolved_at >= window_start;
}

void upsert_ref(std::vector<IncidentFindingRef>& refs, IncidentFindingRef r, std::size_t max, uint64_t* dropped) {
  for (auto& x : refs) {
    if (x.id == r.id) {
      x = std::move(r);
      return;
    }
  }
  if (refs.size() >= max) {
    if (dropped) ++*dropped;
    return;
  }
  refs.push_back(std::move(r));
  std::stable_sort(refs.begin(), refs.end(), [](const auto& a, const auto& b) { return a.onset < b.onset; });
}

template <typename Lane>
Lane* lane_of(std::vector<Lane>& lanes, int key, int Lane::*field, std::size_t max) {
  for (auto& l : lanes) {
    if (l.*field == key) return &l;
  }
  if (lanes.size() >= max) return nullptr;
  Lane l{};
  l.*field = key;
  lanes.push_back(std::move(l));
  std::sort(lanes.begin(), lanes.end(), [field](const Lane& a, const Lane& b) { return a.*field < b.*field; });
  for (auto& x : lanes) {
    if (x.*field == key) return &x;
  }
  return nullptr;
}

// Keeps every other point and the last one; returns how many went.
template <typename Point>
uint64_t thin(std::vector<Point>& pts) {
  if (pts.size() <= 2) return 0;
  std::vector<Point> kept;
  kept.reserve(pts.size() / 2 + 2);
  for (std::size_t i = 0; i < pts.size(); i += 2) kept.push_back(pts[i]);
  if ((pts.size() - 1) % 2 != 0) kept.push_back(pts.back());
  const uint64_t gone = pts.size() - kept.size();
  pts = std::move(kept);
  return gone;
}

// Thins every lane (and gives its memory back); `gap` grows to the widest average gap seen
// before. Returns the points that went.
template <typename Lane>
uint64_t thin_lanes(std::vector<Lane>& lanes, Duration& gap) {
  uint64_t gone = 0;
  for (auto& l : lanes) {
    if (l.points.size() > 2) {
      gap = std::max(gap, (l.points.back().at - l.points.front().at) / static_cast<int64_t>(l.points.size() - 1));
    }
    gone += thin(l.points);
    l.points.shrink_to_fit();
  }
  return gone;
}

std::size_t strings_bytes(const std::vector<std::string>& v) {
  std::size_t n = v.capacity() * sizeof(std::string);
  for (const auto& s : v) n += s.capacity();
  return n;
}

}  // namespace

std::size_t estimate_bytes(const IncidentBundle& b) {
  std::size_t n = sizeof(IncidentBundle) + b.finding.summary.size();
  for (const Evidence& e : b.finding.evidence) {
    n += sizeof(Evidence) + e.text.size() + strings_bytes(e.host_stack);
    if (e.kernel_trace) n += strings_bytes(e.kernel_trace->trace.frames);
  }
  for (const auto& l : b.vcpus) n += sizeof(l) + l.points.capacity() * sizeof(IncidentVcpuPoint);
  for (const auto& l : b.guest_cpus) n += sizeof(l) + l.points.capacity() * sizeof(IncidentGuestPoint);
  for (const auto* s : {&b.at_onset, &b.at_worst}) {
    if (!*s) continue;
    for (const auto& c : (*s)->cpus) n += sizeof(c) + c.comm.capacity() + c.csd_targets.capacity() * sizeof(int);
  }
  n += strings_bytes(b.printk_tail);
  for (const auto& h : b.host_stacks) n += sizeof(h) + h.name.capacity() + h.wchan.capacity() + strings_bytes(h.frames);
  for (const auto& r : b.related) n += sizeof(r) + r.id.capacity() + r.summary.capacity() + r.cpus.capacity() * sizeof(int);
  return n;
}

struct IncidentRecorder::Open {
  IncidentBundle b;
  std::string domain;           // domain key
  bool need_lookback = true;    // opened since the domain's last observation
  std::optional<Timestamp> emitted_at;
};

struct IncidentRecorder::DomainRing {
  std::deque<GuestPoints> guest;  // one snapshot a second, the last lookback
  std::optional<IncidentSnapshot> last_snapshot;
  std::vector<IncidentFindingRef> recent;  // the domain's recent findings, bounded
};

IncidentRecorder::IncidentRecorder(IncidentLimits limits) : limits_(std::move(limits)) {}
IncidentRecorder::~IncidentRecorder() = default;

std::string IncidentRecorder::domain_key(const std::string& uuid, const std::string& name) const {
  return uuid.empty() ? "name:" + name : uuid;
}

void IncidentRecorder::set_sink(IncidentSink* sink) {
  std::lock_guard<std::mutex> l(mu_);
  sink_ = sink;
}

void IncidentRecorder::emit_open() {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [id, o] : bundles_) {
    if (!o->b.complete()) emit(o->b);
  }
}

void IncidentRecorder::set_limits(const IncidentLimits& limits) {
  std::lock_guard<std::mutex> l(mu_);
  limits_ = limits;
}

IncidentStats IncidentRecorder::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  IncidentStats s = stats_;
  s.bundles = bundles_.size();
  s.bytes = 0;
  for (const auto& [id, o] : bundles_) s.bytes += o->b.bytes;
  for (const auto& [k, d] : domains_) {
    for (const auto& pts : d->guest) s.bytes += sizeof(pts) + pts.capacity() * sizeof(pts.front());
  }
  return s;
}

std::optional<IncidentBundle> IncidentRecorder::get(const std::string& finding_id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = bundles_.find(finding_id);
  if (it == bundles_.end()) return std::nullopt;
  return it->second->b;
}

void IncidentRecorder::restore(std::vector<IncidentBundle> open_bundles) {
  std::lock_guard<std::mutex> l(mu_);
  for (IncidentBundle& b : open_bundles) {
    if (b.complete() || bundles_.count(b.finding.id) != 0) continue;
    if (bundles_.size() >= limits_.max_bundles) break;
    auto o = std::make_shared<Open>();
    o->domain = domain_key(b.finding.domain_uuid, b.finding.domain);
    o->need_lookback = false;  // its history before the restart came with it
    const std::string id = b.finding.id;
    o->b = std::move(b);
    bundles_[id] = std::move(o);
    order_.push_back(id);
  }
}

void IncidentRecorder::make_room() {
  while (bundles_.size() >= limits_.max_bundles) {
    auto it = std::find_if(order_.begin(), order_.end(), [&](const std::string& id) {
      auto b = bundles_.find(id);
      return b == bundles_.end() || b->second->b.complete();
    });
    if (it == order_.end()) return;  // all open: the caller refuses
    bundles_.erase(*it);
    order_.erase(it);
    ++stats_.bundles_evicted;
  }
}

void IncidentRecorder::on_finding_event(const FindingEvent& event) {
  std::lock_guard<std::mutex> l(mu_);
  if (!limits_.enabled) return;
  const Finding& f = event.finding;
  const std::string key = domain_key(f.domain_uuid, f.domain);
  auto& ring = domains_[key];
  if (!ring) ring = std::make_unique<DomainRing>();
  // Remember the domain's findings for the `related` of a bundle opened later: the oldest
  // resolved ones make room.
  IncidentFindingRef ref = ref_of(f, limits_);
  auto same = std::find_if(ring->recent.begin(), ring->recent.end(), [&](const auto& r) { return r.id == ref.id; });
  if (same != ring->recent.end()) {
    *same = ref;
  } else {
    if (ring->recent.size() >= limits_.max_related) ring->recent.erase(ring->recent.begin());
    ring->recent.push_back(ref);
  }
  for (auto& [id, o] : bundles_) {
    if (o->domain != key || o->b.complete()) continue;
    if (overlaps(ref, o->b.window_start)) upsert_ref(o->b.related, ref, limits_.max_related, &o->b.dropped.related);
  }

  auto it = bundles_.find(f.id);
  if (it != bundles_.end()) {
    if (it->second->b.complete()) return;
    it->second->b.finding = f;
    if (event.type == FindingEvent::Type::kResolved || !f.active) close_bundle(f.id, f);
    return;
  }
  if (f.severity == Severity::kCritical && f.active && event.type != FindingEvent::Type::kResolved) {
    open_bundle(event);
  }
}

void IncidentRecorder::open_bundle(const FindingEvent& e) {
  make_room();
  if (bundles_.size() >= limits_.max_bundles) {
    ++stats_.bundles_refused;
    return;
  }
  const Finding& f = e.finding;
  auto o = std::make_shared<Open>();
  o->domain = domain_key(f.domain_uuid, f.domain);
  o->b.finding = f;
  o->b.window_start = f.onset - limits_.lookback;
  const auto& ring = domains_[o->domain];
  for (const auto& r : ring->recent) {
    if (overlaps(r, o->b.window_start)) upsert_ref(o->b.related, r, limits_.max_related, &o->b.dropped.related);
  }
  o->b.bytes = estimate_bytes(o->b);
  bundles_[f.id] = std::move(o);
  order_.push_back(f.id);
  ++stats_.bundles_opened;
}

void IncidentRecorder::close_bundle(const std::string& id, const Finding& f) {
  auto& o = bundles_.at(id);
  const Timestamp end = f.resolved_at.value_or(f.last_update);
  o->b.window_end = end;
  // The engine may date the resolution before the tick that decided it.
  for (auto& l : o->b.vcpus) std::erase_if(l.points, [&](const IncidentVcpuPoint& p) { return p.at > end; });
  for (auto& l : o->b.guest_cpus) std::erase_if(l.points, [&](const IncidentGuestPoint& p) { return p.at > end; });
  fit_budget(o->b);
  ++stats_.bundles_completed;
  emit(o->b);
  o->emitted_at = o->b.window_end;
}

void IncidentRecorder::emit(const IncidentBundle& b) {
  if (sink_) sink_->on_incident(std::make_shared<const IncidentBundle>(b));
}

void IncidentRecorder::fit_budget(IncidentBundle& b) {
  b.bytes = estimate_bytes(b);
  while (b.bytes > limits_.max_bundle_bytes) {
    // The longest lane's average gap sets the new stride: twice the grain it had.
    Duration gap{0};
    const uint64_t gone_vcpu = thin_lanes(b.vcpus, gap);
    const uint64_t gone_guest = thin_lanes(b.guest_cpus, gap);
    b.dropped.vcpu_points += gone_vcpu;
    b.dropped.guest_points += gone_guest;
    if (gone_vcpu + gone_guest == 0) break;  // nothing left to thin: the rest is bounded by its own caps
    b.stride = std::max(b.stride * 2, gap * 2);
    ++stats_.thinnings;
    b.bytes = estimate_bytes(b);
  }
}

void IncidentRecorder::forget_domain(const DomainIdentity& domain) {
  std::lock_guard<std::mutex> l(mu_);
  domains_.erase(domain_key(domain.uuid, domain.name));
}

void IncidentRecorder::on_observation(const DomainObservation& obs, Timestamp now, const Lookback& lookback) {
  std::lock_guard<std::mutex> l(mu_);
  if (!limits_.enabled) return;
  const std::string key = domain_key(obs.domain.uuid, obs.domain.name);
  auto& ring = domains_[key];
  if (!ring) ring = std::make_unique<DomainRing>();

  std::optional<IncidentSnapshot> snap;
  GuestPoints gpts;
  if (obs.guest) {
    snap = summarize(*obs.guest, now, limits_);
    gpts = guest_points(*obs.guest, now, limits_.max_lanes);
  }

  for (auto& [id, o] : bundles_) {
    if (o->domain != key || o->b.complete()) continue;
    IncidentBundle& b = o->b;
    if (o->need_lookback) {
      o->need_lookback = false;
      if (lookback) {
        std::vector<IncidentVcpuLane> lanes = lookback(b.window_start);
        if (lanes.size() > limits_.max_lanes) {
          b.dropped.lanes = std::max<uint64_t>(b.dropped.lanes, lanes.size() - limits_.max_lanes);
          lanes.resize(limits_.max_lanes);
        }
        for (auto& lane : lanes) {
          std::erase_if(lane.points, [&](const IncidentVcpuPoint& p) { return p.at < b.window_start || p.at > now; });
        }
        b.vcpus = std::move(lanes);
      }
      for (const GuestPoints& pts : ring->guest) {
        if (pts.empty() || pts.front().second.at < b.window_start) continue;
        for (const auto& [cpu, p] : pts) {
          if (IncidentGuestLane* lane = lane_of(b.guest_cpus, cpu, &IncidentGuestLane::cpu, limits_.max_lanes)) {
            lane->points.push_back(p);
          }
        }
      }
      // No snapshot on the opening tick: the domain's last one is the closest to the onset.
      if (!snap && ring->last_snapshot) b.at_onset = ring->last_snapshot;
    }

    // vCPU points, one per stride.
    uint64_t skipped = 0;
    for (const VcpuHostView& v : obs.vcpus) {
      IncidentVcpuLane* lane = lane_of(b.vcpus, v.index, &IncidentVcpuLane::vcpu, limits_.max_lanes);
      if (!lane) {
        ++skipped;
        continue;
      }
      lane->tid = v.thread.tid;
      if (!lane->points.empty() && now - lane->points.back().at < std::max(b.stride, Duration(1))) continue;
      lane->points.push_back(IncidentVcpuPoint{now, v.thread.state, v.thread.run_time, v.thread.run_delay});
    }
    b.dropped.lanes = std::max(b.dropped.lanes, skipped);

    if (snap) {
      for (const auto& [cpu, p] : gpts) {
        IncidentGuestLane* lane = lane_of(b.guest_cpus, cpu, &IncidentGuestLane::cpu, limits_.max_lanes);
        if (!lane) continue;
        if (!lane->points.empty() && now - lane->points.back().at < std::max(b.stride, Duration(1))) continue;
        lane->points.push_back(p);
      }
      if (!b.at_onset) b.at_onset = snap;
      if (!b.at_worst || worse(*snap, *b.at_worst)) b.at_worst = snap;
      if (!obs.guest->printk_tail.empty()) {
        const auto& tail = obs.guest->printk_tail;
        const std::size_t n = std::min(tail.size(), limits_.max_printk_lines);
        b.printk_tail.clear();
        for (std::size_t i = tail.size() - n; i < tail.size(); ++i) b.printk_tail.push_back(bounded(tail[i], limits_.max_line));
        b.dropped.printk_lines = std::max<uint64_t>(b.dropped.printk_lines, tail.size() - n);
      }
    }

    // Host stacks of the blocked threads (the sampler reads them for D/T/t only).
    auto stack_of = [&](const HostThreadView& t, int vcpu) {
      if (t.host_stack.empty()) return;
      auto it = std::find_if(b.host_stacks.begin(), b.host_stacks.end(), [&](const auto& h) { return h.tid == t.tid; });
      if (it == b.host_stacks.end()) {
        if (b.host_stacks.size() >= limits_.max_host_stacks) {
          ++b.dropped.host_stacks;
          return;
        }
        b.host_stacks.push_back(IncidentHostStack{});
        it = b.host_stacks.end() - 1;
        it->tid = t.tid;
        it->first_seen = now;
      }
      it->vcpu = vcpu;
      it->name = bounded(t.name, limits_.max_line);
      it->state = t.state;
      it->wchan = bounded(t.wchan, limits_.max_line);
      it->frames.clear();
      for (std::size_t i = 0; i < t.host_stack.size() && i < limits_.max_frames; ++i) {
        it->frames.push_back(bounded(t.host_stack[i], limits_.max_line));
      }
      it->last_seen = now;
    };
    for (const VcpuHostView& v : obs.vcpus) stack_of(v.thread, v.index);
    for (const HostThreadView& t : obs.other_threads) stack_of(t, -1);

    fit_budget(b);
    if (!o->emitted_at || now - *o->emitted_at >= limits_.persist_interval) {
      emit(b);
      o->emitted_at = now;
    }
  }

  // The domain's own guest ring, for bundles that open later.
  if (snap) {
    ring->last_snapshot = snap;
    if (ring->guest.empty() || ring->guest.back().empty() || now - ring->guest.back().front().second.at >= kRingStep) {
      ring->guest.push_back(std::move(gpts));
    }
    while (!ring->guest.empty() &&
           (ring->guest.front().empty() || ring->guest.front().front().second.at < now - limits_.lookback - kRingMargin)) {
      ring->guest.pop_front();
    }
  }
}

}  // namespace stallmon::diagnosis
