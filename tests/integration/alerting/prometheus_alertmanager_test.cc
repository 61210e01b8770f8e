// SPDX-License-Identifier: Apache-2.0
// stallmon's alerting edge against the real Debian prometheus and prometheus-alertmanager, on
// loopback, during seed case 1 (vCPU 2 frozen under the IPI generator):
//
//   StallMonitor (real libvirt, real guest) ──/metrics──▶ prometheus (1 s scrape/eval, the
//   shipped deploy/prometheus/stallmon-rules.yml) ──▶ a rule fires (GET /api/v1/alerts)
//   StallMonitor ──AlertPusher──▶ alertmanager (POST /api/v2/alerts) ──▶ GET /api/v2/alerts
//   shows the finding (the incident's root; the IPI stall summarised on it, not an alert of its
//   own); after the thaw its resolution arrives (the alert leaves the active list
//   long before its endsAt margin, and the webhook receiver gets status "resolved").
//
// Prometheus and Alertmanager run as children with temporary data directories and free
// loopback ports; they are killed at the end (and by PR_SET_PDEATHSIG if this process dies).
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "stallmon/alerting/alerting.h"
#include "stallmon/diagnosis/finding.h"
#include "stallmon/core/stall_monitor.h"
#include "stallmon/introspect/ram_layout.h"
#include "stallmon/libvirt/domain_watcher.h"
#include "testbed/guest.h"

namespace tb = stallmon::testbed;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace stallmon::alerting {
namespace {

const bool kOptions = [] {
  tb::GuestOptions o;
  o.tag = "alerting";
  o.scenario = "ipi-module";  // on_each_cpu: a frozen idle CPU is still sent the IPI
  o.watchdog_thresh = 5;
  tb::set_shared_guest_options(o);
  return true;
}();

int free_loopback_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

// A long-running child whose output goes to a log file; SIGTERM then SIGKILL on destruction.
class Service {
 public:
  Service(const std::vector<std::string>& argv, const fs::path& log) : log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      int devnull = open("/dev/null", O_RDONLY);
      if (devnull >= 0) dup2(devnull, 0);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
  }
  ~Service() { stop(); }
  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 100; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(50ms);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  bool running() const { return pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == 0; }
  std::string log_tail() const {
    std::ifstream in(log_);
    std::string s((std::istreambuf_iterator<char>(in)), {});
    return s.size() > 3000 ? s.substr(s.size() - 3000) : s;
  }

 private:
  pid_t pid_ = -1;
  fs::path log_;
};

std::optional<json> get_json(int port, const std::string& path) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2s);
  cli.set_read_timeout(5s);
  auto res = cli.Get(path);
  if (!res || res->status != 200) return std::nullopt;
  try {
    return json::parse(res->body);
  } catch (...) {
    return std::nullopt;
  }
}

template <class Pred>
bool eventually(Pred pred, Clock::duration timeout, Clock::duration every = 500ms) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(every);
  }
  return pred();
}

// Webhook receiver for Alertmanager notifications (loopback).
class Webhook {
 public:
  Webhook() {
    srv_.new_task_queue = [] { return new httplib::ThreadPool(1); };
    srv_.Post("/hook", [this](const httplib::Request& req, httplib::Response&) {
      std::lock_guard l(mu_);
      try {
        bodies_.push_back(json::parse(req.body));
      } catch (...) {
      }
    });
    port_ = srv_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { srv_.listen_after_bind(); });
    while (!srv_.is_running()) std::this_thread::yield();
  }
  ~Webhook() {
    srv_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  // Every notification so far, oldest first.
  std::vector<json> bodies() {
    std::lock_guard l(mu_);
    return bodies_;
  }
  // Whether a notification with `status` carried an alert whose labels satisfy pred.
  template <class Pred>
  bool saw(const std::string& status, Pred pred) {
    std::lock_guard l(mu_);
    for (const auto& b : bodies_) {
      for (const auto& a : b.value("alerts", json::array())) {
        if (a.value("status", "") == status && pred(a["labels"])) return true;
      }
    }
    return false;
  }

 private:
  httplib::Server srv_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mu_;
  std::vector<json> bodies_;
};

class AlertingStack : public tb::GuestTest {};

