// SPDX-License-Identifier: Apache-2.0
#include "codec.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "stallmon/base/utf8.h"

namespace stallmon::store {
namespace {

using diagnosis::Duration;
using diagnosis::Evidence;
using diagnosis::Finding;
using diagnosis::Timestamp;
using nlohmann::json;

// Decoding errors carry what was wrong; caught once in decode_finding.
struct Malformed {
  std::string why;
};

int64_t ns(Timestamp t) { return t.time_since_epoch().count(); }
int64_t ns(Duration d) { return d.count(); }

json strings(const std::vector<std::string>& v, std::size_t max_items, std::size_t max_len) {
  json a = json::array();
  for (std::size_t i = 0; i < v.size() && i < max_items; ++i) a.push_back(bounded(v[i], max_len));
  return a;
}

json ints(const std::vector<int>& v) {
  json a = json::array();
  for (std::size_t i = 0; i < v.size() && i < kMaxIds; ++i) a.push_back(v[i]);
  return a;
}

json encode_trace(const diagnosis::KernelTrace& t) {
  json j;
  j["frames"] = strings(t.frames, kMaxList, kMaxName);
  j["truncated"] = t.truncated || t.frames.size() > kMaxList;
  j["verification"] = static_cast<int>(t.verification);
  j["pid"] = t.pid;
  j["comm"] = bounded(t.comm, kMaxName);
  j["taken_at"] = ns(t.taken_at);
  j["error"] = bounded(t.error, kMaxText);
  j["irq_frames"] = std::min(t.irq_frames, kMaxList);
  if (t.interrupted && *t.interrupted < kMaxList) j["interrupted"] = *t.interrupted;
  return j;
}

json encode_evidence(const Evidence& e) {
  json j;
  j["text"] = bounded(e.text, kMaxText);
  if (e.cpu) j["cpu"] = *e.cpu;
  if (e.vcpu) j["vcpu"] = *e.vcpu;
  if (e.csd_wait) {
    const auto& c = *e.csd_wait;
    j["csd_wait"] = {{"waiter_cpu", c.waiter_cpu}, {"target_cpu", c.target_cpu}, {"age", ns(c.age)},
                     {"function", bounded(c.function, kMaxName)}, {"csd_address", c.csd_address},
                     {"csd_flags", c.csd_flags}};
  }
  if (e.lock_wait) {
    const auto& l = *e.lock_wait;
    json lj = {{"waiter_cpu", l.waiter_cpu}, {"frame", bounded(l.frame, kMaxName)},
               {"holder_candidates", ints(l.holder_candidates)}, {"inference", bounded(l.inference, kMaxText)}};
    if (l.holder_cpu) lj["holder_cpu"] = *l.holder_cpu;
    j["lock_wait"] = lj;
  }
  if (e.wait_roots) {
    j["wait_roots"] = {{"roots", ints(e.wait_roots->roots)}, {"waiters", ints(e.wait_roots->waiters)},
                       {"cycle", e.wait_roots->cycle}};
  }
  if (e.kernel_trace) {
    const auto& k = *e.kernel_trace;
    j["kernel_trace"] = {{"trace", encode_trace(k.trace)}, {"age", ns(k.age)},
                         {"stable_frames", std::min(k.stable_frames, kMaxList)},
                         {"stable_snapshots", k.stable_snapshots}};
  }
  if (e.panic_text) {
    j["panic_text"] = {{"lines", e.panic_text->lines}, {"message", bounded(e.panic_text->message, kMaxText)}};
  }
  if (e.stack_overflow) {
    const auto& s = *e.stack_overflow;
    json sj = {{"comm", bounded(s.comm, kMaxName)}};
    if (s.cpu) sj["cpu"] = *s.cpu;
    if (s.pid) sj["pid"] = *s.pid;
    j["stack_overflow"] = sj;
  }
  json d = json::object();
  for (const auto& [k, v] : e.durations) {
    if (d.size() >= kMaxList) break;
    d[bounded(k, kMaxName)] = ns(v);
  }
  j["durations"] = d;
  json f = json::object();
  for (const auto& [k, v] : e.facts) {
    if (f.size() >= kMaxList) break;
    f[bounded(k, kMaxName)] = bounded(v, kMaxName);
  }
  j["facts"] = f;
  j["host_stack"] = strings(e.host_stack, kMaxList, kMaxName);
  return j;
}

// --- decoding: every access checks the type and the bound ---------------------------------

const json& member(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) throw Malformed{std::string("missing '") + key + "'"};
  return *it;
}

template <typename T>
T number(const json& j, const char* key) {
  const json& v = member(j, key);
  if (!v.is_number_integer()) throw Malformed{std::string("'") + key + "' is not an integer"};
  return v.get<T>();
}

template <typename T>
std::optional<T> opt_number(const json& j, const char* key) {
  if (!j.contains(key)) return std::nullopt;
  return number<T>(j, key);
}

bool boolean(const json& j, const char* key) {
  const json& v = member(j, key);
  if (!v.is_boolean()) throw Malformed{std::string("'") + key + "' is not a boolean"};
  return v.get<bool>();
}

std::string text(const json& j, const char* key, std::size_t max) {
  const json& v = member(j, key);
  if (!v.is_string()) throw Malformed{std::string("'") + key + "' is not a string"};
  const auto& s = v.get_ref<const std::string&>();
  if (s.size() > max) throw Malformed{std::string("'") + key + "' is longer than " + std::to_string(max)};
  return sanitize_utf8(s);
}

const json& list(const json& j, const char* key, std::size_t max) {
  const json& v = member(j, key);
  if (!v.is_array() || v.size() > max) throw Malformed{std::string("'") + key + "' is not a list of at most " + std::to_string(max)};
  return v;
}

std::vector<std::string> text_list(const json& j, const char* key, std::size_t max_items, std::size_t max_len) {
  std::vector<std::string> out;
  for (const json& e : list(j, key, max_items)) {
    if (!e.is_string() || e.get_ref<const std::string&>().size() > max_len)
      throw Malformed{std::string("'") + key + "' holds a bad string"};
    out.push_back(sanitize_utf8(e.get_ref<const std::string&>()));
  }
  return out;
}

std::vector<int> int_list(const json& j, const char* key) {
  std::vector<int> out;
  for (const json& e : list(j, key, kMaxIds)) {
    if (!e.is_number_integer()) throw Malformed{std::string("'") + key + "' holds a non-integer"};
    out.push_back(e.get<int>());
  }
  return out;
}

const json& object(const json& j, const char* key) {
  const json& v = member(j, key);
  if (!v.is_object()) throw Malformed{std::string("'") + key + "' is not an object"};
  return v;
}

template <typename E>
E enumerated(const json& j, const char* key, int max) {
  const int v = number<int>(j, key);
  if (v < 0 || v > max) throw Malformed{std::string("'") + key + "' is out of range"};
  return static_cast<E>(v);
}

Timestamp time_of(int64_t v) { return Timestamp(Duration(v)); }

diagnosis::KernelTrace decode_trace(const json& j) {
  diagnosis::KernelTrace t;
  t.frames = text_list(j, "frames", kMaxList, kMaxName);
  t.truncated = boolean(j, "truncated");
  t.verification = enumerated<diagnosis::TraceVerification>(j, "verification",
                                                            static_cast<int>(diagnosis::TraceVerification::kUnverified));
  t.pid = number<int>(j, "pid");
  t.comm = text(j, "comm", kMaxName);
  t.taken_at = time_of(number<int64_t>(j, "taken_at"));
  t.error = text(j, "error", kMaxText);
  t.irq_frames = std::min(number<std::size_t>(j, "irq_frames"), t.frames.size());
  if (auto i = opt_number<std::size_t>(j, "interrupted"); i && *i < t.frames.size()) t.interrupted = *i;
  return t;
}

Evidence decode_evidence(const json& j) {
  if (!j.is_object()) throw Malformed{"an evidence link is not an object"};
  Evidence e;
  e.text = text(j, "text", kMaxText);
  e.cpu = opt_number<int>(j, "cpu");
  e.vcpu = opt_number<int>(j, "vcpu");
  if (j.contains("csd_wait")) {
    const json& c = object(j, "csd_wait");
    diagnosis::CsdWaitEvidence w;
    w.waiter_cpu = number<int>(c, "waiter_cpu");
    w.target_cpu = number<int>(c, "target_cpu");
    w.age = Duration(number<int64_t>(c, "age"));
    w.function = text(c, "function", kMaxName);
    w.csd_address = number<uint64_t>(c, "csd_address");
    w.csd_flags = number<uint64_t>(c, "csd_flags");
    e.csd_wait = w;
  }
  if (j.contains("lock_wait")) {
    const json& l = object(j, "lock_wait");
    diagnosis::LockWaitEvidence w;
    w.waiter_cpu = number<int>(l, "waiter_cpu");
    w.frame = text(l, "frame", kMaxName);
    w.holder_cpu = opt_number<int>(l, "holder_cpu");
    w.holder_candidates = int_list(l, "holder_candidates");
    w.inference = text(l, "inference", kMaxText);
    e.lock_wait = w;
  }
  if (j.contains("wait_roots")) {
    const json& r = object(j, "wait_roots");
    e.wait_roots = diagnosis::WaitRootsEvidence{int_list(r, "roots"), int_list(r, "waiters"), boolean(r, "cycle")};
  }
  if (j.contains("kernel_trace")) {
    const json& k = object(j, "kernel_trace");
    diagnosis::KernelTraceEvidence t;
    t.trace = decode_trace(object(k, "trace"));
    t.age = Duration(number<int64_t>(k, "age"));
    t.stable_frames = std::min(number<std::size_t>(k, "stable_frames"), t.trace.frames.size());
    t.stable_snapshots = number<int>(k, "stable_snapshots");
    e.kernel_trace = t;
  }
  if (j.contains("panic_text")) {
    const json& p = object(j, "panic_text");
    e.panic_text = diagnosis::PanicTextEvidence{number<std::size_t>(p, "lines"), text(p, "message", kMaxText)};
  }
  if (j.contains("stack_overflow")) {
    const json& s = object(j, "stack_overflow");
    diagnosis::StackOverflowEvidence o;
    o.cpu = opt_number<int>(s, "cpu");
    o.pid = opt_number<int>(s, "pid");
    o.comm = text(s, "comm", kMaxName);
    e.stack_overflow = o;
  }
  const json& d = object(j, "durations");
  if (d.size() > kMaxList) throw Malformed{"too many durations"};
  for (const auto& [k, v] : d.items()) {
    if (!v.is_number_integer() || k.size() > kMaxName) throw Malformed{"a bad duration"};
    e.durations[sanitize_utf8(k)] = Duration(v.get<int64_t>());
  }
  const json& f = object(j, "facts");
  if (f.size() > kMaxList) throw Malformed{"too many facts"};
  for (const auto& [k, v] : f.items()) {
    if (!v.is_string() || k.size() > kMaxName || v.get_ref<const std::string&>().size() > kMaxName)
      throw Malformed{"a bad fact"};
    e.facts[sanitize_utf8(k)] = sanitize_utf8(v.get_ref<const std::string&>());
  }
  e.host_stack = text_list(j, "host_stack", kMaxList, kMaxName);
  return e;
}

}  // namespace

