// SPDX-License-Identifier: Apache-2.0
#include "stallmon/core/stall_monitor.h"

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>
#include <utility>

#include "internal.h"

namespace stallmon::core {

const char* to_string(IntrospectionState state) {
  switch (state) {
    case IntrospectionState::kDisabled: return "disabled";
    case IntrospectionState::kWaitingForLayout: return "waiting for RAM layout";
    case IntrospectionState::kDiscovering: return "discovering";
    case IntrospectionState::kReady: return "ready";
    case IntrospectionState::kFailed: return "failed";
    case IntrospectionState::kPaused: return "paused";
    case IntrospectionState::kNoKernel: return "no Linux kernel found";
    case IntrospectionState::kOverBudget: return "over budget";
  }
  return "unknown";
}

namespace {
std::string gib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(bytes) / (1024.0 * 1024 * 1024));
  return buf;
}
std::string human_duration(Duration d) {
  int64_t s = std::chrono::duration_cast<std::chrono::seconds>(d).count();
  if (s < 0) s = 0;
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m " + std::to_string(s % 60) + "s";
  return std::to_string(s / 3600) + "h " + std::to_string((s % 3600) / 60) + "m";
}
}  // namespace

std::string describe(const IntrospectionHealth& h, Timestamp now) {
  std::string next;
  if (h.next_attempt_at) next = "next try in " + human_duration(*h.next_attempt_at - now);
  switch (h.state) {
    case IntrospectionState::kNoKernel:
      return std::string("no Linux kernel found (scanned ") + gib(h.discovery_bytes_read) +
             (next.empty() ? "" : ", " + next) + ")";
    case IntrospectionState::kPaused:
    case IntrospectionState::kFailed:
    case IntrospectionState::kOverBudget:
    case IntrospectionState::kWaitingForLayout:
    case IntrospectionState::kDiscovering: {
      std::string out = to_string(h.state);
      if (!h.error.empty()) out += ": " + h.error;
      if (!next.empty()) out += " (" + next + ")";
      return out;
    }
    case IntrospectionState::kReady:
    case IntrospectionState::kDisabled:
      break;
  }
  return to_string(h.state);
}

namespace internal {

Histogram::Histogram(std::vector<double> bounds_s) : bounds_(std::move(bounds_s)) {
  std::sort(bounds_.begin(), bounds_.end());
  buckets_.assign(bounds_.size() + 1, 0);
}

void Histogram::observe(double seconds) {
  const size_t i = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin());
  std::lock_guard<std::mutex> l(mu_);
  ++buckets_[i];
  ++count_;
  sum_ += seconds;
}

LatencyHistogram Histogram::read() const {
  LatencyHistogram h;
  std::lock_guard<std::mutex> l(mu_);
  h.bounds_s = bounds_;
  h.counts.resize(bounds_.size());
  uint64_t acc = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    acc += buckets_[i];
    h.counts[i] = acc;
  }
  h.count = count_;
  h.sum_s = sum_;
  return h;
}

}  // namespace internal

using internal::DomainPipeline;

