// SPDX-License-Identifier: Apache-2.0
#include "app.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <random>
#include <set>

#include "process_limits.h"
#include "logging.h"
#include "stallmon/introspect/ram_layout.h"

namespace stallmon::daemon {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

std::string hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

StepResult load_config(App& app) {
  auto c = load_configuration(app.options, &app.config_source);
  if (!c.ok()) return StepResult::exit(2, c.error().message);
  app.config = std::move(*c);
  app.set_effective_config(to_yaml(app.config));
  if (app.options.print_config) {
    std::fputs(app.effective_config().c_str(), stdout);
    return StepResult::exit(0);
  }
  if (app.options.check_config) {
    std::printf("configuration OK (%s)\n", app.config_source.empty() ? "defaults and flags" : app.config_source.c_str());
    return StepResult::exit(0);
  }
  return StepResult::next();
}

StepResult setup_logging_step(App& app) {
  auto r = setup_logging(app.config.log_target, app.config.log_level);
  if (!r.ok()) return StepResult::exit(2, r.error().message);
  app.logging_ready = true;
  return StepResult::next();
}

// Before anything opens a descriptor per watched thread.
StepResult raise_limits(App&) {
  auto r = raise_open_files_limit();
  if (!r.ok()) {
    spdlog::warn("open files limit: {} (sampling may fail past a few dozen domains)", r.error().to_string());
  } else if (r->soft != r->soft_before) {
    spdlog::info("open files limit raised from {} to {}", r->soft_before, r->soft);
  }
  if (r.ok() && r->soft < 65536) {
    spdlog::warn("open files limit is {}: the /proc sampler keeps up to 4 descriptors per watched thread; "
                 "set LimitNOFILE (deploy/stallmond.service) for more than {} 16-vCPU domains",
                 r->soft, r->soft / (4 * 24));
  }
  return StepResult::next();
}

// Blocked before any thread starts, so every thread inherits the mask and only the main thread
// receives SIGINT/SIGTERM/SIGHUP (in sigtimedwait), never a libvirt, gRPC or pipeline thread.
StepResult block_signals(App&) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return StepResult::exit(1, "pthread_sigmask failed");
  // A closed stdout (stallmond | head) must not kill the daemon.
  signal(SIGPIPE, SIG_IGN);
  return StepResult::next();
}

void create_watcher(App& app) {
  libvirt::WatcherOptions opts;
  opts.uri = app.config.libvirt_uri;
  opts.monitor_timeout = app.config.monitor_timeout;
  opts.use_monitor = app.config.use_monitor;
  // Opt-in only (libvirt.use_monitor): taken over HMP while the domain is healthy and cached.
  // By default the watcher derives the layout from the domain XML and /proc/PID/maps.
  if (opts.use_monitor) {
    opts.ram_layout_resolver = [](const introspect::HmpCommand& hmp) { return introspect::resolve_ram_layout(hmp); };
  }
  app.watcher = std::make_unique<libvirt::DomainWatcher>(std::move(opts));
}

StepResult create_monitor(App& app) {
  if (app.options.once) {  // --once lists domains only: no monitor
    create_watcher(app);
    return StepResult::next();
  }
  std::random_device rd;
  app.incarnation = (static_cast<uint64_t>(rd()) << 32 | rd()) ^
                    static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  if (app.incarnation == 0) app.incarnation = 1;
  auto thread_stats = select_thread_stats(app.config);
  if (!thread_stats.ok()) return StepResult::exit(1, thread_stats.error().message);
  spdlog::info("thread statistics: {} ({})", thread_stats->kind, thread_stats->reason);
  core::MonitorDependencies deps;
  deps.thread_stats = std::move(thread_stats).value();
  app.monitor = std::make_unique<core::StallMonitor>(to_monitor_config(app.config), std::move(deps));
  app.at_shutdown("stop monitor", [&app] { app.monitor->stop(); });
  // Constructed (not started) here so that the pointer gRPC threads read never changes.
  create_watcher(app);
  if (!app.config.domains.empty()) spdlog::info("watching only domains matching: {}", join(app.config.domains));
  return StepResult::next();
}

