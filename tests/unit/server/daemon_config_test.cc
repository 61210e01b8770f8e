// SPDX-License-Identifier: Apache-2.0
// stallmond's configuration: the example file lists exactly the defaults, every key round-trips,
// typos are errors, flags win over the file, reload says what needs a restart; the sampling
// liveness check behind the systemd watchdog and the health status.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "app.h"
#include "config.h"

namespace stallmon::daemon {
namespace {

using namespace std::chrono_literals;

TEST(DaemonConfig, ExampleFileListsEveryKeyWithItsDefault) {
  auto c = load_config_file(STALLMON_SOURCE_DIR "/deploy/stallmond.yaml");
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_EQ(to_yaml(*c), to_yaml(DaemonConfig{}));
  // And every key of the effective form appears in the example file.
  auto yaml = to_yaml(DaemonConfig{});
  std::istringstream in(yaml);
  std::string line;
  std::ifstream f(STALLMON_SOURCE_DIR "/deploy/stallmond.yaml");
  std::string example((std::istreambuf_iterator<char>(f)), {});
  while (std::getline(in, line)) {
    auto key = line.substr(0, line.find(':') + 1);
    EXPECT_NE(example.find(key), std::string::npos) << key;
  }
}

// Every key of the table, each set to something other than its default.
const char* const kEveryKeyChanged = R"(
libvirt: {uri: "qemu+ssh://h/system", monitor_timeout: 1500ms, use_monitor: true}
domains: {include: ["web-*", "0b7c-uuid"]}
sampling: {interval: 50ms, baseline_snapshot_interval: 2s, introspection: false, history: 5m,
           history_full_resolution: 2m, read_host_stacks: false}
diagnosis: {host_blocked_min: 1s, starved_fraction: 0.9, ipi_stall_min: 250ms, idle_pending_min: 750ms,
            softlockup_imminent_fraction: 0.25}
server:
  unix_socket: /tmp/x.sock
  socket_mode: "0600"
  socket_group: kvm
  max_watchers: 8
  max_inspect_in_flight: 3
  max_threads: 20
  max_request_bytes: 8192
  max_streams_per_connection: 4
  shutdown_grace: 5s
  tcp: {listen: "0.0.0.0:9443", tls_cert: /a, tls_key: /b, tls_client_ca: /c,
        allowed_clients: ["CN=ctl,O=ops", "spiffe://example.net/ctl"]}
metrics: {listen: "127.0.0.1:9999", max_domains: 10}
alertmanager: {urls: ["http://am:9093"], resend_interval: 1m}
logging: {level: debug, target: journald}
systemd: {watchdog_max_tick_age: 1m}
host: {thread_stats: proc}
execution: {workers: 2}
discovery: {max_concurrent: 2, no_kernel_retry_max: 1h}
introspection: {read_deadline: 100ms, memory_budget_mib: 16, profile_dir: /srv/profiles, debug_dir: "", ignore_guest_btf: true}
state_dir: /tmp/state
store: {enabled: false, max_age: 24h, max_size_mib: 32}
incidents: {enabled: false, lookback: 30s, max_bundle_kib: 64, max_bundles: 8}
)";

TEST(DaemonConfig, EveryKeyRoundTrips) {
  const char* text = kEveryKeyChanged;
  auto c = parse_config(text);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_EQ(c->libvirt_uri, "qemu+ssh://h/system");
  EXPECT_EQ(c->monitor_timeout, 1500ms);
  EXPECT_TRUE(c->use_monitor);
  EXPECT_FALSE(DaemonConfig{}.use_monitor);  // no monitor command unless asked for
  EXPECT_EQ(c->domains, (std::vector<std::string>{"web-*", "0b7c-uuid"}));
  EXPECT_EQ(c->sample_interval, 50ms);
  EXPECT_FALSE(c->introspection);
  EXPECT_EQ(c->history, 300s);
  EXPECT_EQ(c->starved_fraction, 0.9);
  EXPECT_EQ(c->server.socket_mode, 0600u);
  EXPECT_EQ(c->server.socket_group, "kvm");
  EXPECT_EQ(c->server.tcp_listen, "0.0.0.0:9443");
  EXPECT_EQ(c->server.tls_client_ca_file, "/c");
  EXPECT_EQ(c->server.shutdown_grace, 5s);
  EXPECT_EQ(c->server.max_inspect_in_flight, 3);
  EXPECT_EQ(c->server.max_threads, 20);
  EXPECT_EQ(c->server.max_request_bytes, 8192);
  EXPECT_EQ(c->server.max_streams_per_connection, 4);
  EXPECT_EQ(c->server.tls_allowed_clients, (std::vector<std::string>{"CN=ctl,O=ops", "spiffe://example.net/ctl"}));
  EXPECT_TRUE(DaemonConfig{}.server.tls_allowed_clients.empty());  // any certificate from the CA
  EXPECT_EQ(c->log_target, "journald");
  EXPECT_EQ(c->watchdog_max_tick_age, 60s);
  EXPECT_EQ(c->thread_stats, "proc");
  EXPECT_FALSE(c->store_enabled);
  EXPECT_EQ(c->store_max_age, 24h);
  EXPECT_EQ(c->store_max_size_mib, 32);
  EXPECT_EQ(store_path(*c), "");
  EXPECT_EQ(store_path(DaemonConfig{}), "/var/lib/stallmon/findings.db");
  EXPECT_FALSE(parse_config("store: {max_size_mib: 0}").ok());
  EXPECT_FALSE(validate(*parse_config("store: {max_age: 10m}")).ok()) << "at least an hour";
  EXPECT_FALSE(c->incidents_enabled);
  EXPECT_EQ(c->incidents_lookback, 30s);
  EXPECT_EQ(to_monitor_config(*c).incidents.max_bundle_bytes, 64u << 10);
  EXPECT_EQ(to_monitor_config(*c).incidents.max_bundles, 8u);
  EXPECT_FALSE(parse_config("incidents: {max_bundles: 0}").ok());
  EXPECT_FALSE(validate(*parse_config("incidents: {lookback: 11m}")).ok()) << "longer than sampling.history";
  EXPECT_TRUE(validate(*c).ok());
  auto again = parse_config(to_yaml(*c));
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(to_yaml(*again), to_yaml(*c));

  auto m = to_monitor_config(*c);
  EXPECT_EQ(m.sample_interval, 50ms);
  EXPECT_EQ(m.sampler.vcpu_history, 2400u);  // the newest 2 min at 20 Hz
  EXPECT_EQ(m.sampler.vcpu_history_coarse, 180u);  // 3 min more at 1 Hz
  EXPECT_FALSE(parse_config("sampling: {history: 1m, history_full_resolution: 2m}").ok() &&
               validate(*parse_config("sampling: {history: 1m, history_full_resolution: 2m}")).ok());
  EXPECT_FALSE(m.sampler.read_stacks);
  EXPECT_EQ(m.diagnosis.ipi_stall_min, 250ms);
  EXPECT_EQ(m.introspection_budget_bytes, 16ull << 20);
  EXPECT_EQ(to_monitor_config(DaemonConfig{}).introspection_budget_bytes, 64ull << 20);
  EXPECT_FALSE(parse_config("introspection: {memory_budget_mib: 4}").ok());  // below 8 MiB
  EXPECT_EQ(m.profile_dir, "/srv/profiles");
  EXPECT_EQ(m.debug_dir, "");
  EXPECT_TRUE(m.ignore_guest_btf);
  EXPECT_EQ(to_monitor_config(DaemonConfig{}).debug_dir, "/usr/lib/debug");
  EXPECT_FALSE(validate(*parse_config("introspection: {profile_dir: profiles}")).ok());  // relative
  ASSERT_TRUE(m.domain_filter);
  libvirt::DomainInfo d;
  d.name = "web-3";
  EXPECT_TRUE(m.domain_filter(d));
  d.name = "db-1";
  EXPECT_FALSE(m.domain_filter(d));
  d.uuid = "0b7c-uuid";
  EXPECT_TRUE(m.domain_filter(d));
}

TEST(DaemonConfig, MistakesAreErrorsNamingTheKey) {
  auto expect_error = [](const char* yaml, const std::string& key) {
    auto c = parse_config(yaml);
    ASSERT_FALSE(c.ok()) << yaml;
    EXPECT_EQ(c.error().message.rfind(key, 0), 0u) << c.error().message;
  };
  expect_error("sampling: {intervall: 1s}", "sampling.intervall");
  expect_error("nonsense: 1", "nonsense");
  expect_error("sampling: {interval: fast}", "sampling.interval");
  expect_error("sampling: {introspection: maybe}", "sampling.introspection");
  expect_error("diagnosis: {starved_fraction: 1.5}", "diagnosis.starved_fraction");
  expect_error("server: {socket_mode: 0x1b6}", "server.socket_mode");
  expect_error("server: {max_watchers: 0}", "server.max_watchers");
  expect_error("server: {max_inspect_in_flight: 0}", "server.max_inspect_in_flight");
  expect_error("server: {max_request_bytes: 10}", "server.max_request_bytes");
  expect_error("server: {max_streams_per_connection: many}", "server.max_streams_per_connection");
  expect_error("server: {tcp: {allowed_clients: ctl}}", "server.tcp.allowed_clients");
  expect_error("domains: {include: web}", "domains.include");
  EXPECT_FALSE(parse_config("libvirt: [").ok());
  EXPECT_TRUE(parse_config("").ok());
  EXPECT_TRUE(parse_config("sampling:\n").ok());  // an empty section

  DaemonConfig c;
  c.server.tcp_listen = "0.0.0.0:1";
  EXPECT_FALSE(validate(c).ok());  // TCP without TLS files
  c = {};
  c.log_level = "verbose";
  EXPECT_FALSE(validate(c).ok());
  c = {};
  c.server.unix_socket = "";
  EXPECT_FALSE(validate(c).ok());  // no listener at all
  // Threads for every watcher and inspect read, and some to spare.
  c = {};
  c.server.max_threads = c.server.max_watchers + c.server.max_inspect_in_flight + 3;
  auto v = validate(c);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().message.rfind("server.max_threads", 0), 0u) << v.error().message;
  c.server.max_threads += 1;
  EXPECT_TRUE(validate(c).ok());
}

