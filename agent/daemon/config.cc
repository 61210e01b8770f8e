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
constexpr const char* kLogLevelChoices = "expected trace, debug, info, warn, error, critical or off";
bool valid_log_level(const std::string& v) {
  static const std::set<std::string> levels = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  return levels.count(v) != 0;
}

// The one table of keys: each key's parser (YAML node into DaemonConfig), its effective value
// as YAML text (--print-config, GetAgentInfo, the reload plan's comparison) and whether a reload
// applies it at once. The defaults are DaemonConfig's member initialisers; the table order is
// the print order.
using Setter = std::function<Result<void>(const YAML::Node&, DaemonConfig&)>;
using Shower = std::function<std::string(const DaemonConfig&)>;
struct Codec {
  Setter set;
  Shower show;
};
struct Key {
  std::string name;  // "section.key" or "section.sub.key"
  Codec codec;
  bool reloadable = false;  // applied on SIGHUP; anything else needs a restart
};

// A field accessor usable on both const and mutable configurations.
template <typename M>
auto field(M DaemonConfig::*m) {
  return [m](auto& c) -> auto& { return c.*m; };
}
template <typename M>
auto server_field(M server::ServerOptions::*m) {
  return [m](auto& c) -> auto& { return c.server.*m; };
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

// A string, printed quoted (paths, URIs, addresses) or bare (words from a fixed vocabulary).
template <typename F>
Codec text(F at, bool quoted = true, bool (*valid)(const std::string&) = nullptr, const char* choices = "") {
  return {[at, valid, choices](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
            if (n.IsNull() && valid == nullptr) {
              at(c) = "";
              return {};
            }
            if (!n.IsScalar()) return bad("", valid ? choices : "expected a string");
            if (valid && !valid(n.Scalar())) return bad("", choices);
            at(c) = n.Scalar();
            return {};
          },
          [at, quoted](const DaemonConfig& c) { return quoted ? quote(at(c)) : at(c); }};
}

// A YAML list of non-empty strings (null: empty).
template <typename F>
Codec strings(F at, const char* what) {
  return {[at, what](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
            auto& out = at(c);
            out.clear();
            if (n.IsNull()) return {};
            if (!n.IsSequence()) return bad("", std::string("expected a list of ") + what);
            for (const auto& e : n) {
              if (!e.IsScalar() || e.Scalar().empty()) return bad("", "expected non-empty strings");
              out.push_back(e.Scalar());
            }
            return {};
          },
          [at](const DaemonConfig& c) { return quote_list(at(c)); }};
}

Codec boolean(bool DaemonConfig::*m) {
  auto at = field(m);
  return {[at](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
            bool b = false;
            if (!n.IsScalar() || !YAML::convert<bool>::decode(n, b)) return bad("", "expected true or false");
            at(c) = b;
            return {};
          },
          [at](const DaemonConfig& c) -> std::string { return at(c) ? "true" : "false"; }};
}

template <typename F>
Codec bounded_int(F at, int lo, int hi) {
  return {[at, lo, hi](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
            int v = 0;
            if (!n.IsScalar() || !YAML::convert<int>::decode(n, v) || v < lo || v > hi) {
              return bad("", "expected an integer " + std::to_string(lo) + ".." + std::to_string(hi));
            }
            at(c) = v;
            return {};
          },
          [at](const DaemonConfig& c) { return std::to_string(at(c)); }};
}

Codec fraction(double DaemonConfig::*m) {
  auto at = field(m);
  return {[at](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
            double d = 0;
            if (!n.IsScalar() || !YAML::convert<double>::decode(n, d) || !(d > 0 && d <= 1)) {
              return bad("", "expected a number in (0, 1]");
            }
            at(c) = d;
            return {};
          },
          [at](const DaemonConfig& c) {
            std::ostringstream os;
            os << at(c);
            return os.str();
          }};
}

template <typename F>
Codec duration(F at) {
  return {[at](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
            if (!n.IsScalar()) return bad("", "expected a duration like 100ms, 2s, 10m");
            auto d = parse_duration(n.Scalar());
            if (!d.ok()) return d.error();
            at(c) = std::chrono::duration_cast<std::remove_reference_t<decltype(at(c))>>(*d);
            return {};
          },
          [at](const DaemonConfig& c) { return format_duration(at(c)); }};
}

// A string of octal digits: YAML 1.2 reads a bare 0660 as decimal 660.
Codec octal_mode() {
  return {[](const YAML::Node& n, DaemonConfig& c) -> Result<void> {
            const char* why = "expected an octal string like \"0660\"";
            if (!n.IsScalar()) return bad("", why);
            const std::string& s = n.Scalar();
            if (s.empty() || s.size() > 4 || s.find_first_not_of("01234567") != std::string::npos) return bad("", why);
            c.server.socket_mode = static_cast<mode_t>(std::stoul(s, nullptr, 8));
            return {};
          },
          [](const DaemonConfig& c) {
            char mode[8];
            std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(c.server.socket_mode));
            return std::string("\"") + mode + "\"";
          }};
}