// The store's counters on /metrics (stallmon_store_*).
class StoreMetrics final : public alerting::MetricsContributor {
 public:
  explicit StoreMetrics(const store::FindingDb& db) : db_(db) {}
  void write_metrics(alerting::ExpositionWriter& w) const override {
    const auto s = db_.stats();
    w.family("stallmon_store_events_written_total", alerting::MetricType::kCounter,
             "Finding events committed to the finding store.");
    w.sample({}, static_cast<double>(s.events_written));
    w.family("stallmon_store_events_dropped_total", alerting::MetricType::kCounter,
             "Finding events never stored: the writer's queue was full (a slow disk) or a transaction failed.");
    w.sample({}, static_cast<double>(s.events_dropped + s.write_errors));
    w.family("stallmon_store_queue_length", alerting::MetricType::kGauge, "Finding events waiting for the store's writer.");
    w.sample({}, static_cast<double>(s.queue_length));
    w.family("stallmon_store_bytes", alerting::MetricType::kGauge,
             "Database pages in use, as of the last retention pass (store.max_size_mib bounds it).");
    w.sample({}, static_cast<double>(s.bytes_used));
    w.family("stallmon_store_incidents_written_total", alerting::MetricType::kCounter,
             "Incident bundle states committed to the finding store.");
    w.sample({}, static_cast<double>(s.incidents_written));
    w.family("stallmon_store_incidents_dropped_total", alerting::MetricType::kCounter,
             "Incident bundle states never stored: the queue was full, the bundle too big, or a transaction failed.");
    w.sample({}, static_cast<double>(s.incidents_dropped));
  }

 private:
  const store::FindingDb& db_;
};

// The incident recorder's counters on /metrics (stallmon_incident_*): what its bounds cost.
class IncidentMetrics final : public alerting::MetricsContributor {
 public:
  explicit IncidentMetrics(const diagnosis::IncidentRecorder& rec) : rec_(rec) {}
  void write_metrics(alerting::ExpositionWriter& w) const override {
    const auto s = rec_.stats();
    w.family("stallmon_incident_bundles_opened_total", alerting::MetricType::kCounter,
             "Incident bundles opened (one per critical finding).");
    w.sample({}, static_cast<double>(s.bundles_opened));
    w.family("stallmon_incident_bundles_refused_total", alerting::MetricType::kCounter,
             "Critical findings without a bundle: incidents.max_bundles were open at once.");
    w.sample({}, static_cast<double>(s.bundles_refused));
    w.family("stallmon_incident_bundles_evicted_total", alerting::MetricType::kCounter,
             "Completed bundles dropped from memory for room (the finding store keeps them).");
    w.sample({}, static_cast<double>(s.bundles_evicted));
    w.family("stallmon_incident_thinnings_total", alerting::MetricType::kCounter,
             "Times a bundle's lanes were halved to stay within incidents.max_bundle_kib.");
    w.sample({}, static_cast<double>(s.thinnings));
    w.family("stallmon_incident_bytes", alerting::MetricType::kGauge,
             "Estimated memory of the bundles held and the recorder's guest rings.");
    w.sample({}, static_cast<double>(s.bytes));
  }

 private:
  const diagnosis::IncidentRecorder& rec_;
};