TEST(DaemonConfig, ThreadStatsIsAutoBpfOrProc) {
  EXPECT_EQ(DaemonConfig{}.thread_stats, "auto");
  for (const char* v : {"auto", "bpf", "proc"}) {
    auto c = parse_config(std::string("host: {thread_stats: ") + v + "}");
    ASSERT_TRUE(c.ok()) << v << ": " << c.error().to_string();
    EXPECT_EQ(c->thread_stats, v);
    EXPECT_TRUE(validate(*c).ok());
    auto again = parse_config(to_yaml(*c));  // round-trips through the effective form
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->thread_stats, v);
  }
  for (const char* bad : {"host: {thread_stats: ebpf}", "host: {thread_stats: [bpf]}", "host: {thread_stats: }"}) {
    auto c = parse_config(bad);
    ASSERT_FALSE(c.ok()) << bad;
    EXPECT_EQ(c.error().message, "host.thread_stats: expected auto, bpf or proc") << bad;
  }
  DaemonConfig c;
  c.thread_stats = "BPF";  // as a flag would set it
  auto v = validate(c);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().message.rfind("host.thread_stats", 0), 0u) << v.error().message;
  // Read once at start-up: a reload that changes it says so.
  DaemonConfig b;
  b.thread_stats = "proc";
  EXPECT_EQ(plan_reload(DaemonConfig{}, b).restart_needed, std::vector<std::string>{"host.thread_stats"});
}

