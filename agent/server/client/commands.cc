// SPDX-License-Identifier: Apache-2.0
// stallctl status / domains / vcpus / findings / inspect DOMAIN.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>
#include <optional>
#include <thread>

#include "connection.h"
#include "format.h"
#include "incident_html.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "stallmon/server/client_commands.h"
#include "stallmon/v1/stallmon.grpc.pb.h"

namespace stallmon::server::client {
namespace {

using namespace std::chrono_literals;

void out(const std::string& s) {
  std::fputs(s.c_str(), stdout);
  std::fflush(stdout);
}

// Connects or explains why not; returns nullopt after printing the reason (exit code in *rc).
std::optional<Connection> open_connection(const ConnectOptions& o, int* rc) {
  auto c = connect(o);
  if (c.exit_code != 0) {
    std::fprintf(stderr, "stallctl: %s\n", c.message.c_str());
    *rc = c.exit_code;
    return std::nullopt;
  }
  return c.conn;
}

struct StatusArgs {
  ConnectOptions conn;
  bool json = false;
};

int run_status(const StatusArgs& a) {
  int rc = 0;
  auto c = open_connection(a.conn, &rc);
  if (!c) return rc;
  auto stub = v1::Stallmon::NewStub(c->channel);
  v1::AgentInfo info;
  auto st = stub->GetAgentInfo(make_context(a.conn).get(), {}, &info);
  if (!st.ok()) return report("status", st, *c);
  auto health = grpc::health::v1::Health::NewStub(c->channel);
  grpc::health::v1::HealthCheckResponse hr;
  auto hst = health->Check(make_context(a.conn).get(), {}, &hr);
  std::string hs = hst.ok() ? grpc::health::v1::HealthCheckResponse::ServingStatus_Name(hr.status())
                            : "unknown (" + hst.error_message() + ")";
  if (a.json) {
    out("{\n\"health\": \"" + hs + "\",\n\"agent\": " + to_json(info) + "}\n");
  } else {
    out(format_status(info, hs, Clock::now()));
  }
  return hst.ok() && hr.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kExitOk : kExitFailure;
}

struct DomainsArgs {
  ConnectOptions conn;
  bool json = false;
};

int run_domains(const DomainsArgs& a) {
  int rc = 0;
  auto c = open_connection(a.conn, &rc);
  if (!c) return rc;
  v1::ListDomainsResponse r;
  auto st = v1::Stallmon::NewStub(c->channel)->ListDomains(make_context(a.conn).get(), {}, &r);
  if (!st.ok()) return report("domains", st, *c);
  out(a.json ? to_json(r) : format_domains(r));
  return kExitOk;
}

struct VcpusArgs {
  ConnectOptions conn;
  std::string domain;
  bool json = false;
};

int run_vcpus(const VcpusArgs& a) {
  int rc = 0;
  auto c = open_connection(a.conn, &rc);
  if (!c) return rc;
  v1::GetDomainRequest req;
  req.set_domain(a.domain);
  v1::Domain d;
  auto st = v1::Stallmon::NewStub(c->channel)->GetDomain(make_context(a.conn).get(), req, &d);
  if (!st.ok()) return report("vcpus " + a.domain, st, *c);
  out(a.json ? to_json(d) : format_vcpus(d));
  return kExitOk;
}

struct FindingsArgs {
  ConnectOptions conn;
  bool active = false, resolved = false, watch = false, json = false, evidence = false, updates = false;
  std::string domain;
  std::vector<std::string> kinds;
  int limit = 0;
};

// "guest_ipi_stall", "GUEST_IPI_STALL" → the enum; false if unknown.
bool parse_kind(std::string s, v1::FindingKind* k) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::toupper(ch); });
  std::replace(s.begin(), s.end(), '-', '_');
  return v1::FindingKind_Parse(s, k) && *k != v1::FINDING_KIND_UNSPECIFIED;
}

int watch_findings(const FindingsArgs& a, const Connection& c, const std::vector<v1::FindingKind>& kinds) {
  auto stub = v1::Stallmon::NewStub(c.channel);
  uint64_t rev = 0, incarnation = 0;
  bool ever_connected = false;
  for (;;) {
    v1::WatchFindingsRequest req;
    req.set_domain(a.domain);
    for (auto k : kinds) req.add_kinds(k);
    req.set_after_revision(rev);
    req.set_incarnation(incarnation);
    grpc::ClientContext ctx;  // no deadline: follows until interrupted
    auto reader = stub->WatchFindings(&ctx, req);
    v1::FindingEvent e;
    while (reader->Read(&e)) {
      ever_connected = true;
      rev = e.revision();
      incarnation = e.incarnation();
      // An active finding is UPDATED about once a second as its ages grow: too chatty for a
      // terminal unless asked for (JSON consumers get every event).
      if (!a.json && !a.updates && e.type() == v1::FindingEvent::UPDATED) continue;
      out(a.json ? to_json(e, false) + "\n" : format_event(e));
    }
    auto st = reader->Finish();
    // The daemon restarted or is shutting down: resume where we were (a new incarnation
    // answers with RESYNC and the full state).
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE && ever_connected) {
      if (!a.json) std::fprintf(stderr, "stallctl: stream ended (%s); reconnecting\n", st.error_message().c_str());
      std::this_thread::sleep_for(1s);
      continue;
    }
    return report("findings --watch", st, c);
  }
}