class StallMonitor::Impl final : public diagnosis::FindingListener {
 public:
  Impl(MonitorConfig config, MonitorDependencies deps) : shared(config) {
    shared.config.diagnosis.baseline_snapshot_interval = config.baseline_snapshot_interval;
    thread_stats = std::move(deps.thread_stats);
    if (thread_stats.kind.empty()) {
      thread_stats.kind = thread_stats.source ? std::string(thread_stats.source->kind()) : "proc";
    }
    if (thread_stats.reason.empty() && !thread_stats.source) thread_stats.reason = "/proc per thread: no other source given";
    shared.stat_source = thread_stats.source.get();
    // Ticks run on a grid of sample_interval (next_tick_due): a pass younger than half of it
    // is this period's, and serves every domain's tick.
    shared.config.sampler.pass_max_age_ns = shared.config.sample_interval.count() / 2;
    if (deps.fs != nullptr) {
      shared.fs = deps.fs;
    } else {
      own_fs = std::make_unique<host::RealHostFs>("/");
      shared.fs = own_fs.get();
    }
    shared.mono = deps.mono_clock != nullptr ? deps.mono_clock : &own_mono;
    shared.clock = deps.clock != nullptr ? deps.clock : &own_clock;
    shared.memory_opener = std::move(deps.memory_opener);
    shared.mono_to_engine = ClockMapping::from(shared.clock->now(), shared.mono->now_ns());
    engine = std::make_unique<diagnosis::DiagnosisEngine>(shared.config.diagnosis, *shared.clock);
    engine->set_listener(this);
    shared.engine = engine.get();
    // The recorder hears the fan-out first: the store, a listener too, then sees a finding
    // after its bundle opened.
    incidents = std::make_unique<diagnosis::IncidentRecorder>(shared.config.incidents);
    listeners.push_back(incidents.get());
    shared.incidents = incidents.get();
    started_at = shared.clock->now();
    if (shared.config.threads) {
      workers = shared.config.workers != 0 ? shared.config.workers : default_workers();
      internal::TaskPool::Options o;
      o.mono = shared.mono;
      o.read_deadline_ns = shared.config.read_deadline.count();
      o.name = "tick";
      o.workers = workers;
      o.max_spare = workers;
      tick_pool = std::make_unique<internal::TaskPool>(o);
      o.name = "discovery";
      o.workers = std::max<size_t>(1, shared.config.discovery_max_concurrent);
      o.max_spare = o.workers;
      discovery_pool = std::make_unique<internal::TaskPool>(o);
      shared.tick_pool = tick_pool.get();
      shared.discovery_pool = discovery_pool.get();
      tick_pool->start();
      discovery_pool->start();
    }
  }

  // The CPUs this process may run on, at most 2: ticks are short, and more workers only help
  // while some are stuck in guest reads (the supervisor adds replacements for those).
  static size_t default_workers() {
    cpu_set_t set;
    CPU_ZERO(&set);
    size_t cpus = 1;
    if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = static_cast<size_t>(std::max(1, CPU_COUNT(&set)));
    return std::min<size_t>(2, cpus);
  }

  ~Impl() override { stop(); }

  void on_finding_event(const diagnosis::FindingEvent& event) override {
    shared.counters.finding_events.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> l(listeners_mu);
    for (diagnosis::FindingListener* li : listeners) li->on_finding_event(event);
  }

  static std::string key_of(const libvirt::DomainInfo& d) { return d.uuid.empty() ? d.name : d.uuid; }

  std::shared_ptr<DomainPipeline> find(std::string_view name_or_uuid) const {
    std::lock_guard<std::mutex> l(mu);
    if (auto it = domains.find(std::string(name_or_uuid)); it != domains.end()) return it->second;
    for (const auto& [k, p] : domains) {
      if (p->name() == name_or_uuid) return p;
    }
    return nullptr;
  }

  void remove(const std::string& key) {
    std::shared_ptr<DomainPipeline> p;
    {
      std::lock_guard<std::mutex> l(mu);
      auto it = domains.find(key);
      if (it == domains.end()) return;
      p = it->second;
      domains.erase(it);
    }
    p->retire();  // from here on it observes nothing; its queued tick finds it retired
    engine->forget_domain(key);
  }

  void stop() {
    std::map<std::string, std::shared_ptr<DomainPipeline>> all;
    {
      std::lock_guard<std::mutex> l(mu);
      stopped = true;
      all.swap(domains);
    }
    for (auto& [k, p] : all) p->retire();
    // Discovery first: its results are only picked up by ticks.
    if (discovery_pool) discovery_pool->stop();
    if (tick_pool) tick_pool->stop();
  }

  // Declared first: destroyed after every pipeline (their samplers unwatch it).
  host::StatSourceChoice thread_stats;
  internal::Shared shared;
  std::unique_ptr<host::RealHostFs> own_fs;
  host::MonotonicClock own_mono;
  diagnosis::SteadyWallClock own_clock;
  std::unique_ptr<diagnosis::DiagnosisEngine> engine;
  Timestamp started_at{};
  size_t workers = 0;
  std::unique_ptr<internal::TaskPool> tick_pool, discovery_pool;