std::string bounded(std::string_view s, std::size_t max) {
  std::string clean = sanitize_utf8(s);
  if (clean.size() <= max) return clean;
  std::size_t cut = max;
  // Back to the start of a character: continuation bytes are 10xxxxxx.
  while (cut > 0 && (static_cast<unsigned char>(clean[cut]) & 0xC0) == 0x80) --cut;
  clean.resize(cut);
  return clean;
}

std::string encode_finding(const Finding& f) {
  json j;
  j["v"] = 1;
  j["id"] = bounded(f.id, kMaxName);
  j["kind"] = static_cast<int>(f.kind);
  j["severity"] = static_cast<int>(f.severity);
  j["cause"] = static_cast<int>(f.cause);
  j["domain"] = bounded(f.domain, kMaxName);
  j["domain_uuid"] = bounded(f.domain_uuid, kMaxName);
  j["cpus"] = ints(f.cpus);
  j["onset"] = ns(f.onset);
  j["opened_at"] = ns(f.opened_at);
  j["last_update"] = ns(f.last_update);
  if (f.resolved_at) j["resolved_at"] = ns(*f.resolved_at);
  j["active"] = f.active;
  j["duration"] = ns(f.duration);
  j["summary"] = bounded(f.summary, kMaxText);
  if (f.predicted_guest_report_in) j["predicted_guest_report_in"] = ns(*f.predicted_guest_report_in);
  j["explained_by"] = bounded(f.explained_by, kMaxName);
  j["incident_id"] = bounded(f.incident_id, kMaxName);
  j["symptom_ids"] = strings(f.symptom_ids, kMaxIds, kMaxName);
  j["recurrences"] = f.recurrences;
  j["cause_evaluating"] = f.cause_evaluating;
  j["evidence"] = json::array();
  // Over the bound: the last links go (the first ones carry the chain's root). Each link's size
  // is measured once; the links that fit are kept in order.
  std::size_t size = j.dump().size();
  for (std::size_t i = 0; i < f.evidence.size() && i < kMaxList; ++i) {
    json e = encode_evidence(f.evidence[i]);
    const std::size_t add = e.dump().size() + 1;  // and a comma
    if (size + add > kMaxBody) break;
    size += add;
    j["evidence"].push_back(std::move(e));
  }
  return j.dump();  // strings and lists are bounded: without evidence it is far below kMaxBody
}

