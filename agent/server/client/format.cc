// SPDX-License-Identifier: Apache-2.0
#include "format.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

namespace stallmon::server::client {
namespace {

std::chrono::nanoseconds to_ns(const google::protobuf::Duration& d) {
  return std::chrono::seconds(d.seconds()) + std::chrono::nanoseconds(d.nanos());
}

Clock::time_point to_tp(const google::protobuf::Timestamp& t) {
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(t.seconds()) +
                                                                       std::chrono::nanoseconds(t.nanos())));
}

std::string join_ints(const google::protobuf::RepeatedField<int32_t>& v, const char* sep = ",") {
  std::string out;
  for (int i = 0; i < v.size(); ++i) out += (i ? sep : "") + std::to_string(v[i]);
  return out.empty() ? "-" : out;
}

std::string percent(double f) {
  char b[16];
  std::snprintf(b, sizeof b, "%.0f%%", f * 100);
  return b;
}

std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }

std::string kind_name(v1::FindingKind k) {
  const auto& n = v1::FindingKind_Name(k);
  return n.empty() ? std::to_string(static_cast<int>(k)) : n;
}

std::string state_letter(const v1::HostSample& s) {
  if (!s.state_letter().empty()) return s.state_letter();
  return "?";
}

}  // namespace

std::string format_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(header.size(), 0);
  auto widen = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  };
  widen(header);
  for (const auto& r : rows) widen(r);
  std::ostringstream o;
  auto line = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) {
      o << r[i];
      if (i + 1 < r.size()) o << std::string(w[i] - r[i].size() + 2, ' ');
    }
    o << "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
  return o.str();
}