  mutable std::mutex mu;
  std::map<std::string, std::shared_ptr<DomainPipeline>> domains;  // by uuid
  bool stopped = false;

  std::mutex listeners_mu;
  std::vector<diagnosis::FindingListener*> listeners;
  std::unique_ptr<diagnosis::IncidentRecorder> incidents;
};

StallMonitor::StallMonitor(MonitorConfig config, MonitorDependencies deps)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(deps))) {}

StallMonitor::~StallMonitor() {
  stop();
  impl_->engine->set_listener(nullptr);
}

void StallMonitor::attach(libvirt::DomainWatcher& watcher) { watcher.add_observer(this); }

void StallMonitor::on_domain_event(const libvirt::DomainEvent& event) {
  auto p = impl_->find(event.uuid.empty() ? event.name : event.uuid);
  if (p) p->post_event(event, impl_->shared.clock->now());
}

void StallMonitor::on_domain_updated(const libvirt::DomainInfo& domain) {
  if (impl_->shared.config.domain_filter && !impl_->shared.config.domain_filter(domain)) return;
  const std::string key = Impl::key_of(domain);
  std::shared_ptr<DomainPipeline> created;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    if (impl_->stopped) return;
    auto it = impl_->domains.find(key);
    if (it != impl_->domains.end()) {
      it->second->post_update(domain);
      return;
    }
    created = std::make_shared<DomainPipeline>(impl_->shared, domain);
    impl_->domains.emplace(key, created);
  }
  if (impl_->tick_pool) internal::post_tick(impl_->shared, created, impl_->shared.mono->now_ns());
}

void StallMonitor::on_domain_gone(const libvirt::DomainInfo& last) {
  impl_->remove(Impl::key_of(last));
  impl_->incidents->forget_domain(diagnosis::DomainIdentity{last.name, last.uuid});
}

void StallMonitor::on_domains_synced(const std::vector<libvirt::DomainInfo>& domains) {
  // A domain we watch that the full listing no longer has went away while we were not told
  // (e.g. during a libvirtd restart).
  std::vector<std::string> gone;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    for (const auto& entry : impl_->domains) {
      const std::string& key = entry.first;  // clang 14 cannot capture a structured binding
      const bool listed = std::any_of(domains.begin(), domains.end(),
                                      [&](const libvirt::DomainInfo& d) { return Impl::key_of(d) == key; });
      if (!listed) gone.push_back(key);
    }
  }
  for (const std::string& key : gone) impl_->remove(key);
  for (const libvirt::DomainInfo& d : domains) on_domain_updated(d);
}

void StallMonitor::stop() { impl_->stop(); }

std::vector<DomainSummary> StallMonitor::domains() const {
  std::vector<std::shared_ptr<DomainPipeline>> all;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    for (const auto& [k, p] : impl_->domains) all.push_back(p);
  }
  std::vector<DomainSummary> out;
  out.reserve(all.size());
  for (const auto& p : all) out.push_back(p->summary());
  std::sort(out.begin(), out.end(),
            [](const DomainSummary& a, const DomainSummary& b) { return a.name < b.name; });
  return out;
}

namespace {
Error not_watched(std::string_view name_or_uuid) {
  return Error(ErrorCode::kNotFound, "domain '" + std::string(name_or_uuid) + "' is not watched");
}
}  // namespace

Result<DomainDetail> StallMonitor::domain(std::string_view name_or_uuid) const {
  auto p = impl_->find(name_or_uuid);
  if (!p) return not_watched(name_or_uuid);
  return p->detail();
}

Result<VcpuHistory> StallMonitor::vcpu_history(std::string_view name_or_uuid, int32_t vcpu,
                                               std::chrono::nanoseconds window) const {
  auto p = impl_->find(name_or_uuid);
  if (!p) return not_watched(name_or_uuid);
  return p->history(vcpu, window);
}