// After the monitor, before anything can tick or serve: the previous run's findings go into the
// engine (revisions and ids go on), and the store listens from here on. A store that cannot be
// opened or read is logged and the daemon runs without persistence.
StepResult open_store(App& app) {
  if (app.options.once) return StepResult::next();
  const std::string path = store_path(app.config);
  if (path.empty()) {
    spdlog::info("finding store: off ({}); findings live in memory only",
                 app.config.store_enabled ? "no state_dir" : "store.enabled is false");
    return StepResult::next();
  }
  std::error_code ec;
  std::filesystem::create_directories(app.config.state_dir, ec);  // systemd's StateDirectory= made it 0755
  store::StoreOptions so;
  so.path = path;
  so.max_age = app.config.store_max_age;
  so.max_bytes = static_cast<uint64_t>(app.config.store_max_size_mib) << 20;
  const auto& dc = app.monitor->engine().config();
  so.max_events = dc.max_event_log;  // what a restart can serve
  auto db = store::FindingDb::open(so, app.store_clock);
  if (!db.ok()) {
    spdlog::error("finding store: {}; running without persistence", db.error().to_string());
    return StepResult::next();
  }
  auto loaded = (*db)->load(dc.max_resolved_history, dc.max_event_log);
  if (!loaded.ok()) {
    spdlog::error("finding store {}: {}; running without persistence", path, loaded.error().to_string());
    return StepResult::next();
  }
  if (loaded->rows_skipped > 0) spdlog::warn("finding store {}: {} rows did not decode and were skipped", path, loaded->rows_skipped);
  const auto& f = loaded->findings;
  spdlog::info("finding store {}: {} resolved, {} active (re-evaluated at their domain's first ticks), {} events, revision {}; {}",
               path, f.resolved.size(), f.active.size(), f.events.size(), f.revision,
               loaded->resumable ? "WatchFindings clients resume across this restart"
                                 : "WatchFindings clients resynchronise (" + loaded->why_not_resumable + ")");
  if (auto r = app.monitor->engine().restore(std::move(loaded->findings)); !r.ok()) {
    spdlog::error("finding store {}: {}; running without persistence", path, r.error().to_string());
    return StepResult::next();
  }
  app.store = std::move(*db);
  app.incarnation = app.store->incarnation();
  // Bundles of findings still active continue (restored before the first event).
  std::size_t skipped = 0;
  auto bundles = app.store->load_open_incidents(static_cast<std::size_t>(app.config.incidents_max_bundles), &skipped);
  if (bundles.ok()) {
    if (skipped > 0) spdlog::warn("finding store {}: {} incident bundles did not decode and were skipped", path, skipped);
    app.monitor->incidents().restore(std::move(bundles).value());
  } else {
    spdlog::warn("finding store {}: incident bundles not restored: {}", path, bundles.error().to_string());
  }
  app.monitor->incidents().set_sink(app.store.get());
  app.monitor->add_finding_listener(app.store.get());
  app.store->start();
  // Runs after the gRPC server stopped: the monitor stops first, so that the store has every
  // event of this run before it marks the file cleanly closed ("stop monitor" is then a no-op).
  app.at_shutdown("close finding store", [&app] {
    app.monitor->stop();
    app.monitor->remove_finding_listener(app.store.get());
    // The open bundles as they are now: the next run continues them.
    app.monitor->incidents().emit_open();
    app.monitor->incidents().set_sink(nullptr);
    app.store->stop();
  });
  return StepResult::next();
}

// Before the watcher: the API (health, GetAgentInfo) answers while libvirt is still connecting,
// and a second daemon fails here, before touching libvirt.
StepResult start_server(App& app) {
  if (app.options.once) return StepResult::next();
  const std::string host = hostname();
  const std::string version = STALLMON_VERSION;
  // Values, not references into app.config: a reload may write it while gRPC threads read.
  const auto max_age = app.config.watchdog_max_tick_age;
  core::StallMonitor* monitor = app.monitor.get();
  app.backend = std::make_unique<server::MonitorBackend>(*app.monitor, app.watcher.get(), [&app, host, version, max_age, monitor] {
    server::AgentStatus s;
    s.version = version;
    s.hostname = host;
    s.effective_config = app.effective_config();
    std::string why;
    s.sampling_alive = sampling_alive(monitor->domains(), std::chrono::system_clock::now(), max_age, &why);
    return s;
  });
  if (app.store) {
    // Bundles evicted from memory are read back from the store (the server stops before it).
    app.backend->set_incident_store([&app](const std::string& id) { return app.store->incident(id); });
  }
  app.server = std::make_unique<server::GrpcServer>(*app.backend, app.config.server, app.incarnation);
  auto r = app.server->start();
  if (!r.ok()) return StepResult::exit(1, r.error().message);
  // The server (and its streams) stops before the monitor it reads from.
  app.at_shutdown("stop gRPC server", [&app] { app.server->shutdown(); });
  std::string where;
  if (!app.config.server.unix_socket.empty()) where = "unix:" + app.config.server.unix_socket;
  if (!app.config.server.tcp_listen.empty()) {
    where += (where.empty() ? "" : " and ") + app.config.server.tcp_listen + " (mutual TLS, port " +
             std::to_string(app.server->tcp_port()) + ")";
  }
  spdlog::info("gRPC API stallmon.v1 on {}", where);
  return StepResult::next();
}

