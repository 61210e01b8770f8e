// SPDX-License-Identifier: Apache-2.0
// The only file that talks to libvirt. libvirt types stay in here.
#include "stallmon/libvirt/domain_watcher.h"

#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <variant>

#include "event_loop.h"
#include "libvirt_events.h"
#include "stallmon/introspect/physical_memory.h"
#include "stallmon/libvirt/host_layout.h"
#include "stallmon/libvirt/qemu_process.h"

namespace stallmon::libvirt {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
// Turns the calling thread's last libvirt error into an Error (and clears it).
Error libvirt_error(const std::string& what) {
  virErrorPtr e = virGetLastError();
  ErrorCode code = ErrorCode::kIo;
  std::string msg = e && e->message ? e->message : "unknown libvirt error";
  if (e) {
    switch (e->code) {
      case VIR_ERR_OPERATION_TIMEOUT:  // "cannot acquire state change lock": a job is stuck
        code = ErrorCode::kTimeout;
        break;
      case VIR_ERR_NO_DOMAIN:
      case VIR_ERR_OPERATION_INVALID:  // "domain is not running"
        code = ErrorCode::kNotFound;
        break;
      case VIR_ERR_NO_SUPPORT:
      case VIR_ERR_ARGUMENT_UNSUPPORTED:
        code = ErrorCode::kUnsupported;
        break;
      default:
        break;
    }
  }
  virResetLastError();
  return Error(code, what + ": " + msg);
}

// A libvirt connection of its own for one domain's monitor commands, used only from that domain's
// monitor worker thread (so never by two threads at once).
//
// Why not the main connection: with libvirt 9.0's client, while one call on a connection waits
// (a monitor command to a stuck qemu), replies to other threads' calls on that connection were
// seen to wait too, until the next socket event (a keepalive, up to 5 s later) or until the stuck
// call returned (measured: virDomainGetState of a healthy domain took 5 s, and 9.6 s without an
// event loop). A hung monitor must not slow the domain list, events, or other domains.
class MonitorConnection {
 public:
  MonitorConnection(std::string uri, std::string uuid) : uri_(std::move(uri)), uuid_(std::move(uuid)) {}
  ~MonitorConnection() { reset(); }
  MonitorConnection(const MonitorConnection&) = delete;
  MonitorConnection& operator=(const MonitorConnection&) = delete;

  // Any thread: libvirtd restarted, so the next command opens a new connection instead of failing
  // once on the dead one.
  void mark_stale() { stale_.store(true); }

  Result<std::string> command(const std::string& command, bool hmp) {
    if (stale_.exchange(false)) reset();
    if (!dom_) {
      conn_ = virConnectOpen(uri_.c_str());
      if (!conn_) return libvirt_error("virConnectOpen " + uri_ + " (monitor connection)");
      dom_ = virDomainLookupByUUIDString(conn_, uuid_.c_str());
      if (!dom_) {
        Error e = libvirt_error("virDomainLookupByUUIDString " + uuid_);
        reset();
        return e;
      }
    }
    char* reply = nullptr;
    unsigned int flags = hmp ? VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP : VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT;
    if (virDomainQemuMonitorCommand(dom_, command.c_str(), &reply, flags) < 0) {
      Error e = libvirt_error(std::string(hmp ? "hmp " : "qmp ") + command);
      // QEMU's own errors come back inside the reply; a failed call means libvirt could not run it
      // (domain gone, libvirtd restarted, job busy). Reopening is cheap, so start afresh next time.
      reset();
      return e;
    }
    std::string out = reply ? reply : "";
    std::free(reply);
    return out;
  }

 private:
  void reset() {
    if (dom_) virDomainFree(dom_);
    if (conn_) virConnectClose(conn_);
    dom_ = nullptr;
    conn_ = nullptr;
    virResetLastError();
  }