Result<InspectResult> StallMonitor::inspect(std::string_view name_or_uuid,
                                            std::chrono::milliseconds timeout) {
  auto p = impl_->find(name_or_uuid);
  if (!p) return not_watched(name_or_uuid);
  return p->inspect(timeout);
}

diagnosis::IncidentRecorder& StallMonitor::incidents() { return *impl_->incidents; }
const diagnosis::IncidentRecorder& StallMonitor::incidents() const { return *impl_->incidents; }

diagnosis::DiagnosisEngine& StallMonitor::engine() { return *impl_->engine; }
const diagnosis::DiagnosisEngine& StallMonitor::engine() const { return *impl_->engine; }

void StallMonitor::add_finding_listener(diagnosis::FindingListener* listener) {
  if (listener == nullptr) return;
  std::lock_guard<std::mutex> l(impl_->listeners_mu);
  if (std::find(impl_->listeners.begin(), impl_->listeners.end(), listener) == impl_->listeners.end()) {
    impl_->listeners.push_back(listener);
  }
}

void StallMonitor::remove_finding_listener(diagnosis::FindingListener* listener) {
  std::lock_guard<std::mutex> l(impl_->listeners_mu);
  impl_->listeners.erase(std::remove(impl_->listeners.begin(), impl_->listeners.end(), listener),
                         impl_->listeners.end());
}

AgentStats StallMonitor::stats() const {
  const internal::Counters& c = impl_->shared.counters;
  AgentStats s;
  s.started_at = impl_->started_at;
  s.ticks = c.ticks.load();
  s.overruns = c.overruns.load();
  s.tick_latency = impl_->shared.tick_latency.read();
  s.snapshot_latency = impl_->shared.snapshot_latency.read();
  s.sample_errors = c.sample_errors.load();
  s.snapshots = c.snapshots.load();
  s.snapshot_errors = c.snapshot_errors.load();
  s.discovery_attempts = c.discovery_attempts.load();
  s.discovery_failures = c.discovery_failures.load();
  s.introspection_errors = s.snapshot_errors + s.discovery_failures;
  s.monitor_timeouts = c.monitor_timeouts.load();
  s.finding_events = c.finding_events.load();
  s.reads_abandoned = c.reads_abandoned.load();
  s.internal_errors = c.internal_errors.load();
  s.reboots_detected = c.reboots_detected.load();
  s.thread_stats_source = impl_->thread_stats.kind;
  s.thread_stats_reason = impl_->thread_stats.reason;
  if (impl_->thread_stats.source) {
    if (auto pass = impl_->thread_stats.source->latest()) s.thread_stats_passes = pass->generation;
  }
  s.thread_stats_fallbacks = c.thread_stats_fallbacks.load();
  s.kernel_traces = c.kernel_traces.load();
  s.kernel_trace_failures = c.kernel_trace_failures.load();
  s.kernel_trace_seconds = static_cast<double>(c.kernel_trace_ns.load()) * 1e-9;
  s.workers = impl_->workers;
  if (impl_->tick_pool) s.threads += impl_->tick_pool->threads();
  if (impl_->discovery_pool) s.threads += impl_->discovery_pool->threads();
  std::lock_guard<std::mutex> l(impl_->mu);
  s.domains = impl_->domains.size();
  for (const auto& [k, p] : impl_->domains) s.history_memory_bytes += p->memory_bytes();
  return s;
}

const MonitorConfig& StallMonitor::config() const { return impl_->shared.config; }

void StallMonitor::tick_all() {
  if (impl_->shared.config.threads) return;
  std::vector<std::shared_ptr<DomainPipeline>> all;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    for (const auto& [k, p] : impl_->domains) all.push_back(p);
  }
  for (const auto& p : all) p->tick();
}

Result<IntrospectionHealth> StallMonitor::wait_introspection(std::string_view name_or_uuid,
                                                             std::chrono::milliseconds timeout) const {
  auto p = impl_->find(name_or_uuid);
  if (!p) return not_watched(name_or_uuid);
  return p->wait_introspection(timeout);
}

}  // namespace stallmon::core