// A source that only has to exist: select_thread_stats passes it on untouched.
class NamedSource final : public host::ThreadStatSource {
 public:
  std::string_view kind() const override { return "bpf-task-iter"; }
  std::string description() const override { return "test"; }
  Result<void> watch(int32_t) override { return Ok(); }
  void unwatch(int32_t) override {}

 protected:
  Result<void> run_pass(host::ThreadStatPass&) override { return Ok(); }
};

// What host::choose_thread_stat_source returns on a host with BPF (bpf_ok) or without.
struct FakeChooser {
  bool bpf_ok = true;
  std::vector<bool> allow_bpf;  // what each call was asked
  host::StatSourceChoice operator()(const host::StatSourceOptions& o) {
    allow_bpf.push_back(o.allow_bpf);
    host::StatSourceChoice c;
    c.kind = "proc";
    if (!o.allow_bpf) {
      c.reason = "/proc per thread: BPF disabled by configuration";
    } else if (!bpf_ok) {
      c.reason = "/proc per thread: BPF unavailable: loading the task iterator program: Operation not permitted";
    } else {
      c.source = std::make_unique<NamedSource>();
      c.kind = "bpf-task-iter";
      c.reason = "one BPF task-iterator pass per period";
    }
    return c;
  }
};

TEST(ThreadStatsChoice, AutoTakesBpfWhenAvailableElseProcWithTheReason) {
  DaemonConfig c;  // auto
  FakeChooser with{true}, without{false};
  auto a = select_thread_stats(c, std::ref(with));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->kind, "bpf-task-iter");
  EXPECT_NE(a->source, nullptr);
  EXPECT_EQ(with.allow_bpf, std::vector<bool>{true});
  auto b = select_thread_stats(c, std::ref(without));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->kind, "proc");
  EXPECT_EQ(b->source, nullptr);
  EXPECT_NE(b->reason.find("Operation not permitted"), std::string::npos) << b->reason;
}