  std::string uri_;
  std::string uuid_;
  std::atomic<bool> stale_{false};
  virConnectPtr conn_ = nullptr;
  virDomainPtr dom_ = nullptr;
};
using MonitorConnPtr = std::shared_ptr<MonitorConnection>;

DomainRunState map_state(int state) {
  switch (state) {
    case VIR_DOMAIN_RUNNING: return DomainRunState::kRunning;
    case VIR_DOMAIN_BLOCKED: return DomainRunState::kBlocked;
    case VIR_DOMAIN_PAUSED: return DomainRunState::kPaused;
    case VIR_DOMAIN_SHUTDOWN: return DomainRunState::kShutdown;
    case VIR_DOMAIN_SHUTOFF: return DomainRunState::kShutoff;
    case VIR_DOMAIN_CRASHED: return DomainRunState::kCrashed;
    case VIR_DOMAIN_PMSUSPENDED: return DomainRunState::kPmSuspended;
    default: return DomainRunState::kUnknown;
  }
}

std::string domain_uuid(virDomainPtr dom) {
  char buf[VIR_UUID_STRING_BUFLEN] = {};
  if (virDomainGetUUIDString(dom, buf) < 0) return {};
  return buf;
}

std::string domain_name(virDomainPtr dom) {
  const char* n = virDomainGetName(dom);
  return n ? n : "";
}

const char* close_reason(int reason) {
  switch (reason) {
    case VIR_CONNECT_CLOSE_REASON_ERROR: return "I/O error";
    case VIR_CONNECT_CLOSE_REASON_EOF: return "libvirtd closed the connection";
    case VIR_CONNECT_CLOSE_REASON_KEEPALIVE: return "keepalive timeout";
    case VIR_CONNECT_CLOSE_REASON_CLIENT: return "closed by client";
    default: return "unknown reason";
  }
}

// One running domain as libvirt lists it.
struct Listed {
  std::string uuid;
  std::string name;
  int id = -1;
  DomainRunState state = DomainRunState::kUnknown;
};

// Messages to the dispatch thread.
struct CmdConnectionLost {
  uint64_t epoch;
  std::string reason;
};
struct CmdEvent {
  uint64_t epoch;
  DomainEvent event;
  bool resync;  // lifecycle: re-list everything; otherwise re-probe just this domain
};
struct CmdRefresh {
  std::string key;  // uuid or name; empty = full re-sync
};
struct CmdProbeDone {
  std::string uuid;
  pid_t pid;
  uint64_t seq;
  Result<std::vector<VcpuThread>> vcpus;
  std::optional<Result<std::vector<introspect::RamRange>>> layout;
  VcpuSource vcpu_source = VcpuSource::kQmp;
  std::string layout_source;
};
struct CmdHealth {
  std::string uuid;
  MonitorHealth health;
};
using Cmd = std::variant<CmdConnectionLost, CmdEvent, CmdRefresh, CmdProbeDone, CmdHealth>;

// What libvirt says about a domain through public, read-only, job-free APIs.
struct DomainFacts {
  std::string xml;       // live XML (virDomainGetXMLDesc, no flags: no secrets needed)
  int online_vcpus = 0;  // virDomainGetVcpusFlags(LIVE): libvirt's own count, no monitor
};

Result<DomainFacts> fetch_facts(virConnectPtr c, const std::string& uuid) {
  virDomainPtr dom = virDomainLookupByUUIDString(c, uuid.c_str());
  if (!dom) return libvirt_error("virDomainLookupByUUIDString " + uuid);
  DomainFacts f;
  char* xml = virDomainGetXMLDesc(dom, 0);
  if (!xml) {
    Error e = libvirt_error("virDomainGetXMLDesc");
    virDomainFree(dom);
    return e;
  }
  f.xml = xml;
  std::free(xml);
  f.online_vcpus = virDomainGetVcpusFlags(dom, VIR_DOMAIN_AFFECT_LIVE);
  if (f.online_vcpus < 0) {
    spdlog::debug("libvirt: {}", libvirt_error("virDomainGetVcpusFlags").message);
    f.online_vcpus = 0;
  }
  virDomainFree(dom);
  return f;
}

Result<std::vector<introspect::RamRange>> derive_and_validate(const std::string& proc_root, pid_t pid,
                                                                     const std::string& xml, std::string& source) {
  STALLMON_TRY(auto spec, parse_domain_memory_xml(xml));
  std::string dir = proc_root + "/" + std::to_string(pid);
  STALLMON_TRY(auto maps_text, read_proc_text(dir + "/maps", 64u << 20));
  STALLMON_TRY(auto cmdline, read_proc_text(dir + "/cmdline", 1u << 20));
  STALLMON_TRY(auto maps, parse_proc_maps(maps_text));
  STALLMON_TRY(auto ranges, derive_ram_layout(spec, maps, cmdline));
  STALLMON_TRY(auto mem, introspect::QemuProcessMemory::create(pid, ranges));
  STALLMON_TRY(auto checked, validate_ram_layout(*mem, ranges));
  source = std::string("host maps + domain XML (") + spec.machine + ", " +
           to_string(spec.boot.front().backing) + "); " + checked;
  return ranges;
}

// Finds the qemu pid without the monitor: libvirt's pid file, checked against /proc.
std::pair<pid_t, std::string> find_qemu_pid(const WatcherOptions& opts, const std::string& uuid,
                                            const std::string& name) {
  std::string pidfile = opts.qemu_run_dir + "/" + name + ".pid";
  auto r = qemu_pid_from_pidfile(pidfile, opts.proc_root, uuid, name);
  if (r.ok()) return {*r, pidfile};
  auto scan = find_qemu_pid_by_uuid(opts.proc_root, uuid, name);
  if (scan.ok()) return {*scan, opts.proc_root + " scan"};
  spdlog::warn("libvirt: domain {}: no qemu pid ({}; {})", name, r.error().message, scan.error().message);
  return {0, ""};
}

}  // namespace

// ---------------------------------------------------------------------------------------------

class DomainWatcher::Impl : public std::enable_shared_from_this<DomainWatcher::Impl> {
 public:
  explicit Impl(WatcherOptions o) : opts_(std::move(o)), backoff_(opts_.backoff) {}

  // Context handed to libvirt callbacks; freed by libvirt through free_ctx.
  struct CallbackCtx {
    std::weak_ptr<Impl> impl;
    uint64_t epoch;
  };

  struct Slot {
    DomainInfo info;
    std::shared_ptr<DeadlineWorker> monitor;  // QMP/HMP commands
    std::shared_ptr<DeadlineWorker> prober;   // discovery steps that wait on `monitor`
    MonitorConnPtr monitor_conn;              // used only on `monitor`'s thread
    uint64_t probe_seq = 0;
    bool probe_running = false;
    bool probe_again = false;
    bool layout_refresh = false;  // resolve the RAM layout again even though one is cached
    bool host_probed = false;     // no-monitor mode: a probe confirmed the vCPU map
    Clock::time_point next_recheck{};  // no-monitor mode: when to re-derive the layout
  };

  WatcherOptions opts_;
  std::vector<DomainObserver*> observers_;
  std::shared_ptr<EventLoop> loop_;
  std::thread dispatch_;
  bool started_ = false;

  std::mutex q_mu_;
  std::condition_variable q_cv_;
  std::deque<Cmd> queue_;
  bool stopping_ = false;

  // Dispatch-thread state.
  std::shared_ptr<DeadlineWorker> conn_worker_;
  ReconnectBackoff backoff_;
  uint64_t epoch_ = 0;
  std::vector<int> event_ids_;
  CallbackCtx* close_ctx_ = nullptr;  // of the current connection; freed by teardown()
  bool resync_pending_ = false;
  Clock::time_point resync_due_{};
  uint64_t next_probe_seq_ = 0;  // guarded by table_mu_

  // Shared with callers of domains()/qmp()/...
  mutable std::mutex table_mu_;
  mutable std::condition_variable table_cv_;
  virConnectPtr conn_ = nullptr;  // owned by the dispatch thread; others take a virConnectRef
  std::map<std::string, Slot> slots_;  // by uuid
  ConnectionStatus status_;
  uint64_t syncs_ = 0;

  // ---- plumbing ----
  void post(Cmd cmd) {
    std::lock_guard lock(q_mu_);
    queue_.push_back(std::move(cmd));
    q_cv_.notify_all();
  }

  static void free_ctx(void* opaque) { delete static_cast<CallbackCtx*>(opaque); }

  static void post_event(void* opaque, DomainEvent ev, bool resync) {
    auto* ctx = static_cast<CallbackCtx*>(opaque);
    ev.time = std::chrono::system_clock::now();
    if (auto impl = ctx->impl.lock()) impl->post(CmdEvent{ctx->epoch, std::move(ev), resync});
  }

