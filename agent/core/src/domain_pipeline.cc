// SPDX-License-Identifier: Apache-2.0
// One watched domain: its tick (sample → snapshot → observe), its kernel discovery state machine
// and the state its queries copy.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <new>
#include <set>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

#include "internal.h"
#include "stallmon/host/proc_parse.h"
#include "stallmon/introspect/snapshot_kernel_access.h"

namespace stallmon::core::internal {

// The name the domain's host sampling history is charged under in its budget.
constexpr std::string_view kHistoryCharge = "host sampling history";

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
                                                           uint64_t hint_gpa, uint64_t* bytes_read,
                                                           uint32_t max_cpus) {
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
  auto metered = std::make_shared<MeteredMemory>(std::move(mem).value());
  mem = std::shared_ptr<introspect::PhysicalMemory>(metered);
  struct ReportBytes {
    const MeteredMemory& m;
    uint64_t* out;
    ~ReportBytes() {
      if (out) *out = m.bytes_read();
    }
  } report{*metered, bytes_read};

  auto gk = std::make_unique<GuestKernel>();
  gk->budget = std::make_shared<introspect::MemoryBudget>("qemu pid " + std::to_string(pid),
                                                          shared.config.introspection_budget_bytes);
  introspect::DiscoverOptions opts;
  opts.scan.hint_gpa = hint_gpa;  // only where to look first: the note is still proven
  opts.budget = gk->budget;
  opts.max_cpus = max_cpus;  // the guest's nr_cpu_ids alone is never trusted
  opts.profile_dir = shared.config.profile_dir;
  opts.debug_dir = shared.config.debug_dir;
  opts.ignore_guest_btf = shared.config.ignore_guest_btf;
  auto kernel = introspect::Kernel::discover(*mem, opts);
  if (!kernel.ok()) return std::move(kernel).error();

  gk->memory = std::move(mem).value();
  gk->kernel = std::move(kernel).value();
  gk->access = introspect::make_kernel_access(*gk->kernel);
  introspect::SnapshotOptions tick_options = shared.config.snapshot, inspect_options = shared.config.inspect_snapshot;
  tick_options.budget = inspect_options.budget = gk->budget;
  if (max_cpus > 0) tick_options.max_cpus = inspect_options.max_cpus = max_cpus;
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

SleepWchanReader::~SleepWchanReader() {
  for (auto& [tid, e] : cache_) close(e);
}

void SleepWchanReader::close(Entry& e) {
  if (e.fd >= 0) fs_.close(e.fd);
  e.fd = -1;
}

void SleepWchanReader::fill(const std::string& proc_root, int32_t pid, const host::TrackedThread& thread,
                            diagnosis::HostThreadView& view) {
  if (view.state != diagnosis::ThreadState::kSleeping || thread.history().empty()) return;
  const host::ThreadSample& latest = thread.history().newest();
  const host::StateTracker& tr = thread.tracker();
  if (latest.t_ns - tr.last_progress_ns < kMinNoProgressNs) return;
  Entry& e = cache_[thread.tid()];
  // A new thread under a reused tid starts over (a kept descriptor would read the old one's).
  if (e.starttime != thread.sampler().starttime_ticks()) {
    close(e);
    e = Entry{};
    e.starttime = thread.sampler().starttime_ticks();
  }
  if (e.read_ns == 0 || e.episode != tr.last_progress_ns || latest.t_ns - e.read_ns >= kRefreshNs) {
    if (e.fd < 0) {
      Result<int> fd = fs_.open(proc_root + "/" + std::to_string(pid) + "/task/" + std::to_string(thread.tid()) + "/wchan");
      if (fd.ok()) {
        e.fd = *fd;
        ++opens_;
      }
    }
    e.wchan.clear();
    if (e.fd >= 0) {
      char buf[512];
      Result<size_t> n = fs_.read(e.fd, buf, sizeof buf - 1);
      if (n.ok()) {
        e.wchan = host::parse_wchan(std::string(buf, *n));
      } else {
        close(e);  // the thread went away, or the descriptor went bad: reopen next time
      }
    }
    e.read_ns = latest.t_ns;
    e.episode = tr.last_progress_ns;
    ++reads_;
  }
  view.wchan = e.wchan;
}

void SleepWchanReader::retain_only(const std::vector<int32_t>& tids) {
  if (cache_.empty()) return;
  // A sorted copy rather than a std::set: this runs every tick (a node per thread was ~6,000
  // instructions a 16-vCPU tick, callgrind, tests/scale).
  std::vector<int32_t> keep(tids);
  std::sort(keep.begin(), keep.end());
  for (auto it = cache_.begin(); it != cache_.end();) {
    if (std::binary_search(keep.begin(), keep.end(), it->first)) {
      ++it;
    } else {
      close(it->second);
      it = cache_.erase(it);
    }
  }
}

void fill_host_views(const host::ProcessSampler& sampler, SleepWchanReader* wchans,
                     diagnosis::DomainObservation& obs) {
  const std::string& proc_root = sampler.options().proc_root;
  std::vector<int32_t> tids;
  for (const host::TrackedThread* t : sampler.vcpus()) {
    if (!t->present()) continue;
    auto v = to_host_thread_view(*t);
    if (!v) continue;
    if (wchans) wchans->fill(proc_root, sampler.pid(), *t, *v);
    tids.push_back(t->tid());
    obs.vcpus.push_back(diagnosis::VcpuHostView{t->vcpu(), std::move(*v)});
  }
  for (const host::TrackedThread* t : sampler.other_threads()) {
    if (!t->present()) continue;
    auto v = to_host_thread_view(*t);
    if (!v) continue;
    if (wchans) wchans->fill(proc_root, sampler.pid(), *t, *v);
    tids.push_back(t->tid());
    obs.other_threads.push_back(std::move(*v));
  }
  obs.main_loop_tid = sampler.pid();
  if (wchans) wchans->retain_only(tids);
}


// ---- kernel traces of the CPUs findings involve ------------------------------------------------

std::set<int> FindingTraces::involved_in(const std::vector<diagnosis::Finding>& active) {
  std::set<int> cpus;
  for (const diagnosis::Finding& f : active)
    if (diagnosis::carries_kernel_traces(f.kind)) cpus.insert(f.cpus.begin(), f.cpus.end());
  return cpus;
}

void FindingTraces::set_involved(std::set<int> cpus) {
  involved_ = std::move(cpus);
  // A CPU that leaves every finding is forgotten: traced afresh if it comes back.
  for (auto it = traces_.begin(); it != traces_.end();) it = involved_.count(it->first) ? std::next(it) : traces_.erase(it);
}

std::vector<int> FindingTraces::due(int64_t now_ns) const {
  std::vector<std::pair<int64_t, int>> by_age;  // (taken_ns, cpu); never traced: INT64_MIN
  for (int cpu : involved_) {
    auto it = traces_.find(cpu);
    if (it == traces_.end()) {
      by_age.emplace_back(INT64_MIN, cpu);
    } else if (now_ns - it->second.taken_ns >= kRefreshNs) {
      by_age.emplace_back(it->second.taken_ns, cpu);
    }
  }
  std::sort(by_age.begin(), by_age.end());
  std::vector<int> out;
  for (size_t i = 0; i < by_age.size() && i < kMaxPerTick; ++i) out.push_back(by_age[i].second);
  return out;
}

void FindingTraces::store(int cpu, diagnosis::KernelTrace trace, int64_t now_ns) {
  if (!involved_.count(cpu)) return;
  traces_[cpu] = Entry{now_ns, std::move(trace)};
}

void FindingTraces::attach(diagnosis::GuestView& view) const {
  if (traces_.empty()) return;
  for (diagnosis::GuestCpuView& c : view.cpus)
    if (auto it = traces_.find(c.cpu); it != traces_.end()) c.kernel_trace = it->second.trace;
}

// ---- metered guest memory ---------------------------------------------------------------------

namespace {
Error abandoned_read(uint64_t gpa) {
  return Error(ErrorCode::kTimeout, "guest read abandoned by the supervisor (an earlier read was too slow)", gpa);
}
}  // namespace

Result<void> MeteredMemory::read(uint64_t gpa, void* buf, size_t len) {
  GuestReadScope scope;
  if (GuestReadScope::current_abandoned()) return abandoned_read(gpa);
  auto r = inner_->read(gpa, buf, len);
  if (r.ok()) bytes_.fetch_add(len, std::memory_order_relaxed);
  return r;
}

Result<void> MeteredMemory::read_batch(std::span<introspect::ReadRequest> requests) {
  GuestReadScope scope;
  if (GuestReadScope::current_abandoned()) {
    for (auto& r : requests) r.ok = false;
    return abandoned_read(requests.empty() ? 0 : requests.front().addr);
  }
  auto r = inner_->read_batch(requests);
  uint64_t n = 0;
  for (const auto& q : requests) n += q.ok ? q.len : 0;
  bytes_.fetch_add(n, std::memory_order_relaxed);
  return r;
}

// ---- hints on disk ----------------------------------------------------------------------------

std::string HintStore::path(const std::string& uuid) const {
  if (dir_.empty() || uuid.empty() || uuid.size() > 64) return {};
  for (char c : uuid) {
    if (!std::isxdigit(static_cast<unsigned char>(c)) && c != '-') return {};
  }
  return dir_ + "/hints/" + uuid;
}

uint64_t HintStore::load(const std::string& uuid) const {
  const std::string p = path(uuid);
  if (p.empty()) return 0;
  std::ifstream in(p);
  std::string text;
  if (!in || !std::getline(in, text) || text.size() > 18) return 0;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 16);
  if (errno != 0 || end == text.c_str() || *end != '\0' || v % 4096 != 0) return 0;
  return v;
}