TEST(ThreadStatsChoice, BpfUnavailableIsAStartUpErrorSayingWhy) {
  DaemonConfig c;
  c.thread_stats = "bpf";
  FakeChooser with{true}, without{false};
  auto a = select_thread_stats(c, std::ref(with));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->kind, "bpf-task-iter");
  auto b = select_thread_stats(c, std::ref(without));
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().code, ErrorCode::kUnsupported);
  EXPECT_EQ(b.error().message.rfind("host.thread_stats is bpf but the BPF task iterator is unavailable", 0), 0u)
      << b.error().message;
  EXPECT_NE(b.error().message.find("Operation not permitted"), std::string::npos) << b.error().message;
}

TEST(ThreadStatsChoice, ProcNeverTriesBpf) {
  DaemonConfig c;
  c.thread_stats = "proc";
  FakeChooser with{true};
  auto a = select_thread_stats(c, std::ref(with));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->kind, "proc");
  EXPECT_EQ(a->source, nullptr);
  EXPECT_EQ(a->reason, "/proc per thread: host.thread_stats is proc");
  EXPECT_EQ(with.allow_bpf, std::vector<bool>{false});
}

TEST(DaemonConfig, Durations) {
  EXPECT_EQ(*parse_duration("100ms"), 100ms);
  EXPECT_EQ(*parse_duration("1.5s"), 1500ms);
  EXPECT_EQ(*parse_duration("10m"), 600s);
  EXPECT_EQ(*parse_duration("2h"), 7200s);
  EXPECT_EQ(*parse_duration("250us"), 250us);
  EXPECT_EQ(*parse_duration("3"), 3s);
  EXPECT_FALSE(parse_duration("-1s").ok());
  EXPECT_FALSE(parse_duration("1x").ok());
  EXPECT_FALSE(parse_duration("ms").ok());
  EXPECT_EQ(format_duration(100ms), "100ms");
  EXPECT_EQ(format_duration(600s), "10m");
  EXPECT_EQ(format_duration(1500ms), "1500ms");
}

TEST(DaemonConfig, FlagsWinOverTheFileAlsoOnReload) {
  char tmpl[] = "/tmp/stallmond-config-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string path = dir + "/c.yaml";
  { std::ofstream(path) << "libvirt: {uri: \"test:///default\"}\nlogging: {level: warn}\n"; }
  Options o;
  o.config_path = path;
  o.overrides.push_back([](DaemonConfig& c) { c.log_level = "debug"; });
  std::string source;
  auto c = load_configuration(o, &source);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_EQ(source, path);
  EXPECT_EQ(c->libvirt_uri, "test:///default");
  EXPECT_EQ(c->log_level, "debug");
  o.config_path = dir + "/missing.yaml";
  EXPECT_FALSE(load_configuration(o, &source).ok());
  std::filesystem::remove_all(dir);
}

