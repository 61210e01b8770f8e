// SPDX-License-Identifier: Apache-2.0
#include "config.h"

#include <fnmatch.h>
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "stallmon/alerting/http.h"

namespace stallmon::daemon {
namespace {

using std::chrono::nanoseconds;

Error bad(const std::string& key, const std::string& why) {
  return Error(ErrorCode::kInvalidArgument, key + ": " + why);
}

constexpr const char* kThreadStatsChoices = "expected auto, bpf or proc";
bool valid_thread_stats(const std::string& v) { return v == "auto" || v == "bpf" || v == "proc"; }

// One setter per key ("section.key"), so parsing, unknown-key detection and the documented list
// stay in one table.
using Setter = std::function<Result<void>(const YAML::Node&, DaemonConfig&)>;

Setter str(std::string DaemonConfig::*field) {
  return [field](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
    if (n.IsNull()) {
      c.*field = "";
      return {};
    }
    if (!n.IsScalar()) return bad("", "expected a string");
    c.*field = n.Scalar();
    return {};
  };
}

template <typename F>
Setter with_server(F f) {
  return [f](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
    if (n.IsNull()) {
      f(c.server) = "";
      return {};
    }
    if (!n.IsScalar()) return bad("", "expected a string");
    f(c.server) = n.Scalar();
    return {};
  };
}

// An integer option of the server, in its range (how options depend on each other is
// server::check_limits' business, in validate()).
Setter server_int(const server::IntLimit& l) {
  return [l](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
    int v = 0;
    if (!n.IsScalar() || !YAML::convert<int>::decode(n, v) || v < l.min || v > l.max) {
      return bad("", "expected an integer " + std::to_string(l.min) + ".." + std::to_string(l.max));
    }
    c.server.*(l.field) = v;
    return {};
  };
}

// A YAML list of non-empty strings (null: empty) into the list `field` picks.
Setter strings(std::vector<std::string>* (*field)(DaemonConfig&), const char* what) {
  return [field, what](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
    std::vector<std::string>* out = field(c);
    out->clear();
    if (n.IsNull()) return {};
    if (!n.IsSequence()) return bad("", std::string("expected a list of ") + what);
    for (const auto& e : n) {
      if (!e.IsScalar() || e.Scalar().empty()) return bad("", "expected non-empty strings");
      out->push_back(e.Scalar());
    }
    return {};
  };
}

Result<bool> parse_bool(const YAML::Node& n) {
  bool b = false;
  if (!n.IsScalar() || !YAML::convert<bool>::decode(n, b)) return bad("", "expected true or false");
  return b;
}

Setter boolean(bool DaemonConfig::*field) {
  return [field](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
    auto b = parse_bool(n);
    if (!b.ok()) return b.error();
    c.*field = *b;
    return {};
  };
}

Result<double> parse_fraction(const YAML::Node& n) {
  double d = 0;
  if (!n.IsScalar() || !YAML::convert<double>::decode(n, d) || !(d > 0 && d <= 1)) {
    return bad("", "expected a number in (0, 1]");
  }
  return d;
}

Setter bounded_int(int DaemonConfig::*field, int lo, int hi) {
  return [field, lo, hi](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
    int v = 0;
    if (!n.IsScalar() || !YAML::convert<int>::decode(n, v) || v < lo || v > hi) {
      return bad("", "expected an integer " + std::to_string(lo) + ".." + std::to_string(hi));
    }
    c.*field = v;
    return {};
  };
}

Setter fraction(double DaemonConfig::*field) {
  return [field](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
    auto d = parse_fraction(n);
    if (!d.ok()) return d.error();
    c.*field = *d;
    return {};
  };
}

template <typename D>
Setter duration(D DaemonConfig::*field) {
  return [field](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
    if (!n.IsScalar()) return bad("", "expected a duration like 100ms, 2s, 10m");
    auto d = parse_duration(n.Scalar());
    if (!d.ok()) return d.error();
    c.*field = std::chrono::duration_cast<D>(*d);
    return {};
  };
}

const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> m = [] {
    std::map<std::string, Setter> t = {
        {"libvirt.uri", str(&DaemonConfig::libvirt_uri)},
        {"libvirt.monitor_timeout", duration(&DaemonConfig::monitor_timeout)},
        {"libvirt.use_monitor", boolean(&DaemonConfig::use_monitor)},
        {"domains.include", strings([](DaemonConfig& c) { return &c.domains; }, "names, uuids or globs")},
        {"sampling.interval", duration(&DaemonConfig::sample_interval)},
        {"sampling.baseline_snapshot_interval", duration(&DaemonConfig::baseline_snapshot_interval)},
        {"sampling.introspection", boolean(&DaemonConfig::introspection)},
        {"sampling.history", duration(&DaemonConfig::history)},
        {"sampling.read_host_stacks", boolean(&DaemonConfig::read_host_stacks)},
        {"host.thread_stats",
         [](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
           if (!n.IsScalar() || !valid_thread_stats(n.Scalar())) return bad("", kThreadStatsChoices);
           c.thread_stats = n.Scalar();
           return {};
         }},
        {"diagnosis.host_blocked_min", duration(&DaemonConfig::host_blocked_min)},
        {"diagnosis.starved_fraction", fraction(&DaemonConfig::starved_fraction)},
        {"diagnosis.ipi_stall_min", duration(&DaemonConfig::ipi_stall_min)},
        {"diagnosis.idle_pending_min", duration(&DaemonConfig::idle_pending_min)},
        {"diagnosis.softlockup_imminent_fraction", fraction(&DaemonConfig::softlockup_imminent_fraction)},
        {"server.unix_socket", with_server([](server::ServerOptions& s) -> std::string& { return s.unix_socket; })},
        {"server.socket_mode",
         [](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
           // A string of octal digits: YAML 1.2 reads a bare 0660 as decimal 660.
           if (!n.IsScalar()) return bad("", "expected an octal string like \"0660\"");
           const std::string& s = n.Scalar();
           if (s.empty() || s.size() > 4 || s.find_first_not_of("01234567") != std::string::npos) {
             return bad("", "expected an octal string like \"0660\"");
           }
           c.server.socket_mode = static_cast<mode_t>(std::stoul(s, nullptr, 8));
           return {};
         }},
        {"server.socket_group", with_server([](server::ServerOptions& s) -> std::string& { return s.socket_group; })},
        {"server.tcp.listen", with_server([](server::ServerOptions& s) -> std::string& { return s.tcp_listen; })},
        {"server.tcp.tls_cert", with_server([](server::ServerOptions& s) -> std::string& { return s.tls_cert_file; })},
        {"server.tcp.tls_key", with_server([](server::ServerOptions& s) -> std::string& { return s.tls_key_file; })},
        {"server.tcp.tls_client_ca",
         with_server([](server::ServerOptions& s) -> std::string& { return s.tls_client_ca_file; })},
        {"server.tcp.allowed_clients",
         strings([](DaemonConfig& c) { return &c.server.tls_allowed_clients; }, "certificate subjects, CNs or SANs")},
        {"server.shutdown_grace",
         [](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
           if (!n.IsScalar()) return bad("", "expected a duration");
           auto d = parse_duration(n.Scalar());
           if (!d.ok()) return d.error();
           c.server.shutdown_grace = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
           return {};
         }},
        {"metrics.listen", str(&DaemonConfig::metrics_listen)},
        {"metrics.max_domains",
         [](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
           int v = 0;
           if (!n.IsScalar() || !YAML::convert<int>::decode(n, v) || v < 1 || v > 100000) {
             return bad("", "expected an integer 1..100000");
           }
           c.metrics_max_domains = v;
           return {};
         }},
        {"alertmanager.urls", strings([](DaemonConfig& c) { return &c.alertmanager_urls; }, "http:// URLs")},
        {"alertmanager.resend_interval", duration(&DaemonConfig::alertmanager_resend_interval)},
        {"logging.level", str(&DaemonConfig::log_level)},
        {"logging.target", str(&DaemonConfig::log_target)},
        {"systemd.watchdog_max_tick_age", duration(&DaemonConfig::watchdog_max_tick_age)},
        // --- execution, discovery, introspection (agent/core) ---
        {"execution.workers", bounded_int(&DaemonConfig::workers, 0, 64)},
        {"discovery.max_concurrent", bounded_int(&DaemonConfig::discovery_max_concurrent, 1, 64)},
        {"discovery.no_kernel_retry_max", duration(&DaemonConfig::no_kernel_retry_max)},
        {"introspection.read_deadline", duration(&DaemonConfig::read_deadline)},
        {"introspection.memory_budget_mib", bounded_int(&DaemonConfig::memory_budget_mib, 8, 4096)},
        {"state_dir", str(&DaemonConfig::state_dir)},
    };
    for (const auto& l : server::int_limits()) t.emplace(std::string("server.") + l.key, server_int(l));
    return t;
  }();
  return m;
}

// Walks the mapping; a map value recurses, anything else must be a known key.
Result<void> apply(const YAML::Node& node, const std::string& prefix, DaemonConfig& c) {
  if (!node.IsMap()) return bad(prefix.empty() ? "(top level)" : prefix, "expected a mapping");
  for (const auto& kv : node) {
    std::string key = prefix.empty() ? kv.first.as<std::string>() : prefix + "." + kv.first.as<std::string>();
    auto it = setters().find(key);
    if (it != setters().end()) {
      auto r = it->second(kv.second, c);
      if (!r.ok()) {
        Error e = r.error();
        // Setters report ": why" or a parser's message: name the key here.
        if (e.message.rfind(": ", 0) == 0) {
          e.message = key + e.message;
        } else if (e.message.rfind(key, 0) != 0) {
          e.message = key + ": " + e.message;
        }
        return e;
      }
      continue;
    }
    bool is_section = false;
    for (const auto& [k, _] : setters()) {
      if (k.rfind(key + ".", 0) == 0) is_section = true;
    }
    if (!is_section) return bad(key, "unknown key");
    if (kv.second.IsNull()) continue;  // an empty section
    if (auto r = apply(kv.second, key, c); !r.ok()) return r;
  }
  return {};
}

std::string quote(const std::string& s) {
  YAML::Emitter e;
  e << YAML::DoubleQuoted << s;
  return e.c_str();
}

// A flow-style YAML list of quoted strings: ["a", "b"].
std::string quote_list(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + quote(v[i]);
  return out + "]";
}

std::string fraction_text(double d) {
  std::ostringstream os;
  os << d;
  return os.str();
}

}  // namespace

