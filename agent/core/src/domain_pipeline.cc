// SPDX-License-Identifier: Apache-2.0
// One watched domain: its tick loop (sample → snapshot → observe), its kernel discovery worker
// and the state its queries copy.
#include <algorithm>
#include <chrono>
#include <set>
#include <string>
#include <utility>

#include "internal.h"
#include "stallmon/host/proc_parse.h"
#include "stallmon/introspect/snapshot_kernel_access.h"

namespace stallmon::core::internal {

namespace {

std::map<int32_t, int32_t> vcpu_map(const libvirt::DomainInfo& info) {
  std::map<int32_t, int32_t> m;
  for (const libvirt::VcpuThread& v : info.vcpus) {
    if (v.index >= 0 && v.tid > 0) m[v.index] = v.tid;
  }
  return m;
}

ThreadStatus thread_status(const host::TrackedThread& t, const Shared& shared, int64_t window_ns) {
  ThreadStatus s;
  s.tid = t.tid();
  s.name = t.comm();
  s.vcpu = t.vcpu();
  s.present = t.present();
  s.sample_errors = t.errors();
  s.own_cgroup = t.sampler().own_cgroup();
  if (!t.history().empty()) {
    s.has_sample = true;
    s.latest = t.history().newest();
    s.latest_at = shared.engine_time(s.latest.t_ns);
    s.signals = t.signals(window_ns);
  }
  s.blocked = t.detail();
  return s;
}

}  // namespace

// ---- discovery --------------------------------------------------------------------------------

Result<std::unique_ptr<GuestKernel>> discover_guest_kernel(const Shared& shared, pid_t pid,
                                                           const std::vector<introspect::RamRange>& ram,
                                                           uint64_t hint_gpa) {
  if (shared.discover_override) return shared.discover_override(pid, ram, hint_gpa);
  Result<std::shared_ptr<introspect::PhysicalMemory>> mem = Error(ErrorCode::kInternal, "unset");
  if (shared.memory_opener) {
    mem = shared.memory_opener(pid, ram);
  } else {
    auto q = introspect::QemuProcessMemory::create(pid, ram);
    if (!q.ok()) return std::move(q).error().context("guest memory");
    mem = std::shared_ptr<introspect::PhysicalMemory>(std::move(q).value());
  }
  if (!mem.ok()) return std::move(mem).error().context("guest memory");

  auto gk = std::make_unique<GuestKernel>();
  gk->budget = std::make_shared<introspect::MemoryBudget>("qemu pid " + std::to_string(pid));
  introspect::DiscoverOptions opts;
  opts.scan.hint_gpa = hint_gpa;  // only where to look first: the note is still proven
  opts.budget = gk->budget;
  auto kernel = introspect::Kernel::discover(*mem, opts);
  if (!kernel.ok()) return std::move(kernel).error();

  gk->memory = std::move(mem).value();
  gk->kernel = std::move(kernel).value();
  gk->access = introspect::make_kernel_access(*gk->kernel);
  introspect::SnapshotOptions tick_options = shared.config.snapshot, inspect_options = shared.config.inspect_snapshot;
  tick_options.budget = inspect_options.budget = gk->budget;
  auto tick_reader = introspect::SnapshotReader::create(*gk->access, tick_options);
  if (!tick_reader.ok()) return std::move(tick_reader).error().context("snapshot layout");
  gk->tick_reader = std::move(tick_reader).value();
  auto inspect_reader = introspect::SnapshotReader::create(*gk->access, inspect_options);
  if (!inspect_reader.ok()) return std::move(inspect_reader).error().context("snapshot layout");
  gk->inspect_reader = std::move(inspect_reader).value();
  const introspect::VmcoreInfo& vi = gk->kernel->vmcoreinfo();
  gk->release = vi.osrelease;
  gk->build_id = vi.build_id;
  gk->note_gpa = vi.note_gpa.value_or(0);
  return gk;
}

// ---- wchan of sleeping threads ----------------------------------------------------------------

void SleepWchanReader::fill(host::HostFs& fs, const std::string& proc_root, int32_t pid,
                            const host::TrackedThread& thread, diagnosis::HostThreadView& view) {
  if (view.state != diagnosis::ThreadState::kSleeping || thread.history().empty()) return;
  const host::ThreadSample& latest = thread.history().newest();
  const host::StateTracker& tr = thread.tracker();
  if (latest.t_ns - tr.last_progress_ns < kMinNoProgressNs) return;
  Entry& e = cache_[thread.tid()];
  if (e.read_ns == 0 || e.episode != tr.last_progress_ns || latest.t_ns - e.read_ns >= kRefreshNs) {
    auto w = host::read_whole(fs, proc_root + "/" + std::to_string(pid) + "/task/" +
                                      std::to_string(thread.tid()) + "/wchan",
                              512);
    e.wchan = w.ok() ? host::parse_wchan(*w) : std::string();
    e.read_ns = latest.t_ns;
    e.episode = tr.last_progress_ns;
    ++reads_;
  }
  view.wchan = e.wchan;
}

void SleepWchanReader::retain_only(const std::vector<int32_t>& tids) {
  if (cache_.empty()) return;
  std::set<int32_t> keep(tids.begin(), tids.end());
  for (auto it = cache_.begin(); it != cache_.end();) {
    it = keep.count(it->first) ? std::next(it) : cache_.erase(it);
  }
}

void fill_host_views(const host::ProcessSampler& sampler, host::HostFs& fs,
                     SleepWchanReader* wchans, diagnosis::DomainObservation& obs) {
  const std::string& proc_root = sampler.options().proc_root;
  std::vector<int32_t> tids;
  for (const host::TrackedThread* t : sampler.vcpus()) {
    if (!t->present()) continue;
    auto v = to_host_thread_view(*t);
    if (!v) continue;
    if (wchans) wchans->fill(fs, proc_root, sampler.pid(), *t, *v);
    tids.push_back(t->tid());
    obs.vcpus.push_back(diagnosis::VcpuHostView{t->vcpu(), std::move(*v)});
  }
  for (const host::TrackedThread* t : sampler.other_threads()) {
    if (!t->present()) continue;
    auto v = to_host_thread_view(*t);
    if (!v) continue;
    if (wchans) wchans->fill(fs, proc_root, sampler.pid(), *t, *v);
    tids.push_back(t->tid());
    obs.other_threads.push_back(std::move(*v));
  }
  obs.main_loop_tid = sampler.pid();
  if (wchans) wchans->retain_only(tids);
}

// ---- pipeline ---------------------------------------------------------------------------------

DomainPipeline::DomainPipeline(Shared& shared, const libvirt::DomainInfo& info)
    : shared_(shared), uuid_(info.uuid.empty() ? info.name : info.uuid) {
  pending_info_ = info;
  info_.name = info.name;
  info_.uuid = info.uuid;
  watched_since_ = shared_.clock->now();
  health_.state = shared_.config.introspection ? IntrospectionState::kWaitingForLayout
                                               : IntrospectionState::kDisabled;
}

DomainPipeline::~DomainPipeline() {
  retire();
  join();
}

void DomainPipeline::start() {
  tick_thread_ = std::thread([this] { tick_loop(); });
  if (shared_.config.introspection) discovery_thread_ = std::thread([this] { discovery_loop(); });
}

std::string DomainPipeline::name() const {
  std::lock_guard<std::mutex> l(mu_);
  return info_.name;
}

void DomainPipeline::post_update(const libvirt::DomainInfo& info) {
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    pending_info_ = info;
  }
  inbox_cv_.notify_all();
}