Result<void> HintStore::save(const std::string& uuid, uint64_t gpa) const {
  const std::string p = path(uuid);
  if (p.empty()) return Ok();
  std::error_code ec;
  std::filesystem::create_directories(dir_ + "/hints", ec);
  if (ec) return Error(ErrorCode::kIo, "create " + dir_ + "/hints: " + ec.message());
  const std::string tmp = p + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%llx\n", static_cast<unsigned long long>(gpa));
    out << buf;
    if (!out.flush()) return Error(ErrorCode::kIo, "write " + tmp);
  }
  std::filesystem::rename(tmp, p, ec);
  if (ec) return Error(ErrorCode::kIo, "rename " + tmp + ": " + ec.message());
  return Ok();
}

// ---- pipeline ---------------------------------------------------------------------------------

namespace {
// Whether a discovery error means "no Linux kernel here" rather than a broken one.
bool no_kernel_error(const Error& e) {
  return e.code == ErrorCode::kNotFound && e.message.find("VMCOREINFO") != std::string::npos;
}
// Whether it means "guest data too big for the domain's budget" (introspect's MemoryBudget).
bool over_budget_error(const Error& e) {
  return e.code == ErrorCode::kOverBudget || e.message.find("over budget") != std::string::npos;
}
}  // namespace

DomainPipeline::DomainPipeline(Shared& shared, const libvirt::DomainInfo& info)
    : shared_(shared), uuid_(info.uuid.empty() ? info.name : info.uuid), wchans_(*shared.fs) {
  pending_info_ = info;
  info_.name = info.name;
  info_.uuid = info.uuid;
  watched_since_ = shared_.clock->now();
  health_.state = shared_.config.introspection ? IntrospectionState::kWaitingForLayout
                                               : IntrospectionState::kDisabled;
  if (shared_.config.introspection) note_hint_ = shared_.hints.load(info.uuid);
}

DomainPipeline::~DomainPipeline() { retire(); }

std::string DomainPipeline::name() const {
  std::lock_guard<std::mutex> l(mu_);
  return info_.name;
}

void DomainPipeline::post_update(const libvirt::DomainInfo& info) {
  std::lock_guard<std::mutex> l(inbox_mu_);
  pending_info_ = info;
}

void DomainPipeline::post_event(const libvirt::DomainEvent& event, Timestamp at) {
  auto e = to_diagnosis_event(event, at);
  std::lock_guard<std::mutex> l(inbox_mu_);
  if (e) pending_events_.push_back(*e);
  // A reset or a new boot brings another kernel (or KASLR slide): the old one's memory must not
  // be read as if it were the new one's, not even for one tick.
  if (event.kind == libvirt::DomainEventKind::kRebooted ||
      event.kind == libvirt::DomainEventKind::kStarted) {
    pending_reboot_ = true;
  }
}