Result<nanoseconds> parse_duration(const std::string& text) {
  static const std::vector<std::pair<std::string, double>> units = {
      {"ns", 1}, {"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
  std::string num = text;
  double scale = 1e9;  // a bare number is seconds
  for (const auto& [suffix, s] : units) {
    if (text.size() > suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0) {
      std::string head = text.substr(0, text.size() - suffix.size());
      // "10m" vs "10ms": the longest suffix that leaves a number wins (the table is ordered so
      // that "ms" is tried before "s" and "m").
      if (!head.empty() && (std::isdigit(static_cast<unsigned char>(head.back())) || head.back() == '.')) {
        num = head;
        scale = s;
        break;
      }
    }
  }
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(num, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != num.size() || !std::isfinite(v) || v < 0 || v * scale > 3.0e18) {
    return Error(ErrorCode::kInvalidArgument, "'" + text + "' is not a duration (like 100ms, 2s, 10m)");
  }
  return nanoseconds(static_cast<int64_t>(std::llround(v * scale)));
}

std::string format_duration(nanoseconds d) {
  int64_t ns = d.count();
  struct U {
    const char* s;
    int64_t n;
  };
  for (U u : {U{"h", 3'600'000'000'000}, U{"m", 60'000'000'000}, U{"s", 1'000'000'000}, U{"ms", 1'000'000},
              U{"us", 1'000}}) {
    if (ns != 0 && ns % u.n == 0) return std::to_string(ns / u.n) + u.s;
  }
  return std::to_string(ns) + "ns";
}

Result<DaemonConfig> parse_config(const std::string& yaml, DaemonConfig base) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return Error(ErrorCode::kInvalidArgument, std::string("YAML: ") + e.what());
  }
  if (root.IsNull()) return base;  // an empty file: all defaults
  try {
    if (auto r = apply(root, "", base); !r.ok()) return r.error();
  } catch (const YAML::Exception& e) {
    return Error(ErrorCode::kInvalidArgument, std::string("YAML: ") + e.what());
  }
  return base;
}

Result<DaemonConfig> load_config_file(const std::string& path, DaemonConfig base) {
  std::ifstream in(path);
  if (!in) return Error(ErrorCode::kNotFound, "cannot read config file " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  auto r = parse_config(ss.str(), std::move(base));
  if (!r.ok()) return std::move(r).error().context(path);
  return r;
}

std::string to_yaml(const DaemonConfig& c) {
  std::ostringstream o;
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(c.server.socket_mode));
  o << "libvirt:\n"
    << "  uri: " << quote(c.libvirt_uri) << "\n"
    << "  monitor_timeout: " << format_duration(c.monitor_timeout) << "\n"
    << "  use_monitor: " << (c.use_monitor ? "true" : "false") << "\n"
    << "domains:\n"
    << "  include: " << quote_list(c.domains) << "\n"
    << "sampling:\n"
    << "  interval: " << format_duration(c.sample_interval) << "\n"
    << "  baseline_snapshot_interval: " << format_duration(c.baseline_snapshot_interval) << "\n"
    << "  introspection: " << (c.introspection ? "true" : "false") << "\n"
    << "  history: " << format_duration(c.history) << "\n"
    << "  read_host_stacks: " << (c.read_host_stacks ? "true" : "false") << "\n"
    << "host:\n"
    << "  thread_stats: " << c.thread_stats << "\n"
    << "diagnosis:\n"
    << "  host_blocked_min: " << format_duration(c.host_blocked_min) << "\n"
    << "  starved_fraction: " << fraction_text(c.starved_fraction) << "\n"
    << "  ipi_stall_min: " << format_duration(c.ipi_stall_min) << "\n"
    << "  idle_pending_min: " << format_duration(c.idle_pending_min) << "\n"
    << "  softlockup_imminent_fraction: " << fraction_text(c.softlockup_imminent_fraction) << "\n"
    << "server:\n"
    << "  unix_socket: " << quote(c.server.unix_socket) << "\n"
    << "  socket_mode: \"" << mode << "\"\n"
    << "  socket_group: " << quote(c.server.socket_group) << "\n"
    << "  max_watchers: " << c.server.max_watchers << "\n"
    << "  max_inspect_in_flight: " << c.server.max_inspect_in_flight << "\n"
    << "  max_threads: " << c.server.max_threads << "\n"
    << "  max_request_bytes: " << c.server.max_request_bytes << "\n"
    << "  max_streams_per_connection: " << c.server.max_streams_per_connection << "\n"
    << "  shutdown_grace: " << format_duration(c.server.shutdown_grace) << "\n"
    << "  tcp:\n"
    << "    listen: " << quote(c.server.tcp_listen) << "\n"
    << "    tls_cert: " << quote(c.server.tls_cert_file) << "\n"
    << "    tls_key: " << quote(c.server.tls_key_file) << "\n"
    << "    tls_client_ca: " << quote(c.server.tls_client_ca_file) << "\n"
    << "    allowed_clients: " << quote_list(c.server.tls_allowed_clients) << "\n"
    << "metrics:\n"
    << "  listen: " << quote(c.metrics_listen) << "\n"
    << "  max_domains: " << c.metrics_max_domains << "\n"
    << "alertmanager:\n"
    << "  urls: " << quote_list(c.alertmanager_urls) << "\n"
    << "  resend_interval: " << format_duration(c.alertmanager_resend_interval) << "\n"
    << "logging:\n"
    << "  level: " << c.log_level << "\n"
    << "  target: " << c.log_target << "\n"
    << "systemd:\n"
    << "  watchdog_max_tick_age: " << format_duration(c.watchdog_max_tick_age) << "\n"
    << "execution:\n"
    << "  workers: " << c.workers << "\n"
    << "discovery:\n"
    << "  max_concurrent: " << c.discovery_max_concurrent << "\n"
    << "  no_kernel_retry_max: " << format_duration(c.no_kernel_retry_max) << "\n"
    << "introspection:\n"
    << "  read_deadline: " << format_duration(c.read_deadline) << "\n"
    << "  memory_budget_mib: " << c.memory_budget_mib << "\n"
    << "state_dir: " << quote(c.state_dir) << "\n";
  return o.str();
}

Result<void> validate(const DaemonConfig& c) {
  static const std::set<std::string> levels = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  if (!levels.count(c.log_level)) return bad("logging.level", "'" + c.log_level + "' is not one of trace, debug, info, warn, error, critical, off");
  if (c.log_target != "stderr" && c.log_target != "journald") {
    return bad("logging.target", "'" + c.log_target + "' is not stderr or journald");
  }
  if (c.libvirt_uri.empty()) return bad("libvirt.uri", "must not be empty");
  if (c.monitor_timeout < std::chrono::milliseconds(100)) return bad("libvirt.monitor_timeout", "at least 100ms");
  if (c.sample_interval < std::chrono::milliseconds(10) || c.sample_interval > std::chrono::seconds(10)) {
    return bad("sampling.interval", "must be 10ms..10s");
  }
  if (c.baseline_snapshot_interval < c.sample_interval) {
    return bad("sampling.baseline_snapshot_interval", "must be at least sampling.interval");
  }
  if (c.history < std::chrono::seconds(10) || c.history > std::chrono::hours(24)) {
    return bad("sampling.history", "must be 10s..24h");
  }
  if (!valid_thread_stats(c.thread_stats)) {  // a flag bypasses the file's setter
    return bad("host.thread_stats", "'" + c.thread_stats + "': " + kThreadStatsChoices);
  }
  if (c.watchdog_max_tick_age < std::chrono::seconds(1)) return bad("systemd.watchdog_max_tick_age", "at least 1s");
  if (c.read_deadline < std::chrono::milliseconds(10) || c.read_deadline > std::chrono::seconds(60)) {
    return bad("introspection.read_deadline", "must be 10ms..60s");
  }
  if (c.no_kernel_retry_max < std::chrono::seconds(1) || c.no_kernel_retry_max > std::chrono::hours(48)) {
    return bad("discovery.no_kernel_retry_max", "must be 1s..48h");
  }
  if (!c.state_dir.empty() && c.state_dir[0] != '/') return bad("state_dir", "must be an absolute path (or empty: keep nothing)");
  if (!c.metrics_listen.empty()) {
    if (auto a = alerting::parse_listen_address(c.metrics_listen); !a.ok()) return bad("metrics.listen", a.error().message);
  }
  for (const auto& u : c.alertmanager_urls) {
    if (auto p = alerting::parse_http_url(u); !p.ok()) return bad("alertmanager.urls", p.error().message);
  }
  if (c.alertmanager_resend_interval < std::chrono::seconds(1) || c.alertmanager_resend_interval > std::chrono::minutes(10)) {
    return bad("alertmanager.resend_interval", "must be 1s..10m");
  }
  if (c.server.unix_socket.empty() && c.server.tcp_listen.empty()) {
    return bad("server", "needs unix_socket or tcp.listen");
  }
  if (!c.server.unix_socket.empty() && c.server.unix_socket[0] != '/') {
    return bad("server.unix_socket", "must be an absolute path");
  }
  if (!c.server.tcp_listen.empty() &&
      (c.server.tls_cert_file.empty() || c.server.tls_key_file.empty() || c.server.tls_client_ca_file.empty())) {
    return bad("server.tcp", "listen requires tls_cert, tls_key and tls_client_ca (TCP is mutual TLS only)");
  }
  if (auto r = server::check_limits(c.server); !r.ok()) return r.error();
  return {};
}

bool domain_selected(const std::vector<std::string>& patterns, const std::string& name, const std::string& uuid) {
  if (patterns.empty()) return true;
  for (const auto& p : patterns) {
    if (fnmatch(p.c_str(), name.c_str(), 0) == 0 || (!uuid.empty() && fnmatch(p.c_str(), uuid.c_str(), FNM_CASEFOLD) == 0)) {
      return true;
    }
  }
  return false;
}

core::MonitorConfig to_monitor_config(const DaemonConfig& c) {
  core::MonitorConfig m;
  m.sample_interval = c.sample_interval;
  m.baseline_snapshot_interval = c.baseline_snapshot_interval;
  m.introspection = c.introspection;
  m.sampler.read_stacks = c.read_host_stacks;
  auto per_vcpu = c.history / std::max(c.sample_interval, nanoseconds(1));
  m.sampler.vcpu_history = static_cast<size_t>(std::max<int64_t>(per_vcpu, 2));
  m.diagnosis.host_blocked_min = c.host_blocked_min;
  m.diagnosis.starved_fraction = c.starved_fraction;
  m.diagnosis.ipi_stall_min = c.ipi_stall_min;
  m.diagnosis.idle_pending_min = c.idle_pending_min;
  m.diagnosis.softlockup_imminent_fraction = c.softlockup_imminent_fraction;
  m.workers = static_cast<size_t>(c.workers);
  m.discovery_max_concurrent = static_cast<size_t>(c.discovery_max_concurrent);
  m.no_kernel_retry_max = c.no_kernel_retry_max;
  m.read_deadline = c.read_deadline;
  m.introspection_budget_bytes = static_cast<uint64_t>(c.memory_budget_mib) << 20;
  m.state_dir = c.state_dir;
  if (!c.domains.empty()) {
    auto patterns = c.domains;
    m.domain_filter = [patterns](const libvirt::DomainInfo& d) { return domain_selected(patterns, d.name, d.uuid); };
  }
  return m;
}

ReloadPlan plan_reload(const DaemonConfig& running, const DaemonConfig& reloaded) {
  ReloadPlan plan;
  if (running.log_level != reloaded.log_level) plan.applied.push_back("logging.level");
  // Everything else is read once at start-up by the monitor, the watcher or the server; compare
  // the rest through the YAML form so that no key is forgotten here.
  DaemonConfig a = running, b = reloaded;
  a.log_level = b.log_level = "";
  std::istringstream ya(to_yaml(a)), yb(to_yaml(b));
  std::string la, lb;
  std::vector<std::string> path;  // the enclosing sections, by indentation level (2 spaces)
  while (std::getline(ya, la) && std::getline(yb, lb)) {
    size_t indent = la.find_first_not_of(' ');
    if (indent == std::string::npos) continue;
    std::string key = la.substr(indent, la.find(':') - indent);
    path.resize(indent / 2);
    if (la.back() == ':') {  // a section header
      path.push_back(key);
      continue;
    }
    if (la != lb) {
      std::string full;
      for (const auto& p : path) full += p + ".";
      plan.restart_needed.push_back(full + key);
    }
  }
  return plan;
}

}  // namespace stallmon::daemon