std::string human_duration(std::chrono::nanoseconds d) {
  using namespace std::chrono;
  int64_t ns = d.count();
  if (ns < 0) return "-" + human_duration(nanoseconds(-ns));
  char b[48];
  if (ns < 1'000'000) {
    std::snprintf(b, sizeof b, "%lld us", static_cast<long long>(ns / 1000));
  } else if (ns < 1'000'000'000) {
    std::snprintf(b, sizeof b, "%lld ms", static_cast<long long>(ns / 1'000'000));
  } else if (ns < 10'000'000'000) {
    std::snprintf(b, sizeof b, "%.1f s", static_cast<double>(ns) / 1e9);
  } else if (ns < 60'000'000'000) {
    std::snprintf(b, sizeof b, "%lld s", static_cast<long long>(ns / 1'000'000'000));
  } else if (ns < 3'600'000'000'000) {
    std::snprintf(b, sizeof b, "%lld min %lld s", static_cast<long long>(ns / 60'000'000'000),
                  static_cast<long long>((ns / 1'000'000'000) % 60));
  } else {
    std::snprintf(b, sizeof b, "%lld h %lld min", static_cast<long long>(ns / 3'600'000'000'000),
                  static_cast<long long>((ns / 60'000'000'000) % 60));
  }
  return b;
}

std::string human_duration(const google::protobuf::Duration& d) { return human_duration(to_ns(d)); }

std::string human_time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  time_t s = static_cast<time_t>(t.seconds());
  struct tm tm{};
  gmtime_r(&s, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S", &tm);
  return b;
}

std::string severity_name(v1::Severity s) {
  switch (s) {
    case v1::CRITICAL: return "critical";
    case v1::WARNING: return "warning";
    case v1::INFO: return "info";
    default: return "-";
  }
}

std::string format_status(const v1::AgentInfo& info, const std::string& health, Clock::time_point now) {
  std::ostringstream o;
  auto up = now - to_tp(info.started_at());
  o << "stallmond " << info.version() << " on " << info.hostname() << " (" << info.api_version() << ")";
  if (info.has_started_at()) o << ", up " << human_duration(std::chrono::duration_cast<std::chrono::nanoseconds>(up));
  o << "\n";
  o << "health    " << health << "\n";
  o << "libvirt   " << info.libvirt_uri() << " " << (info.libvirt_connected() ? "connected" : "DISCONNECTED");
  if (!info.libvirt_connected() && !info.libvirt_error().empty()) o << " (" << info.libvirt_error() << ")";
  o << "\n";
  o << "sampling  " << (info.sampling_alive() ? "alive" : "STALLED") << ", every "
    << human_duration(info.sampling_interval()) << ", " << info.ticks() << " ticks\n";
  if (!info.thread_stats_source().empty()) {  // empty from daemons that predate the choice
    o << "threads   " << info.thread_stats_source();
    if (info.thread_stats_passes() > 0) o << ", " << info.thread_stats_passes() << " passes";
    if (info.thread_stats_fallbacks() > 0) o << ", " << info.thread_stats_fallbacks() << " fallbacks to /proc";
    if (!info.thread_stats_reason().empty()) o << " (" << info.thread_stats_reason() << ")";
    o << "\n";
  }
  char inc[32];
  std::snprintf(inc, sizeof inc, "%016llx", static_cast<unsigned long long>(info.incarnation()));
  o << "findings  revision " << info.revision() << " (incarnation " << inc << ")\n";
  if (info.domains_size() == 0) {
    o << "\nno domains watched\n";
    return o.str();
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : info.domains()) {
    std::string intro = d.introspection_ok() ? "ok" : or_dash(d.introspection_error());
    rows.push_back({d.domain(), intro, or_dash(d.kernel_release()), std::to_string(d.snapshots()),
                    std::to_string(d.snapshot_errors()),
                    d.has_last_snapshot_latency() && d.snapshots() ? human_duration(d.last_snapshot_latency()) : "-",
                    d.monitor_responsive() ? "ok" : "UNRESPONSIVE"});
  }
  o << "\n"
    << format_table({"DOMAIN", "INTROSPECTION", "KERNEL", "SNAPSHOTS", "ERRORS", "LAST READ", "MONITOR"}, rows);
  return o.str();
}

std::string format_domains(const v1::ListDomainsResponse& r) {
  if (r.domains_size() == 0) return "no domains watched\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.domains()) {
    rows.push_back({d.name(), d.state(), std::to_string(d.qemu_pid()), std::to_string(d.vcpu_count()),
                    std::to_string(d.active_findings()), severity_name(d.worst_severity()),
                    d.introspection_ok() ? "ok" : "no", d.monitor_responsive() ? "ok" : "UNRESPONSIVE", d.uuid()});
  }
  return format_table({"NAME", "STATE", "QEMU PID", "VCPUS", "FINDINGS", "WORST", "GUEST VIEW", "MONITOR", "UUID"},
                      rows);
}

std::string format_vcpus(const v1::Domain& d) {
  std::ostringstream o;
  o << d.summary().name() << ": " << d.summary().state() << ", qemu pid " << d.summary().qemu_pid() << ", "
    << d.vcpus_size() << " vCPUs";
  if (d.has_guest_snapshot_at()) o << ", guest view of " << human_time(d.guest_snapshot_at()) << " UTC";
  else o << ", no guest view (" << or_dash(d.health().introspection_error()) << ")";
  o << "\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& v : d.vcpus()) {
    const auto& s = v.latest();
    std::string noprog = s.has_no_progress_for() && (s.no_progress_for().seconds() || s.no_progress_for().nanos() >= 200'000'000)
                             ? human_duration(s.no_progress_for())
                             : "-";
    std::vector<std::string> row = {std::to_string(v.index()), std::to_string(v.host_tid()), state_letter(s),
                                    percent(s.run_fraction()), percent(s.steal_fraction()), noprog,
                                    or_dash(s.wchan())};
    if (v.has_guest()) {
      const auto& g = v.guest();
      std::string curr = g.current_comm().empty() ? "?" : g.current_comm();
      if (g.current_pid() > 0) curr += "/" + std::to_string(g.current_pid());
      row.push_back(curr);
      row.push_back(std::to_string(g.nr_running()));
      row.push_back(std::to_string(g.call_single_queue_len()));
      row.push_back(join_ints(g.waiting_on()));
      row.push_back(g.has_watchdog_touch_age() ? human_duration(g.watchdog_touch_age()) : "-");
    } else {
      row.insert(row.end(), {"-", "-", "-", "-", "-"});
    }
    rows.push_back(row);
  }
  o << format_table({"VCPU", "TID", "HOST", "RUN", "STEAL", "NO PROGRESS", "WCHAN", "GUEST CURRENT", "NR_RUN",
                     "QUEUED", "WAITS ON", "WATCHDOG AGE"},
                    rows);
  for (const auto& v : d.vcpus()) {
    if (v.host_stack_size() == 0) continue;
    o << "\nvCPU " << v.index() << " (tid " << v.host_tid() << ", " << state_letter(v.latest()) << ") host stack:\n";
    for (const auto& f : v.host_stack()) o << "  " << f << "\n";
  }
  std::vector<std::vector<std::string>> blocked;
  for (const auto& t : d.other_threads()) {
    const auto& l = t.latest().state_letter();
    if (l == "D" || l == "T" || l == "t") {
      blocked.push_back({std::to_string(t.tid()), t.name(), l, or_dash(t.latest().wchan())});
    }
  }
  if (!blocked.empty()) {
    o << "\nother qemu threads blocked on the host:\n" << format_table({"TID", "NAME", "HOST", "WCHAN"}, blocked);
  }
  return o.str();
}

namespace {

bool is_root_in(const v1::Finding& f, const std::map<std::string, const v1::Finding*>& by_id) {
  return f.incident_id().empty() || f.incident_id() == f.id() || !by_id.count(f.incident_id());
}

// The findings as incident trees: each root (in the response's order), then its symptoms.
// A symptom whose root is not in the response stands as a root of its own.
std::vector<std::pair<const v1::Finding*, bool>> incident_order(const v1::ListFindingsResponse& r) {
  std::map<std::string, const v1::Finding*> by_id;
  for (const auto& f : r.findings()) by_id[f.id()] = &f;
  std::vector<std::pair<const v1::Finding*, bool>> out;  // (finding, is a symptom)
  for (const auto& f : r.findings()) {
    if (!is_root_in(f, by_id)) continue;
    out.push_back({&f, false});
    for (const auto& s : r.findings())
      if (&s != &f && s.incident_id() == f.id()) out.push_back({&s, true});
  }
  return out;
}

}  // namespace

std::string format_findings(const v1::ListFindingsResponse& r, bool evidence, Clock::time_point now) {
  if (r.findings_size() == 0) return "no findings\n";
  std::vector<std::vector<std::string>> rows;
  std::ostringstream o;
  const auto ordered = incident_order(r);
  for (const auto& [fp, symptom] : ordered) {
    const auto& f = *fp;
    std::string state = f.active() ? "active" : "resolved";
    std::string when = f.active() ? human_duration(std::chrono::duration_cast<std::chrono::nanoseconds>(now - to_tp(f.onset())))
                                  : human_duration(f.duration());
    rows.push_back({severity_name(f.severity()), (symptom ? "`- " : "") + kind_name(f.kind()), f.domain(),
                    join_ints(f.cpus()), state, when, f.summary()});
  }
  if (!evidence) {
    o << format_table({"SEVERITY", "KIND", "DOMAIN", "CPUS", "STATE", "FOR", "SUMMARY"}, rows);
    return o.str();
  }
  for (const auto& [fp, symptom] : ordered) {
    const auto& f = *fp;
    const std::string in = symptom ? "    " : "";
    o << in << (symptom ? "`- " : "") << severity_name(f.severity()) << " " << kind_name(f.kind()) << " " << f.domain()
      << " cpus " << join_ints(f.cpus()) << " (" << (f.active() ? "active" : "resolved") << ", onset "
      << human_time(f.onset()) << " UTC, " << human_duration(f.duration()) << ")\n" << in << "  " << f.summary() << "\n";
    for (const auto& e : f.evidence()) {
      // Multi-line evidence (console lines, a panic's oops text) stays under its bullet.
      std::string text = e.text();
      for (size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at + 1))
        text.insert(at + 1, in + "      "), at += in.size() + 6;
      o << in << "    - " << text << "\n";
      for (const auto& fr : e.host_stack()) o << in << "        " << fr << "\n";
    }
    if (f.has_predicted_guest_report_in()) {
      o << in << "    guest soft-lockup report expected in " << human_duration(f.predicted_guest_report_in()) << "\n";
    }
    if (f.cause_evaluating()) o << in << "    cause undetermined, evaluating\n";
    if (f.recurrences() > 0) o << in << "    recurred " << f.recurrences() << " times (continued as this finding)\n";
    if (!f.explained_by().empty()) o << in << "    explained by " << f.explained_by() << "\n";
    if (!symptom && f.symptom_ids_size() > 0) o << in << "    incident root of " << f.symptom_ids_size() << " symptoms\n";
    o << in << "    id " << f.id() << "\n";
  }
  return o.str();
}

std::string format_event(const v1::FindingEvent& e) {
  std::ostringstream o;
  switch (e.type()) {
    case v1::FindingEvent::SYNCED:
      return "-- revision " + std::to_string(e.revision()) + ": up to date, following live events\n";
    case v1::FindingEvent::RESYNC:
      return "-- revision " + std::to_string(e.revision()) + ": resynchronising (state below replaces earlier)\n";
    default: break;
  }
  const auto& f = e.finding();
  std::string type = e.type() == v1::FindingEvent::CURRENT ? "ACTIVE" : v1::FindingEvent::Type_Name(e.type());
  const auto& when = e.type() == v1::FindingEvent::RESOLVED ? f.resolved_at() : f.last_update();
  o << human_time(when) << "  " << type << "  " << severity_name(f.severity()) << "  " << kind_name(f.kind()) << "  "
    << f.domain() << "  cpus " << join_ints(f.cpus()) << "  " << f.summary();
  if (e.type() == v1::FindingEvent::RESOLVED) o << "  (lasted " << human_duration(f.duration()) << ")";
  if (!f.incident_id().empty() && f.incident_id() != f.id()) o << "  [symptom of " << f.incident_id() << "]";
  o << "\n";
  return o.str();
}

std::string format_inspect(const v1::InspectDomainResponse& r) {
  std::ostringstream o;
  o << r.domain() << ": kernel " << or_dash(r.kernel_release()) << ", " << r.nr_cpu_ids() << " CPUs (online "
    << join_ints(r.online_cpus()) << "), watchdog_thresh "
    << (r.watchdog_thresh() >= 0 ? std::to_string(r.watchdog_thresh()) : "?") << ", read in "
    << human_duration(r.snapshot_latency()) << " at " << human_time(r.taken_at()) << " UTC";
  if (r.panic_cpu() >= 0) o << ", PANIC on CPU " << r.panic_cpu();
  o << "\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : r.cpus()) {
    const auto& s = c.state();
    std::string curr = s.current_comm().empty() ? "?" : s.current_comm();
    if (s.current_pid() > 0) curr += "/" + std::to_string(s.current_pid());
    rows.push_back({std::to_string(c.cpu()), s.online() ? "yes" : "no", curr, s.idle() ? "yes" : "no",
                    std::to_string(s.nr_running()), s.ttwu_pending() ? "yes" : "no",
                    std::to_string(s.call_single_queue_len()) + (c.call_single_queue_truncated() ? "+" : ""),
                    join_ints(s.waiting_on()),
                    s.has_watchdog_touch_age() ? human_duration(s.watchdog_touch_age()) : "-",
                    c.has_steal() ? human_duration(c.steal()) : "-"});
  }
  o << format_table({"CPU", "ONLINE", "CURRENT", "IDLE", "NR_RUN", "TTWU", "QUEUED", "WAITS ON", "WATCHDOG AGE",
                     "STEAL"},
                    rows);
  if (r.csd_waits_size() > 0) {
    o << "\ncross-CPU call waits (locked csd):\n";
    std::vector<std::vector<std::string>> w;
    for (const auto& c : r.csd_waits()) {
      char addr[24];
      std::snprintf(addr, sizeof addr, "0x%llx", static_cast<unsigned long long>(c.csd_address()));
      w.push_back({"CPU" + std::to_string(c.waiter_cpu()) + " -> CPU" + std::to_string(c.target_cpu()),
                   or_dash(c.function()), c.has_waited() ? human_duration(c.waited()) : "-", addr});
    }
    o << format_table({"WAIT", "FUNCTION", "SEEN FOR", "CSD"}, w);
    for (const auto& g : r.wait_graph()) {
      o << "root: CPU " << join_ints(g.roots()) << (g.cycle() ? " (a cycle)" : "") << ", waited on by CPU "
        << join_ints(g.waiters()) << "\n";
    }
  }
  bool queues = false;
  for (const auto& c : r.cpus()) {
    if (c.call_single_queue_size() == 0) continue;
    if (!queues) o << "\ncall_single_queue:\n";
    queues = true;
    for (const auto& q : c.call_single_queue()) {
      o << "  CPU" << c.cpu() << "  " << q.type() << "  " << or_dash(q.function()) << (q.locked() ? "  locked" : "")
        << "\n";
    }
  }
  if (r.printk_tail_size() > 0) {
    o << "\nprintk (last " << r.printk_tail_size() << "):\n";
    for (const auto& p : r.printk_tail()) {
      char ts[32];
      std::snprintf(ts, sizeof ts, "[%5lld.%06d] ", static_cast<long long>(p.timestamp().seconds()),
                    p.timestamp().nanos() / 1000);
      std::string text = p.text();
      while (!text.empty() && text.back() == '\n') text.pop_back();
      o << "  " << ts << text << "\n";
    }
  }
  if (r.errors_size() > 0) {
    o << "\nread errors:\n";
    for (const auto& e : r.errors()) o << "  " << e << "\n";
  }
  return o.str();
}

std::string to_json(const google::protobuf::Message& m, bool indent) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = indent;
  opts.preserve_proto_field_names = true;
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(m, &out, opts);
  if (!st.ok()) return "{\"error\": \"cannot convert to JSON\"}";
  if (indent && (out.empty() || out.back() != '\n')) out += "\n";
  return out;
}

namespace {

std::string state_letter(v1::ThreadState s) {
  switch (s) {
    case v1::THREAD_STATE_RUNNING: return "R";
    case v1::THREAD_STATE_SLEEPING: return "S";
    case v1::THREAD_STATE_DISK_SLEEP: return "D";
    case v1::THREAD_STATE_STOPPED: return "T";
    case v1::THREAD_STATE_TRACING_STOP: return "t";
    case v1::THREAD_STATE_ZOMBIE: return "Z";
    case v1::THREAD_STATE_IDLE: return "I";
    case v1::THREAD_STATE_DEAD: return "X";
    default: return "?";
  }
}

int64_t nanos(const google::protobuf::Timestamp& t) { return t.seconds() * 1'000'000'000 + t.nanos(); }

// How long a lane's points show a state: each point stands until the next one.
std::string state_spans(const v1::IncidentVcpuLane& l) {
  std::map<std::string, int64_t> ns;
  for (int i = 0; i + 1 < l.points_size(); ++i) {
    ns[state_letter(l.points(i).state())] += nanos(l.points(i + 1).at()) - nanos(l.points(i).at());
  }
  std::string out;
  for (const auto& [s, n] : ns) {
    if (n <= 0) continue;
    out += (out.empty() ? "" : " ") + s + " " + human_duration(std::chrono::nanoseconds(n));
  }
  return out.empty() ? "-" : out;
}

std::string snapshot_table(const v1::IncidentSnapshot& s) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : s.cpus()) {
    std::string curr = c.current_comm().empty() ? "?" : c.current_comm();
    if (c.current_pid() > 0) curr += "/" + std::to_string(c.current_pid());
    rows.push_back({std::to_string(c.cpu()), c.online() ? "yes" : "no", curr, c.idle() ? "yes" : "no",
                    std::to_string(c.nr_running()), std::to_string(c.call_single_queue_len()),
                    join_ints(c.waiting_on()), c.has_watchdog_age() ? human_duration(c.watchdog_age()) : "-"});
  }
  return format_table({"CPU", "ONLINE", "CURRENT", "IDLE", "NR_RUN", "QUEUED", "WAITS ON", "WATCHDOG AGE"}, rows);
}

}  // namespace

std::string format_incident(const v1::Incident& r) {
  std::ostringstream o;
  const auto& f = r.finding();
  o << "incident of " << f.id() << " (" << v1::FindingKind_Name(f.kind()) << ", " << severity_name(f.severity())
    << ") on " << or_dash(f.domain()) << "\n";
  o << "window " << human_time(r.window_start()) << " .. "
    << (r.has_window_end() ? human_time(r.window_end()) + " UTC (resolved)" : std::string("now (active)")) << "\n";
  o << "onset " << human_time(f.onset()) << " UTC, lasted " << human_duration(f.duration()) << "\n";
  if (!f.summary().empty()) o << f.summary() << "\n";

  o << "\nvCPU threads (host):\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& l : r.vcpus()) {
    rows.push_back({std::to_string(l.vcpu()), std::to_string(l.host_tid()), std::to_string(l.points_size()),
                    state_spans(l)});
  }
  o << format_table({"VCPU", "TID", "SAMPLES", "STATES"}, rows);

  o << "\nguest CPUs:\n";
  rows.clear();
  for (const auto& l : r.guest_cpus()) {
    std::set<int> targets;
    int idle = 0, offline = 0;
    google::protobuf::Duration worst;
    int64_t worst_ns = -1;
    for (const auto& p : l.points()) {
      if (p.csd_target() >= 0) targets.insert(p.csd_target());
      idle += p.idle() ? 1 : 0;
      offline += p.online() ? 0 : 1;
      if (p.has_watchdog_age()) {
        const int64_t n = p.watchdog_age().seconds() * 1'000'000'000 + p.watchdog_age().nanos();
        if (n > worst_ns) {
          worst_ns = n;
          worst = p.watchdog_age();
        }
      }
    }
    std::string waits;
    for (int t : targets) waits += (waits.empty() ? "CPU" : ",CPU") + std::to_string(t);
    rows.push_back({std::to_string(l.cpu()), std::to_string(l.points_size()), std::to_string(idle),
                    std::to_string(offline), or_dash(waits), worst_ns >= 0 ? human_duration(worst) : "-"});
  }
  o << format_table({"CPU", "SNAPSHOTS", "IDLE", "OFFLINE", "WAITED ON", "MAX WATCHDOG AGE"}, rows);

  for (const auto& [title, snap, has] :
       {std::tuple<const char*, const v1::IncidentSnapshot*, bool>{"at onset", &r.at_onset(), r.has_at_onset()},
        {"at the worst point", &r.at_worst(), r.has_at_worst()}}) {
    if (!has) continue;
    o << "\nguest snapshot " << title << " (" << human_time(snap->at()) << " UTC, " << snap->troubled_cpus()
      << " CPUs in trouble" << (snap->panic_cpu() >= 0 ? ", PANIC on CPU " + std::to_string(snap->panic_cpu()) : "")
      << "):\n"
      << snapshot_table(*snap);
  }

  if (r.host_stacks_size() > 0) {
    o << "\nhost stacks of blocked threads:\n";
    for (const auto& h : r.host_stacks()) {
      o << "  " << h.tid() << " " << or_dash(h.name()) << " (" << state_letter(h.state())
        << (h.vcpu() >= 0 ? ", vCPU " + std::to_string(h.vcpu()) : "") << ", wchan " << or_dash(h.wchan())
        << ", seen " << human_time(h.first_seen()) << " .. " << human_time(h.last_seen()) << ")\n";
      for (const auto& fr : h.frames()) o << "      " << fr << "\n";
    }
  }
  if (r.related_size() > 0) {
    o << "\nfindings of the domain in the window:\n";
    rows.clear();
    for (const auto& x : r.related()) {
      rows.push_back({x.id(), severity_name(x.severity()), human_time(x.onset()),
                      x.has_resolved_at() ? human_time(x.resolved_at()) : "active"});
    }
    o << format_table({"ID", "SEVERITY", "ONSET", "RESOLVED"}, rows);
  }
  if (r.printk_tail_size() > 0) {
    o << "\nprintk tail:\n";
    for (const auto& line : r.printk_tail()) o << "  " << line << "\n";
  }
  const auto& d = r.dropped();
  if (d.vcpu_points() + d.guest_points() + d.lanes() + d.host_stacks() + d.printk_lines() + d.related() > 0) {
    o << "\ndropped by the daemon's bounds: " << d.vcpu_points() << " vCPU samples, " << d.guest_points()
      << " guest samples (kept one per " << human_duration(r.stride()) << "), " << d.lanes() << " lanes, "
      << d.host_stacks() << " host stacks, " << d.printk_lines() << " printk lines, " << d.related()
      << " findings\n";
  }
  return o.str();
}

}  // namespace stallmon::server::client