void DomainPipeline::post_event(const libvirt::DomainEvent& event, Timestamp at) {
  auto e = to_diagnosis_event(event, at);
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    if (e) pending_events_.push_back(*e);
    // A reset or a new boot may bring another kernel (or KASLR slide): check before the next
    // snapshot rather than at the periodic re-validation.
    if (event.kind == libvirt::DomainEventKind::kRebooted ||
        event.kind == libvirt::DomainEventKind::kStarted) {
      pending_revalidate_ = true;
    }
  }
  inbox_cv_.notify_all();
}

void DomainPipeline::retire() {
  {
    std::lock_guard<std::mutex> l(observe_mu_);
    retired_ = true;
  }
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    stop_ = true;
  }
  inbox_cv_.notify_all();
  {
    std::lock_guard<std::mutex> l(disc_mu_);
    disc_stop_ = true;
  }
  disc_cv_.notify_all();
  // Pending inspect requests get an answer instead of their timeout.
  std::deque<std::shared_ptr<InspectRequest>> q;
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    q.swap(inspect_queue_);
  }
  for (auto& r : q) {
    std::lock_guard<std::mutex> l(r->mu);
    r->result = Result<InspectResult>(Error(ErrorCode::kNotFound, "domain " + uuid_ + " is gone"));
    r->done = true;
    r->cv.notify_all();
  }
  if (!tick_thread_.joinable()) finished_ = true;
}