// After the monitor exists, before the watcher starts: the pusher is subscribed before any
// finding can open, and a /metrics address in use fails start-up before libvirt is touched.
StepResult start_alerting(App& app) {
  if (app.options.once) return StepResult::next();
  alerting::AlertingConfig ac;
  ac.metrics_listen = app.config.metrics_listen;
  ac.metrics.max_domains = static_cast<size_t>(app.config.metrics_max_domains);
  ac.metrics.version = STALLMON_VERSION;
  ac.alertmanager_urls = app.config.alertmanager_urls;
  ac.pusher.resend_interval = app.config.alertmanager_resend_interval;
  auto svc = alerting::start(*app.monitor, ac);
  if (!svc.ok()) return StepResult::exit(1, svc.error().to_string());
  app.alerting = std::move(svc.value());
  if (app.store) {
    app.store_metrics = std::make_unique<StoreMetrics>(*app.store);
    app.alerting->collector().add_contributor(app.store_metrics.get());
  }
  app.incident_metrics = std::make_unique<IncidentMetrics>(app.monitor->incidents());
  app.alerting->collector().add_contributor(app.incident_metrics.get());
  // Stops after the watcher (no more ticks) and before the monitor it reads.
  app.at_shutdown("stop metrics and alerting", [&app] { app.alerting->stop(); });
  if (!ac.metrics_listen.empty()) {
    spdlog::info("Prometheus metrics on http://{}/metrics (port {})", ac.metrics_listen,
                 app.alerting->metrics_port());
  }
  for (const auto& u : ac.alertmanager_urls) spdlog::info("pushing findings to Alertmanager {}", u);
  return StepResult::next();
}

StepResult start_watcher(App& app) {
  if (app.options.once) {
    app.printer = std::make_unique<DomainTablePrinter>();
    app.watcher->add_observer(app.printer.get());
  } else {
    app.monitor->attach(*app.watcher);
  }
  auto r = app.watcher->start();
  if (!r.ok()) return StepResult::exit(1, r.error().to_string());
  // Registered last, so it runs first: libvirt's callbacks into the monitor stop before the
  // monitor (and the server reading it) go away.
  app.at_shutdown("stop libvirt watcher", [&app] { app.watcher->stop(); });
  spdlog::info("stallmond {}: watching {}", STALLMON_VERSION, app.config.libvirt_uri);
  return StepResult::next();
}

// --once: wait for the first discovery and the vCPU probes, print the table and exit.
StepResult print_once(App& app) {
  if (!app.options.once) return StepResult::next();
  auto deadline = steady_clock::now() + milliseconds(app.options.once_timeout_ms);
  if (app.watcher->wait_synced(0, milliseconds(app.options.once_timeout_ms)) == 0) {
    auto st = app.watcher->connection();
    return StepResult::exit(1, "no domain list from " + st.uri + ": " +
                                   (st.reason.empty() ? std::string("timed out") : st.reason));
  }
  auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
  if (!app.watcher->wait_probes_idle(std::max(left, milliseconds(0)))) {
    spdlog::warn("some domains are still being probed; printing what is known");
  }
  app.printer->print(*app.watcher, stdout);
  return StepResult::exit(0);
}

std::string status_line(App& app) {
  auto ds = app.monitor->domains();
  size_t findings = 0;
  for (const auto& d : ds) findings += d.active_findings;
  return "watching " + std::to_string(ds.size()) + " domain" + (ds.size() == 1 ? "" : "s") + ", " +
         std::to_string(findings) + " active finding" + (findings == 1 ? "" : "s");
}

StepResult notify_ready(App& app) {
  app.notifier.ready(status_line(app));
  if (app.notifier.enabled()) {
    auto wd = app.notifier.watchdog_timeout();
    spdlog::info("systemd: READY=1 sent{}", wd ? ", watchdog every " + format_duration(*wd / 2) : "");
  }
  app.at_shutdown("notify stopping", [&app] { app.notifier.stopping(); });
  return StepResult::next();
}