// stallmon's side of the stack on the shared guest: the monitor over the real libvirt layer and
// its alerting service (/metrics on a free loopback port, pushing to `alertmanager_url` with
// `host_label` as every alert's host). error() says why it did not start.
class Agent {
 public:
  Agent(const std::string& domain, const std::string& alertmanager_url, const std::string& host_label) {
    core::MonitorConfig mc;
    mc.domain_filter = [domain](const libvirt::DomainInfo& d) { return d.name == domain; };
    monitor_ = std::make_unique<core::StallMonitor>(mc);
    libvirt::WatcherOptions wo;
    wo.ram_layout_resolver = [](const introspect::HmpCommand& hmp) {
      return introspect::resolve_ram_layout(hmp);
    };
    watcher_ = std::make_unique<libvirt::DomainWatcher>(wo);
    monitor_->attach(*watcher_);
    AlertingConfig ac;
    ac.metrics_listen = "127.0.0.1:0";
    ac.alertmanager_urls = {alertmanager_url};
    ac.pusher.alert.host = host_label;
    ac.pusher.resend_interval = 2s;
    // Long enough that an alert leaving Alertmanager's active list within seconds of the end of a
    // fault can only be the pushed resolution, not the expiry of its last endsAt.
    ac.pusher.ends_at_margin = 5min;
    auto svc = start(*monitor_, ac);
    if (!svc.ok()) {
      error_ = svc.error().to_string();
      return;
    }
    svc_ = std::move(*svc);
    if (auto r = watcher_->start(); !r.ok()) error_ = r.error().to_string();
  }
  ~Agent() {
    if (svc_) svc_->stop();
    watcher_->stop();
    monitor_->stop();
  }
  const std::string& error() const { return error_; }
  core::StallMonitor& monitor() { return *monitor_; }
  AlertingService& service() { return *svc_; }

 private:
  std::unique_ptr<core::StallMonitor> monitor_;
  std::unique_ptr<libvirt::DomainWatcher> watcher_;
  std::unique_ptr<AlertingService> svc_;
  std::string error_;
};

