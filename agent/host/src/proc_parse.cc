// SPDX-License-Identifier: Apache-2.0
#include "stallmon/host/proc_parse.h"

#include <algorithm>
#include <charconv>

namespace stallmon::host {
namespace {

constexpr size_t kMaxComm = 64;
constexpr size_t kMaxWchan = 128;
constexpr size_t kMaxFrame = 256;
constexpr size_t kMaxCgroupLines = 64;
constexpr size_t kMaxCgroupPath = 4096;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Next whitespace-separated token; empty when exhausted.
std::string_view next_token(std::string_view& s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  size_t n = 0;
  while (n < s.size() && !is_space(s[n])) ++n;
  std::string_view tok = s.substr(0, n);
  s.remove_prefix(n);
  return tok;
}

template <typename T>
bool to_int(std::string_view s, T& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

Error corrupt(const char* what, std::string_view detail = {}) {
  std::string msg = what;
  if (!detail.empty()) {
    msg += ": '";
    msg += detail.substr(0, 64);
    msg += "'";
  }
  return Error(ErrorCode::kCorrupt, std::move(msg));
}

// Calls fn(key, value) for each "key<sep>value" line (value trimmed).
template <typename Fn>
void for_each_line(std::string_view text, Fn&& fn) {
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    fn(line);
  }
}

}  // namespace

Result<TaskStat> parse_task_stat(std::string_view text) {
  TaskStat st;
  size_t open = text.find('(');
  size_t close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open) {
    return corrupt("stat: no '(comm)'", text);
  }
  if (!to_int(trim(text.substr(0, open)), st.tid)) return corrupt("stat: bad pid", text);
  st.comm = std::string(text.substr(open + 1, std::min(close - open - 1, kMaxComm)));

  // Fields after the comm start at field 3 (state); tokens[k] is field k + 3.
  std::string_view rest = text.substr(close + 1);
  std::string_view state = next_token(rest);
  if (state.size() != 1 || !((state[0] >= 'A' && state[0] <= 'Z') ||
                             (state[0] >= 'a' && state[0] <= 'z'))) {
    return corrupt("stat: bad state", state);
  }
  st.state = state[0];
  uint64_t v = 0;
  for (int field = 4; field <= 39; ++field) {
    std::string_view tok = next_token(rest);
    if (tok.empty()) {
      // Fields up to starttime exist on every kernel this runs on; processor (39) since 2.2.
      if (field <= 22) return corrupt("stat: truncated");
      break;
    }
    switch (field) {
      case 14:
      case 15:
      case 22:
        if (!to_int(tok, v)) return corrupt("stat: bad number", tok);
        (field == 14 ? st.utime_ticks : field == 15 ? st.stime_ticks : st.starttime_ticks) = v;
        break;
      case 39:
        if (!to_int(tok, st.processor) || st.processor < 0) return corrupt("stat: bad cpu", tok);
        break;
      default:
        break;
    }
  }
  return st;
}

Result<SchedStat> parse_schedstat(std::string_view text) {
  SchedStat s;
  if (!to_int(next_token(text), s.run_ns) || !to_int(next_token(text), s.wait_ns) ||
      !to_int(next_token(text), s.timeslices)) {
    return corrupt("schedstat: expected three numbers");
  }
  return s;
}

Result<TaskStatus> parse_task_status(std::string_view text) {
  TaskStatus s;
  bool vol = false, invol = false, tracer = false, bad = false;
  for_each_line(text, [&](std::string_view line) {
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return;
    std::string_view key = line.substr(0, colon);
    std::string_view value = trim(line.substr(colon + 1));
    if (key == "voluntary_ctxt_switches") {
      vol = true;
      bad |= !to_int(value, s.voluntary_ctxt_switches);
    } else if (key == "nonvoluntary_ctxt_switches") {
      invol = true;
      bad |= !to_int(value, s.nonvoluntary_ctxt_switches);
    } else if (key == "TracerPid") {
      tracer = true;
      bad |= !to_int(value, s.tracer_pid);
    }
  });
  if (bad) return corrupt("status: bad number");
  if (!vol || !invol || !tracer) return corrupt("status: missing ctxt_switches or TracerPid");
  return s;
}

std::string parse_wchan(std::string_view text) {
  text = trim(text);
  if (text.empty() || text == "0") return {};
  return std::string(text.substr(0, kMaxWchan));
}

std::string frame_function(std::string_view frame) {
  frame = trim(frame);
  size_t end = frame.find_first_of("+ ");
  return std::string(frame.substr(0, std::min({end, frame.size(), kMaxWchan})));
}