  // libvirt callbacks: run on the event loop thread; only translate and post.
  static int on_lifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
    DomainEvent ev = map_lifecycle_event(event, detail);
    ev.uuid = domain_uuid(dom);
    ev.name = domain_name(dom);
    post_event(opaque, std::move(ev), true);
    return 0;
  }
  static void on_reboot(virConnectPtr, virDomainPtr dom, void* opaque) {
    post_event(opaque, DomainEvent{DomainEventKind::kRebooted, domain_uuid(dom), domain_name(dom), "reset", {}},
               false);
  }
  static void on_device_added(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
    post_event(opaque,
               DomainEvent{DomainEventKind::kDeviceAdded, domain_uuid(dom), domain_name(dom), alias ? alias : "", {}},
               false);
  }
  static void on_device_removed(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
    post_event(opaque,
               DomainEvent{DomainEventKind::kDeviceRemoved, domain_uuid(dom), domain_name(dom), alias ? alias : "", {}},
               false);
  }
  static void on_memory_resized(virConnectPtr, virDomainPtr dom, const char* alias, unsigned long long size,
                                void* opaque) {
    std::string detail = std::string(alias ? alias : "") + " size " + std::to_string(size) + " KiB";
    post_event(opaque, DomainEvent{DomainEventKind::kMemoryDeviceResized, domain_uuid(dom), domain_name(dom), detail, {}},
               false);
  }
  static void on_close(virConnectPtr, int reason, void* opaque) {
    auto* ctx = static_cast<CallbackCtx*>(opaque);
    if (auto impl = ctx->impl.lock()) impl->post(CmdConnectionLost{ctx->epoch, close_reason(reason)});
  }

  template <typename F>
  void notify(F&& f) {
    for (auto* o : observers_) f(*o);
  }

  // ---- connection ----
  struct ConnHandoff {
    std::mutex mu;
    bool abandoned = false;
    virConnectPtr conn = nullptr;
    std::vector<int> ids;
    CallbackCtx* close_ctx = nullptr;
  };

  // The close callback's context is owned here, not by libvirt: drivers without close callbacks
  // (test:///, local drivers) accept the registration and never call its free function, which
  // leaked the context, and through its weak_ptr the Impl's control block, on every connect.
  // Freed once the callback is unregistered (libvirt holds its callback lock while calling it,
  // so none is running after virConnectUnregisterCloseCallback returns).
  static void teardown(virConnectPtr c, const std::vector<int>& ids, CallbackCtx* close_ctx) {
    for (int id : ids) virConnectDomainEventDeregisterAny(c, id);
    if (close_ctx) virConnectUnregisterCloseCallback(c, on_close);
    virConnectClose(c);
    virResetLastError();
    delete close_ctx;
  }

  void try_connect() {
    uint64_t epoch = ++epoch_;
    {
      std::lock_guard lock(table_mu_);
      status_.state = ConnectionState::kConnecting;
    }
    auto handoff = std::make_shared<ConnHandoff>();
    std::weak_ptr<Impl> weak = weak_from_this();
    WatcherOptions opts = opts_;
    auto r = conn_worker_
                 ->submit<bool>("connect " + opts.uri, opts.connect_timeout,
                                [handoff, weak, epoch, opts]() -> Result<bool> {
                                  // Read-only unless monitor commands are wanted: a read-write
                                  // connection to the system libvirtd is root-equivalent.
                                  virConnectPtr c = opts.use_monitor ? virConnectOpen(opts.uri.c_str())
                                                                     : virConnectOpenReadOnly(opts.uri.c_str());
                                  if (!c) {
                                    return libvirt_error(std::string(opts.use_monitor ? "virConnectOpen "
                                                                                      : "virConnectOpenReadOnly ") +
                                                         opts.uri);
                                  }
                                  std::vector<int> ids;
                                  // Without keepalive a hung (not dead) libvirtd would never be noticed.
                                  if (virConnectSetKeepAlive(c, opts.keepalive_interval_s, opts.keepalive_count) < 0) {
                                    // Local drivers (test:///) have no keepalive and need none.
                                    Error e = libvirt_error("virConnectSetKeepAlive");
                                    if (e.code == ErrorCode::kUnsupported) {
                                      spdlog::debug("libvirt: {}", e.message);
                                    } else {
                                      spdlog::warn("libvirt: {}", e.message);
                                    }
                                  }
                                  auto* close_ctx = new CallbackCtx{weak, epoch};
                                  if (virConnectRegisterCloseCallback(c, on_close, close_ctx, nullptr) < 0) {
                                    Error e = libvirt_error("virConnectRegisterCloseCallback");
                                    virConnectClose(c);
                                    delete close_ctx;
                                    return e;
                                  }
                                  struct Reg {
                                    int id;
                                    virConnectDomainEventGenericCallback cb;
                                    bool required;
                                  };
                                  const Reg regs[] = {
                                      {VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), true},
                                      {VIR_DOMAIN_EVENT_ID_REBOOT, VIR_DOMAIN_EVENT_CALLBACK(on_reboot), false},
                                      {VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, VIR_DOMAIN_EVENT_CALLBACK(on_device_added), false},
                                      {VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, VIR_DOMAIN_EVENT_CALLBACK(on_device_removed), false},
                                      {VIR_DOMAIN_EVENT_ID_MEMORY_DEVICE_SIZE_CHANGE,
                                       VIR_DOMAIN_EVENT_CALLBACK(on_memory_resized), false},
                                  };
                                  for (const auto& reg : regs) {
                                    int id = virConnectDomainEventRegisterAny(c, nullptr, reg.id, reg.cb,
                                                                              new CallbackCtx{weak, epoch}, free_ctx);
                                    if (id < 0) {
                                      Error e = libvirt_error("virConnectDomainEventRegisterAny(" +
                                                              std::to_string(reg.id) + ")");
                                      if (reg.required) {
                                        teardown(c, ids, close_ctx);
                                        return e;
                                      }
                                      // Older libvirtd without this event: run without it.
                                      spdlog::info("libvirt: {}", e.message);
                                      continue;
                                    }
                                    ids.push_back(id);
                                  }
                                  std::lock_guard lock(handoff->mu);
                                  if (handoff->abandoned) {
                                    // The caller gave up waiting: do not leak a connection nobody uses.
                                    teardown(c, ids, close_ctx);
                                    return Error(ErrorCode::kTimeout, "connected after the deadline");
                                  }
                                  handoff->conn = c;
                                  handoff->ids = std::move(ids);
                                  handoff->close_ctx = close_ctx;
                                  return true;
                                })
                 .wait();
    virConnectPtr c = nullptr;
    {
      std::lock_guard lock(handoff->mu);
      c = handoff->conn;
      if (c) {
        event_ids_ = handoff->ids;
        close_ctx_ = handoff->close_ctx;
      } else {
        handoff->abandoned = true;
      }
    }
    auto now = Clock::now();
    ConnectionStatus st;
    if (c) {
      backoff_.on_connected();
      {
        std::lock_guard lock(table_mu_);
        conn_ = c;
        status_.state = ConnectionState::kConnected;
        status_.reason.clear();
        status_.attempts = 0;
        status_.retry_in = milliseconds(0);
        st = status_;
      }
      spdlog::info("libvirt: connected to {}", opts_.uri);
      {
        std::lock_guard lock(table_mu_);
        for (auto& [uuid, slot] : slots_) {
          if (slot.monitor_conn) slot.monitor_conn->mark_stale();
        }
      }
      resync_pending_ = true;
      resync_due_ = now;
    } else {
      backoff_.on_attempt_failed(now);
      {
        std::lock_guard lock(table_mu_);
        status_.state = ConnectionState::kDisconnected;
        status_.reason = r.ok() ? "connect failed" : r.error().message;
        status_.attempts = backoff_.failures();
        status_.retry_in = backoff_.last_delay();
        st = status_;
      }
      // Log the first failures loudly, then quietly: a dead libvirtd would otherwise flood the log.
      if (backoff_.failures() <= 3 || backoff_.failures() % 20 == 0) {
        spdlog::warn("libvirt: cannot connect to {} ({}); retry in {} ms (attempt {})", opts_.uri, st.reason,
                     st.retry_in.count(), st.attempts);
      }
    }
    notify([&](DomainObserver& o) { o.on_connection(st); });
  }

  void drop_connection(const std::string& reason) {
    virConnectPtr c = nullptr;
    ConnectionStatus st;
    {
      std::lock_guard lock(table_mu_);
      c = conn_;
      conn_ = nullptr;
      status_.state = ConnectionState::kDisconnected;
      status_.reason = reason;
      st = status_;
    }
    if (c) {
      auto ids = event_ids_;
      event_ids_.clear();
      CallbackCtx* close_ctx = std::exchange(close_ctx_, nullptr);
      // Deregistering is an RPC; on a dead connection it fails at once, on a hung one the worker's
      // deadline bounds it.
      auto r = conn_worker_->call<bool>("disconnect", opts_.call_timeout, [c, ids, close_ctx]() -> Result<bool> {
        teardown(c, ids, close_ctx);
        return true;
      });
      if (!r.ok()) spdlog::warn("libvirt: {}", r.error().message);
    }
    ++epoch_;  // events still queued from the old connection are stale
    backoff_.on_lost(Clock::now());
    {
      std::lock_guard lock(table_mu_);
      status_.retry_in = backoff_.last_delay();
      st = status_;
    }
    if (reason != "shutdown") spdlog::warn("libvirt: connection to {} lost: {}", opts_.uri, reason);
    notify([&](DomainObserver& o) { o.on_connection(st); });
  }

  // ---- discovery ----
  // Any thread: the connection worker makes the call.
  Result<std::vector<Listed>> list_domains(milliseconds timeout) {
    virConnectPtr c = nullptr;
    std::shared_ptr<DeadlineWorker> worker;
    {
      std::lock_guard lock(table_mu_);
      if (!conn_) return Error(ErrorCode::kIo, "not connected to " + opts_.uri);
      c = conn_;
      virConnectRef(c);
      worker = conn_worker_;
    }
    return worker->call<std::vector<Listed>>(
        "list domains", timeout, [c]() -> Result<std::vector<Listed>> {
          virDomainPtr* doms = nullptr;
          // Connection-wide and job-free: works while any domain's monitor hangs.
          int n = virConnectListAllDomains(c, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
          if (n < 0) {
            Error e = libvirt_error("virConnectListAllDomains");
            virConnectClose(c);
            return e;
          }
          std::vector<Listed> out;
          for (int i = 0; i < n; ++i) {
            Listed l;
            l.uuid = domain_uuid(doms[i]);
            l.name = domain_name(doms[i]);
            l.id = virDomainGetID(doms[i]) == static_cast<unsigned>(-1) ? -1 : static_cast<int>(virDomainGetID(doms[i]));
            int state = 0, reason = 0;
            // qemuDomainGetState reads libvirt's cached state: no job, no monitor.
            if (virDomainGetState(doms[i], &state, &reason, 0) == 0) l.state = map_state(state);
            virResetLastError();
            virDomainFree(doms[i]);
            out.push_back(std::move(l));
          }
          std::free(doms);
          virConnectClose(c);
          return out;
        });
  }

  std::pair<pid_t, std::string> find_pid(const std::string& uuid, const std::string& name) {
    return find_qemu_pid(opts_, uuid, name);
  }

  void sync() {
    resync_pending_ = false;
    auto listed = list_domains(opts_.call_timeout);
    if (!listed.ok()) {
      spdlog::warn("libvirt: listing domains failed: {}", listed.error().message);
      // Try again soon; a lost connection is reported separately by the close callback.
      resync_pending_ = true;
      resync_due_ = Clock::now() + milliseconds(1000);
      return;
    }
    // /proc work first, without table_mu_: the sampling thread copies the table under it. Only this
    // thread writes slots_, so reading it here without the lock is safe.
    struct Found {
      pid_t pid = 0;
      std::string source;
      std::optional<Result<std::vector<VcpuThread>>> names;  // only for a new qemu pid
    };
    std::vector<Found> found(listed->size());
    for (size_t i = 0; i < listed->size(); ++i) {
      const Listed& l = (*listed)[i];
      if (l.uuid.empty()) continue;
      std::tie(found[i].pid, found[i].source) = find_pid(l.uuid, l.name);
      auto it = slots_.find(l.uuid);
      pid_t known = it == slots_.end() ? 0 : it->second.info.qemu_pid;
      // Thread names need no monitor: published now, QMP confirms (or corrects) them later.
      if (found[i].pid > 0 && found[i].pid != known) {
        found[i].names = vcpu_threads_from_proc(opts_.proc_root, found[i].pid);
      }
    }
    std::vector<DomainInfo> gone, updated, all;
    std::vector<Slot> removed;  // destroyed after the lock: a worker may take a moment to stop
    {
      std::lock_guard lock(table_mu_);
      std::set<std::string> seen;
      for (size_t i = 0; i < listed->size(); ++i) {
        Listed& l = (*listed)[i];
        if (l.uuid.empty()) continue;
        seen.insert(l.uuid);
        auto [it, fresh] = slots_.try_emplace(l.uuid);
        Slot& s = it->second;
        bool changed = fresh || s.info.id != l.id || s.info.state != l.state || s.info.name != l.name;
        s.info.uuid = l.uuid;
        s.info.name = l.name;
        s.info.id = l.id;
        s.info.state = l.state;
        if (fresh) make_workers(s);
        pid_t pid = found[i].pid;
        if (pid != s.info.qemu_pid) {
          // New qemu (first sight, restart, or restarted while we were disconnected): everything
          // derived from the old process is void.
          s.info.qemu_pid = pid;
          s.info.pid_source = found[i].source;
          s.info.vcpus.clear();
          s.info.vcpu_source = VcpuSource::kNone;
          s.info.ram_layout.reset();
          s.info.ram_layout_error.clear();
          s.info.ram_layout_source.clear();
          s.host_probed = false;
          if (found[i].names && found[i].names->ok()) {
            s.info.vcpus = std::move(*found[i].names).value();
            s.info.vcpu_source = VcpuSource::kThreadNames;
          }
          ++s.info.generation;
          changed = true;
        }
        if (pid > 0 && needs_probe(s)) {
          // Started under the lock, before syncs_ moves: whoever sees this sync also sees the probe
          // as running (wait_probes_idle relies on it).
          if (s.probe_running) {
            s.probe_again = true;
          } else {
            start_probe_locked(s);
          }
        }
        if (changed) updated.push_back(s.info);
      }
      for (auto it = slots_.begin(); it != slots_.end();) {
        if (seen.count(it->first)) {
          ++it;
          continue;
        }
        gone.push_back(it->second.info);
        removed.push_back(std::move(it->second));
        it = slots_.erase(it);
      }
      ++syncs_;
      all = snapshot_locked();
    }
    table_cv_.notify_all();
    // Workers stuck in a dead qemu's monitor are detached rather than waited for.
    removed.clear();
    for (auto& d : gone) {
      spdlog::info("libvirt: domain {} ({}) is gone", d.name, d.uuid);
      notify([&](DomainObserver& o) { o.on_domain_gone(d); });
    }
    for (auto& d : updated) notify([&](DomainObserver& o) { o.on_domain_updated(d); });
    notify([&](DomainObserver& o) { o.on_domains_synced(all); });
  }

  bool needs_probe(const Slot& s) const {
    if (!opts_.use_monitor) return !s.host_probed || !s.info.ram_layout;
    return s.info.vcpu_source != VcpuSource::kQmp || (opts_.ram_layout_resolver && !s.info.ram_layout);
  }

  void make_workers(Slot& s) {
    s.prober = std::make_shared<DeadlineWorker>("probe-" + s.info.name);
    s.next_recheck = Clock::now() + opts_.layout_recheck;
    if (!opts_.use_monitor) return;  // no monitor thread, no connection of its own
    std::weak_ptr<Impl> weak = weak_from_this();
    std::string uuid = s.info.uuid;
    s.monitor = std::make_shared<DeadlineWorker>("mon-" + s.info.name, [weak, uuid](const MonitorHealth& h) {
      if (auto impl = weak.lock()) impl->post(CmdHealth{uuid, h});
    });
    s.monitor_conn = std::make_shared<MonitorConnection>(opts_.uri, uuid);
  }

  std::vector<DomainInfo> snapshot_locked() const {
    std::vector<DomainInfo> out;
    out.reserve(slots_.size());
    for (const auto& [uuid, s] : slots_) out.push_back(s.info);
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    return out;
  }

  void schedule_probe(const std::string& uuid) {
    std::lock_guard lock(table_mu_);
    auto it = slots_.find(uuid);
    if (it == slots_.end()) return;
    Slot& s = it->second;
    if (s.probe_running) {
      s.probe_again = true;
      return;
    }
    start_probe_locked(s);
  }

  // The probe runs on the domain's prober thread and waits (with deadlines) on its monitor
  // thread, so neither the dispatch thread nor any other domain ever waits on this monitor.
  void start_probe_locked(Slot& s) {
    if (s.info.qemu_pid <= 0) return;
    s.probe_running = true;
    s.probe_again = false;
    // Process-wide numbering: a probe of an earlier incarnation of the domain (same uuid) can never
    // be taken for the current one.
    uint64_t seq = s.probe_seq = ++next_probe_seq_;
    if (!opts_.use_monitor) {
      start_host_probe_locked(s, seq);
      return;
    }
    std::weak_ptr<Impl> weak = weak_from_this();
    auto monitor = s.monitor;
    auto mc = s.monitor_conn;
    pid_t pid = s.info.qemu_pid;
    std::string uuid = s.info.uuid;
    auto timeout = opts_.monitor_timeout;
    auto resolver = opts_.ram_layout_resolver;
    bool want_layout = resolver && (!s.info.ram_layout || s.layout_refresh);
    s.layout_refresh = false;
    std::string proc_root = opts_.proc_root;
    auto probe = [=]() -> Result<bool> {
      CmdProbeDone done{uuid, pid, seq, Error(ErrorCode::kInternal, "not run"), std::nullopt};
      auto reply = monitor->call<std::string>("qmp query-cpus-fast", timeout, [mc]() {
        return mc->command(R"({"execute":"query-cpus-fast"})", false);
      });
      if (reply.ok()) {
        auto vcpus = parse_query_cpus_fast(*reply);
        if (vcpus.ok()) {
          auto belong = check_threads_belong(proc_root, pid, *vcpus);
          if (belong.ok()) {
            fill_thread_names(proc_root, pid, *vcpus);
            done.vcpus = std::move(vcpus).value();
          } else {
            done.vcpus = std::move(belong).error();
          }
        } else {
          done.vcpus = std::move(vcpus).error();
        }
      } else {
        done.vcpus = std::move(reply).error();
      }
      if (want_layout) {
        introspect::HmpCommand hmp = [monitor, mc, timeout](std::string_view cmd) -> Result<std::string> {
          std::string line(cmd);
          return monitor->call<std::string>("hmp " + line, timeout, [mc, line]() { return mc->command(line, true); });
        };
        done.layout = resolver(hmp);
      }
      if (auto impl = weak.lock()) impl->post(std::move(done));
      return true;
    };
    // The probe's own deadline only bounds queueing; each monitor call inside has its own.
    (void)s.prober->submit<bool>("probe", timeout * 64, probe);
  }

  // The no-monitor probe: libvirt's XML and vCPU count over the shared read-only connection (on
  // the connection worker, deadline-bound), then /proc and guest memory on the domain's prober.
  void start_host_probe_locked(Slot& s, uint64_t seq) {
    std::weak_ptr<Impl> weak = weak_from_this();
    std::shared_ptr<virConnect> conn;
    if (conn_) {
      virConnectRef(conn_);
      conn = std::shared_ptr<virConnect>(conn_, [](virConnectPtr c) {
        virConnectClose(c);
        virResetLastError();
      });
    }
    auto worker = conn_worker_;
    pid_t pid = s.info.qemu_pid;
    std::string uuid = s.info.uuid;
    auto timeout = opts_.call_timeout;
    std::string proc_root = opts_.proc_root;
    std::string cgroup_root = opts_.cgroup_root;
    auto probe = [=]() -> Result<bool> {
      CmdProbeDone done{uuid, pid, seq, Error(ErrorCode::kInternal, "not run"), std::nullopt};
      done.vcpu_source = VcpuSource::kThreadNames;
      Result<DomainFacts> facts = Error(ErrorCode::kIo, "not connected to libvirtd");
      if (conn && worker) {
        facts = worker->call<DomainFacts>("domain facts " + uuid, timeout,
                                          [conn, uuid]() { return fetch_facts(conn.get(), uuid); });
      }
      unsigned online = facts.ok() ? static_cast<unsigned>(facts->online_vcpus) : 0;
      done.vcpus = vcpu_threads_without_monitor(proc_root, cgroup_root, pid, online);
      if (facts.ok()) {
        std::string source;
        done.layout = derive_and_validate(proc_root, pid, facts->xml, source);
        done.layout_source = std::move(source);
      } else {
        done.layout = facts.error();
      }
      if (auto impl = weak.lock()) impl->post(std::move(done));
      return true;
    };
    (void)s.prober->submit<bool>("probe", timeout * 4, probe);
  }

  static bool same_layout(const std::shared_ptr<const std::vector<introspect::RamRange>>& a,
                          const std::vector<introspect::RamRange>& b) {
    return a && a->size() == b.size() &&
           std::equal(a->begin(), a->end(), b.begin(), [](const auto& x, const auto& y) {
             return x.gpa == y.gpa && x.size == y.size && x.hva == y.hva && x.name == y.name;
           });
  }

  void apply_probe(CmdProbeDone& d) {
    std::optional<DomainInfo> updated;
    {
      std::lock_guard lock(table_mu_);
      auto it = slots_.find(d.uuid);
      if (it == slots_.end()) return;
      Slot& s = it->second;
      if (d.seq != s.probe_seq) return;  // from an earlier incarnation of the domain
      s.probe_running = false;
      if (d.pid == s.info.qemu_pid) {
        bool changed = false;
        if (d.vcpus.ok()) {
          auto& v = d.vcpus.value();
          s.host_probed = true;
          bool same = s.info.vcpu_source == d.vcpu_source && v.size() == s.info.vcpus.size() &&
                      std::equal(v.begin(), v.end(), s.info.vcpus.begin(),
                                 [](const auto& a, const auto& b) { return a.index == b.index && a.tid == b.tid; });
          if (!same) {
            s.info.vcpus = v;
            s.info.vcpu_source = d.vcpu_source;
            ++s.info.generation;
            changed = true;
          }
        } else {
          spdlog::warn("libvirt: domain {}: vCPU threads from {} failed ({}); using {}", s.info.name,
                       opts_.use_monitor ? "QMP" : "thread names / cgroups", d.vcpus.error().message,
                       to_string(s.info.vcpu_source));
          if (opts_.use_monitor && s.info.vcpu_source != VcpuSource::kQmp) {
            // Retry the thread names: the domain may have been probed before its vCPU threads existed.
            auto names = vcpu_threads_from_proc(opts_.proc_root, s.info.qemu_pid);
            if (names.ok() && names->size() != s.info.vcpus.size()) {
              s.info.vcpus = std::move(names).value();
              s.info.vcpu_source = VcpuSource::kThreadNames;
              ++s.info.generation;
              changed = true;
            }
          }
        }
        if (d.layout) {
          if (d.layout->ok() && same_layout(s.info.ram_layout, d.layout->value())) {
            // Re-derived and unchanged (the periodic check): nothing to tell anyone.
            if (!s.info.ram_layout_error.empty()) changed = true;
            s.info.ram_layout_error.clear();
          } else if (d.layout->ok()) {
            if (s.info.ram_layout) spdlog::info("libvirt: domain {}: RAM layout changed", s.info.name);
            s.info.ram_layout =
                std::make_shared<const std::vector<introspect::RamRange>>(std::move(d.layout->value()));
            s.info.ram_layout_error.clear();
            s.info.ram_layout_source = opts_.use_monitor ? "monitor (info mtree -f, gpa2hva)" : d.layout_source;
            ++s.info.generation;
            changed = true;
          } else if (s.info.ram_layout_error != d.layout->error().message) {
            s.info.ram_layout_error = d.layout->error().message;
            spdlog::warn("libvirt: domain {}: RAM layout: {}", s.info.name, s.info.ram_layout_error);
            changed = true;
          }
        }
        if (changed) updated = s.info;
      }
      if (s.probe_again) start_probe_locked(s);
    }
    table_cv_.notify_all();
    if (updated) notify([&](DomainObserver& o) { o.on_domain_updated(*updated); });
  }

  void apply_health(const CmdHealth& h) {
    std::optional<DomainInfo> updated;
    bool reprobe = false;
    {
      std::lock_guard lock(table_mu_);
      auto it = slots_.find(h.uuid);
      if (it == slots_.end()) return;
      it->second.info.monitor = h.health;
      updated = it->second.info;
      // The monitor answers again: get what a probe during the hang could not.
      reprobe = opts_.use_monitor && h.health.responsive && (updated->vcpu_source != VcpuSource::kQmp ||
                                        (opts_.ram_layout_resolver && !updated->ram_layout));
    }
    if (reprobe) schedule_probe(h.uuid);
    if (h.health.responsive) {
      spdlog::info("libvirt: domain {}: monitor answers again", updated->name);
    } else {
      spdlog::warn("libvirt: domain {}: monitor unresponsive (stuck in {})", updated->name, h.health.stuck_call);
    }
    notify([&](DomainObserver& o) { o.on_domain_updated(*updated); });
  }

  // Any thread: one QMP/HMP command on the domain's monitor worker.
  PendingCall<std::string> monitor_call(std::string_view key, std::string command, bool hmp, milliseconds timeout) {
    std::shared_ptr<DeadlineWorker> monitor;
    MonitorConnPtr mc;
    {
      std::lock_guard lock(table_mu_);
      std::string uuid = resolve_key_locked(key);
      if (!uuid.empty()) {
        auto& s = slots_.at(uuid);
        monitor = s.monitor;
        mc = s.monitor_conn;
      }
    }
    if (!opts_.use_monitor) {
      return PendingCall<std::string>::completed(Error(
          ErrorCode::kUnsupported, "QEMU monitor commands are disabled (libvirt.use_monitor: false)"));
    }
    if (!monitor || !mc) {
      return PendingCall<std::string>::completed(
          Error(ErrorCode::kNotFound, "no running domain " + std::string(key)));
    }
    std::string what = (hmp ? "hmp " : "qmp ") + command;
    return monitor->submit<std::string>(std::move(what), timeout,
                                        [mc, command, hmp]() { return mc->command(command, hmp); });
  }

  std::string resolve_key_locked(std::string_view key) const {
    if (slots_.count(std::string(key))) return std::string(key);
    for (const auto& [uuid, s] : slots_) {
      if (s.info.name == key) return uuid;
    }
    return {};
  }

  // ---- dispatch thread ----
  void handle(Cmd& cmd) {
    if (auto* lost = std::get_if<CmdConnectionLost>(&cmd)) {
      bool connected;
      {
        std::lock_guard lock(table_mu_);
        connected = conn_ != nullptr;
      }
      if (lost->epoch == epoch_ && connected) drop_connection(lost->reason);
    } else if (auto* ev = std::get_if<CmdEvent>(&cmd)) {
      if (ev->epoch != epoch_) return;
      spdlog::info("libvirt: domain {}: {}{}{}", ev->event.name, to_string(ev->event.kind),
                   ev->event.detail.empty() ? "" : " ", ev->event.detail);
      notify([&](DomainObserver& o) { o.on_domain_event(ev->event); });
      if (ev->resync) {
        resync_pending_ = true;
        resync_due_ = Clock::now();
      } else {
        schedule_probe_fresh(ev->event.uuid);
      }
    } else if (auto* rf = std::get_if<CmdRefresh>(&cmd)) {
      if (rf->key.empty()) {
        resync_pending_ = true;
        resync_due_ = Clock::now();
      } else {
        std::string uuid;
        {
          std::lock_guard lock(table_mu_);
          uuid = resolve_key_locked(rf->key);
        }
        if (!uuid.empty()) schedule_probe_fresh(uuid);
      }
    } else if (auto* pd = std::get_if<CmdProbeDone>(&cmd)) {
      apply_probe(*pd);
    } else if (auto* h = std::get_if<CmdHealth>(&cmd)) {
      apply_health(*h);
    }
  }

  // Reboot, hotplug, explicit refresh: re-read the vCPU map and the RAM layout even if cached.
  // The cached layout stays published until a new one replaces it: if the monitor hangs now,
  // the old mapping is still the best there is (it only changes with memory hotplug).
  void schedule_probe_fresh(const std::string& uuid) {
    std::lock_guard lock(table_mu_);
    auto it = slots_.find(uuid);
    if (it == slots_.end()) return;
    Slot& s = it->second;
    s.layout_refresh = true;
    if (s.probe_running) {
      s.probe_again = true;
      return;
    }
    start_probe_locked(s);
  }

  void run() {
    pthread_setname_np(pthread_self(), "virt-dispatch");
    for (;;) {
      std::deque<Cmd> batch;
      {
        std::unique_lock lock(q_mu_);
        auto now = Clock::now();
        auto wake = now + milliseconds(250);  // deadline ticks
        bool connected;
        {
          std::lock_guard tl(table_mu_);
          connected = conn_ != nullptr;
        }
        if (!connected) wake = std::min(wake, backoff_.next_attempt());
        if (connected && resync_pending_) wake = std::min(wake, resync_due_);
        q_cv_.wait_until(lock, wake, [&] { return stopping_ || !queue_.empty(); });
        if (stopping_) break;
        batch.swap(queue_);
      }
      for (auto& cmd : batch) handle(cmd);
      auto now = Clock::now();
      bool connected;
      {
        std::lock_guard tl(table_mu_);
        connected = conn_ != nullptr;
      }
      if (!connected && backoff_.attempt_due(now)) {
        try_connect();
        connected = backoff_.state() == ReconnectBackoff::State::kConnected;
      }
      if (connected && resync_pending_ && now >= resync_due_) sync();
      // Calls nobody waits on (probes abandoned by their caller) still flag a stuck monitor.
      std::vector<std::shared_ptr<DeadlineWorker>> monitors;
      {
        std::lock_guard tl(table_mu_);
        for (auto& [uuid, s] : slots_) {
          if (s.monitor) monitors.push_back(s.monitor);
          // No monitor: re-derive the layout now and then, so that a changed mapping (memory
          // hotplug without an event, a backend remapped) is noticed. Published only if changed.
          if (!opts_.use_monitor && connected && s.info.qemu_pid > 0 && now >= s.next_recheck) {
            s.next_recheck = now + opts_.layout_recheck;
            if (s.probe_running) {
              s.probe_again = true;
            } else {
              start_probe_locked(s);
            }
          }
        }
      }
      for (auto& m : monitors) m->check_deadline(now);
    }
    // Shutdown, on this thread so that libvirt is only ever driven from here and the workers.
    bool connected;
    {
      std::lock_guard lock(table_mu_);
      connected = conn_ != nullptr;
    }
    if (connected) drop_connection("shutdown");
    std::map<std::string, Slot> slots;
    {
      std::lock_guard lock(table_mu_);
      slots.swap(slots_);
    }
    slots.clear();
  }
};