bool DomainPipeline::retired() const {
  std::lock_guard<std::mutex> l(inbox_mu_);
  return stop_;
}

void DomainPipeline::retire() {
  {
    std::lock_guard<std::mutex> l(observe_mu_);
    retired_ = true;
  }
  // Pending inspect requests get an answer instead of their timeout.
  std::deque<std::shared_ptr<InspectRequest>> q;
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    stop_ = true;
    q.swap(inspect_queue_);
  }
  for (auto& r : q) {
    std::lock_guard<std::mutex> l(r->mu);
    r->result = Result<InspectResult>(Error(ErrorCode::kNotFound, "domain " + uuid_ + " is gone"));
    r->done = true;
    r->cv.notify_all();
  }
  if (shared_.tick_pool == nullptr) finished_ = true;
}

void DomainPipeline::set_health(const std::function<void(IntrospectionHealth&)>& f) {
  {
    std::lock_guard<std::mutex> l(mu_);
    f(health_);
  }
  health_cv_.notify_all();
}

void DomainPipeline::apply_inbox(std::vector<diagnosis::DomainEvent>& events, bool& rebooted) {
  std::optional<libvirt::DomainInfo> info;
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    info.swap(pending_info_);
    events.swap(pending_events_);
    rebooted = pending_reboot_;
    pending_reboot_ = false;
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
      source_errors_seen_ = 0;
      on_proc_fallback_ = false;
      if (info->qemu_pid > 0) {
        sampler_ = std::make_unique<host::ProcessSampler>(*shared_.fs, *shared_.mono, info->qemu_pid,
                                                          vcpus, shared_.config.sampler);
        if (shared_.stat_source != nullptr) {
          sampler_->set_stat_source(shared_.stat_source);
          if (sampler_->stat_source() == nullptr) {  // watch() failed (e.g. the source is full)
            source_errors_seen_ = sampler_->source_errors();
            shared_.counters.thread_stats_fallbacks.fetch_add(1, std::memory_order_relaxed);
            spdlog::warn("domain {}: thread statistics from /proc for qemu pid {}: {} cannot watch it: {}",
                         info->name, info->qemu_pid, shared_.stat_source->kind(),
                         sampler_->last_source_error().to_string());
          }
        }
      }
    } else if (vcpus != vcpu_map(info_)) {
      sampler_->set_vcpu_threads(vcpus);
    }
    info_ = *info;
  }
  if (pid_changed || ram_changed) {
    ++mem_generation_;
    retry_never_ = false;
    no_kernel_delay_ns_ = 0;
    if (kernel_ || kernel_out_ || discovery_in_flight_) {
      drop_kernel("qemu process or guest RAM layout changed", shared_.mono->now_ns(), true);
    }
  }
}

void DomainPipeline::drop_kernel(const std::string& why, int64_t now_ns, bool retry_now) {
  kernel_.reset();
  traces_.forget_traces();
  kernel_out_ = false;  // a kernel still out is of an older generation: discarded when back
  {
    std::lock_guard<std::mutex> l(mu_);
    returned_kernel_.reset();
  }
  failed_snapshots_ = 0;
  proving_ = false;
  last_jiffies_.reset();
  last_guest_clock_ = 0;
  // A result still in flight belongs to the old generation: it is discarded when it arrives.
  discovery_in_flight_ = false;
  ++mem_generation_;
  next_discovery_ns_ = retry_now ? now_ns : now_ns + retry_delay_ns_;
  set_health([&](IntrospectionHealth& h) {
    h.state = IntrospectionState::kDiscovering;
    h.error = why;
    h.ready_since.reset();
    h.next_attempt_at.reset();
  });
}

void DomainPipeline::reboot_detected(const std::string& why, int64_t now_ns, bool from_event) {
  // One reboot is often told several times: QEMU's reset and libvirt's reboot event arrive
  // together (two events 127 ms apart were seen for one `reboot -f`), and the new kernel's
  // first snapshot may see the clock go back as well. Until a kernel is proven again, a further
  // notice is the same reboot: counted and told to the engine once, everything else re-armed.
  const bool same_reboot = proving_;
  if (!same_reboot) shared_.counters.reboots_detected.fetch_add(1, std::memory_order_relaxed);
  if (!from_event && !same_reboot) {
    // No event reached us (the guest's clock or note told): tell the engine all the same, so
    // that the old boot's guest-side findings resolve.
    carry_events_.push_back(diagnosis::DomainEvent{diagnosis::DomainEventType::kRebooted,
                                                   shared_.engine_time(now_ns), "detected by stallmon: " + why});
  }
  // What the old boot last showed: the new kernel's first snapshot must not show it again.
  old_jiffies_ = last_jiffies_;
  old_clock_ = last_guest_clock_;
  // A guest writes its own clocks: one that makes them "go back" again and again must not buy
  // itself a full discovery every few ticks. Reboots by the guest's word within 10 s of the
  // previous one back off like failures; libvirt's events are the host's word.
  const bool rapid = !from_event && last_reboot_ns_ != 0 && now_ns - last_reboot_ns_ < 10'000'000'000LL;
  last_reboot_ns_ = now_ns;
  if (rapid) {
    const int64_t initial = shared_.config.discovery_retry_initial.count();
    reboot_delay_ns_ = std::min<int64_t>(shared_.config.discovery_retry_max.count(),
                                         reboot_delay_ns_ == 0 ? initial : reboot_delay_ns_ * 2);
  } else {
    reboot_delay_ns_ = 0;
  }
  retry_delay_ns_ = 0;
  drop_kernel(why, now_ns, true);
  next_discovery_ns_ = now_ns + reboot_delay_ns_;
  if (!same_reboot) {
    std::lock_guard<std::mutex> l(mu_);
    ++health_.reboots_detected;
  }
  // The old note's place is where the old boot's memory still lies: scan from the start.
  note_hint_ = 0;
  no_kernel_delay_ns_ = 0;
  retry_never_ = false;
  proving_ = true;  // armed for the next kernel found
}