int run_findings(const FindingsArgs& a) {
  if (a.active && a.resolved) {
    std::fprintf(stderr, "stallctl findings: --active and --resolved exclude each other\n");
    return kExitUsage;
  }
  std::vector<v1::FindingKind> kinds;
  for (const auto& s : a.kinds) {
    v1::FindingKind k;
    if (!parse_kind(s, &k)) {
      std::string all;
      for (int i = 1; v1::FindingKind_IsValid(i); ++i) all += (i > 1 ? ", " : "") + v1::FindingKind_Name(static_cast<v1::FindingKind>(i));
      std::fprintf(stderr, "stallctl findings: unknown --kind '%s' (one of %s)\n", s.c_str(), all.c_str());
      return kExitUsage;
    }
    kinds.push_back(k);
  }
  int rc = 0;
  auto c = open_connection(a.conn, &rc);
  if (!c) return rc;
  if (a.watch) return watch_findings(a, *c, kinds);
  v1::ListFindingsRequest req;
  req.set_domain(a.domain);
  for (auto k : kinds) req.add_kinds(k);
  req.set_state(a.active     ? v1::FINDING_STATE_FILTER_ACTIVE
                : a.resolved ? v1::FINDING_STATE_FILTER_RESOLVED
                             : v1::FINDING_STATE_FILTER_ANY);
  req.set_limit(a.limit);
  v1::ListFindingsResponse r;
  auto st = v1::Stallmon::NewStub(c->channel)->ListFindings(make_context(a.conn).get(), req, &r);
  if (!st.ok()) return report("findings", st, *c);
  out(a.json ? to_json(r) : format_findings(r, a.evidence, Clock::now()));
  return kExitOk;
}

struct InspectArgs {
  ConnectOptions conn;
  std::string domain;
  bool json = false;
  int printk = 20;
};

int run_inspect(const InspectArgs& a) {
  int rc = 0;
  auto c = open_connection(a.conn, &rc);
  if (!c) return rc;
  v1::InspectDomainRequest req;
  req.set_domain(a.domain);
  req.set_printk_records(a.printk);
  // Leave the daemon a little less than our own deadline, so its answer (even a timeout) arrives.
  auto ms = static_cast<int64_t>(a.conn.timeout_s * 1000 * 0.9);
  req.mutable_timeout()->set_seconds(std::min<int64_t>(ms / 1000, 60));
  req.mutable_timeout()->set_nanos(ms / 1000 >= 60 ? 0 : static_cast<int32_t>((ms % 1000) * 1'000'000));
  v1::InspectDomainResponse r;
  auto st = v1::Stallmon::NewStub(c->channel)->InspectDomain(make_context(a.conn).get(), req, &r);
  if (!st.ok()) return report("inspect " + a.domain, st, *c);
  out(a.json ? to_json(r) : format_inspect(r));
  return kExitOk;
}

struct IncidentArgs {
  ConnectOptions conn;
  std::string id;
  bool json = false;
  int max_points = 0;
  std::string html;
};

int run_incident(const IncidentArgs& a) {
  int rc = 0;
  auto c = open_connection(a.conn, &rc);
  if (!c) return rc;
  v1::GetIncidentRequest req;
  req.set_finding_id(a.id);
  req.set_max_points(a.max_points);
  v1::Incident r;
  auto st = v1::Stallmon::NewStub(c->channel)->GetIncident(make_context(a.conn).get(), req, &r);
  if (!st.ok()) return report("incident " + a.id, st, *c);
  if (!a.html.empty()) {
    auto w = write_incident_html(r, a.html);
    if (!w.ok()) {
      std::fprintf(stderr, "stallctl: incident %s: %s\n", a.id.c_str(), w.error().to_string().c_str());
      return kExitFailure;
    }
    out("wrote " + a.html + "\n");
    return kExitOk;
  }
  out(a.json ? to_json(r) : format_incident(r));
  return kExitOk;
}

}  // namespace

