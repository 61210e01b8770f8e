// SPDX-License-Identifier: Apache-2.0
// stallmond: the hypervisor-side vCPU stall monitor daemon. main() only parses the command line;
// app.cc runs the start-up steps. Flags override the config file (see deploy/stallmond.yaml).
#include <CLI/CLI.hpp>

#include "app.h"

namespace {

using stallmon::daemon::DaemonConfig;

// A flag that sets one configuration value: recorded as an override, applied over the file at
// start-up and again at every SIGHUP reload.
template <typename T, typename F>
CLI::Option* add_override(CLI::App& cli, stallmon::daemon::Options& o, const std::string& name, F set,
                          const std::string& help) {
  return cli.add_option_function<T>(
      name, [&o, set](const T& v) { o.overrides.push_back([set, v](DaemonConfig& c) { set(c, v); }); }, help);
}

}  // namespace

int main(int argc, char** argv) {
  stallmon::daemon::App app;
  auto& o = app.options;
  CLI::App cli{"stallmond: watches the vCPU threads of libvirt/QEMU guests and explains their stalls"};
  cli.add_option("--config", o.config_path,
                 std::string("YAML configuration (default: ") + stallmon::daemon::kDefaultConfigPath + " if it exists)");
  add_override<std::string>(cli, o, "-c,--connect", [](DaemonConfig& c, const std::string& v) { c.libvirt_uri = v; },
                            "libvirt URI (libvirt.uri)");
  add_override<std::string>(cli, o, "--log-level", [](DaemonConfig& c, const std::string& v) { c.log_level = v; },
                            "trace, debug, info, warn, error, critical or off (logging.level)");
  add_override<std::string>(cli, o, "--log-target", [](DaemonConfig& c, const std::string& v) { c.log_target = v; },
                            "stderr or journald (logging.target)");
  add_override<std::string>(cli, o, "--socket", [](DaemonConfig& c, const std::string& v) { c.server.unix_socket = v; },
                            "unix socket of the gRPC API; \"\" for none (server.unix_socket)");
  add_override<std::string>(cli, o, "--tcp-listen", [](DaemonConfig& c, const std::string& v) { c.server.tcp_listen = v; },
                            "HOST:PORT for gRPC over mutual TLS (server.tcp.listen)");
  add_override<std::string>(cli, o, "--tls-cert", [](DaemonConfig& c, const std::string& v) { c.server.tls_cert_file = v; },
                            "server certificate PEM (server.tcp.tls_cert)");
  add_override<std::string>(cli, o, "--tls-key", [](DaemonConfig& c, const std::string& v) { c.server.tls_key_file = v; },
                            "server key PEM (server.tcp.tls_key)");
  add_override<std::string>(cli, o, "--tls-client-ca",
                            [](DaemonConfig& c, const std::string& v) { c.server.tls_client_ca_file = v; },
                            "CA for client certificates (server.tcp.tls_client_ca)");
  add_override<std::vector<std::string>>(
      cli, o, "--domain", [](DaemonConfig& c, const std::vector<std::string>& v) { c.domains = v; },
      "watch only these domains: names, uuids or globs, repeatable (domains.include)");
  add_override<int>(cli, o, "--monitor-timeout-ms",
                    [](DaemonConfig& c, int v) { c.monitor_timeout = std::chrono::milliseconds(v); },
                    "deadline of one QEMU monitor command (libvirt.monitor_timeout)")
      ->check(CLI::Range(100, 600000));
  add_override<std::string>(cli, o, "--metrics-listen", [](DaemonConfig& c, const std::string& v) { c.metrics_listen = v; },
                            "HOST:PORT of the Prometheus /metrics endpoint; \"\" for none (metrics.listen)");
  add_override<std::vector<std::string>>(
      cli, o, "--alertmanager-url", [](DaemonConfig& c, const std::vector<std::string>& v) { c.alertmanager_urls = v; },
      "push findings to this Alertmanager (http://HOST:PORT), repeatable (alertmanager.urls)");
  add_override<std::string>(cli, o, "--state-dir", [](DaemonConfig& c, const std::string& v) { c.state_dir = v; },
                            "where each guest's last kernel location is kept; \"\" for nowhere (state_dir)");
  add_override<int>(cli, o, "--workers", [](DaemonConfig& c, int v) { c.workers = v; },
                    "tick worker threads; 0: CPUs allowed, at most 2 (execution.workers)")
      ->check(CLI::Range(0, 64));
  add_override<std::string>(cli, o, "--thread-stats", [](DaemonConfig& c, const std::string& v) { c.thread_stats = v; },
                            "per-thread statistics from auto, bpf or proc (host.thread_stats)")
      ->check(CLI::IsMember({"auto", "bpf", "proc"}));
  cli.add_flag_function(
      "--no-introspection",
      [&o](int64_t) { o.overrides.push_back([](DaemonConfig& c) { c.introspection = false; }); },
      "host-side sampling only: never read guest memory (sampling.introspection: false)");
  cli.add_flag("--once", o.once, "print the running domains and their vCPU threads, then exit");
  cli.add_option("--once-timeout-ms", o.once_timeout_ms, "--once: how long to wait for libvirtd")
      ->capture_default_str()
      ->check(CLI::Range(100, 600000));
  cli.add_flag("--print-config", o.print_config, "print the effective configuration (YAML) and exit");
  cli.add_flag("--check-config", o.check_config, "validate the configuration and exit");
  CLI11_PARSE(cli, argc, argv);
  return stallmon::daemon::run(app);
}