void DomainPipeline::start_discovery(int64_t now_ns) {
  discovery_in_flight_ = true;
  shared_.counters.discovery_attempts.fetch_add(1, std::memory_order_relaxed);
  set_health([&](IntrospectionHealth& h) {
    if (h.state != IntrospectionState::kNoKernel) h.state = IntrospectionState::kDiscovering;
    ++h.discovery_attempts;
    h.next_attempt_at.reset();
  });
  DiscoveryJob job{info_.qemu_pid, info_.ram_layout, note_hint_, mem_generation_, 0,
                   static_cast<uint32_t>(info_.vcpus.size())};
  {
    std::lock_guard<std::mutex> l(disc_mu_);
    job.id = ++disc_job_id_;
    disc_result_.reset();
  }
  std::shared_ptr<DomainPipeline> self = weak_from_this().lock();
  if (shared_.discovery_pool != nullptr && self) {
    PoolTask t;
    t.run = [self, job] {
      DiscoveryResult r = self->run_discovery(job);
      std::lock_guard<std::mutex> l(self->disc_mu_);
      if (r.job == self->disc_job_id_ && !self->disc_result_) self->disc_result_.emplace(std::move(r));
    };
    auto post_failure = [self, job](const std::string& why, bool paused) {
      std::lock_guard<std::mutex> l(self->disc_mu_);
      if (job.id != self->disc_job_id_ || self->disc_result_) return;
      self->disc_result_.emplace(DiscoveryResult{job.id, job.generation, 0, 0, paused,
                                                 Error(ErrorCode::kTimeout, why)});
    };
    t.on_abandon = [post_failure](const std::string& why) { post_failure("discovery: " + why, true); };
    t.on_exception = [post_failure](const std::string& what) { post_failure("discovery: " + what, false); };
    shared_.discovery_pool->post(shared_.discovery_pool->now_ns(), std::move(t));
    return;
  }
  // No pool (threads=false): discover inline, on the caller's thread.
  finish_discovery(run_discovery(job), std::max(now_ns, shared_.mono->now_ns()));
}

DomainPipeline::DiscoveryResult DomainPipeline::run_discovery(const DiscoveryJob& job) {
  const int64_t t0 = shared_.mono->now_ns();
  uint64_t bytes = 0;
  Result<std::unique_ptr<GuestKernel>> r = Error(ErrorCode::kInternal, "unset");
  try {
    r = discover_guest_kernel(shared_, job.pid, *job.ram, job.hint, &bytes, job.max_cpus);
  } catch (const std::bad_alloc&) {
    r = Error(ErrorCode::kLimit, "discovery: allocation failed (over budget)");
  } catch (const std::exception& e) {
    r = Error(ErrorCode::kInternal, std::string("discovery: exception: ") + e.what());
  }
  if (r.ok()) (*r)->generation = job.generation;
  return DiscoveryResult{job.id, job.generation, shared_.mono->now_ns() - t0, bytes, false, std::move(r)};
}

void DomainPipeline::schedule_retry(IntrospectionState state, const std::string& msg, int64_t now_ns) {
  const int64_t initial = shared_.config.discovery_retry_initial.count();
  int64_t delay = 0;
  if (state == IntrospectionState::kNoKernel) {
    const int64_t max = shared_.config.no_kernel_retry_max.count();
    no_kernel_delay_ns_ = no_kernel_delay_ns_ == 0 ? initial : std::min(max, no_kernel_delay_ns_ * 2);
    delay = no_kernel_delay_ns_;
  } else {
    const int64_t max = shared_.config.discovery_retry_max.count();
    retry_delay_ns_ = retry_delay_ns_ == 0 ? initial : std::min(max, retry_delay_ns_ * 2);
    delay = retry_delay_ns_;
  }
  retry_never_ = state == IntrospectionState::kOverBudget;
  next_discovery_ns_ = now_ns + delay;
  set_health([&](IntrospectionHealth& h) {
    h.state = state;
    h.error = msg;
    if (retry_never_) {
      h.next_attempt_at.reset();
    } else {
      h.next_attempt_at = shared_.engine_time(next_discovery_ns_);
    }
  });
}

void DomainPipeline::finish_discovery(DiscoveryResult result, int64_t now_ns) {
  if (!discovery_in_flight_ || result.generation != mem_generation_) return;  // stale
  discovery_in_flight_ = false;
  const Duration took(result.duration_ns);
  set_health([&](IntrospectionHealth& h) {
    h.last_discovery_duration = took;
    h.discovery_time += took;
    h.discovery_bytes_read += result.bytes_read;
    h.last_discovery_bytes_read = result.bytes_read;
  });
  if (result.kernel.ok()) {
    kernel_ = std::move(result.kernel).value();
    kernel_->generation = mem_generation_;
    if (!charge_history_growth(now_ns)) return;
    if (kernel_->note_gpa != 0 && kernel_->note_gpa != note_hint_) {
      (void)shared_.hints.save(info_.uuid, kernel_->note_gpa);  // best effort: only a hint
    }
    note_hint_ = kernel_->note_gpa;
    retry_delay_ns_ = 0;
    no_kernel_delay_ns_ = 0;
    last_validated_ns_ = now_ns;
    failed_snapshots_ = 0;
    last_jiffies_.reset();
    last_guest_clock_ = 0;
    if (proving_) {
      proving_since_ns_ = now_ns;
      proof_jiffies_.reset();
      proof_clock_ = 0;
    }
    const bool proving = proving_;
    set_health([&](IntrospectionHealth& h) {
      h.state = proving ? IntrospectionState::kDiscovering : IntrospectionState::kReady;
      h.error = proving ? "after a reboot: waiting for the new kernel's clock to advance" : "";
      h.kernel_release = kernel_->release;
      h.build_id = kernel_->build_id;
      if (!proving) h.ready_since = shared_.engine_time(now_ns);
      h.next_attempt_at.reset();
    });
    return;
  }
  shared_.counters.discovery_failures.fetch_add(1, std::memory_order_relaxed);
  set_health([&](IntrospectionHealth& h) { ++h.discovery_failures; });
  const Error& e = result.kernel.error();
  if (result.paused) {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++health_.reads_abandoned;
    }
    schedule_retry(IntrospectionState::kPaused, e.message, now_ns);
  } else if (over_budget_error(e)) {
    schedule_retry(IntrospectionState::kOverBudget, e.to_string(), now_ns);
  } else if (no_kernel_error(e)) {
    schedule_retry(IntrospectionState::kNoKernel, e.to_string(), now_ns);
  } else {
    schedule_retry(IntrospectionState::kFailed, e.to_string(), now_ns);
  }
}