// Prometheus's and Alertmanager's data and configuration for one test, removed at the end.
struct ScratchDir {
  fs::path path;
  explicit ScratchDir(const std::string& tag)
      : path(fs::temp_directory_path() / ("stallmon-" + tag + "-" + std::to_string(getpid()))) {
    fs::create_directories(path / "prometheus");
    fs::create_directories(path / "alertmanager");
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Prometheus and Alertmanager for one test: free loopback ports picked up front (the
// configuration files name them); started as children from prometheus.yml and alertmanager.yml
// once the test has written them into `dir`, with their data and logs there too.
class Backends {
 public:
  const int am_port = free_loopback_port();
  const int prom_port = free_loopback_port();

  void start(const fs::path& dir) {
    alertmanager_.emplace(std::vector<std::string>{"prometheus-alertmanager",
                                                   "--config.file=" + (dir / "alertmanager.yml").string(),
                                                   "--storage.path=" + (dir / "alertmanager").string(),
                                                   "--web.listen-address=127.0.0.1:" + std::to_string(am_port),
                                                   "--cluster.listen-address=", "--log.level=warn"},
                          dir / "alertmanager.log");
    prometheus_.emplace(std::vector<std::string>{"prometheus", "--config.file=" + (dir / "prometheus.yml").string(),
                                                 "--storage.tsdb.path=" + (dir / "prometheus").string(),
                                                 "--web.listen-address=127.0.0.1:" + std::to_string(prom_port),
                                                 "--log.level=warn"},
                        dir / "prometheus.log");
  }
  Service& alertmanager() { return *alertmanager_; }
  Service& prometheus() { return *prometheus_; }
  bool alertmanager_up() const { return get_json(am_port, "/api/v2/status").has_value(); }
  // Prometheus has scraped stallmond: up == 1 for the stallmon job (with that `host` label,
  // unless it is empty).
  bool scraped(const std::string& host = "") const {
    auto r = get_json(prom_port, "/api/v1/query?query=up%7Bjob%3D%22stallmon%22%7D");
    if (!r) return false;
    for (const auto& series : (*r)["data"]["result"]) {
      if (series["value"][1] == "1" && (host.empty() || series["metric"].value("host", "") == host)) return true;
    }
    return false;
  }

 private:
  std::optional<Service> alertmanager_, prometheus_;
};

bool introspection_ready(core::StallMonitor& monitor, const std::string& domain) {
  auto h = monitor.wait_introspection(domain, 1000ms);
  return h.ok() && h->ok();
}

TEST_F(AlertingStack, PrometheusRuleFiresAndAlertmanagerGetsPushedFindingAndResolution) {
  auto& g = guest();
  const std::string name = g.name();

  // --- stallmon: monitor + alerting over the real libvirt layer ----------------------------
  const ScratchDir scratch("alerting");
  const fs::path& dir = scratch.path;
  Webhook hook;
  Backends backends;
  const int am_port = backends.am_port, prom_port = backends.prom_port;
  ASSERT_GT(am_port, 0);
  ASSERT_GT(prom_port, 0);
  Agent agent(name, "http://127.0.0.1:" + std::to_string(am_port), "testhost");
  ASSERT_EQ(agent.error(), "");
  core::StallMonitor& monitor = agent.monitor();
  const int metrics_port = agent.service().metrics_port();

  // --- Alertmanager --------------------------------------------------------------------------
  {
    std::ofstream am(dir / "alertmanager.yml");
    am << "route:\n"
          "  receiver: hook\n"
          "  group_by: [alertname, domain]\n"
          "  group_wait: 1s\n"
          "  group_interval: 1s\n"
          "  repeat_interval: 1h\n"
          "receivers:\n"
          "  - name: hook\n"
          "    webhook_configs:\n"
          "      - url: http://127.0.0.1:" << hook.port() << "/hook\n"
          "        send_resolved: true\n";
  }

  // --- Prometheus ------------------------------------------------------------------------------
  // The shipped guest rules are the fallback for a stallmond whose alerts do not get through
  // (they stay silent while it has an Alertmanager URL without failed POSTs): this Prometheus
  // drops stallmond's push counters at the scrape, as if stallmond had no Alertmanager, so the
  // rules fire while the same stallmond's push is checked below.
  {
    std::ofstream p(dir / "prometheus.yml");
    p << "global:\n"
         "  scrape_interval: 1s\n"
         "  scrape_timeout: 1s\n"
         "  evaluation_interval: 1s\n"
         "rule_files:\n"
         "  - " << STALLMON_RULES_FILE << "\n"
         "scrape_configs:\n"
         "  - job_name: stallmon\n"
         "    static_configs:\n"
         "      - targets: ['127.0.0.1:" << metrics_port << "']\n"
         "    metric_relabel_configs:\n"
         "      - source_labels: [__name__]\n"
         "        regex: stallmon_alertmanager_posts_total\n"
         "        action: drop\n";
  }
  backends.start(dir);
  Service& alertmanager = backends.alertmanager();
  Service& prometheus = backends.prometheus();

  ASSERT_TRUE(eventually([&] { return backends.alertmanager_up(); }, 30s))
      << "alertmanager did not come up:\n" << alertmanager.log_tail();
  // The scrape works: up == 1 for our target, and a stallmon_ series arrived with our domain.
  ASSERT_TRUE(eventually([&] { return backends.scraped(); }, 60s))
      << "prometheus never scraped stallmond:\n" << prometheus.log_tail();

  // Introspection ready (the IPI stall is a guest-side finding).
  ASSERT_TRUE(eventually([&] { return introspection_ready(monitor, name); }, 120s))
      << "introspection never became ready";
  std::this_thread::sleep_for(3s);
  EXPECT_TRUE(monitor.engine().active_findings(name).empty()) << "findings before any fault";
  const std::string q_domain = "stallmon_vcpu_run_seconds_total%7Bdomain%3D%22" + name + "%22%7D";
  ASSERT_TRUE(eventually(
      [&] {
        auto r = get_json(prom_port, "/api/v1/query?query=" + q_domain);
        return r && (*r)["data"]["result"].size() == static_cast<size_t>(g.vcpu_count());
      },
      20s))
      << "per-vCPU series of " << name << " not in prometheus";

  // --- The fault ---------------------------------------------------------------------------
  const auto is_ours = [&](const json& labels) { return labels.value("domain", "") == name; };
  // The first alert in Alertmanager's list (active ones only) whose labels satisfy pred.
  const auto am_alert = [&](auto pred) -> std::optional<json> {
    auto r = get_json(am_port, "/api/v2/alerts");
    if (!r) return std::nullopt;
    for (const auto& a : *r) {
      if (pred(a["labels"])) return a;
    }
    return std::nullopt;
  };
  const auto am_dump = [&] { return get_json(am_port, "/api/v2/alerts").value_or(json()).dump(); };

  // Seed case 1 proper: the freeze must leave the rest of the VM running (a freeze that catches
  // the thread holding QEMU's big lock is the VM-wide scenario); the injector retries for that.
  tb::FreezeOptions fo;
  fo.want_case = "vcpu-only";
  fo.attempts = 5;
  fo.want_idle = true;  // seed case 1's shape: the guest CPU idle when its vCPU is frozen
  auto f = g.freeze_vcpu(2, fo);
  ASSERT_TRUE(f.applied()) << f.error();
  std::cout << "freeze: " << f.status().dump() << std::endl;
  ASSERT_EQ(f.freeze_case(), "vcpu-only");
  const auto t_freeze = Clock::now();
  const auto since_freeze = [&] {
    return std::chrono::duration<double>(Clock::now() - t_freeze).count();
  };

  // A shipped Prometheus rule fires on the scraped series.
  std::string fired;
  EXPECT_TRUE(eventually(
      [&] {
        auto r = get_json(prom_port, "/api/v1/alerts");
        if (!r) return false;
        for (const auto& a : (*r)["data"]["alerts"]) {
          const std::string an = a["labels"].value("alertname", "");
          if (a.value("state", "") == "firing" && is_ours(a["labels"]) &&
              (an == "StallmonGuestIpiStall" || an == "StallmonVcpuHostBlocked")) {
            fired = an;
            return true;
          }
        }
        return false;
      },
      60s))
      << "no stallmon rule fired; prometheus alerts: "
      << get_json(prom_port, "/api/v1/alerts").value_or(json()).dump();
  std::cout << "prometheus rule firing: " << fired << " after " << since_freeze() << " s"
            << std::endl;

  // Alertmanager received stallmond's pushed finding, with labels and annotations: the host
  // block of vCPU 2, host-caused, the root of its incident. The IPI stall rooted at CPU2 is a
  // symptom: summarised on that alert, never an alert of its own (one fault, one page).
  std::optional<json> blocked;
  EXPECT_TRUE(eventually(
      [&] {
        blocked = am_alert([&](const json& l) {
          return is_ours(l) && l.value("source", "") == "stallmond" &&
                 l.value("kind", "") == "VCPU_HOST_BLOCKED" && l.value("cpus", "") == "2";
        });
        return blocked.has_value();
      },
      60s))
      << "alertmanager never got the pushed VCPU_HOST_BLOCKED: " << am_dump();
  std::cout << "alertmanager has the pushed VCPU_HOST_BLOCKED after " << since_freeze()
            << " s: " << blocked.value_or(json()).dump() << std::endl;
  EXPECT_TRUE(eventually(
      [&] {
        blocked = am_alert([&](const json& l) { return is_ours(l) && l.value("kind", "") == "VCPU_HOST_BLOCKED"; });
        return blocked && (*blocked)["annotations"].value("symptoms", "").find("GUEST_IPI_STALL") != std::string::npos;
      },
      30s))
      << "the IPI stall on CPU2 is not summarised on the root alert: " << am_dump();
  std::cout << "alertmanager: the IPI stall summarised on the root after " << since_freeze() << " s" << std::endl;
  size_t ours = 0;
  for (const auto& a : get_json(am_port, "/api/v2/alerts").value_or(json::array()))
    if (is_ours(a["labels"]) && a["labels"].value("source", "") == "stallmond") ++ours;
  EXPECT_EQ(ours, 1u) << "one fault, one alert: " << am_dump();
  ASSERT_TRUE(blocked);
  EXPECT_EQ((*blocked)["labels"].value("host", ""), "testhost");
  EXPECT_EQ((*blocked)["labels"].value("severity", ""), "critical");
  EXPECT_EQ((*blocked)["labels"].value("cause", ""), "host_blocked");
  EXPECT_EQ((*blocked)["labels"].value("incident_role", ""), "root");
  EXPECT_EQ((*blocked)["status"].value("state", ""), "active");
  EXPECT_FALSE((*blocked)["annotations"].value("summary", "").empty());
  EXPECT_FALSE((*blocked)["annotations"].value("evidence", "").empty());
  const std::string id = (*blocked)["labels"].value("finding_id", "");
  const auto id_active = [&] {
    return am_alert([&](const json& l) { return l.value("finding_id", "") == id; }).has_value();
  };

  // Still active right before the thaw, so what follows is the resolution of a live alert.
  std::this_thread::sleep_for(3s);
  ASSERT_TRUE(id_active()) << "the pushed alert left alertmanager while vCPU 2 was frozen";

  // Thaw: the finding resolves and its resolution (endsAt = resolution time) reaches
  // Alertmanager long before the 5 min endsAt margin could expire it.
  const auto t_thaw = Clock::now();
  f.release();
  EXPECT_TRUE(eventually([&] { return !id_active(); }, 90s))
      << "the pushed alert stayed active in alertmanager after the thaw";
  const double resolved_after = std::chrono::duration<double>(Clock::now() - t_thaw).count();
  std::cout << "alertmanager: alert " << id << " resolved " << resolved_after
            << " s after the thaw (endsAt margin 300 s)" << std::endl;
  EXPECT_LT(resolved_after, 120.0) << "gone only by expiry, not by the pushed resolution";
  EXPECT_TRUE(eventually(
      [&] {
        return hook.saw("resolved",
                        [&](const json& l) { return l.value("finding_id", "") == id; });
      },
      30s))
      << "no resolved notification from alertmanager for " << id;

  // The pusher's own counters show successful POSTs and no drops.
  auto* p = agent.service().pusher();
  ASSERT_NE(p, nullptr);
  const auto st = p->stats();
  EXPECT_GT(st.targets.at(0).posts_ok, 0u);
  EXPECT_EQ(st.events_dropped, 0u);
  EXPECT_TRUE(alertmanager.running()) << alertmanager.log_tail();
  EXPECT_TRUE(prometheus.running()) << prometheus.log_tail();
}

// A shipped configuration file with test-only substitutions, each of which must match: when the
// shipped file changes shape the test says so instead of silently testing something else.
std::string shipped_with(const fs::path& file, const std::vector<std::pair<std::string, std::string>>& subs,
                         std::string* unmatched) {
  std::ifstream in(file);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  if (text.empty()) *unmatched += "cannot read " + file.string() + "; ";
  for (const auto& [from, to] : subs) {
    const auto at = text.find(from);
    if (at == std::string::npos) {
      *unmatched += "'" + from + "' not in " + file.filename().string() + "; ";
      continue;
    }
    text.replace(at, from.size(), to);
  }
  return text;
}

// Issue 15's acceptance "one fault, one alert", through the shipped alerting configuration: the
// shipped Prometheus example (its host relabelling, the shipped rules, alerts sent to
// Alertmanager) and the shipped Alertmanager example (routes, grouping and inhibit rules as
// shipped; only the receivers point at this test's webhook, the intervals are seconds, and
// group_interval is 2 s so that any second page for the guest arrives within the test). Two
// faults, one after the other on the shared guest:
//   - vCPU 1's thread throttled to 5 ms per 100 ms for 12 s while the guest keeps that CPU busy:
//     one incident, root VCPU_HOST_STARVED on CPU 1, cause host-starved;
//   - the whole qemu stopped (SIGSTOP) for 6 s: one incident, root VM_WIDE_STALL, cause
//     host-blocked (its vCPUs' blocks, the IPI waits and the guest's stale watchdogs after the
//     stop are its symptoms).
// Each must reach the webhook as exactly one alert (the incident's root): any symptom is
// inhibited, and Prometheus's own guest rules stay silent while stallmond delivers (their
// fallback guard), before, during and after the fault. (With only the inhibit rules, a rule alert
// that outlived the root's resolution by a scrape paged a second time after the SIGSTOP, 1 run
// in 4.)
TEST_F(AlertingStack, ThrottleAndSigstopEachPageOnceThroughTheShippedConfiguration) {
  auto& g = guest();
  const std::string name = g.name();

  const ScratchDir scratch("pages");
  const fs::path& dir = scratch.path;
  Webhook hook;
  Backends backends;
  const int am_port = backends.am_port, prom_port = backends.prom_port;
  ASSERT_GT(am_port, 0);
  ASSERT_GT(prom_port, 0);
  // The host label: what the shipped Prometheus relabelling derives from the scrape address.
  // The inhibit rules match stallmond's alerts to Prometheus's on it.
  Agent agent(name, "http://127.0.0.1:" + std::to_string(am_port), "127.0.0.1");
  ASSERT_EQ(agent.error(), "");
  core::StallMonitor& monitor = agent.monitor();
  const int metrics_port = agent.service().metrics_port();

  std::string unmatched;
  const std::string hook_url = "http://127.0.0.1:" + std::to_string(hook.port()) + "/hook";
  {
    std::ofstream am(dir / "alertmanager.yml");
    am << shipped_with(STALLMON_ALERTMANAGER_EXAMPLE,
                       {{"group_interval: 1m", "group_interval: 2s"},
                        {"http://127.0.0.1:5001/hypervisor", hook_url},
                        {"http://127.0.0.1:5001/guests", hook_url}},
                       &unmatched);
  }
  {
    std::ofstream p(dir / "prometheus.yml");
    p << shipped_with(STALLMON_PROMETHEUS_EXAMPLE,
                      {{"scrape_interval: 15s", "scrape_interval: 1s"},
                       {"evaluation_interval: 15s", "evaluation_interval: 1s"},
                       {"/etc/prometheus/stallmon-rules.yml", STALLMON_RULES_FILE},
                       {R"(["am1.example.net:9093", "am2.example.net:9093", "am3.example.net:9093"])",
                        "[\"127.0.0.1:" + std::to_string(am_port) + "\"]"},
                       {"scrape_interval: 5s", "scrape_interval: 1s"},
                       {"scrape_timeout: 4s", "scrape_timeout: 1s"},
                       {R"(["hv1.example.net:9910", "hv2.example.net:9910"])",
                        "[\"127.0.0.1:" + std::to_string(metrics_port) + "\"]"}},
                      &unmatched);
  }
  ASSERT_TRUE(unmatched.empty()) << unmatched;
  backends.start(dir);
  Service& alertmanager = backends.alertmanager();
  Service& prometheus = backends.prometheus();

  ASSERT_TRUE(eventually([&] { return backends.alertmanager_up(); }, 30s))
      << "alertmanager did not come up:\n" << alertmanager.log_tail();
  ASSERT_TRUE(eventually([&] { return backends.scraped("127.0.0.1"); }, 60s))
      << "prometheus never scraped stallmond (with the host label):\n" << prometheus.log_tail();
  ASSERT_TRUE(eventually([&] { return introspection_ready(monitor, name); }, 120s))
      << "introspection never became ready";
  std::this_thread::sleep_for(3s);
  ASSERT_TRUE(monitor.engine().active_findings(name).empty()) << "findings before any fault";

  const auto is_ours = [&](const json& labels) { return labels.value("domain", "") == name; };
  const auto am_ours = [&] {
    std::vector<json> out;
    for (const auto& a : get_json(am_port, "/api/v2/alerts").value_or(json::array()))
      if (is_ours(a["labels"])) out.push_back(a);
    return out;
  };
  const auto prom_firing_ours = [&] {
    size_t n = 0;
    if (auto r = get_json(prom_port, "/api/v1/alerts")) {
      for (const auto& a : (*r)["data"]["alerts"])
        if (is_ours(a["labels"]) && a.value("state", "") == "firing") ++n;
    }
    return n;
  };

  // One fault: apply, hold, undo; then wait until stallmond, Prometheus and Alertmanager have
  // all let go of the guest, and a little more for a late page (group_wait 5 s, group_interval
  // 2 s). Checks the incident roots the engine opened and the alerts the webhook received.
  const auto one_fault = [&](const std::string& what, const std::function<tb::Injector()>& apply,
                             std::chrono::seconds hold, const std::string& want_kind,
                             const std::string& want_cause, int want_cpu) {
    SCOPED_TRACE(what);
    const auto since = std::chrono::time_point_cast<diagnosis::Duration>(std::chrono::system_clock::now());
    const size_t pages_before = hook.bodies().size();
    const auto t0 = Clock::now();
    const auto at = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
    tb::Injector f = apply();
    ASSERT_TRUE(f.applied()) << f.error();
    std::cout << what << ": applied " << f.status().dump() << std::endl;
    std::optional<double> pushed_at;
    const auto t_undo = Clock::now() + hold;
    while (Clock::now() < t_undo) {
      if (!pushed_at) {
        for (const auto& a : am_ours())
          if (a["labels"].value("source", "") == "stallmond") pushed_at = at();
      }
      std::this_thread::sleep_for(200ms);
    }
    f.release();
    std::cout << what << ": undone after " << at() << " s; stallmond's first alert in alertmanager after "
              << (pushed_at ? std::to_string(*pushed_at) + " s" : std::string("-")) << std::endl;
    EXPECT_TRUE(eventually(
        [&] {
          return monitor.engine().active_findings(name).empty() && prom_firing_ours() == 0 &&
                 am_ours().empty();
        },
        90s))
        << "still active after the fault: engine " << monitor.engine().active_findings(name).size()
        << " findings, prometheus " << prom_firing_ours() << " firing, alertmanager " << json(am_ours()).dump();
    std::this_thread::sleep_for(8s);

    diagnosis::FindingQuery q;
    q.domain = name;
    q.since = since;
    std::vector<diagnosis::Finding> roots;
    for (auto& fd : monitor.engine().list_findings(q)) {
      std::cout << "  " << diagnosis::to_string(fd.kind) << " [" << diagnosis::to_string(fd.cause)
                << (fd.cause_evaluating ? "?" : "") << "] cpus";
      for (int c : fd.cpus) std::cout << " " << c;
      std::cout << (fd.is_incident_root() ? " ROOT" : " symptom of " + fd.incident_id) << " recurrences "
                << fd.recurrences << " id " << fd.id << std::endl;
      if (fd.is_incident_root()) roots.push_back(fd);
    }
    ASSERT_EQ(roots.size(), 1u) << "one fault, one incident";
    EXPECT_EQ(diagnosis::to_string(roots[0].kind), want_kind);
    EXPECT_EQ(diagnosis::to_string(roots[0].cause), want_cause);
    if (want_cpu >= 0) {
      EXPECT_EQ(roots[0].cpus, std::vector<int>{want_cpu});
    }

    // The pages: every distinct alert about this guest the webhook was notified of as firing.
    std::set<std::string> firing;
    std::string shown;
    const auto bodies = hook.bodies();
    for (size_t i = pages_before; i < bodies.size(); ++i) {
      for (const auto& a : bodies[i].value("alerts", json::array())) {
        if (!is_ours(a["labels"])) continue;
        shown += "  " + a.value("status", "") + " " + a["labels"].dump() + "\n";
        if (a.value("status", "") == "firing") firing.insert(a["labels"].dump());
      }
    }
    std::cout << what << ": " << bodies.size() - pages_before << " notifications, " << firing.size()
              << " distinct firing alert(s) for the guest:\n" << shown;
    ASSERT_EQ(firing.size(), 1u) << "one fault, one page";
    const json page = json::parse(*firing.begin());
    EXPECT_EQ(page.value("source", ""), "stallmond");
    EXPECT_EQ(page.value("incident_role", ""), "root");
    EXPECT_EQ(page.value("kind", ""), want_kind);
    EXPECT_EQ(page.value("finding_id", ""), roots[0].id);
  };

  // The throttle starves a vCPU only while it wants to run: a busy loop on guest CPU 1.
  const auto busy = g.run("tb-load start 1", 30s);
  ASSERT_EQ(busy.exit_code, 0) << busy.err;
  one_fault("throttle of vCPU 1 to 5 %", [&] { return g.throttle_vcpu(1); }, 12s, "VCPU_HOST_STARVED",
            "CAUSE_HOST_STARVED", 1);
  const auto idle = g.run("tb-load stop", 30s);
  EXPECT_EQ(idle.exit_code, 0) << idle.err;
  one_fault("SIGSTOP of qemu", [&] { return g.sigstop(); }, 6s, "VM_WIDE_STALL", "CAUSE_HOST_BLOCKED", -1);

  EXPECT_TRUE(alertmanager.running()) << alertmanager.log_tail();
  EXPECT_TRUE(prometheus.running()) << prometheus.log_tail();
}

}  // namespace
}  // namespace stallmon::alerting