std::vector<std::string> parse_stack(std::string_view text) {
  std::vector<std::string> frames;
  for_each_line(text, [&](std::string_view line) {
    if (frames.size() >= kMaxStackFrames) return;
    line = trim(line);
    // "[<0>] " hides the address unless kptr_restrict allows it; drop whatever is bracketed.
    if (!line.empty() && line.front() == '[') {
      size_t end = line.find(']');
      line = end == std::string_view::npos ? std::string_view{} : trim(line.substr(end + 1));
    }
    if (!line.empty()) frames.emplace_back(line.substr(0, kMaxFrame));
  });
  return frames;
}

namespace {

// Fills out from "key value" lines; keys maps names to destinations.
struct CpuStatKeys {
  uint64_t nr_periods = 0, nr_throttled = 0, throttled = 0;
  bool has_throttled_count = false, has_throttled_time = false, bad = false;
};

CpuStatKeys scan_cpu_stat(std::string_view text, std::string_view time_key) {
  CpuStatKeys k;
  for_each_line(text, [&](std::string_view line) {
    std::string_view key = next_token(line);
    std::string_view value = next_token(line);
    if (key == "nr_periods") {
      k.bad |= !to_int(value, k.nr_periods);
    } else if (key == "nr_throttled") {
      k.has_throttled_count = true;
      k.bad |= !to_int(value, k.nr_throttled);
    } else if (key == time_key) {
      k.has_throttled_time = true;
      k.bad |= !to_int(value, k.throttled);
    }
  });
  return k;
}

}  // namespace

Result<CgroupCpuStat> parse_cgroup_v1_cpu_stat(std::string_view text) {
  CpuStatKeys k = scan_cpu_stat(text, "throttled_time");
  if (k.bad) return corrupt("cpu.stat (v1): bad number");
  if (!k.has_throttled_count || !k.has_throttled_time) {
    return corrupt("cpu.stat (v1): missing nr_throttled or throttled_time");
  }
  return CgroupCpuStat{k.nr_periods, k.nr_throttled, k.throttled};
}

Result<CgroupCpuStat> parse_cgroup_v2_cpu_stat(std::string_view text) {
  CpuStatKeys k = scan_cpu_stat(text, "throttled_usec");
  if (k.bad) return corrupt("cpu.stat (v2): bad number");
  if (!k.has_throttled_count && !k.has_throttled_time) {
    return Error(ErrorCode::kNotFound, "cpu.stat (v2): no bandwidth fields (cpu controller off)");
  }
  if (!k.has_throttled_count || !k.has_throttled_time) {
    return corrupt("cpu.stat (v2): missing nr_throttled or throttled_usec");
  }
  if (k.throttled > UINT64_MAX / 1000) return corrupt("cpu.stat (v2): throttled_usec overflows");
  return CgroupCpuStat{k.nr_periods, k.nr_throttled, k.throttled * 1000};
}

Result<std::vector<CgroupMembership>> parse_proc_cgroup(std::string_view text) {
  std::vector<CgroupMembership> out;
  bool bad = false;
  for_each_line(text, [&](std::string_view line) {
    if (bad || trim(line).empty()) return;
    if (out.size() >= kMaxCgroupLines) {
      bad = true;
      return;
    }
    size_t c1 = line.find(':');
    size_t c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) {
      bad = true;
      return;
    }
    CgroupMembership m;
    // The path is everything after the second ':' and may itself contain ':'.
    std::string_view path = line.substr(c2 + 1);
    if (!to_int(line.substr(0, c1), m.hierarchy_id) || path.empty() || path.front() != '/' ||
        path.size() > kMaxCgroupPath) {
      bad = true;
      return;
    }
    std::string_view ctrls = line.substr(c1 + 1, c2 - c1 - 1);
    while (!ctrls.empty()) {
      size_t comma = ctrls.find(',');
      std::string_view c = ctrls.substr(0, comma);
      if (!c.empty()) m.controllers.emplace_back(c);
      ctrls.remove_prefix(comma == std::string_view::npos ? ctrls.size() : comma + 1);
    }
    m.path = std::string(path);
    out.push_back(std::move(m));
  });
  if (bad) return corrupt("cgroup: bad line");
  return out;
}

CpuCgroup find_cpu_cgroup(const std::vector<CgroupMembership>& memberships) {
  CpuCgroup v2;
  for (const CgroupMembership& m : memberships) {
    for (const std::string& c : m.controllers) {
      if (c == "cpu") return CpuCgroup{CgroupVersion::kV1, m.controllers, m.path};
    }
    if (m.hierarchy_id == 0 && m.controllers.empty()) v2 = CpuCgroup{CgroupVersion::kV2, {}, m.path};
  }
  return v2;
}

}  // namespace stallmon::host