bool DomainPipeline::with_kernel(const std::function<void(GuestKernel&)>& f) {
  std::unique_ptr<GuestKernel> k = std::move(kernel_);
  kernel_out_ = true;
  GuestReadScope scope;
  f(*k);
  if (scope.end()) {
    // Abandoned: another worker may be running this domain's next tick by now. Only hand the
    // kernel back; it is re-validated before its next use.
    std::lock_guard<std::mutex> l(mu_);
    returned_kernel_ = std::move(k);
    return false;
  }
  kernel_ = std::move(k);
  kernel_out_ = false;
  return true;
}

void DomainPipeline::on_read_abandoned(const std::string& why) {
  shared_.counters.reads_abandoned.fetch_add(1, std::memory_order_relaxed);
  set_health([&](IntrospectionHealth& h) {
    h.state = IntrospectionState::kPaused;
    h.error = why;
    ++h.reads_abandoned;
    h.ready_since.reset();
  });
}

void DomainPipeline::manage_introspection(int64_t now_ns) {
  if (!shared_.config.introspection) return;
  if (discovery_in_flight_) {
    std::optional<DiscoveryResult> r;
    {
      std::lock_guard<std::mutex> l(disc_mu_);
      r.swap(disc_result_);
    }
    if (r) finish_discovery(std::move(*r), now_ns);
  }
  bool revalidate_now = false;
  if (kernel_out_) {
    std::unique_ptr<GuestKernel> back;
    std::string lost;
    {
      std::lock_guard<std::mutex> l(mu_);
      back = std::move(returned_kernel_);
      lost.swap(kernel_lost_);
    }
    if (!back && !lost.empty()) {
      drop_kernel("internal error in a stalled guest read: " + lost, now_ns, false);
      return;
    }
    if (!back) return;  // still stuck in its read: host-only until it returns
    kernel_out_ = false;
    if (back->generation != mem_generation_) {
      drop_kernel("a guest read returned after the domain's memory changed", now_ns, true);
      return;
    }
    kernel_ = std::move(back);
    revalidate_now = true;  // the read stalled: check the kernel before trusting it again
  }
  if (kernel_) {
    if (kernel_->kernel && (revalidate_now ||
        now_ns - last_validated_ns_ >= shared_.config.revalidate_interval.count())) {
      last_validated_ns_ = now_ns;
      // One page read of the VMCOREINFO note: cheap enough for a tick, but still a guest read.
      Result<bool> valid = false;
      if (!with_kernel([&](GuestKernel& k) { valid = k.kernel->still_valid(); })) return;
      if (!valid.ok()) {
        drop_kernel("re-validation failed: " + valid.error().to_string(), now_ns, true);
      } else if (!*valid) {
        reboot_detected("the guest kernel changed (VMCOREINFO note gone or KERNELOFFSET/BUILD-ID changed)",
                        now_ns, false);
      }
    }
    if (kernel_ && !charge_history_growth(now_ns)) return;
    if (kernel_ && revalidate_now) {
      set_health([&](IntrospectionHealth& h) {
        if (h.state == IntrospectionState::kPaused) {
          h.state = proving_ ? IntrospectionState::kDiscovering : IntrospectionState::kReady;
          h.error.clear();
          h.ready_since = shared_.engine_time(now_ns);
        }
      });
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
  if (discovery_in_flight_ || retry_never_ || now_ns < next_discovery_ns_) return;
  start_discovery(now_ns);
}

bool DomainPipeline::clock_went_back(const introspect::GuestSnapshot& snap, std::string& why) const {
  if (snap.jiffies && last_jiffies_ && *snap.jiffies < *last_jiffies_) {
    why = "jiffies went back from " + std::to_string(*last_jiffies_) + " to " + std::to_string(*snap.jiffies);
    return true;
  }
  // rq->clock (sched_clock) restarts near 0 at boot. Only when every runqueue was read: a
  // partly unreadable snapshot has a lower maximum without any reboot.
  const bool all_rq = !snap.cpus.empty() &&
                      std::all_of(snap.cpus.begin(), snap.cpus.end(),
                                  [](const introspect::CpuSnapshot& c) { return c.rq.ok || !c.online; });
  if (all_rq && snap.guest_clock_ns != 0 && last_guest_clock_ != 0 &&
      snap.guest_clock_ns + 1'000'000'000ULL < last_guest_clock_) {
    why = "the guest's uptime went back from " + std::to_string(last_guest_clock_ / 1'000'000) +
          " ms to " + std::to_string(snap.guest_clock_ns / 1'000'000) + " ms";
    return true;
  }
  return false;
}

DomainPipeline::ClockAdvance DomainPipeline::clock_advance(const introspect::GuestSnapshot& snap, int64_t now_ns) const {
  // A running guest's clocks advance at most at the host's pace (its clocksources are the
  // host's time under KVM and TCG alike; HZ <= 1000 is at most a jiffy per ms), with some
  // slack for where within a tick each was read. Bytes of the previous boot that a booting
  // kernel overwrites change too, but by arbitrary amounts, which the old any-increase proof
  // accepted. A real warm reboot once counted two reboots for one: a "proven" old kernel whose
  // next snapshot went back would do that (the likely cause, not confirmed on that run).
  const int64_t elapsed_ns = std::max<int64_t>(0, now_ns - proof_at_ns_);
  bool advanced = false;
  if (snap.jiffies && proof_jiffies_) {
    if (*snap.jiffies < *proof_jiffies_) return ClockAdvance::kImplausible;
    const uint64_t d = *snap.jiffies - *proof_jiffies_;
    if (d > static_cast<uint64_t>(elapsed_ns / 1'000'000) + 10) return ClockAdvance::kImplausible;
    advanced = advanced || d > 0;
  }
  if (snap.guest_clock_ns != 0 && proof_clock_ != 0) {
    if (snap.guest_clock_ns < proof_clock_) return ClockAdvance::kImplausible;
    const uint64_t d = snap.guest_clock_ns - proof_clock_;
    if (d > 2 * static_cast<uint64_t>(elapsed_ns) + 100'000'000ULL) return ClockAdvance::kImplausible;
    advanced = advanced || d > 0;
  }
  return advanced ? ClockAdvance::kAdvanced : ClockAdvance::kNone;
}

std::optional<introspect::GuestSnapshot> DomainPipeline::maybe_snapshot(Timestamp now, bool* abandoned) {
  // A kernel being proven is snapshotted every tick (its snapshots are not observed), and so is
  // every kernel when the baseline is one tick (the default): not left to the engine's clock
  // comparison, which a tick a little early would fail.
  const bool every_tick = proving_ || shared_.config.baseline_snapshot_interval <= shared_.config.sample_interval;
  if (!kernel_ || (!every_tick && !shared_.engine->wants_guest_snapshot(uuid_, now))) return std::nullopt;
  const int64_t t0 = shared_.mono->now_ns();
  introspect::GuestSnapshot snap;
  if (!with_kernel([&](GuestKernel& k) {
        snap = k.tick_reader->take();
        // A panicked guest's panic message and oops lie further back than the tick's short tail
        // (a 6.1 sysrq-c panic ends ~25 records after its message). A dead guest has no tick
        // budget to keep: read the inspect-length tail for GUEST_PANIC's text.
        if (snap.panic_cpu && *snap.panic_cpu >= 0) {
          const auto& o = shared_.config.inspect_snapshot;
          auto tail = introspect::read_printk_tail(*k.access, o.printk_records, o.printk_max_text);
          if (tail.ok()) snap.printk = std::move(tail).value();
        }
      })) {
    *abandoned = true;
    return std::nullopt;
  }
  const int64_t took = shared_.mono->now_ns() - t0;
  record_snapshot(snap, took);
  std::string why;
  // A kernel being proven is judged by clock_advance() below; its clocks become the reference
  // for "went back" only once proven (an unproven snapshot may show overwritten bytes).
  if (!proving_ && clock_went_back(snap, why)) {
    // Whatever this snapshot shows is a mix of two boots: never observed.
    reboot_detected("guest rebooted: " + why, t0, false);
    return std::nullopt;
  }
  if (proving_) {
    const bool has_clock = snap.jiffies || snap.guest_clock_ns != 0;
    // The previous boot's frozen memory shows exactly its last clocks again.
    bool any = false, all = true;
    if (snap.jiffies && old_jiffies_) any = true, all = all && *snap.jiffies == *old_jiffies_;
    if (snap.guest_clock_ns != 0 && old_clock_ != 0) any = true, all = all && snap.guest_clock_ns == old_clock_;
    const bool matches_old = any && all;
    const bool first = !proof_jiffies_ && proof_clock_ == 0;
    bool proven = !has_clock;  // nothing to prove with: trust the discovery's own checks
    if (has_clock && !matches_old) {
      const ClockAdvance adv = first ? ClockAdvance::kNone : clock_advance(snap, t0);
      if (first || adv == ClockAdvance::kImplausible) {
        // The base of the proof: the first snapshot, or again after clocks that jumped as no
        // running kernel's do (the old boot's memory being overwritten by the new boot).
        proof_jiffies_ = snap.jiffies;
        proof_clock_ = snap.guest_clock_ns;
        proof_at_ns_ = t0;
        if (first && !proof_jiffies_ && proof_clock_ == 0) proven = true;
      } else {
        proven = adv == ClockAdvance::kAdvanced;
      }
    }
    if (proven) {
      proving_ = false;
      set_health([&](IntrospectionHealth& h) {
        h.state = IntrospectionState::kReady;
        h.error.clear();
        h.ready_since = shared_.engine_time(t0);
      });
      // This snapshot is the first one observed from the new boot.
    } else {
      if (t0 - proving_since_ns_ > shared_.config.reboot_proof_timeout.count()) {
        // Frozen clocks: the previous boot's memory (its note still in RAM), not a running kernel.
        drop_kernel("after a reboot: the kernel found shows no running clock (previous boot's memory?)", t0,
                    false);
        proving_ = true;
      }
      return std::nullopt;  // not observed until proven
    }
  }
  if (snap.jiffies) last_jiffies_ = std::max(last_jiffies_.value_or(0), *snap.jiffies);
  last_guest_clock_ = std::max(last_guest_clock_, snap.guest_clock_ns);
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

bool DomainPipeline::read_due_traces(const introspect::GuestSnapshot& snap) {
  if (!kernel_) return true;  // dropped by this snapshot (a reboot seen in it)
  const int64_t t0 = shared_.mono->now_ns();
  const std::vector<int> due = traces_.due(t0);
  if (due.empty()) return true;
  std::vector<diagnosis::KernelTrace> got;
  got.reserve(due.size());
  const Timestamp at = shared_.engine_time(t0);
  // The same supervision as the snapshot: a stuck read is abandoned at the read deadline. The
  // ORC tables are read (and charged to the domain's budget) by the first backtrace of a boot.
  if (!with_kernel([&](GuestKernel& k) {
        for (int cpu : due) {
          const auto c = static_cast<uint32_t>(cpu);
          got.push_back(to_kernel_trace(k.tick_reader->backtrace_cpu(snap, c), snap, c, at,
                                        FindingTraces::kMaxFrames));
        }
      })) {
    return false;
  }
  const int64_t t1 = shared_.mono->now_ns();
  for (size_t i = 0; i < due.size(); ++i) {
    if (!got[i].error.empty()) shared_.counters.kernel_trace_failures.fetch_add(1, std::memory_order_relaxed);
    traces_.store(due[i], std::move(got[i]), t0);
  }
  shared_.counters.kernel_traces.fetch_add(due.size(), std::memory_order_relaxed);
  shared_.counters.kernel_trace_ns.fetch_add(static_cast<uint64_t>(t1 - t0), std::memory_order_relaxed);
  return true;
}

bool DomainPipeline::tick() {
  bool finished = false;
  bool out_of_memory = false;
  const std::string what = run_contained([&] { finished = tick_unguarded(); }, &out_of_memory);
  if (what.empty()) return finished;
  // Outside every GuestReadScope now (unwound), so the supervisor cannot abandon us from here
  // on: if it has not, this tick still owns the domain's tick state.
  if (GuestReadScope::current_abandoned()) {
    // Thrown inside the abandoned read: the borrowed kernel is gone; the next tick drops it.
    std::lock_guard<std::mutex> l(mu_);
    kernel_lost_ = what;
    return false;
  }
  contain_failure(what, out_of_memory);
  return true;
}

bool DomainPipeline::charge_history_growth(int64_t now_ns) {
  const uint64_t now_bytes = sampler_ ? sampler_->memory_bytes() : 0;
  if (now_bytes <= kernel_->history.bytes()) return true;  // shrinking keeps the charge: a bound
  Result<void> r;
  if (kernel_->history.bytes() == 0) {
    Result<introspect::MemoryCharge> c = introspect::MemoryCharge::take(kernel_->budget, kHistoryCharge, now_bytes);
    if (c.ok()) kernel_->history = std::move(c).value();
    else r = std::move(c).error();
  } else {
    r = kernel_->history.add(now_bytes - kernel_->history.bytes());
  }
  if (r.ok()) return true;
  drop_kernel("over budget: " + r.error().to_string(), now_ns, false);
  schedule_retry(IntrospectionState::kOverBudget, r.error().to_string(), now_ns);
  return false;
}

void DomainPipeline::contain_failure(const std::string& what, bool out_of_memory) {
  shared_.counters.internal_errors.fetch_add(1, std::memory_order_relaxed);
  const int64_t now = shared_.mono->now_ns();
  // The kernel and readers may be half-updated: drop them. Host sampling goes on.
  drop_kernel("internal error in this domain's work: " + what, now, false);
  schedule_retry(out_of_memory ? IntrospectionState::kOverBudget : IntrospectionState::kFailed,
                 "internal error in this domain's work: " + what, now);
  if (out_of_memory) retry_never_ = false;  // an allocation failure may be the host's, not the guest's
}

bool DomainPipeline::tick_unguarded() {
  const int64_t t0 = shared_.mono->now_ns();
  std::vector<diagnosis::DomainEvent> events;
  bool rebooted = false;
  apply_inbox(events, rebooted);
  if (rebooted && shared_.config.introspection) {
    if (kernel_ || kernel_out_ || discovery_in_flight_) {
      reboot_detected("guest reset or started (libvirt event)", t0, /*from_event=*/true);
    } else {
      // No kernel yet (e.g. none found so far): a new boot is worth a look at once.
      retry_delay_ns_ = no_kernel_delay_ns_ = 0;
      retry_never_ = false;
      next_discovery_ns_ = t0;
    }
  }
  manage_introspection(t0);
  // Abandoned inside a re-validation read: the next tick runs elsewhere already.
  if (GuestReadScope::current_abandoned()) return false;

  diagnosis::DomainObservation obs;
  bool have_host = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (sampler_ && !sampler_->process_gone()) {
      (void)sampler_->sample_once();  // per-thread failures are recorded on the threads
      if (!sampler_->process_gone()) {
        fill_host_views(*sampler_, &wchans_, obs);
        have_host = true;
      }
      uint64_t errors = 0;
      for (const host::TrackedThread* t : sampler_->vcpus()) errors += t->errors();
      for (const host::TrackedThread* t : sampler_->other_threads()) errors += t->errors();
      if (errors > sample_errors_seen_) {
        shared_.counters.sample_errors.fetch_add(errors - sample_errors_seen_, std::memory_order_relaxed);
      }
      sample_errors_seen_ = errors;
      account_stat_source();
      memory_bytes_ = sampler_->memory_bytes();
    }
  }

  obs.domain = diagnosis::DomainIdentity{info_.name, info_.uuid};
  obs.paused = info_.state == libvirt::DomainRunState::kPaused ||
               info_.state == libvirt::DomainRunState::kPmSuspended;
  obs.monitor = to_monitor_status(info_.monitor, shared_.mono_to_engine);
  const Timestamp now = shared_.clock->now();
  if (have_host) {
    bool abandoned = false;
    auto snap = maybe_snapshot(now, &abandoned);
    if (abandoned) return false;  // the next tick (another worker) samples the host again
    if (snap) {
      obs.guest = to_guest_view(*snap);
      if (!read_due_traces(*snap)) return false;  // abandoned, as a stuck snapshot
      traces_.attach(*obs.guest);
    }
  }
  // Events wait for a tick that observes: a crash reported while the sampler had nothing (no
  // pid yet) must still reach the engine.
  carry_events_.insert(carry_events_.end(), events.begin(), events.end());
  if (have_host || !carry_events_.empty()) {
    obs.events.swap(carry_events_);
    bool changed = false;
    {
      std::lock_guard<std::mutex> l(observe_mu_);
      if (!retired_) {
        changed = !shared_.engine->observe(obs).empty();
        if (shared_.incidents != nullptr) {
          shared_.incidents->on_observation(obs, now, [this](Timestamp since) { return incident_lookback(since); });
        }
      }
    }
    // Findings change only with events (opened, resolved, or updated: a CPU set change is a
    // material update): the CPUs to trace are re-read from the engine then, not every tick.
    if (changed && shared_.config.introspection) {
      traces_.set_involved(FindingTraces::involved_in(shared_.engine->active_findings(uuid_)));
    }
  }

  const int64_t t1 = shared_.mono->now_ns();
  shared_.tick_latency.observe(static_cast<double>(t1 - t0) * 1e-9);
  shared_.counters.ticks.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> l(mu_);
    ++ticks_;
    last_tick_ = now;
  }
  return serve_inspect_requests();
}

bool DomainPipeline::serve_inspect_requests() {
  std::deque<std::shared_ptr<InspectRequest>> q;
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    if (inspect_queue_.empty()) return true;
    q.swap(inspect_queue_);
  }
  for (auto& req : q) {
    {
      std::lock_guard<std::mutex> l(req->mu);
      if (req->abandoned) continue;
    }
    Result<InspectResult> r = Error(ErrorCode::kInternal, "unset");
    if (!kernel_ || proving_) {
      std::lock_guard<std::mutex> l(mu_);
      r = Error(ErrorCode::kUnsupported, std::string("introspection not ready: ") +
                                             to_string(health_.state) +
                                             (health_.error.empty() ? "" : ": " + health_.error));
    } else {
      const int64_t t0 = shared_.mono->now_ns();
      InspectResult res;
      const bool done = with_kernel([&](GuestKernel& k) {
        res.snapshot = k.inspect_reader->take();
        res.kernel_release = k.release;
        res.build_id = k.build_id;
      });
      if (!done) {
        r = Error(ErrorCode::kTimeout, "the guest read for inspect did not return in time");
      } else {
        record_snapshot(res.snapshot, shared_.mono->now_ns() - t0);
        res.domain_name = info_.name;
        res.domain_uuid = info_.uuid;
        res.taken_at = shared_.engine_time(static_cast<int64_t>(res.snapshot.taken_at_ns));
        r = std::move(res);
      }
      if (!done) {
        std::lock_guard<std::mutex> l(req->mu);
        req->result.emplace(std::move(r));
        req->done = true;
        req->cv.notify_all();
        return false;  // abandoned: the rest of the queue is lost (the callers time out)
      }
    }
    std::lock_guard<std::mutex> l(req->mu);
    req->result.emplace(std::move(r));
    req->done = true;
    req->cv.notify_all();
  }
  return true;
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
  std::unique_lock<std::mutex> l(req->mu);
  if (!req->cv.wait_for(l, timeout, [&] { return req->done; })) {
    req->abandoned = true;
    return Error(ErrorCode::kTimeout, "inspect of " + uuid_ + " not served within " +
                                          std::to_string(timeout.count()) + " ms");
  }
  return std::move(*req->result);
}