TEST(DaemonConfig, ReloadAppliesTheLogLevelAndNamesWhatNeedsARestart) {
  DaemonConfig a, b;
  b.log_level = "debug";
  b.ipi_stall_min = 1s;
  b.server.tls_cert_file = "/x";
  auto plan = plan_reload(a, b);
  EXPECT_EQ(plan.applied, std::vector<std::string>{"logging.level"});
  EXPECT_EQ(plan.restart_needed, (std::vector<std::string>{"diagnosis.ipi_stall_min", "server.tcp.tls_cert"}));
  EXPECT_TRUE(plan_reload(a, a).applied.empty());
  EXPECT_TRUE(plan_reload(a, a).restart_needed.empty());
}

// The leaf keys of the effective YAML form ("server.tcp.listen"), in order.
std::vector<std::string> leaf_keys(const std::string& yaml) {
  std::vector<std::string> keys, path;
  std::istringstream in(yaml);
  for (std::string line; std::getline(in, line);) {
    const size_t indent = line.find_first_not_of(' ');
    const std::string key = line.substr(indent, line.find(':') - indent);
    path.resize(indent / 2);
    if (line.back() == ':') {
      path.push_back(key);
      continue;
    }
    std::string full;
    for (const auto& p : path) full += p + ".";
    keys.push_back(full + key);
  }
  return keys;
}

// One table drives parsing, printing and the reload plan: a configuration that differs from the
// defaults in every key has every key in the plan, exactly once, and only the log level and the
// store's retention applied.
TEST(DaemonConfig, ReloadPlanNamesEveryChangedKeyFromTheSameTable) {
  const char* every = kEveryKeyChanged;
  auto c = parse_config(every);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  const auto all = leaf_keys(to_yaml(DaemonConfig{}));
  EXPECT_EQ(leaf_keys(to_yaml(*c)), all);
  auto plan = plan_reload(DaemonConfig{}, *c);
  EXPECT_EQ(plan.applied, (std::vector<std::string>{"logging.level", "store.max_age", "store.max_size_mib"}));
  std::vector<std::string> named = plan.applied;
  named.insert(named.end(), plan.restart_needed.begin(), plan.restart_needed.end());
  std::sort(named.begin(), named.end());
  auto expected = all;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(named, expected);
  // A vocabulary key is checked where it is parsed, with the key named.
  auto loud = parse_config("logging: {level: loud}");
  ASSERT_FALSE(loud.ok());
  EXPECT_NE(loud.error().message.find("logging.level: expected trace"), std::string::npos) << loud.error().message;
}

TEST(SamplingLiveness, AStaleRunningDomainStopsTheKeepAlive) {
  auto now = diagnosis::Timestamp(std::chrono::seconds(1'700'000'100));
  core::DomainSummary fresh;
  fresh.name = "a";
  fresh.state = libvirt::DomainRunState::kRunning;
  fresh.last_tick = now - 200ms;
  core::DomainSummary stale = fresh;
  stale.name = "b";
  stale.last_tick = now - 45s;
  core::DomainSummary new_one = fresh;
  new_one.name = "c";
  new_one.last_tick.reset();
  new_one.watched_since = now - 2s;
  std::string why;
  EXPECT_TRUE(sampling_alive({}, now, 30s, &why));
  EXPECT_TRUE(sampling_alive({fresh, new_one}, now, 30s, &why));
  EXPECT_FALSE(sampling_alive({fresh, stale}, now, 30s, &why));
  EXPECT_NE(why.find("domain b last ticked 45 s ago"), std::string::npos) << why;
  stale.process_gone = true;  // a gone qemu does not tick: not a stall of ours
  EXPECT_TRUE(sampling_alive({fresh, stale}, now, 30s, &why));
  stale.process_gone = false;
  stale.state = libvirt::DomainRunState::kPaused;
  EXPECT_TRUE(sampling_alive({stale}, now, 30s, &why));
}

}  // namespace
}  // namespace stallmon::daemon