bool valid_log_target(const std::string& v) { return v == "stderr" || v == "journald"; }

const std::vector<Key>& keys() {
  static const std::vector<Key> table = [] {
    using C = DaemonConfig;
    using S = server::ServerOptions;
    std::vector<Key> t = {
        {"libvirt.uri", text(field(&C::libvirt_uri))},
        {"libvirt.monitor_timeout", duration(field(&C::monitor_timeout))},
        {"libvirt.use_monitor", boolean(&C::use_monitor)},
        {"domains.include", strings(field(&C::domains), "names, uuids or globs")},
        {"sampling.interval", duration(field(&C::sample_interval))},
        {"sampling.baseline_snapshot_interval", duration(field(&C::baseline_snapshot_interval))},
        {"sampling.introspection", boolean(&C::introspection)},
        {"sampling.history", duration(field(&C::history))},
        {"sampling.history_full_resolution", duration(field(&C::history_full_resolution))},
        {"sampling.read_host_stacks", boolean(&C::read_host_stacks)},
        {"host.thread_stats", text(field(&C::thread_stats), false, valid_thread_stats, kThreadStatsChoices)},
        {"diagnosis.host_blocked_min", duration(field(&C::host_blocked_min))},
        {"diagnosis.starved_fraction", fraction(&C::starved_fraction)},
        {"diagnosis.ipi_stall_min", duration(field(&C::ipi_stall_min))},
        {"diagnosis.idle_pending_min", duration(field(&C::idle_pending_min))},
        {"diagnosis.softlockup_imminent_fraction", fraction(&C::softlockup_imminent_fraction)},
        {"server.unix_socket", text(server_field(&S::unix_socket))},
        {"server.socket_mode", octal_mode()},
        {"server.socket_group", text(server_field(&S::socket_group))},
    };
    for (const auto& l : server::int_limits()) {
      t.push_back({std::string("server.") + l.key, bounded_int(server_field(l.field), l.min, l.max)});
    }
    std::vector<Key> rest = {
        {"server.shutdown_grace", duration(server_field(&S::shutdown_grace))},
        {"server.tcp.listen", text(server_field(&S::tcp_listen))},
        {"server.tcp.tls_cert", text(server_field(&S::tls_cert_file))},
        {"server.tcp.tls_key", text(server_field(&S::tls_key_file))},
        {"server.tcp.tls_client_ca", text(server_field(&S::tls_client_ca_file))},
        {"server.tcp.allowed_clients", strings(server_field(&S::tls_allowed_clients), "certificate subjects, CNs or SANs")},
        {"metrics.listen", text(field(&C::metrics_listen))},
        {"metrics.max_domains", bounded_int(field(&C::metrics_max_domains), 1, 100000)},
        {"alertmanager.urls", strings(field(&C::alertmanager_urls), "http:// URLs")},
        {"alertmanager.resend_interval", duration(field(&C::alertmanager_resend_interval))},
        // The log level is the one key a reload applies at once (App::reload).
        {"logging.level", text(field(&C::log_level), false, valid_log_level, kLogLevelChoices), true},
        {"logging.target", text(field(&C::log_target), false, valid_log_target, "expected stderr or journald")},
        {"systemd.watchdog_max_tick_age", duration(field(&C::watchdog_max_tick_age))},
        // --- execution, discovery, introspection (agent/core) ---
        {"execution.workers", bounded_int(field(&C::workers), 0, 64)},
        {"discovery.max_concurrent", bounded_int(field(&C::discovery_max_concurrent), 1, 64)},
        {"discovery.no_kernel_retry_max", duration(field(&C::no_kernel_retry_max))},
        {"introspection.read_deadline", duration(field(&C::read_deadline))},
        {"introspection.memory_budget_mib", bounded_int(field(&C::memory_budget_mib), 8, 4096)},
        {"introspection.profile_dir", text(field(&C::profile_dir))},
        {"introspection.debug_dir", text(field(&C::debug_dir))},
        {"introspection.ignore_guest_btf", boolean(&C::ignore_guest_btf)},
        {"state_dir", text(field(&C::state_dir))},
        // --- the finding store (agent/store): retention re-applied on reload ---
        {"store.enabled", boolean(&C::store_enabled)},
        {"store.max_age", duration(field(&C::store_max_age)), true},
        {"store.max_size_mib", bounded_int(field(&C::store_max_size_mib), 1, 1 << 20), true},
        // --- incident bundles (agent/diagnosis/incident_recorder.h) ---
        {"incidents.enabled", boolean(&C::incidents_enabled)},
        {"incidents.lookback", duration(field(&C::incidents_lookback))},
        {"incidents.max_bundle_kib", bounded_int(field(&C::incidents_max_bundle_kib), 16, 16384)},
        {"incidents.max_bundles", bounded_int(field(&C::incidents_max_bundles), 1, 1024)},
    };
    t.insert(t.end(), std::make_move_iterator(rest.begin()), std::make_move_iterator(rest.end()));
    return t;
  }();
  return table;
}