void DomainPipeline::join() {
  if (tick_thread_.joinable()) tick_thread_.join();
  if (discovery_thread_.joinable()) discovery_thread_.join();
}

void DomainPipeline::tick_loop() {
  const int64_t interval = shared_.config.sample_interval.count();
  int64_t next = shared_.mono->now_ns();
  std::unique_lock<std::mutex> lk(inbox_mu_);
  while (!stop_) {
    if (!inspect_queue_.empty()) {
      lk.unlock();
      serve_inspect_requests();
      lk.lock();
      continue;
    }
    const int64_t now = shared_.mono->now_ns();
    if (now < next) {
      inbox_cv_.wait_for(lk, std::chrono::nanoseconds(next - now));
      continue;
    }
    lk.unlock();
    if (now - next > interval) {
      // Late by more than a whole interval: count it and skip ahead instead of bursting ticks
      // (a burst would only sample the same stall several times within microseconds).
      shared_.counters.overruns.fetch_add(1, std::memory_order_relaxed);
      next = now;
    }
    tick();
    next += interval;
    lk.lock();
  }
  finished_ = true;
}

void DomainPipeline::discovery_loop() {
  std::unique_lock<std::mutex> lk(disc_mu_);
  for (;;) {
    disc_cv_.wait(lk, [&] { return disc_stop_ || disc_job_.has_value(); });
    if (disc_stop_) return;
    DiscoveryJob job = std::move(*disc_job_);
    disc_job_.reset();
    lk.unlock();
    const int64_t t0 = shared_.mono->now_ns();
    auto r = discover_guest_kernel(shared_, job.pid, *job.ram, job.hint);
    const int64_t took = shared_.mono->now_ns() - t0;
    lk.lock();
    disc_result_.emplace(DiscoveryResult{job.generation, took, std::move(r)});
  }
}

void DomainPipeline::set_health(const std::function<void(IntrospectionHealth&)>& f) {
  {
    std::lock_guard<std::mutex> l(mu_);
    f(health_);
  }
  health_cv_.notify_all();
}

void DomainPipeline::apply_inbox(std::vector<diagnosis::DomainEvent>& events, bool& revalidate_now) {
  std::optional<libvirt::DomainInfo> info;
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    info.swap(pending_info_);
    events.swap(pending_events_);
    revalidate_now = pending_revalidate_;
    pending_revalidate_ = false;
  }
  if (!info) return;
  const bool pid_changed = info->qemu_pid != info_.qemu_pid || !sampler_;
  const bool ram_changed = info->ram_layout != info_.ram_layout;
  const auto vcpus = vcpu_map(*info);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!info->monitor.responsive && monitor_.responsive) {
      ++monitor_.timeouts;
      shared_.counters.monitor_timeouts.fetch_add(1, std::memory_order_relaxed);
    }
    monitor_.responsive = info->monitor.responsive;
    monitor_.stuck_call = info->monitor.responsive ? std::string() : info->monitor.stuck_call;
    if (info->monitor.responsive) {
      monitor_.unresponsive_since.reset();
    } else {
      monitor_.unresponsive_since =
          to_monitor_status(info->monitor, shared_.mono_to_engine).unresponsive_since;
    }
    if (pid_changed) {
      sampler_.reset();
      if (info->qemu_pid > 0) {
        sampler_ = std::make_unique<host::ProcessSampler>(*shared_.fs, *shared_.mono, info->qemu_pid,
                                                          vcpus, shared_.config.sampler);
      }
    } else if (vcpus != vcpu_map(info_)) {
      sampler_->set_vcpu_threads(vcpus);
    }
    info_ = *info;
  }
  if (pid_changed || ram_changed) {
    ++mem_generation_;
    if (kernel_ || discovery_in_flight_) {
      drop_kernel("qemu process or guest RAM layout changed", shared_.mono->now_ns(), true);
    }
  }
}

