// SPDX-License-Identifier: Apache-2.0
#include "incident_html.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "format.h"

namespace stallmon::server::client {
namespace {

constexpr double kLeft = 130;     // lane labels
constexpr double kWidth = 1000;   // the time axis
constexpr double kLaneH = 18;
constexpr double kLaneGap = 6;
constexpr double kTop = 30;       // axis labels and finding marks

std::string esc(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default:
        // Control characters have no place in a report (and are not XML).
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') {
          o += ' ';
        } else {
          o += c;
        }
    }
  }
  return o;
}

int64_t nanos(const google::protobuf::Timestamp& t) { return t.seconds() * 1'000'000'000 + t.nanos(); }

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

// Maps instants of the window onto the axis.
struct Scale {
  int64_t t0 = 0, t1 = 1;
  double x(int64_t t) const {
    if (t < t0) t = t0;
    if (t > t1) t = t1;
    return kLeft + static_cast<double>(t - t0) / static_cast<double>(t1 - t0) * kWidth;
  }
};

const char* host_state_class(v1::ThreadState s) {
  switch (s) {
    case v1::THREAD_STATE_RUNNING: return "st-r";
    case v1::THREAD_STATE_SLEEPING:
    case v1::THREAD_STATE_IDLE: return "st-s";
    case v1::THREAD_STATE_DISK_SLEEP: return "st-d";
    case v1::THREAD_STATE_STOPPED:
    case v1::THREAD_STATE_TRACING_STOP: return "st-t";
    default: return "st-x";
  }
}

const char* guest_class(const v1::IncidentGuestPoint& p) {
  if (!p.online()) return "g-off";
  return p.idle() ? "g-idle" : "g-run";
}

// Consecutive points of one class drawn as one span: each point stands until the next one
// (the last one for a sample's worth: the median gap is not worth computing for a picture).
template <typename Lane, typename ClassOf>
void spans(std::ostringstream& o, const Lane& lane, const Scale& sc, double y, ClassOf class_of) {
  const int n = lane.points_size();
  int i = 0;
  while (i < n) {
    const std::string cls = class_of(lane.points(i));
    int j = i + 1;
    while (j < n && class_of(lane.points(j)) == cls) ++j;
    const int64_t from = nanos(lane.points(i).at());
    const int64_t to = j < n ? nanos(lane.points(j).at()) : nanos(lane.points(n - 1).at()) + 100'000'000;
    const double x0 = sc.x(from), x1 = std::max(sc.x(to), x0 + 0.5);
    o << "<rect class=\"" << cls << "\" x=\"" << num(x0) << "\" y=\"" << num(y) << "\" width=\"" << num(x1 - x0)
      << "\" height=\"" << num(kLaneH) << "\"/>\n";
    i = j;
  }
}

const char* kStyle = R"css(
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
pre { background: #f6f6f6; padding: 0.5em; font-size: 0.85em; overflow-x: auto; }
svg text { font-size: 11px; font-family: monospace; }
.st-r { fill: #4caf50; } .st-s { fill: #cfd8dc; } .st-d { fill: #e53935; } .st-t { fill: #fb8c00; }
.st-x { fill: #9e9e9e; }
.g-run { fill: #81c784; } .g-idle { fill: #eceff1; } .g-off { fill: #616161; }
.wait { fill: #8e24aa; fill-opacity: 0.6; }
.csd-wait { stroke: #8e24aa; stroke-width: 2; }
.wd { fill: none; stroke: #1e88e5; stroke-width: 1; }
.onset { stroke: #d32f2f; stroke-dasharray: 4 3; } .resolution { stroke: #388e3c; stroke-dasharray: 4 3; }
.axis { stroke: #999; }
.legend span { display: inline-block; width: 1em; height: 0.8em; margin: 0 0.2em 0 0.8em; }
)css";

std::string timeline(const v1::Incident& r) {
  Scale sc;
  sc.t0 = nanos(r.window_start());
  int64_t end = r.has_window_end() ? nanos(r.window_end()) : sc.t0;
  for (const auto& l : r.vcpus())
    if (l.points_size() > 0) end = std::max(end, nanos(l.points(l.points_size() - 1).at()));
  for (const auto& l : r.guest_cpus())
    if (l.points_size() > 0) end = std::max(end, nanos(l.points(l.points_size() - 1).at()));
  // The axis starts at the first sample when the lookback is not all there (a daemon that had
  // just started, or a bundle restored after a restart): an empty minute would squeeze the
  // incident into a sliver of the picture.
  int64_t first = end;
  for (const auto& l : r.vcpus())
    if (l.points_size() > 0) first = std::min(first, nanos(l.points(0).at()));
  for (const auto& l : r.guest_cpus())
    if (l.points_size() > 0) first = std::min(first, nanos(l.points(0).at()));
  sc.t0 = std::max(sc.t0, std::min(first, end - 1'000'000'000));
  sc.t1 = std::max(end, sc.t0 + 1'000'000'000);

  const int lanes = r.vcpus_size() + r.guest_cpus_size();
  const double height = kTop + lanes * (kLaneH + kLaneGap) + 20;
  std::ostringstream o;
  o << "<svg class=\"timeline\" width=\"" << num(kLeft + kWidth + 20) << "\" height=\"" << num(height)
    << "\" viewBox=\"0 0 " << num(kLeft + kWidth + 20) << " " << num(height) << "\">\n";
  o << "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"6\" "
       "markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#8e24aa\"/>"
       "</marker></defs>\n";
  // Axis: about ten ticks, in seconds from the window's start.
  const double span_s = static_cast<double>(sc.t1 - sc.t0) / 1e9;
  double step = 1;
  for (double s : {1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0})
    if (span_s / s <= 12) {
      step = s;
      break;
    }
  const int64_t onset = nanos(r.finding().onset());
  // Ticks at whole steps from the onset (0 s is the onset).
  const int64_t step_ns = static_cast<int64_t>(step * 1e9);
  const int64_t from_onset = sc.t0 - onset;
  const int64_t k0 = from_onset / step_ns - (from_onset % step_ns < 0 ? 1 : 0);  // floor
  for (int64_t k = k0, n = 0; onset + k * step_ns <= sc.t1 && n < 100; ++k, ++n) {
    const int64_t t = onset + k * step_ns;
    if (t < sc.t0) continue;
    const double x = sc.x(t);
    o << "<line class=\"axis\" x1=\"" << num(x) << "\" y1=\"" << num(kTop - 6) << "\" x2=\"" << num(x) << "\" y2=\""
      << num(height - 20) << "\" stroke-opacity=\"0.3\"/>\n<text x=\"" << num(x) << "\" y=\"" << num(kTop - 10)
      << "\">" << std::llround(static_cast<double>(t - onset) / 1e9) << "s</text>\n";
  }

  std::map<int, double> guest_y;  // lane middle by CPU, for the arrows
  double y = kTop;
  for (const auto& l : r.vcpus()) {
    o << "<g class=\"lane vcpu\" data-vcpu=\"" << l.vcpu() << "\">\n<text x=\"4\" y=\"" << num(y + 13) << "\">vCPU "
      << l.vcpu() << " (" << l.host_tid() << ")</text>\n";
    spans(o, l, sc, y, [](const v1::IncidentVcpuPoint& p) { return std::string(host_state_class(p.state())); });
    o << "</g>\n";
    y += kLaneH + kLaneGap;
  }
  for (const auto& l : r.guest_cpus()) {
    guest_y[l.cpu()] = y + kLaneH / 2;
    o << "<g class=\"lane guest\" data-cpu=\"" << l.cpu() << "\">\n<text x=\"4\" y=\"" << num(y + 13) << "\">CPU "
      << l.cpu() << "</text>\n";
    spans(o, l, sc, y, [](const v1::IncidentGuestPoint& p) { return std::string(guest_class(p)); });
    // The watchdog age, scaled to the lane's largest (at least 1 s: a healthy guest's ages are
    // a few seconds and should look low); at most one point per pixel.
    int64_t max_age = 1'000'000'000;
    for (const auto& p : l.points())
      if (p.has_watchdog_age()) max_age = std::max<int64_t>(max_age, p.watchdog_age().seconds() * 1'000'000'000 + p.watchdog_age().nanos());
    std::string pts;
    double last_x = -1;
    for (const auto& p : l.points()) {
      if (!p.has_watchdog_age()) continue;
      const double x = sc.x(nanos(p.at()));
      if (x - last_x < 1) continue;
      last_x = x;
      const double age = static_cast<double>(p.watchdog_age().seconds() * 1'000'000'000 + p.watchdog_age().nanos());
      pts += num(x) + "," + num(y + kLaneH - age / static_cast<double>(max_age) * kLaneH) + " ";
    }
    if (!pts.empty()) o << "<polyline class=\"wd\" points=\"" << pts << "\"/>\n";
    o << "</g>\n";
    y += kLaneH + kLaneGap;
  }
  // csd waits: a run of snapshots showing the same target is one wait.
  for (const auto& l : r.guest_cpus()) {
    const double wy = guest_y[l.cpu()];
    int i = 0;
    const int n = l.points_size();
    while (i < n) {
      const int target = l.points(i).csd_target();
      int j = i + 1;
      while (j < n && l.points(j).csd_target() == target) ++j;
      if (target >= 0) {
        const double x0 = sc.x(nanos(l.points(i).at()));
        const double x1 = std::max(sc.x(nanos(l.points(j - 1).at())), x0 + 1);
        o << "<rect class=\"wait\" x=\"" << num(x0) << "\" y=\"" << num(wy - kLaneH / 2) << "\" width=\""
          << num(x1 - x0) << "\" height=\"" << num(kLaneH) << "\"/>\n";
        auto t = guest_y.find(target);
        const double ty = t != guest_y.end() ? t->second : wy;  // a target without a lane: a stub
        o << "<line class=\"csd-wait\" data-waiter=\"" << l.cpu() << "\" data-target=\"" << target << "\" x1=\""
          << num(x0) << "\" y1=\"" << num(wy) << "\" x2=\"" << num(x0 + (t == guest_y.end() ? 12 : 0)) << "\" y2=\""
          << num(ty + (ty > wy ? -kLaneH / 2 : ty < wy ? kLaneH / 2 : 0)) << "\" marker-end=\"url(#arrow)\"/>\n";
      }
      i = j;
    }
  }
  // Finding marks: onset and resolution of each finding in the window.
  for (const auto& f : r.related()) {
    const double x = sc.x(nanos(f.onset()));
    o << "<line class=\"onset\" data-finding=\"" << esc(f.id()) << "\" x1=\"" << num(x) << "\" y1=\"" << num(kTop - 4)
      << "\" x2=\"" << num(x) << "\" y2=\"" << num(height - 20) << "\"><title>" << esc(v1::FindingKind_Name(f.kind()))
      << " onset: " << esc(f.id()) << "</title></line>\n";
    if (f.has_resolved_at()) {
      const double xr = sc.x(nanos(f.resolved_at()));
      o << "<line class=\"resolution\" data-finding=\"" << esc(f.id()) << "\" x1=\"" << num(xr) << "\" y1=\""
        << num(kTop - 4) << "\" x2=\"" << num(xr) << "\" y2=\"" << num(height - 20) << "\"><title>"
        << esc(v1::FindingKind_Name(f.kind())) << " resolved: " << esc(f.id()) << "</title></line>\n";
    }
  }
  o << "<text x=\"" << num(kLeft) << "\" y=\"" << num(height - 4) << "\">seconds from the onset</text>\n</svg>\n";
  return o.str();
}

}  // namespace

std::string render_incident_html(const v1::Incident& r) {
  const auto& f = r.finding();
  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>stallmon incident "
    << esc(f.id()) << "</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n";
  o << "<h1>" << esc(v1::FindingKind_Name(f.kind())) << " on " << esc(f.domain()) << "</h1>\n";
  o << "<p class=\"summary\">" << esc(f.summary()) << "</p>\n";
  o << "<p>finding <code>" << esc(f.id()) << "</code>, onset " << esc(human_time(f.onset())) << " UTC, "
    << (r.has_window_end() ? "resolved " + esc(human_time(r.window_end())) + " UTC" : std::string("still active"))
    << ", lasted " << esc(human_duration(f.duration())) << ".</p>\n";
  o << "<h2>Timeline</h2>\n<p class=\"legend\">host thread:<span class=\"st-r\" style=\"background:#4caf50\">"
       "</span>running<span style=\"background:#cfd8dc\"></span>sleeping<span style=\"background:#e53935\"></span>"
       "D<span style=\"background:#fb8c00\"></span>stopped; guest CPU:<span style=\"background:#81c784\"></span>"
       "running<span style=\"background:#eceff1\"></span>idle<span style=\"background:#616161\"></span>offline; "
       "<span style=\"background:#8e24aa\"></span>csd wait (arrow: waiter to target); blue line: watchdog age; "
       "dashed: finding onset (red) and resolution (green)</p>\n";
  o << timeline(r);

  auto snapshot = [&](const char* title, const v1::IncidentSnapshot& s) {
    o << "<h2>Guest snapshot " << title << " (" << esc(human_time(s.at())) << " UTC)</h2>\n<table>\n<tr><th>CPU</th>"
         "<th>online</th><th>current</th><th>idle</th><th>nr_running</th><th>queued calls</th><th>waits on</th>"
         "<th>watchdog age</th></tr>\n";
    for (const auto& c : s.cpus()) {
      std::string waits;
      for (int t : c.waiting_on()) waits += (waits.empty() ? "" : ",") + std::to_string(t);
      o << "<tr><td>" << c.cpu() << "</td><td>" << (c.online() ? "yes" : "no") << "</td><td>" << esc(c.current_comm())
        << "/" << c.current_pid() << "</td><td>" << (c.idle() ? "yes" : "no") << "</td><td>" << c.nr_running()
        << "</td><td>" << c.call_single_queue_len() << "</td><td>" << esc(waits) << "</td><td>"
        << (c.has_watchdog_age() ? esc(human_duration(c.watchdog_age())) : "-") << "</td></tr>\n";
    }
    o << "</table>\n";
  };
  if (r.has_at_onset()) snapshot("at onset", r.at_onset());
  if (r.has_at_worst()) snapshot("at the worst point", r.at_worst());

  if (r.host_stacks_size() > 0) {
    o << "<h2>Host stacks of blocked threads</h2>\n";
    for (const auto& h : r.host_stacks()) {
      o << "<p>" << h.tid() << " " << esc(h.name()) << (h.vcpu() >= 0 ? " (vCPU " + std::to_string(h.vcpu()) + ")" : "")
        << ", wchan " << esc(h.wchan()) << "</p>\n<pre>";
      for (const auto& fr : h.frames()) o << esc(fr) << "\n";
      o << "</pre>\n";
    }
  }
  if (r.related_size() > 0) {
    o << "<h2>Findings of the domain in the window</h2>\n<table>\n<tr><th>id</th><th>kind</th><th>severity</th>"
         "<th>onset</th><th>resolved</th><th>summary</th></tr>\n";
    for (const auto& x : r.related()) {
      o << "<tr><td>" << esc(x.id()) << "</td><td>" << esc(v1::FindingKind_Name(x.kind())) << "</td><td>"
        << esc(severity_name(x.severity())) << "</td><td>" << esc(human_time(x.onset())) << "</td><td>"
        << (x.has_resolved_at() ? esc(human_time(x.resolved_at())) : "active") << "</td><td>" << esc(x.summary())
        << "</td></tr>\n";
    }
    o << "</table>\n";
  }
  if (r.printk_tail_size() > 0) {
    o << "<h2>printk tail</h2>\n<pre>";
    for (const auto& line : r.printk_tail()) o << esc(line) << "\n";
    o << "</pre>\n";
  }
  o << "<h2>Evidence</h2>\n<ul>\n";
  for (const auto& e : f.evidence()) o << "<li>" << esc(e.text()) << "</li>\n";
  o << "</ul>\n</body>\n</html>\n";
  return o.str();
}

Result<void> write_incident_html(const v1::Incident& r, const std::string& path) {
  const std::string html = render_incident_html(r);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return Error::io(path + ": cannot open for writing: " + std::strerror(errno), errno);
  f.write(html.data(), static_cast<std::streamsize>(html.size()));
  f.close();
  if (!f) return Error::io(path + ": write failed: " + std::strerror(errno), errno);
  return {};
}

}  // namespace stallmon::server::client