Result<Finding> decode_finding(std::string_view body) {
  if (body.size() > kMaxBody) return Error(ErrorCode::kCorrupt, "finding text of " + std::to_string(body.size()) + " bytes (max " + std::to_string(kMaxBody) + ")");
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Error(ErrorCode::kCorrupt, "finding text is not a JSON object");
  try {
    if (number<int>(j, "v") != 1) throw Malformed{"unknown format version"};
    Finding f;
    f.id = text(j, "id", kMaxName);
    if (f.id.empty()) throw Malformed{"empty id"};
    f.kind = enumerated<diagnosis::FindingKind>(j, "kind", static_cast<int>(diagnosis::FindingKind::kGuestStackOverflow));
    f.severity = enumerated<diagnosis::Severity>(j, "severity", static_cast<int>(diagnosis::Severity::kCritical));
    f.cause = enumerated<diagnosis::Cause>(j, "cause", static_cast<int>(diagnosis::Cause::kUnknown));
    f.domain = text(j, "domain", kMaxName);
    f.domain_uuid = text(j, "domain_uuid", kMaxName);
    f.cpus = int_list(j, "cpus");
    f.onset = time_of(number<int64_t>(j, "onset"));
    f.opened_at = time_of(number<int64_t>(j, "opened_at"));
    f.last_update = time_of(number<int64_t>(j, "last_update"));
    if (auto r = opt_number<int64_t>(j, "resolved_at")) f.resolved_at = time_of(*r);
    f.active = boolean(j, "active");
    f.duration = Duration(number<int64_t>(j, "duration"));
    f.summary = text(j, "summary", kMaxText);
    if (auto p = opt_number<int64_t>(j, "predicted_guest_report_in")) f.predicted_guest_report_in = Duration(*p);
    f.explained_by = text(j, "explained_by", kMaxName);
    f.incident_id = text(j, "incident_id", kMaxName);
    f.symptom_ids = text_list(j, "symptom_ids", kMaxIds, kMaxName);
    f.recurrences = number<uint32_t>(j, "recurrences");
    f.cause_evaluating = boolean(j, "cause_evaluating");
    for (const json& e : list(j, "evidence", kMaxList)) f.evidence.push_back(decode_evidence(e));
    return f;
  } catch (const Malformed& m) {
    return Error(ErrorCode::kCorrupt, "finding text: " + m.why);
  } catch (const json::exception& e) {  // a number out of its type's range
    return Error(ErrorCode::kCorrupt, std::string("finding text: ") + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Incident bundles. Points are arrays, not objects: a bundle holds thousands of them.

namespace {

json encode_snapshot(const diagnosis::IncidentSnapshot& s) {
  json cpus = json::array();
  for (std::size_t i = 0; i < s.cpus.size() && i < kMaxIds; ++i) {
    const auto& c = s.cpus[i];
    json cj = {{"cpu", c.cpu}, {"online", c.online}, {"idle", c.idle}, {"pid", c.pid},
               {"comm", bounded(c.comm, kMaxName)}, {"nr_running", c.nr_running},
               {"queued_calls", c.queued_calls}, {"csd_targets", ints(c.csd_targets)}};
    if (c.watchdog_age) cj["watchdog_age"] = ns(*c.watchdog_age);
    cpus.push_back(std::move(cj));
  }
  return {{"at", ns(s.at)}, {"running_clock_ns", s.running_clock_ns}, {"watchdog_thresh", s.watchdog_thresh},
          {"panic_cpu", s.panic_cpu}, {"cpus", std::move(cpus)}, {"troubled_cpus", s.troubled_cpus},
          {"max_watchdog_age", ns(s.max_watchdog_age)}};
}

diagnosis::IncidentSnapshot decode_snapshot(const json& j) {
  if (!j.is_object()) throw Malformed{"a snapshot is not an object"};
  diagnosis::IncidentSnapshot s;
  s.at = time_of(number<int64_t>(j, "at"));
  s.running_clock_ns = number<uint64_t>(j, "running_clock_ns");
  s.watchdog_thresh = number<int>(j, "watchdog_thresh");
  s.panic_cpu = number<int>(j, "panic_cpu");
  for (const json& c : list(j, "cpus", kMaxIds)) {
    if (!c.is_object()) throw Malformed{"a snapshot CPU is not an object"};
    diagnosis::IncidentCpuSummary cs;
    cs.cpu = number<int>(c, "cpu");
    cs.online = boolean(c, "online");
    cs.idle = boolean(c, "idle");
    cs.pid = number<int>(c, "pid");
    cs.comm = text(c, "comm", kMaxName);
    cs.nr_running = number<uint32_t>(c, "nr_running");
    cs.queued_calls = number<uint32_t>(c, "queued_calls");
    cs.csd_targets = int_list(c, "csd_targets");
    if (auto a = opt_number<int64_t>(c, "watchdog_age")) cs.watchdog_age = Duration(*a);
    s.cpus.push_back(std::move(cs));
  }
  s.troubled_cpus = number<int>(j, "troubled_cpus");
  s.max_watchdog_age = Duration(number<int64_t>(j, "max_watchdog_age"));
  return s;
}

const json& tuple(const json& j, std::size_t n, const char* what) {
  if (!j.is_array() || j.size() != n) throw Malformed{std::string("a ") + what + " is not a list of " + std::to_string(n)};
  for (const json& e : j)
    if (!e.is_number_integer()) throw Malformed{std::string("a ") + what + " holds a non-integer"};
  return j;
}

}  // namespace

Result<std::string> encode_incident(const diagnosis::IncidentBundle& b) {
  try {
    json j;
    j["finding"] = json::parse(encode_finding(b.finding));
    j["window_start"] = ns(b.window_start);
    if (b.window_end) j["window_end"] = ns(*b.window_end);
    json vcpus = json::array();
    for (std::size_t i = 0; i < b.vcpus.size() && i < kMaxIds; ++i) {
      const auto& l = b.vcpus[i];
      json pts = json::array();
      for (std::size_t k = 0; k < l.points.size() && k < kMaxIncidentPoints; ++k) {
        const auto& p = l.points[k];
        pts.push_back({ns(p.at), static_cast<int>(p.state), ns(p.run_time), ns(p.run_delay)});
      }
      vcpus.push_back({{"vcpu", l.vcpu}, {"tid", l.tid}, {"points", std::move(pts)}});
    }
    j["vcpus"] = std::move(vcpus);
    json guest = json::array();
    for (std::size_t i = 0; i < b.guest_cpus.size() && i < kMaxIds; ++i) {
      const auto& l = b.guest_cpus[i];
      json pts = json::array();
      for (std::size_t k = 0; k < l.points.size() && k < kMaxIncidentPoints; ++k) {
        const auto& p = l.points[k];
        pts.push_back({ns(p.at), p.online ? 1 : 0, p.idle ? 1 : 0, p.csd_target,
                       p.watchdog_age ? ns(*p.watchdog_age) : int64_t{-1}});
      }
      guest.push_back({{"cpu", l.cpu}, {"points", std::move(pts)}});
    }
    j["guest_cpus"] = std::move(guest);
    if (b.at_onset) j["at_onset"] = encode_snapshot(*b.at_onset);
    if (b.at_worst) j["at_worst"] = encode_snapshot(*b.at_worst);
    j["printk_tail"] = strings(b.printk_tail, kMaxPrintk, kMaxName);
    json stacks = json::array();
    for (std::size_t i = 0; i < b.host_stacks.size() && i < kMaxIds; ++i) {
      const auto& h = b.host_stacks[i];
      stacks.push_back({{"tid", h.tid}, {"vcpu", h.vcpu}, {"name", bounded(h.name, kMaxName)},
                        {"state", static_cast<int>(h.state)}, {"wchan", bounded(h.wchan, kMaxName)},
                        {"frames", strings(h.frames, kMaxList, kMaxName)}, {"first_seen", ns(h.first_seen)},
                        {"last_seen", ns(h.last_seen)}});
    }
    j["host_stacks"] = std::move(stacks);
    json related = json::array();
    for (std::size_t i = 0; i < b.related.size() && i < kMaxIds; ++i) {
      const auto& r = b.related[i];
      json rj = {{"id", bounded(r.id, kMaxName)}, {"kind", static_cast<int>(r.kind)},
                 {"severity", static_cast<int>(r.severity)}, {"onset", ns(r.onset)}, {"cpus", ints(r.cpus)},
                 {"summary", bounded(r.summary, kMaxText)}};
      if (r.resolved_at) rj["resolved_at"] = ns(*r.resolved_at);
      related.push_back(std::move(rj));
    }
    j["related"] = std::move(related);
    j["stride"] = ns(b.stride);
    const auto& d = b.dropped;
    j["dropped"] = {d.vcpu_points, d.guest_points, d.lanes, d.host_stacks, d.printk_lines, d.related};
    std::string out = j.dump();
    if (out.size() > kMaxIncidentBody) {
      return Error(ErrorCode::kLimit, "incident " + b.finding.id + ": " + std::to_string(out.size()) +
                                          " bytes encoded, over " + std::to_string(kMaxIncidentBody));
    }
    return out;
  } catch (const json::exception& e) {
    return Error(ErrorCode::kInternal, std::string("encoding incident ") + b.finding.id + ": " + e.what());
  }
}

Result<diagnosis::IncidentBundle> decode_incident(std::string_view body) {
  if (body.size() > kMaxIncidentBody) {
    return Error(ErrorCode::kCorrupt, "incident row of " + std::to_string(body.size()) + " bytes, over " +
                                          std::to_string(kMaxIncidentBody));
  }
  try {
    const json j = json::parse(body);
    if (!j.is_object()) throw Malformed{"not an object"};
    diagnosis::IncidentBundle b;
    auto f = decode_finding(object(j, "finding").dump());
    if (!f.ok()) throw Malformed{"finding: " + f.error().message};
    b.finding = std::move(f).value();
    b.window_start = time_of(number<int64_t>(j, "window_start"));
    if (auto e = opt_number<int64_t>(j, "window_end")) b.window_end = time_of(*e);
    for (const json& l : list(j, "vcpus", kMaxIds)) {
      if (!l.is_object()) throw Malformed{"a vCPU lane is not an object"};
      diagnosis::IncidentVcpuLane lane;
      lane.vcpu = number<int>(l, "vcpu");
      lane.tid = number<int>(l, "tid");
      for (const json& p : list(l, "points", kMaxIncidentPoints)) {
        tuple(p, 4, "vCPU point");
        const int state = p[1].get<int>();
        if (state < 0 || state > static_cast<int>(diagnosis::ThreadState::kDead)) throw Malformed{"a thread state is out of range"};
        lane.points.push_back({time_of(p[0].get<int64_t>()), static_cast<diagnosis::ThreadState>(state),
                               Duration(p[2].get<int64_t>()), Duration(p[3].get<int64_t>())});
      }
      b.vcpus.push_back(std::move(lane));
    }
    for (const json& l : list(j, "guest_cpus", kMaxIds)) {
      if (!l.is_object()) throw Malformed{"a guest lane is not an object"};
      diagnosis::IncidentGuestLane lane;
      lane.cpu = number<int>(l, "cpu");
      for (const json& p : list(l, "points", kMaxIncidentPoints)) {
        tuple(p, 5, "guest point");
        diagnosis::IncidentGuestPoint g;
        g.at = time_of(p[0].get<int64_t>());
        g.online = p[1].get<int64_t>() != 0;
        g.idle = p[2].get<int64_t>() != 0;
        g.csd_target = p[3].get<int>();
        if (const int64_t a = p[4].get<int64_t>(); a >= 0) g.watchdog_age = Duration(a);
        lane.points.push_back(g);
      }
      b.guest_cpus.push_back(std::move(lane));
    }
    if (j.contains("at_onset")) b.at_onset = decode_snapshot(j["at_onset"]);
    if (j.contains("at_worst")) b.at_worst = decode_snapshot(j["at_worst"]);
    b.printk_tail = text_list(j, "printk_tail", kMaxPrintk, kMaxName);
    for (const json& h : list(j, "host_stacks", kMaxIds)) {
      if (!h.is_object()) throw Malformed{"a host stack is not an object"};
      diagnosis::IncidentHostStack s;
      s.tid = number<int>(h, "tid");
      s.vcpu = number<int>(h, "vcpu");
      s.name = text(h, "name", kMaxName);
      s.state = enumerated<diagnosis::ThreadState>(h, "state", static_cast<int>(diagnosis::ThreadState::kDead));
      s.wchan = text(h, "wchan", kMaxName);
      s.frames = text_list(h, "frames", kMaxList, kMaxName);
      s.first_seen = time_of(number<int64_t>(h, "first_seen"));
      s.last_seen = time_of(number<int64_t>(h, "last_seen"));
      b.host_stacks.push_back(std::move(s));
    }
    for (const json& r : list(j, "related", kMaxIds)) {
      if (!r.is_object()) throw Malformed{"a related finding is not an object"};
      diagnosis::IncidentFindingRef x;
      x.id = text(r, "id", kMaxName);
      x.kind = enumerated<diagnosis::FindingKind>(r, "kind", static_cast<int>(diagnosis::FindingKind::kGuestStackOverflow));
      x.severity = enumerated<diagnosis::Severity>(r, "severity", static_cast<int>(diagnosis::Severity::kCritical));
      x.onset = time_of(number<int64_t>(r, "onset"));
      if (auto t = opt_number<int64_t>(r, "resolved_at")) x.resolved_at = time_of(*t);
      x.cpus = int_list(r, "cpus");
      x.summary = text(r, "summary", kMaxText);
      b.related.push_back(std::move(x));
    }
    b.stride = Duration(number<int64_t>(j, "stride"));
    const json& d = tuple(list(j, "dropped", 6), 6, "dropped count");
    b.dropped = {d[0].get<uint64_t>(), d[1].get<uint64_t>(), d[2].get<uint64_t>(),
                 d[3].get<uint64_t>(), d[4].get<uint64_t>(), d[5].get<uint64_t>()};
    b.bytes = diagnosis::estimate_bytes(b);
    return b;
  } catch (const Malformed& m) {
    return Error(ErrorCode::kCorrupt, "incident row: " + m.why);
  } catch (const json::exception& e) {
    return Error(ErrorCode::kCorrupt, std::string("incident row: ") + e.what());
  }
}

}  // namespace stallmon::store