void DomainPipeline::drop_kernel(const std::string& why, int64_t now_ns, bool retry_now) {
  kernel_.reset();
  failed_snapshots_ = 0;
  // A result still in flight belongs to the old generation: it is discarded when it arrives.
  discovery_in_flight_ = false;
  ++mem_generation_;
  next_discovery_ns_ = retry_now ? now_ns : now_ns + retry_delay_ns_;
  set_health([&](IntrospectionHealth& h) {
    h.state = IntrospectionState::kDiscovering;
    h.error = why;
    h.ready_since.reset();
  });
}

void DomainPipeline::start_discovery(int64_t now_ns) {
  discovery_in_flight_ = true;
  shared_.counters.discovery_attempts.fetch_add(1, std::memory_order_relaxed);
  set_health([&](IntrospectionHealth& h) {
    h.state = IntrospectionState::kDiscovering;
    ++h.discovery_attempts;
    h.next_attempt_at.reset();
  });
  DiscoveryJob job{info_.qemu_pid, info_.ram_layout, note_hint_, mem_generation_};
  if (discovery_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> l(disc_mu_);
      disc_job_ = std::move(job);
    }
    disc_cv_.notify_all();
    return;
  }
  // No worker (threads=false): discover inline, on the caller's thread.
  const int64_t t0 = shared_.mono->now_ns();
  auto r = discover_guest_kernel(shared_, job.pid, *job.ram, job.hint);
  finish_discovery(DiscoveryResult{job.generation, shared_.mono->now_ns() - t0, std::move(r)},
                   std::max(now_ns, shared_.mono->now_ns()));
}

void DomainPipeline::finish_discovery(DiscoveryResult result, int64_t now_ns) {
  if (!discovery_in_flight_ || result.generation != mem_generation_) return;  // stale
  discovery_in_flight_ = false;
  const Duration took(result.duration_ns);
  if (result.kernel.ok()) {
    kernel_ = std::move(result.kernel).value();
    note_hint_ = kernel_->note_gpa;
    retry_delay_ns_ = 0;
    last_validated_ns_ = now_ns;
    failed_snapshots_ = 0;
    set_health([&](IntrospectionHealth& h) {
      h.state = IntrospectionState::kReady;
      h.error.clear();
      h.kernel_release = kernel_->release;
      h.build_id = kernel_->build_id;
      h.last_discovery_duration = took;
      h.ready_since = shared_.engine_time(now_ns);
      h.next_attempt_at.reset();
    });
    return;
  }
  shared_.counters.discovery_failures.fetch_add(1, std::memory_order_relaxed);
  const int64_t initial = shared_.config.discovery_retry_initial.count();
  const int64_t max = shared_.config.discovery_retry_max.count();
  retry_delay_ns_ = retry_delay_ns_ == 0 ? initial : std::min(max, retry_delay_ns_ * 2);
  next_discovery_ns_ = now_ns + retry_delay_ns_;
  const std::string msg = result.kernel.error().to_string();
  set_health([&](IntrospectionHealth& h) {
    h.state = IntrospectionState::kFailed;
    h.error = msg;
    ++h.discovery_failures;
    h.last_discovery_duration = took;
    h.next_attempt_at = shared_.engine_time(next_discovery_ns_);
  });
}