// ---------------------------------------------------------------------------------------------

DomainWatcher::DomainWatcher(WatcherOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {}

DomainWatcher::~DomainWatcher() { stop(); }

void DomainWatcher::add_observer(DomainObserver* observer) { impl_->observers_.push_back(observer); }

Result<void> DomainWatcher::start() {
  if (impl_->started_) return Error(ErrorCode::kInvalidArgument, "DomainWatcher already started");
  STALLMON_TRY(impl_->loop_, EventLoop::acquire());
  impl_->conn_worker_ = std::make_shared<DeadlineWorker>("virt-conn");
  {
    std::lock_guard lock(impl_->table_mu_);
    impl_->status_.uri = impl_->opts_.uri;
  }
  impl_->started_ = true;
  impl_->dispatch_ = std::thread([impl = impl_.get()] { impl->run(); });
  return Ok();
}

void DomainWatcher::stop() {
  if (!impl_->started_) return;
  {
    std::lock_guard lock(impl_->q_mu_);
    impl_->stopping_ = true;
    impl_->q_cv_.notify_all();
  }
  if (impl_->dispatch_.joinable()) impl_->dispatch_.join();
  {
    std::lock_guard lock(impl_->table_mu_);  // list_running_domains() may be reading it
    impl_->conn_worker_.reset();
  }
  impl_->loop_.reset();
  impl_->started_ = false;
}

uint64_t DomainWatcher::wait_synced(uint64_t after_count, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->table_mu_);
  impl_->table_cv_.wait_for(lock, timeout, [&] { return impl_->syncs_ > after_count; });
  return impl_->syncs_;
}

