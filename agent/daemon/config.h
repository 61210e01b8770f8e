// SPDX-License-Identifier: Apache-2.0
// stallmond's configuration: defaults, the YAML file (deploy/stallmond.yaml lists every key with
// its default), command-line flags that override the file, and what a SIGHUP reload may change
// while running.
//
// Precedence: built-in defaults < config file < flags. A reload re-reads the file and re-applies
// the same flags, so a flag keeps winning over the file across reloads.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/base/result.h"
#include "stallmon/core/monitor_config.h"
#include "stallmon/server/server.h"

namespace stallmon::daemon {

inline constexpr const char* kDefaultConfigPath = "/etc/stallmon/stallmond.yaml";

struct DaemonConfig {
  // libvirt
  std::string libvirt_uri = "qemu:///system";
  std::chrono::milliseconds monitor_timeout{3000};
  // QEMU monitor commands (libvirt taints each domain "custom-monitor") and a read-write
  // connection. Off: read-only connection, layout from XML + /proc (agent/libvirt/README.md).
  bool use_monitor = false;
  // domains: names, uuids or shell globs ("web-*"); empty: every running domain
  std::vector<std::string> domains;
  // sampling
  std::chrono::nanoseconds sample_interval{std::chrono::milliseconds(100)};
  std::chrono::nanoseconds baseline_snapshot_interval{std::chrono::milliseconds(100)};
  bool introspection = true;
  std::chrono::seconds history{600};  // per-vCPU sample history kept in memory
  // The newest part of it at full rate; older samples thinned to one per second.
  std::chrono::seconds history_full_resolution{60};
  bool read_host_stacks = true;
  // host.thread_stats: where per-thread statistics come from. "auto": the BPF task iterator
  // when built in, permitted (root) and its start-up self-check passes, else /proc (the reason
  // is logged and reported); "bpf": the same but unavailable is a start-up error; "proc".
  std::string thread_stats = "auto";
  // diagnosis thresholds (agent/diagnosis/README.md explains each)
  std::chrono::nanoseconds host_blocked_min{std::chrono::milliseconds(500)};
  double starved_fraction = 0.8;
  std::chrono::nanoseconds ipi_stall_min{std::chrono::milliseconds(500)};
  std::chrono::nanoseconds idle_pending_min{std::chrono::milliseconds(500)};
  double softlockup_imminent_fraction = 0.5;
  // server
  server::ServerOptions server;
  // metrics and alerting (agent/alerting/README.md): Prometheus /metrics, "" = off; loopback by
  // default because the metrics name every guest on the host
  std::string metrics_listen = "127.0.0.1:9910";
  int metrics_max_domains = 64;  // domains with per-domain series; the rest are only counted
  std::vector<std::string> alertmanager_urls;  // Alertmanager base URLs (http://); empty = no push
  std::chrono::nanoseconds alertmanager_resend_interval{std::chrono::seconds(30)};
  // logging
  std::string log_level = "info";    // trace, debug, info, warn, error, critical, off
  std::string log_target = "stderr"; // stderr or journald
  // systemd watchdog: WATCHDOG=1 is sent only while every watched domain ticked this recently
  std::chrono::seconds watchdog_max_tick_age{30};
  // execution, discovery, introspection (agent/core/README.md, "Pipeline shape")
  int workers = 0;                   // tick workers; 0: CPUs allowed, at most 2
  int discovery_max_concurrent = 1;  // discoveries (RAM scans) at once, all domains
  std::chrono::nanoseconds no_kernel_retry_max{std::chrono::hours(4)};
  std::chrono::nanoseconds read_deadline{std::chrono::milliseconds(250)};
  int memory_budget_mib = 64;  // per domain: guest-sized symbols, types, tables, buffers
  // Types for guests without BTF (introspect/README.md, "Type profiles"): <profile_dir>/<BUILD-ID>.profile,
  // then the vmlinux with that BUILD-ID under debug_dir. "" skips a step. Also System.maps for
  // kernels without kallsyms in VMCOREINFO: <BUILD-ID>.System.map, <OSRELEASE>.System.map.
  std::string profile_dir;
  std::string debug_dir = "/usr/lib/debug";
  bool ignore_guest_btf = false;  // acceptance runs: types from the profile even when the guest has BTF
  std::string state_dir = "/var/lib/stallmon";  // hints/<uuid>: where each guest's kernel was
  // The persistent finding store (agent/store/README.md): state_dir/findings.db. Retention by
  // age and by size (pages in use), applied at start and every 5 min; a reload applies both.
  bool store_enabled = true;
  std::chrono::nanoseconds store_max_age{std::chrono::hours(24 * 14)};
  int store_max_size_mib = 256;
  // Incident bundles of critical findings (agent/diagnosis/README.md, "Incident bundles"):
  // history from `lookback` before onset to resolution, bounded per bundle and in number.
  bool incidents_enabled = true;
  std::chrono::nanoseconds incidents_lookback{std::chrono::seconds(60)};
  int incidents_max_bundle_kib = 256;
  int incidents_max_bundles = 32;
};

// state_dir/findings.db, or "" when the store is off (store.enabled false or no state_dir).
std::string store_path(const DaemonConfig& config);

// Loads `path` over `base` (keys absent from the file keep base's value). Unknown keys are an
// error: a typo must not silently leave a default in place. kNotFound if the file is missing.
Result<DaemonConfig> load_config_file(const std::string& path, DaemonConfig base = {});
// Parses YAML text the same way (tests, --check-config).
Result<DaemonConfig> parse_config(const std::string& yaml, DaemonConfig base = {});

// The configuration as YAML in the file's own format (GetAgentInfo.effective_config,
// --print-config). Loading it back gives the same configuration.
std::string to_yaml(const DaemonConfig& config);

// Semantic checks that parsing cannot do (intervals positive, TLS files with TCP, ...).
Result<void> validate(const DaemonConfig& config);

// The core's configuration, with the domain filter built from `domains`.
core::MonitorConfig to_monitor_config(const DaemonConfig& config);

// True if the domain matches one of the patterns (name or uuid, fnmatch globs); an empty list
// matches everything.
bool domain_selected(const std::vector<std::string>& patterns, const std::string& name, const std::string& uuid);

// What a reload changes. Only `applied` takes effect at once; `restart_needed` lists the keys
// that changed but are read only at start-up.
struct ReloadPlan {
  std::vector<std::string> applied;
  std::vector<std::string> restart_needed;
};
ReloadPlan plan_reload(const DaemonConfig& running, const DaemonConfig& reloaded);

// "100ms", "1.5s", "10m", "1h", "250us"; a bare number is seconds.
Result<std::chrono::nanoseconds> parse_duration(const std::string& text);
std::string format_duration(std::chrono::nanoseconds d);

}  // namespace stallmon::daemon
