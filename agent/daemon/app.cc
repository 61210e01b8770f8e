// SPDX-License-Identifier: Apache-2.0
#include "app.h"

#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>

#include "domain_table.h"
#include "stallmon/introspect/ram_layout.h"

namespace stallmon::daemon {
namespace {

using std::chrono::milliseconds;

StepResult setup_logging(App& app) {
  auto logger = spdlog::stderr_color_mt("stallmond");
  spdlog::set_default_logger(logger);
  auto level = spdlog::level::from_str(app.options.log_level);
  if (level == spdlog::level::off && app.options.log_level != "off") {
    return StepResult::exit(2, "unknown --log-level '" + app.options.log_level + "'");
  }
  spdlog::set_level(level);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  return StepResult::next();
}

// Blocked before any thread starts, so every thread inherits the mask and only the main thread
// receives SIGINT/SIGTERM (in sigtimedwait), never a libvirt or worker thread.
StepResult block_signals(App&) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return StepResult::exit(1, "pthread_sigmask failed");
  // A closed stdout (stallmond | head) must not kill the daemon.
  signal(SIGPIPE, SIG_IGN);
  return StepResult::next();
}

StepResult start_watcher(App& app) {
  libvirt::WatcherOptions opts;
  opts.uri = app.options.connect_uri;
  opts.monitor_timeout = milliseconds(app.options.monitor_timeout_ms);
  // Taken while the domain is healthy and cached by the watcher: introspection later reads guest
  // RAM through the qemu process even when the monitor hangs.
  opts.ram_layout_resolver = [](const introspect::HmpCommand& hmp) { return introspect::resolve_ram_layout(hmp); };
  app.watcher = std::make_unique<libvirt::DomainWatcher>(std::move(opts));
  app.printer = std::make_unique<DomainTablePrinter>();
  app.watcher->add_observer(app.printer.get());
  auto r = app.watcher->start();
  if (!r.ok()) return StepResult::exit(1, r.error().to_string());
  spdlog::info("stallmond {}: watching {}", STALLMON_VERSION, app.options.connect_uri);
  return StepResult::next();
}

// --once: wait for the first discovery and the vCPU probes, print the table and exit.
StepResult print_once(App& app) {
  if (!app.options.once) return StepResult::next();
  auto deadline = std::chrono::steady_clock::now() + milliseconds(app.options.once_timeout_ms);
  if (app.watcher->wait_synced(0, milliseconds(app.options.once_timeout_ms)) == 0) {
    auto st = app.watcher->connection();
    return StepResult::exit(1, "no domain list from " + st.uri + ": " +
                                   (st.reason.empty() ? std::string("timed out") : st.reason));
  }
  auto left = std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
  if (!app.watcher->wait_probes_idle(std::max(left, milliseconds(0)))) {
    spdlog::warn("some domains are still being probed; printing what is known");
  }
  app.printer->print(*app.watcher, stdout);
  return StepResult::exit(0);
}

// Foreground loop: prints the table when it changed, until SIGINT/SIGTERM.
StepResult run_until_signal(App& app) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  for (;;) {
    // Let a burst of changes (sync, then the QMP answers) settle into one print.
    timespec ts{0, 300 * 1000 * 1000};
    siginfo_t info;
    int sig = sigtimedwait(&set, &info, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      spdlog::info("{}: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
      return StepResult::exit(0);
    }
    app.printer->print_if_dirty(*app.watcher, stdout);
  }
}

}  // namespace

const std::vector<Step>& startup_steps() {
  static const std::vector<Step> steps = {
      {"setup logging", setup_logging},
      {"block signals", block_signals},
      {"start libvirt watcher", start_watcher},
      {"print once", print_once},
      {"run until signal", run_until_signal},
  };
  return steps;
}

int run(App& app) {
  StepResult result;
  for (const auto& step : startup_steps()) {
    result = step.run(app);
    if (result.kind == StepResult::kExit) {
      if (result.exit_code != 0) spdlog::error("{}: {}", step.name, result.error);
      break;
    }
  }
  // Shutdown in reverse order of start-up.
  if (app.watcher) app.watcher->stop();
  return result.exit_code;
}

}  // namespace stallmon::daemon