bool DomainWatcher::wait_probes_idle(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->table_mu_);
  return impl_->table_cv_.wait_for(lock, timeout, [&] {
    return std::none_of(impl_->slots_.begin(), impl_->slots_.end(),
                        [](const auto& kv) { return kv.second.probe_running; });
  });
}

uint64_t DomainWatcher::sync_count() const {
  std::lock_guard lock(impl_->table_mu_);
  return impl_->syncs_;
}

std::vector<DomainInfo> DomainWatcher::domains() const {
  std::lock_guard lock(impl_->table_mu_);
  return impl_->snapshot_locked();
}

std::optional<DomainInfo> DomainWatcher::domain(std::string_view uuid_or_name) const {
  std::lock_guard lock(impl_->table_mu_);
  std::string uuid = impl_->resolve_key_locked(uuid_or_name);
  if (uuid.empty()) return std::nullopt;
  return impl_->slots_.at(uuid).info;
}

ConnectionStatus DomainWatcher::connection() const {
  std::lock_guard lock(impl_->table_mu_);
  return impl_->status_;
}

PendingCall<std::string> DomainWatcher::qmp(std::string_view uuid_or_name, std::string command_json,
                                            std::chrono::milliseconds timeout) {
  return impl_->monitor_call(uuid_or_name, std::move(command_json), /*hmp=*/false, timeout);
}