void DomainPipeline::manage_introspection(int64_t now_ns, bool revalidate_now) {
  if (!shared_.config.introspection) return;
  if (discovery_in_flight_ && discovery_thread_.joinable()) {
    std::optional<DiscoveryResult> r;
    {
      std::lock_guard<std::mutex> l(disc_mu_);
      r.swap(disc_result_);
    }
    if (r) finish_discovery(std::move(*r), now_ns);
  }
  if (kernel_) {
    if (kernel_->kernel && (revalidate_now ||
        now_ns - last_validated_ns_ >= shared_.config.revalidate_interval.count())) {
      last_validated_ns_ = now_ns;
      // One page read of the VMCOREINFO note: cheap enough for the tick thread.
      auto valid = kernel_->kernel->still_valid();
      if (!valid.ok()) {
        drop_kernel("re-validation failed: " + valid.error().to_string(), now_ns, true);
      } else if (!*valid) {
        drop_kernel("the guest kernel changed (reboot)", now_ns, true);
      }
    }
    return;
  }
  if (info_.qemu_pid <= 0 || !info_.ram_layout || info_.ram_layout->empty()) {
    if (!discovery_in_flight_) {
      const std::string why = info_.ram_layout_error;
      set_health([&](IntrospectionHealth& h) {
        if (h.state != IntrospectionState::kWaitingForLayout || h.error != why) {
          h.state = IntrospectionState::kWaitingForLayout;
          h.error = why;
        }
      });
    }
    return;
  }
  if (discovery_in_flight_ || now_ns < next_discovery_ns_) return;
  start_discovery(now_ns);
}

std::optional<introspect::GuestSnapshot> DomainPipeline::maybe_snapshot(Timestamp now) {
  if (!kernel_ || !shared_.engine->wants_guest_snapshot(uuid_, now)) return std::nullopt;
  const int64_t t0 = shared_.mono->now_ns();
  introspect::GuestSnapshot snap = kernel_->tick_reader->take();
  const int64_t took = shared_.mono->now_ns() - t0;
  record_snapshot(snap, took);
  // Every CPU unreadable, many times in a row: the layout no longer matches the guest (a reboot
  // whose event we missed, a qemu that remapped RAM). Discover again.
  const bool all_failed =
      snap.cpus.empty() || std::none_of(snap.cpus.begin(), snap.cpus.end(),
                                        [](const introspect::CpuSnapshot& c) { return c.rq.ok; });
  failed_snapshots_ = all_failed ? failed_snapshots_ + 1 : 0;
  if (failed_snapshots_ >= shared_.config.rediscover_after_failed_snapshots) {
    drop_kernel("snapshots keep failing: " +
                    (snap.errors.empty() ? std::string("no CPU readable") : snap.errors.front().message),
                t0, false);
  }
  return snap;
}

void DomainPipeline::record_snapshot(const introspect::GuestSnapshot& snap, int64_t took_ns) {
  shared_.counters.snapshots.fetch_add(1, std::memory_order_relaxed);
  shared_.snapshot_latency.observe(static_cast<double>(took_ns) * 1e-9);
  if (!snap.errors.empty()) shared_.counters.snapshot_errors.fetch_add(1, std::memory_order_relaxed);
  auto keep = std::make_shared<const introspect::GuestSnapshot>(snap);
  const Timestamp at = shared_.engine_time(static_cast<int64_t>(snap.taken_at_ns));
  {
    std::lock_guard<std::mutex> l(mu_);
    last_snapshot_ = std::move(keep);
    ++health_.snapshots;
    health_.last_snapshot_latency = Duration(took_ns);
    health_.last_snapshot_at = at;
    health_.last_snapshot_error_count = snap.errors.size();
    if (!snap.errors.empty()) {
      ++health_.snapshot_errors;
      const introspect::SnapshotError& e = snap.errors.front();
      health_.last_snapshot_error = (e.what.empty() ? "" : e.what + ": ") + e.message;
    }
  }
}