void reload(App& app) {
  app.notifier.reloading();
  std::string source;
  auto c = load_configuration(app.options, &source);
  if (!c.ok()) {
    spdlog::error("SIGHUP: configuration not reloaded: {}", c.error().message);
    app.notifier.reloaded(status_line(app));
    return;
  }
  auto plan = plan_reload(app.config, *c);
  auto applies = [&](const char* key) { return std::find(plan.applied.begin(), plan.applied.end(), key) != plan.applied.end(); };
  if (applies("logging.level")) {
    if (auto r = set_log_level(c->log_level); r.ok()) app.config.log_level = c->log_level;
  }
  if (applies("store.max_age") || applies("store.max_size_mib")) {
    app.config.store_max_age = c->store_max_age;
    app.config.store_max_size_mib = c->store_max_size_mib;
    // Enforced from the writer's next retention pass on (at most 5 min later).
    if (app.store) app.store->set_retention(c->store_max_age, static_cast<uint64_t>(c->store_max_size_mib) << 20);
  }
  app.set_effective_config(to_yaml(app.config));
  spdlog::info("SIGHUP: reloaded {}{}{}", source.empty() ? "(no config file)" : source,
               plan.applied.empty() ? "" : "; applied: " + join(plan.applied),
               plan.restart_needed.empty() ? "" : "; changed but needing a restart: " + join(plan.restart_needed));
  app.notifier.reloaded(status_line(app));
}

// Main loop: signals, the systemd watchdog keep-alive (only while sampling is alive), the health
// status, and a log line when the set of watched domains changes.
StepResult run_until_signal(App& app) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  const auto keepalive = app.notifier.keepalive_interval();
  auto period = milliseconds(1000);
  if (keepalive) period = std::min(period, std::max(milliseconds(10), std::chrono::duration_cast<milliseconds>(*keepalive)));
  auto last_keepalive = steady_clock::time_point{};
  bool serving = true;
  uint64_t store_lost = 0;  // store events dropped or failed, as last logged
  auto store_logged = steady_clock::time_point{};
  std::set<std::string> watched;
  for (;;) {
    timespec ts{static_cast<time_t>(period.count() / 1000), static_cast<long>((period.count() % 1000) * 1'000'000)};
    siginfo_t info;
    int sig = sigtimedwait(&set, &info, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      spdlog::info("{}: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
      return StepResult::exit(0);
    }
    if (sig == SIGHUP) reload(app);
    // Restored findings of domains that never came back (shut down while we were away).
    (void)app.monitor->engine().expire_restored();
    if (app.store) {
      const auto st = app.store->stats();
      // Logged when it grows, at most once a minute (a slow disk drops continuously).
      if (st.events_dropped + st.write_errors != store_lost && steady_clock::now() - store_logged >= std::chrono::minutes(1)) {
        store_lost = st.events_dropped + st.write_errors;
        store_logged = steady_clock::now();
        spdlog::warn("finding store: {} events not stored so far ({} dropped from a full queue, {} in failed writes{}{})",
                     store_lost, st.events_dropped, st.write_errors, st.last_error.empty() ? "" : ": ", st.last_error);
      }
    }

    auto domains = app.monitor->domains();
    std::string why;
    bool alive = sampling_alive(domains, std::chrono::system_clock::now(), app.config.watchdog_max_tick_age, &why);
    if (alive != serving) {
      if (alive) {
        spdlog::info("sampling alive again: health SERVING");
      } else {
        spdlog::error("sampling stalled ({}): health NOT_SERVING, systemd watchdog keep-alive withheld", why);
      }
      app.server->set_serving(alive);
      serving = alive;
    }
    if (alive && keepalive && steady_clock::now() - last_keepalive >= *keepalive) {
      app.notifier.watchdog();
      last_keepalive = steady_clock::now();
    }
    std::set<std::string> now_watched;
    for (const auto& d : domains) now_watched.insert(d.name);
    if (now_watched != watched) {
      watched = std::move(now_watched);
      spdlog::info("watching {} domain{}: {}", watched.size(), watched.size() == 1 ? "" : "s",
                   join(std::vector<std::string>(watched.begin(), watched.end())));
      app.notifier.status(status_line(app));
    }
  }
}

}  // namespace