PendingCall<std::string> DomainWatcher::hmp(std::string_view uuid_or_name, std::string command_line,
                                            std::chrono::milliseconds timeout) {
  return impl_->monitor_call(uuid_or_name, std::move(command_line), /*hmp=*/true, timeout);
}

introspect::HmpCommand DomainWatcher::hmp_command(std::string_view uuid_or_name, std::chrono::milliseconds timeout) {
  std::string key(uuid_or_name);
  return [this, key, timeout](std::string_view cmd) { return hmp(key, std::string(cmd), timeout).wait(); };
}

Result<std::vector<std::string>> DomainWatcher::list_running_domains(std::chrono::milliseconds timeout) {
  STALLMON_TRY(auto listed, impl_->list_domains(timeout));
  std::vector<std::string> names;
  for (const auto& l : listed) names.push_back(l.name);
  std::sort(names.begin(), names.end());
  return names;
}

void DomainWatcher::refresh(std::string_view uuid_or_name) { impl_->post(CmdRefresh{std::string(uuid_or_name)}); }

Result<DomainInfo> describe_domain(const WatcherOptions& options, std::string_view uuid_or_name) {
  std::string key(uuid_or_name);
  // Errors come back as values; libvirt's default handler would also print them to stderr.
  virSetErrorFunc(nullptr, [](void*, virErrorPtr) {});
  virConnectPtr c = virConnectOpenReadOnly(options.uri.c_str());
  if (!c) return libvirt_error("virConnectOpenReadOnly " + options.uri);
  std::unique_ptr<virConnect, int (*)(virConnectPtr)> conn(c, virConnectClose);
  // A uuid is 32 hex digits with or without dashes; anything else is a name (trying it as a
  // uuid would only make libvirt report "Invalid UUID").
  size_t hex = std::count_if(key.begin(), key.end(), [](char ch) { return std::isxdigit(static_cast<unsigned char>(ch)); });
  bool looks_uuid = hex == 32 && (key.size() == 32 || key.size() == 36);
  virDomainPtr dom = looks_uuid ? virDomainLookupByUUIDString(c, key.c_str()) : nullptr;
  if (!dom) {
    virResetLastError();
    dom = virDomainLookupByName(c, key.c_str());
  }
  if (!dom) return libvirt_error("no domain " + key);
  DomainInfo info;
  info.uuid = domain_uuid(dom);
  info.name = domain_name(dom);
  unsigned id = virDomainGetID(dom);
  info.id = id == static_cast<unsigned>(-1) ? -1 : static_cast<int>(id);
  int state = 0, reason = 0;
  if (virDomainGetState(dom, &state, &reason, 0) == 0) info.state = map_state(state);
  virDomainFree(dom);
  virResetLastError();
  if (info.id < 0) return Error(ErrorCode::kNotFound, "domain " + info.name + " is not running");
  std::tie(info.qemu_pid, info.pid_source) = find_qemu_pid(options, info.uuid, info.name);
  if (info.qemu_pid <= 0) return Error(ErrorCode::kNotFound, "domain " + info.name + ": no qemu process found");
  STALLMON_TRY(auto facts, fetch_facts(c, info.uuid));
  auto vcpus = vcpu_threads_without_monitor(options.proc_root, options.cgroup_root, info.qemu_pid,
                                            static_cast<unsigned>(facts.online_vcpus));
  if (vcpus.ok()) {
    info.vcpus = std::move(vcpus).value();
    info.vcpu_source = VcpuSource::kThreadNames;
  }
  std::string source;
  auto layout = derive_and_validate(options.proc_root, info.qemu_pid, facts.xml, source);
  if (layout.ok()) {
    info.ram_layout = std::make_shared<const std::vector<introspect::RamRange>>(std::move(layout).value());
    info.ram_layout_source = source;
  } else {
    info.ram_layout_error = layout.error().message;
  }
  return info;
}

}  // namespace stallmon::libvirt