const Key* find_key(const std::string& name) {
  static const std::map<std::string, const Key*> index = [] {
    std::map<std::string, const Key*> m;
    for (const auto& k : keys()) m.emplace(k.name, &k);
    return m;
  }();
  auto it = index.find(name);
  return it == index.end() ? nullptr : it->second;
}

// Walks the mapping; a map value recurses, anything else must be a known key.
Result<void> apply(const YAML::Node& node, const std::string& prefix, DaemonConfig& c) {
  if (!node.IsMap()) return bad(prefix.empty() ? "(top level)" : prefix, "expected a mapping");
  for (const auto& kv : node) {
    std::string key = prefix.empty() ? kv.first.as<std::string>() : prefix + "." + kv.first.as<std::string>();
    if (const Key* k = find_key(key)) {
      auto r = k->codec.set(kv.second, c);
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
    for (const auto& k : keys()) {
      if (k.name.rfind(key + ".", 0) == 0) is_section = true;
    }
    if (!is_section) return bad(key, "unknown key");
    if (kv.second.IsNull()) continue;  // an empty section
    if (auto r = apply(kv.second, key, c); !r.ok()) return r;
  }
  return {};
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
  std::vector<std::string> open;  // the sections the previous key was in
  for (const auto& k : keys()) {
    std::vector<std::string> path;
    std::string rest = k.name;
    for (size_t dot; (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
      path.push_back(rest.substr(0, dot));
    }
    size_t same = 0;
    while (same < open.size() && same < path.size() && open[same] == path[same]) ++same;
    for (size_t i = same; i < path.size(); ++i) o << std::string(2 * i, ' ') << path[i] << ":\n";
    o << std::string(2 * path.size(), ' ') << rest << ": " << k.codec.show(c) << "\n";
    open = std::move(path);
  }
  return o.str();
}

Result<void> validate(const DaemonConfig& c) {
  // Flags bypass the file's setters: the vocabulary keys are checked again here.
  if (!valid_log_level(c.log_level)) return bad("logging.level", "'" + c.log_level + "': " + kLogLevelChoices);
  if (!valid_log_target(c.log_target)) {
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
  if (c.history_full_resolution < std::chrono::seconds(10) || c.history_full_resolution > c.history) {
    return bad("sampling.history_full_resolution", "must be 10s..sampling.history");
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
  // The vCPU rings hold sampling.history (at 1 Hz past history_full_resolution): a longer
  // lookback would find nothing there.
  if (c.incidents_lookback < std::chrono::seconds(1) || c.incidents_lookback > c.history) {
    return bad("incidents.lookback", "must be 1s..sampling.history");
  }
  if (c.store_max_age < std::chrono::hours(1) || c.store_max_age > std::chrono::hours(24 * 3660)) {
    return bad("store.max_age", "must be 1h..87840h (ten years)");
  }
  if (!c.profile_dir.empty() && c.profile_dir[0] != '/') return bad("introspection.profile_dir", "must be an absolute path (or empty)");
  if (!c.debug_dir.empty() && c.debug_dir[0] != '/') return bad("introspection.debug_dir", "must be an absolute path (or empty)");
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

std::string store_path(const DaemonConfig& c) {
  if (!c.store_enabled || c.state_dir.empty()) return "";
  return c.state_dir + "/findings.db";
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
  // The newest history_full_resolution at every sample, the rest of `history` at 1 Hz.
  const auto full = std::min<nanoseconds>(c.history, c.history_full_resolution);
  m.sampler.vcpu_history = static_cast<size_t>(std::max<int64_t>(full / std::max(c.sample_interval, nanoseconds(1)), 2));
  m.sampler.history_coarse_interval_ns = 1'000'000'000;
  m.sampler.vcpu_history_coarse = static_cast<size_t>((c.history - full) / std::chrono::seconds(1));
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
  m.profile_dir = c.profile_dir;
  m.debug_dir = c.debug_dir;
  m.ignore_guest_btf = c.ignore_guest_btf;
  m.incidents.enabled = c.incidents_enabled;
  m.incidents.lookback = c.incidents_lookback;
  m.incidents.max_bundle_bytes = static_cast<size_t>(c.incidents_max_bundle_kib) << 10;
  m.incidents.max_bundles = static_cast<size_t>(c.incidents_max_bundles);
  if (!c.domains.empty()) {
    auto patterns = c.domains;
    m.domain_filter = [patterns](const libvirt::DomainInfo& d) { return domain_selected(patterns, d.name, d.uuid); };
  }
  return m;
}

ReloadPlan plan_reload(const DaemonConfig& running, const DaemonConfig& reloaded) {
  ReloadPlan plan;
  for (const auto& k : keys()) {
    if (k.codec.show(running) == k.codec.show(reloaded)) continue;
    (k.reloadable ? plan.applied : plan.restart_needed).push_back(k.name);
  }
  return plan;
}

}  // namespace stallmon::daemon