void DomainPipeline::tick() {
  const int64_t t0 = shared_.mono->now_ns();
  std::vector<diagnosis::DomainEvent> events;
  bool revalidate = false;
  apply_inbox(events, revalidate);
  manage_introspection(t0, revalidate);

  diagnosis::DomainObservation obs;
  bool have_host = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (sampler_ && !sampler_->process_gone()) {
      (void)sampler_->sample_once();  // per-thread failures are recorded on the threads
      if (!sampler_->process_gone()) {
        fill_host_views(*sampler_, *shared_.fs, &wchans_, obs);
        have_host = true;
      }
      uint64_t errors = 0;
      for (const host::TrackedThread* t : sampler_->vcpus()) errors += t->errors();
      for (const host::TrackedThread* t : sampler_->other_threads()) errors += t->errors();
      if (errors > sample_errors_seen_) {
        shared_.counters.sample_errors.fetch_add(errors - sample_errors_seen_, std::memory_order_relaxed);
      }
      sample_errors_seen_ = errors;
      memory_bytes_ = sampler_->memory_bytes();
    }
  }

  obs.domain = diagnosis::DomainIdentity{info_.name, info_.uuid};
  obs.paused = info_.state == libvirt::DomainRunState::kPaused ||
               info_.state == libvirt::DomainRunState::kPmSuspended;
  obs.monitor = to_monitor_status(info_.monitor, shared_.mono_to_engine);
  const Timestamp now = shared_.clock->now();
  if (have_host) {
    if (auto snap = maybe_snapshot(now)) obs.guest = to_guest_view(*snap);
  }
  // Events wait for a tick that observes: a crash reported while the sampler had nothing (no
  // pid yet) must still reach the engine.
  carry_events_.insert(carry_events_.end(), events.begin(), events.end());
  if (have_host || !carry_events_.empty()) {
    obs.events.swap(carry_events_);
    std::lock_guard<std::mutex> l(observe_mu_);
    if (!retired_) shared_.engine->observe(obs);
  }

  const int64_t t1 = shared_.mono->now_ns();
  shared_.tick_latency.observe(static_cast<double>(t1 - t0) * 1e-9);
  shared_.counters.ticks.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> l(mu_);
    ++ticks_;
    last_tick_ = now;
  }
  if (!discovery_thread_.joinable() && !tick_thread_.joinable()) serve_inspect_requests();
}

void DomainPipeline::serve_inspect_requests() {
  std::deque<std::shared_ptr<InspectRequest>> q;
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    q.swap(inspect_queue_);
  }
  for (auto& req : q) {
    {
      std::lock_guard<std::mutex> l(req->mu);
      if (req->abandoned) continue;
    }
    Result<InspectResult> r = Error(ErrorCode::kInternal, "unset");
    if (!kernel_) {
      std::lock_guard<std::mutex> l(mu_);
      r = Error(ErrorCode::kUnsupported, std::string("introspection not ready: ") +
                                             to_string(health_.state) +
                                             (health_.error.empty() ? "" : ": " + health_.error));
    } else {
      const int64_t t0 = shared_.mono->now_ns();
      InspectResult res;
      res.snapshot = kernel_->inspect_reader->take();
      record_snapshot(res.snapshot, shared_.mono->now_ns() - t0);
      res.domain_name = info_.name;
      res.domain_uuid = info_.uuid;
      res.kernel_release = kernel_->release;
      res.build_id = kernel_->build_id;
      res.taken_at = shared_.engine_time(static_cast<int64_t>(res.snapshot.taken_at_ns));
      r = std::move(res);
    }
    std::lock_guard<std::mutex> l(req->mu);
    req->result.emplace(std::move(r));
    req->done = true;
    req->cv.notify_all();
  }
}

Result<InspectResult> DomainPipeline::inspect(std::chrono::milliseconds timeout) {
  if (!shared_.config.introspection) {
    return Error(ErrorCode::kUnsupported, "introspection is disabled");
  }
  auto req = std::make_shared<InspectRequest>();
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    if (stop_) return Error(ErrorCode::kNotFound, "domain " + uuid_ + " is gone");
    inspect_queue_.push_back(req);
  }
  inbox_cv_.notify_all();
  std::unique_lock<std::mutex> l(req->mu);
  if (!req->cv.wait_for(l, timeout, [&] { return req->done; })) {
    req->abandoned = true;
    return Error(ErrorCode::kTimeout, "inspect of " + uuid_ + " not served within " +
                                          std::to_string(timeout.count()) + " ms");
  }
  return std::move(*req->result);
}