void DomainPipeline::account_stat_source() {
  if (sampler_->stat_source() == nullptr) return;  // /proc by choice, or since watch() failed
  const uint64_t errors = sampler_->source_errors();
  if (errors > source_errors_seen_) {
    // The pass failed: ProcessSampler read this tick from /proc. Logged once per run of failed
    // ticks (with the first reason), not at 10 Hz per domain.
    shared_.counters.thread_stats_fallbacks.fetch_add(errors - source_errors_seen_, std::memory_order_relaxed);
    if (!on_proc_fallback_) {
      spdlog::warn("domain {}: {} pass failed, sampling its threads from /proc until a pass works: {}",
                   info_.name, sampler_->stat_source()->kind(), sampler_->last_source_error().to_string());
    }
    on_proc_fallback_ = true;
  } else if (on_proc_fallback_) {
    spdlog::info("domain {}: sampling its threads from {} passes again", info_.name, sampler_->stat_source()->kind());
    on_proc_fallback_ = false;
  }
  source_errors_seen_ = errors;
}

// ---- scheduling on the tick pool -----------------------------------------------------------------

void post_tick(Shared& shared, const std::shared_ptr<DomainPipeline>& p, int64_t due_ns) {
  PoolTask t;
  std::weak_ptr<DomainPipeline> weak = p;
  t.run = [&shared, weak, due_ns] {
    std::shared_ptr<DomainPipeline> d = weak.lock();
    if (!d || d->retired()) return;
    const int64_t interval = shared.config.sample_interval.count();
    int64_t due = due_ns;
    const int64_t now = shared.mono->now_ns();
    if (now - due > interval) {
      // Late by more than a whole interval: count it and skip ahead instead of bursting ticks
      // (a burst would only sample the same stall several times within microseconds).
      shared.counters.overruns.fetch_add(1, std::memory_order_relaxed);
      due = now;
    }
    if (!d->tick()) return;  // abandoned: on_abandon already posted the next tick
    if (!d->retired()) post_tick(shared, d, next_tick_due(due, interval));
  };
  t.on_abandon = [&shared, weak](const std::string& why) {
    std::shared_ptr<DomainPipeline> d = weak.lock();
    if (!d) return;
    d->on_read_abandoned(why);
    if (!d->retired()) post_tick(shared, d, shared.mono->now_ns());
  };
  t.on_exception = [&shared, weak](const std::string&) {
    // tick() contains its own failures; if something still escaped, keep the domain ticking.
    std::shared_ptr<DomainPipeline> d = weak.lock();
    if (d && !d->retired()) post_tick(shared, d, shared.mono->now_ns() + shared.config.sample_interval.count());
  };
  shared.tick_pool->post(due_ns, std::move(t));
}

