// SPDX-License-Identifier: Apache-2.0
// stallmond's start-up as an ordered list of steps (Falco's app/ style): each step returns a
// StepResult that says whether to go on, stop successfully, or fail. A part that needs its own
// start-up (metrics/alerting, ...) adds one step to startup_steps() and registers its stop
// action with App::at_shutdown(); main() never grows.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "domain_table.h"
#include "stallmon/alerting/alerting.h"
#include "stallmon/core/stall_monitor.h"
#include "stallmon/host/thread_stat_source.h"
#include "stallmon/libvirt/domain_watcher.h"
#include "stallmon/server/backend.h"
#include "stallmon/server/server.h"
#include "stallmon/store/finding_db.h"
#include "systemd.h"

namespace stallmon::daemon {

// What the command line asked for, besides configuration values.
struct Options {
  std::string config_path;       // --config; empty: kDefaultConfigPath if it exists
  bool once = false;             // print the domain table and exit
  int once_timeout_ms = 20000;   // --once: how long to wait for libvirtd and the first discovery
  bool print_config = false;     // print the effective configuration as YAML and exit
  bool check_config = false;     // validate the configuration and exit
  // Flag values, applied in order over the config file at start-up and at every reload (so a
  // flag keeps winning over the file).
  std::vector<std::function<void(DaemonConfig&)>> overrides;
};

struct StepResult {
  enum Kind { kContinue, kExit } kind = kContinue;
  int exit_code = 0;
  std::string error;  // set when exit_code != 0

  static StepResult next() { return {}; }
  static StepResult exit(int code, std::string why = {}) { return {kExit, code, std::move(why)}; }
};

// Everything the steps share.
struct App {
  Options options;
  DaemonConfig config;            // the running configuration
  std::string config_source;      // the file it was read from, or "" (defaults and flags only)
  uint64_t incarnation = 0;
  SystemdNotifier notifier;
  bool logging_ready = false;

  std::unique_ptr<core::StallMonitor> monitor;
  // The persistent finding store (store.*); null when off or unusable (the daemon runs on
  // without it). Its clock dates retention.
  diagnosis::SteadyWallClock store_clock;
  std::unique_ptr<store::FindingDb> store;
  std::unique_ptr<alerting::MetricsContributor> store_metrics;  // outlives the collector
  std::unique_ptr<alerting::MetricsContributor> incident_metrics;  // likewise
  std::unique_ptr<libvirt::DomainWatcher> watcher;
  std::unique_ptr<server::MonitorBackend> backend;
  std::unique_ptr<server::GrpcServer> server;
  std::unique_ptr<alerting::AlertingService> alerting;  // /metrics and Alertmanager push
  std::unique_ptr<DomainTablePrinter> printer;  // --once

  // The effective configuration as YAML, read by gRPC threads (GetAgentInfo) while a reload
  // may replace it.
  std::string effective_config() const;
  void set_effective_config(std::string yaml);

  // Registers a stop action; run() calls them in reverse order of registration after the steps.
  void at_shutdown(std::string what, std::function<void()> action);
  void run_shutdown();

 private:
  mutable std::mutex mu_;
  std::string effective_yaml_;
  std::vector<std::pair<std::string, std::function<void()>>> shutdown_;
};

struct Step {
  const char* name;
  StepResult (*run)(App&);
};

// The steps in order; main() runs them until one says exit.
const std::vector<Step>& startup_steps();

// Runs every step, then the shutdown actions. Returns the process exit code.
int run(App& app);

// Loads the configuration: defaults, then the file (options.config_path, or the default path if
// it exists), then the flag overrides; validated. `source` receives the file used ("" if none).
Result<DaemonConfig> load_configuration(const Options& options, std::string* source);

// host.thread_stats → the source every domain samples its threads with, from `choose` (the
// BPF task iterator or /proc; host::choose_thread_stat_source, injectable for tests). "bpf"
// with the BPF source unavailable is an error (kUnsupported) saying why.
using StatSourceChooser = std::function<host::StatSourceChoice(const host::StatSourceOptions&)>;
Result<host::StatSourceChoice> select_thread_stats(const DaemonConfig& config,
                                                   const StatSourceChooser& choose = host::choose_thread_stat_source);

// Whether sampling is alive: every running domain (qemu process present) ticked within
// max_age (a domain watched for less than max_age counts as alive). `why` names a stale one.
bool sampling_alive(const std::vector<core::DomainSummary>& domains, diagnosis::Timestamp now,
                    std::chrono::nanoseconds max_age, std::string* why);

}  // namespace stallmon::daemon