// ---- queries ----------------------------------------------------------------------------------

IntrospectionHealth DomainPipeline::introspection() const {
  std::lock_guard<std::mutex> l(mu_);
  return health_;
}

IntrospectionHealth DomainPipeline::wait_introspection(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> l(mu_);
  health_cv_.wait_for(l, timeout, [&] { return health_.state == IntrospectionState::kReady; });
  return health_;
}

DomainSummary DomainPipeline::summary() const {
  DomainSummary s;
  {
    std::lock_guard<std::mutex> l(mu_);
    s.name = info_.name;
    s.uuid = info_.uuid;
    s.id = info_.id;
    s.state = info_.state;
    s.qemu_pid = info_.qemu_pid;
    s.vcpu_count = info_.vcpus.size();
    s.vcpu_source = info_.vcpu_source;
    s.introspection = health_;
    s.monitor = monitor_;
    s.ram_layout_known = info_.ram_layout != nullptr;
    s.ram_layout_error = info_.ram_layout_error;
    s.process_gone = sampler_ && sampler_->process_gone();
    s.ticks = ticks_;
    s.last_tick = last_tick_;
    s.watched_since = watched_since_;
  }
  s.active_findings = shared_.engine->active_findings(uuid_).size();
  return s;
}

DomainDetail DomainPipeline::detail() const {
  DomainDetail d;
  d.summary = summary();
  std::lock_guard<std::mutex> l(mu_);
  const int64_t window = shared_.config.sampler.signal_window_ns;
  if (sampler_) {
    d.main_loop_tid = sampler_->pid();
    for (const host::TrackedThread* t : sampler_->vcpus()) {
      VcpuStatus v;
      v.index = t->vcpu();
      v.thread = thread_status(*t, shared_, window);
      if (last_snapshot_ && v.index >= 0 &&
          static_cast<size_t>(v.index) < last_snapshot_->cpus.size()) {
        v.guest = last_snapshot_->cpus[static_cast<size_t>(v.index)];
      }
      d.vcpus.push_back(std::move(v));
    }
    for (const host::TrackedThread* t : sampler_->other_threads()) {
      d.other_threads.push_back(thread_status(*t, shared_, window));
    }
  }
  if (last_snapshot_) {
    GuestOverview g;
    g.taken_at = shared_.engine_time(static_cast<int64_t>(last_snapshot_->taken_at_ns));
    g.read_latency = Duration(static_cast<int64_t>(last_snapshot_->duration_ns));
    g.nr_cpu_ids = last_snapshot_->nr_cpu_ids;
    g.online_cpus = last_snapshot_->online_cpus;
    g.watchdog_thresh = last_snapshot_->watchdog_thresh;
    g.panic_cpu = last_snapshot_->panic_cpu;
    g.guest_clock_ns = last_snapshot_->guest_clock_ns;
    g.error_count = last_snapshot_->errors.size();
    d.guest = std::move(g);
  }
  return d;
}

Result<VcpuHistory> DomainPipeline::history(int32_t vcpu, std::chrono::nanoseconds window) const {
  std::lock_guard<std::mutex> l(mu_);
  const host::TrackedThread* t = sampler_ ? sampler_->vcpu(vcpu) : nullptr;
  if (t == nullptr) {
    return Error(ErrorCode::kNotFound, "domain " + info_.name + " has no vCPU " + std::to_string(vcpu));
  }
  VcpuHistory h;
  h.domain_uuid = info_.uuid;
  h.vcpu = vcpu;
  h.tid = t->tid();
  const host::SampleRing& ring = t->history();
  h.capacity = ring.capacity();
  const int64_t from = window.count() > 0 ? shared_.mono->now_ns() - window.count() : INT64_MIN;
  size_t first = ring.size();
  while (first > 0 && ring.at(first - 1).t_ns > from) --first;
  h.points.reserve(ring.size() - first);
  for (size_t i = first; i < ring.size(); ++i) {
    h.points.push_back(HistoryPoint{shared_.engine_time(ring.at(i).t_ns), ring.at(i)});
  }
  return h;
}

}  // namespace stallmon::core::internal