void register_client_commands(CLI::App& app, std::function<int()>& run) {
  {
    auto a = std::make_shared<StatusArgs>();
    auto* c = app.add_subcommand("status", "is stallmond running and healthy: version, libvirt, sampling, per-domain introspection");
    add_connect_options(c, a->conn);
    c->add_flag("--json", a->json, "JSON instead of text");
    c->callback([a, &run] { run = [a] { return run_status(*a); }; });
  }
  {
    auto a = std::make_shared<DomainsArgs>();
    auto* c = app.add_subcommand("domains", "the domains stallmond watches, with their active findings");
    add_connect_options(c, a->conn);
    c->add_flag("--json", a->json, "JSON instead of a table");
    c->callback([a, &run] { run = [a] { return run_domains(*a); }; });
  }
  {
    auto a = std::make_shared<VcpusArgs>();
    auto* c = app.add_subcommand("vcpus", "a domain's vCPUs: host thread state and guest CPU state");
    c->add_option("DOMAIN", a->domain, "domain name or uuid")->required();
    add_connect_options(c, a->conn);
    c->add_flag("--json", a->json, "JSON instead of a table");
    c->callback([a, &run] { run = [a] { return run_vcpus(*a); }; });
  }
  {
    auto a = std::make_shared<FindingsArgs>();
    auto* c = app.add_subcommand("findings", "stall findings (active first, then resolved); --watch follows them live");
    c->add_flag("--active", a->active, "only active findings");
    c->add_flag("--resolved", a->resolved, "only resolved findings");
    c->add_flag("-w,--watch", a->watch, "print the active findings, then follow events until interrupted");
    c->add_flag("--updates", a->updates, "--watch: also print UPDATED events (about once a second per finding)");
    c->add_option("-d,--domain", a->domain, "only this domain (name or uuid)");
    c->add_option("-k,--kind", a->kinds, "only this kind (repeatable), e.g. GUEST_IPI_STALL");
    c->add_flag("-v,--evidence", a->evidence, "show each finding's causal chain");
    c->add_option("--limit", a->limit, "at most this many (default 1000)")->check(CLI::Range(0, 10000));
    add_connect_options(c, a->conn);
    c->add_flag("--json", a->json, "JSON instead of a table (--watch: one event per line)");
    c->callback([a, &run] { run = [a] { return run_findings(*a); }; });
  }
  {
    auto a = std::make_shared<IncidentArgs>();
    auto* c = app.add_subcommand("incident", "the incident bundle of a critical finding: history, snapshots, stacks");
    c->add_option("ID", a->id, "finding id (as `stallctl findings` shows it)")->required();
    c->add_option("--max-points", a->max_points, "samples per lane, evenly thinned (default: all)")
        ->check(CLI::Range(0, 100000));
    c->add_option("--html", a->html, "write a self-contained HTML report with a timeline to this file");
    add_connect_options(c, a->conn);
    c->add_flag("--json", a->json, "JSON instead of text");
    c->callback([a, &run] { run = [a] { return run_incident(*a); }; });
  }
  {
    // `inspect DOMAIN` asks the daemon; the local inspect (--core, --qemu-pid, --domain) stays as
    // it is. Reuse its --json and --printk so both spellings behave alike.
    auto a = std::make_shared<InspectArgs>();
    CLI::App* c = nullptr;
    try {
      c = app.get_subcommand("inspect");
    } catch (const CLI::OptionNotFound&) {
      c = app.add_subcommand("inspect", "print a guest kernel's per-CPU state");
    }
    c->add_option("DOMAIN", a->domain, "domain name or uuid: ask stallmond (no local guest access needed)");
    add_connect_options(c, a->conn);
    CLI::Option* json = nullptr;
    CLI::Option* printk = nullptr;
    try {
      json = c->get_option("--json");
    } catch (const CLI::OptionNotFound&) {
      json = c->add_flag("--json", a->json, "JSON instead of a table");
    }
    try {
      printk = c->get_option("--printk");
    } catch (const CLI::OptionNotFound&) {
      printk = c->add_option("--printk", a->printk, "printk records to show");
    }
    // Runs after the subcommand's own callback: a positional DOMAIN takes the call over.
    app.final_callback([a, c, json, printk, &run] {
      if (!c->parsed() || a->domain.empty()) return;
      for (const char* local : {"--core", "--qemu-pid", "--domain", "--qmp", "--ranges"}) {
        try {
          if (c->get_option(local)->count() > 0) {
            run = [local] {
              std::fprintf(stderr, "stallctl inspect: DOMAIN (through stallmond) excludes %s (local read)\n", local);
              return kExitUsage;
            };
            return;
          }
        } catch (const CLI::OptionNotFound&) {
        }
      }
      a->json = json->count() > 0;
      if (printk->count() > 0) a->printk = printk->as<int>();
      run = [a] { return run_inspect(*a); };
    });
  }
}

}  // namespace stallmon::server::client