// ---- queries ----------------------------------------------------------------------------------

IntrospectionHealth DomainPipeline::introspection() const {
  std::lock_guard<std::mutex> l(mu_);
  return health_;
}

IntrospectionHealth DomainPipeline::wait_introspection(std::chrono::milliseconds timeout) const {
  return wait_health([](const IntrospectionHealth& h) { return h.state == IntrospectionState::kReady; },
                     timeout);
}

IntrospectionHealth DomainPipeline::wait_health(const std::function<bool(const IntrospectionHealth&)>& pred,
                                                std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> l(mu_);
  health_cv_.wait_for(l, timeout, [&] { return pred(health_); });
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

std::vector<diagnosis::IncidentVcpuLane> DomainPipeline::incident_lookback(Timestamp since) const {
  std::vector<diagnosis::IncidentVcpuLane> lanes;
  std::lock_guard<std::mutex> l(mu_);
  if (!sampler_) return lanes;
  for (const host::TrackedThread* t : sampler_->vcpus()) {
    if (lanes.size() >= shared_.config.incidents.max_lanes) break;
    diagnosis::IncidentVcpuLane lane;
    lane.vcpu = t->vcpu();
    lane.tid = t->tid();
    const host::SampleRing& ring = t->history();
    for (size_t i = 0; i < ring.size(); ++i) {
      const host::ThreadSample& s = ring.at(i);
      const Timestamp at = shared_.engine_time(s.t_ns);
      if (at < since) continue;
      lane.points.push_back(diagnosis::IncidentVcpuPoint{at, diagnosis::thread_state_from_letter(s.state),
                                                        Duration(static_cast<int64_t>(s.run_ns)),
                                                        Duration(static_cast<int64_t>(s.wait_ns))});
    }
    lanes.push_back(std::move(lane));
  }
  return lanes;
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