std::string App::effective_config() const {
  std::lock_guard l(mu_);
  return effective_yaml_;
}

void App::set_effective_config(std::string yaml) {
  std::lock_guard l(mu_);
  effective_yaml_ = std::move(yaml);
}

void App::at_shutdown(std::string what, std::function<void()> action) {
  shutdown_.emplace_back(std::move(what), std::move(action));
}

void App::run_shutdown() {
  while (!shutdown_.empty()) {
    auto [what, action] = std::move(shutdown_.back());
    shutdown_.pop_back();
    spdlog::debug("shutdown: {}", what);
    action();
  }
}

Result<DaemonConfig> load_configuration(const Options& options, std::string* source) {
  DaemonConfig c;
  source->clear();
  std::string path = options.config_path;
  bool explicit_path = !path.empty();
  if (!explicit_path) {
    struct stat st{};
    if (::stat(kDefaultConfigPath, &st) == 0) path = kDefaultConfigPath;
  }
  if (!path.empty()) {
    auto r = load_config_file(path, c);
    if (!r.ok()) return r.error();
    c = std::move(*r);
    *source = path;
  }
  for (const auto& o : options.overrides) o(c);
  if (auto v = validate(c); !v.ok()) return v.error();
  return c;
}

Result<host::StatSourceChoice> select_thread_stats(const DaemonConfig& config, const StatSourceChooser& choose) {
  host::StatSourceOptions opts;
  opts.allow_bpf = config.thread_stats != "proc";
  host::StatSourceChoice c = choose(opts);
  if (config.thread_stats == "proc") {
    c.reason = "/proc per thread: host.thread_stats is proc";
  } else if (config.thread_stats == "bpf" && c.source == nullptr) {
    return Error(ErrorCode::kUnsupported,
                 "host.thread_stats is bpf but the BPF task iterator is unavailable (" + c.reason +
                     "); use auto to fall back to /proc");
  }
  return c;
}

bool sampling_alive(const std::vector<core::DomainSummary>& domains, diagnosis::Timestamp now,
                    std::chrono::nanoseconds max_age, std::string* why) {
  for (const auto& d : domains) {
    if (d.process_gone || d.state != libvirt::DomainRunState::kRunning) continue;
    auto last = d.last_tick.value_or(d.watched_since);
    if (now - last > max_age) {
      if (why) {
        *why = "domain " + d.name + " last ticked " +
               std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now - last).count()) + " s ago";
      }
      return false;
    }
  }
  return true;
}

const std::vector<Step>& startup_steps() {
  static const std::vector<Step> steps = {
      {"load configuration", load_config},
      {"setup logging", setup_logging_step},
      {"raise limits", raise_limits},
      {"block signals", block_signals},
      {"create monitor", create_monitor},
      {"open finding store", open_store},
      {"start gRPC server", start_server},
      {"start metrics and alerting", start_alerting},
      {"start libvirt watcher", start_watcher},
      {"print once", print_once},
      {"notify systemd", notify_ready},
      {"run until signal", run_until_signal},
  };
  return steps;
}

int run(App& app) {
  StepResult result;
  for (const auto& step : startup_steps()) {
    result = step.run(app);
    if (result.kind == StepResult::kExit) {
      if (result.exit_code != 0) {
        // Before "setup logging" (configuration errors) spdlog still has its stdout default.
        if (app.logging_ready) {
          spdlog::error("{}: {}", step.name, result.error);
        } else {
          std::fprintf(stderr, "stallmond: %s: %s\n", step.name, result.error.c_str());
        }
      }
      break;
    }
  }
  // Shutdown in reverse order of start-up: STOPPING=1, libvirt watcher, gRPC server (health
  // NOT_SERVING, streams end), monitor.
  app.run_shutdown();
  if (result.exit_code == 0 && !app.options.once && !app.options.print_config && !app.options.check_config) {
    spdlog::info("stopped");
  }
  return result.exit_code;
}

}  // namespace stallmon::daemon
