// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/snapshot_format.h"

#include <cinttypes>
#include <cstdarg>
#include <cstdio>

#include "stallmon/introspect/snapshot_json.h"

namespace stallmon::introspect {

namespace {

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%" PRIx64, v);
  return b;
}

std::string opt_u64(const std::optional<uint64_t>& v) { return v ? std::to_string(*v) : "-"; }

// watchdog_report_ts is ULONG_MAX (SOFTLOCKUP_DELAY_REPORT) after a touch: "reset" reads better.
std::string report_ts(const std::optional<uint64_t>& v) {
  if (v && *v == ~0ULL) return "reset";
  return opt_u64(v);
}

std::string task_str(const TaskRef& t) {
  if (!t.ok) return t.address ? "?@" + hex(t.address) : "?";
  return t.comm + "[" + std::to_string(t.pid) + "]";
}

std::string func_str(uint64_t func, const std::string& name) {
  if (!name.empty()) return name;
  return func ? hex(func) : "-";
}

void appendf(std::string& out, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void appendf(std::string& out, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n > 0) out.append(buf, std::min<size_t>(static_cast<size_t>(n), sizeof buf - 1));
}

std::string cpu_list(const std::vector<uint32_t>& cpus) {
  // Ranges like the kernel prints cpumasks: 0-2,5
  std::string s;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(cpus[i]);
    if (j > i) s += "-" + std::to_string(cpus[j]);
    i = j + 1;
  }
  return s.empty() ? "none" : s;
}

}  // namespace

std::string format_printk_record(const PrintkRecord& r) {
  std::string out;
  char prefix[48];
  std::snprintf(prefix, sizeof prefix, "[%5" PRIu64 ".%06" PRIu64 "] ", static_cast<uint64_t>(r.ts_nsec / 1000000000ULL),
                static_cast<uint64_t>((r.ts_nsec % 1000000000ULL) / 1000ULL));
  size_t start = 0;
  do {
    size_t nl = r.text.find('\n', start);
    out += prefix;
    out += r.text.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    if (nl == std::string::npos) break;
    out += "\n";
    start = nl + 1;
  } while (start <= r.text.size());
  return out;
}

std::string format_snapshot(const GuestSnapshot& s, const SnapshotFormatOptions& o) {
  std::string out;
  appendf(out, "guest: nr_cpu_ids %u, online %s, jiffies %s, clock %.6f s, watchdog_thresh %s, panic_cpu %s\n",
          s.nr_cpu_ids, cpu_list(s.online_cpus).c_str(), opt_u64(s.jiffies).c_str(), s.guest_clock_ns / 1e9,
          s.watchdog_thresh ? std::to_string(*s.watchdog_thresh).c_str() : "-",
          s.panic_cpu ? std::to_string(*s.panic_cpu).c_str() : "-");
  appendf(out, "snapshot: %.1f us\n\n", s.duration_ns / 1e3);
  appendf(out, "%-4s %-3s %-22s %-4s %5s %5s %4s %14s %10s %10s %10s %10s %12s\n", "CPU", "on", "current", "idle",
          "nr", "cfs", "ttwu", "rq_clock_s", "touch_ts", "report_ts", "hrtimer", "hr_saved", "steal_ns");
  for (const CpuSnapshot& c : s.cpus) {
    std::string cur = c.rq.ok ? task_str(c.rq.curr) : "<unreadable>";
    if (cur.size() > 22) cur.resize(22);
    appendf(out, "%-4u %-3s %-22s %-4s %5s %5s %4s %14s %10s %10s %10s %10s %12s\n", c.cpu, c.online ? "yes" : "no",
            cur.c_str(), c.rq.ok ? (c.rq.curr_is_idle ? "yes" : "no") : "?",
            c.rq.ok ? std::to_string(c.rq.nr_running).c_str() : "?",
            c.rq.ok ? std::to_string(c.rq.cfs_h_nr_running).c_str() : "?",
            c.rq.ttwu_pending ? std::to_string(*c.rq.ttwu_pending).c_str() : "-",
            c.rq.ok ? std::to_string(c.rq.clock_ns / 1e9).c_str() : "?", opt_u64(c.watchdog.touch_ts).c_str(),
            report_ts(c.watchdog.report_ts).c_str(), opt_u64(c.watchdog.hrtimer_interrupts).c_str(),
            opt_u64(c.watchdog.hrtimer_interrupts_saved).c_str(),
            c.steal ? std::to_string(c.steal->steal_ns).c_str() : "-");
  }
  out += "\n";
  for (const CpuSnapshot& c : s.cpus) {
    bool any_locked = false;
    for (const CfdTarget& t : c.cfd_targets) any_locked |= t.locked;
    if (c.call_single_queue.empty() && !c.call_single_queue_truncated && !any_locked) continue;
    appendf(out, "CPU%u:\n", c.cpu);
    if (!c.call_single_queue.empty() || c.call_single_queue_truncated) {
      appendf(out, "  call_single_queue (%zu%s):\n", c.call_single_queue.size(),
              c.call_single_queue_truncated ? ", truncated" : "");
      for (const QueueEntry& e : c.call_single_queue) {
        if (e.type == CsdType::kTtwu) {
          appendf(out, "    %-8s node %s flags 0x%02x wakes %s\n", to_string(e.type), hex(e.node).c_str(), e.flags,
                  task_str(e.task).c_str());
        } else {
          appendf(out, "    %-8s csd %s flags 0x%02x%s %s\n", to_string(e.type), hex(e.object).c_str(), e.flags,
                  e.locked ? " LOCKED" : "", func_str(e.func, e.func_name).c_str());
        }
      }
    }
    if (!c.cfd_targets.empty()) {
      appendf(out, "  cfd_data cpumask %s:\n", cpu_list(c.cfd_mask).c_str());
      for (const CfdTarget& t : c.cfd_targets) {
        if (!t.ok) {
          appendf(out, "    -> CPU%u csd %s unreadable\n", t.target, hex(t.csd).c_str());
          continue;
        }
        // csd_unlock() clears the whole flags word, so a finished csd has no type any more.
        appendf(out, "    -> CPU%u csd %s flags 0x%02x %s %s\n", t.target, hex(t.csd).c_str(), t.flags,
                t.locked ? (std::string(to_string(t.type)) + " LOCKED (waiting)").c_str() : "done",
                func_str(t.func, t.func_name).c_str());
      }
    }
  }
  for (const CpuSnapshot& c : s.cpus) {
    if (c.stack_end_corrupt.value_or(false))
      appendf(out, "CPU%u: current task %s: STACK_END_MAGIC overwritten at %s (stack overflow)\n", c.cpu,
              task_str(c.rq.curr).c_str(), hex(c.rq.curr.stack).c_str());
  }
  for (const CpuSnapshot& c : s.cpus) {
    if (!c.backtrace) continue;
    const Backtrace& b = *c.backtrace;
    appendf(out, "\nCPU%u backtrace of %s (%s, stack %s", c.cpu, task_str(c.rq.curr).c_str(), to_string(b.verification),
            hex(b.stack_base).c_str());
    if (b.pt_regs) appendf(out, ", interrupt frame at %s", hex(*b.pt_regs).c_str());
    if (b.irq_stack) appendf(out, ", from the hardirq stack at %s", hex(*b.irq_stack).c_str());
    if (b.exception_stack && !b.frames.empty())
      appendf(out, ", from the %s stack at %s", stack_name(b.frames[0].stack), hex(*b.exception_stack).c_str());
    out += "):\n";
    for (size_t i = 0; i < b.frames.size(); ++i) {
      const Frame& f = b.frames[i];
      // An inferred threadfn says so in its own text.
      const char* mark = f.verification == Verification::kOrcChain || f.verification == Verification::kInferredThreadfn ? "" :
                         f.verification == Verification::kPtRegs ? " [pt_regs]" : " ?";
      appendf(out, "  #%-2zu %s%s\n", i, f.format().c_str(), mark);
    }
    if (b.truncated) out += "  ... (frame limit)\n";
    for (const std::string& n : b.notes) appendf(out, "  note: %s\n", n.c_str());
  }
  if (o.printk && s.printk_read) {
    appendf(out, "\nprintk (last %u of %zu read):\n", std::min<uint32_t>(o.printk_lines, static_cast<uint32_t>(s.printk.size())),
            s.printk.size());
    size_t from = s.printk.size() > o.printk_lines ? s.printk.size() - o.printk_lines : 0;
    for (size_t i = from; i < s.printk.size(); ++i) out += "  " + format_printk_record(s.printk[i]) + "\n";
  }
  if (o.errors && !s.errors.empty()) {
    appendf(out, "\nerrors (%zu):\n", s.errors.size());
    for (const SnapshotError& e : s.errors) {
      std::string where = e.cpu >= 0 ? "cpu" + std::to_string(e.cpu) + " " : "";
      appendf(out, "  %s%s: %s%s\n", where.c_str(), e.what.c_str(), e.message.c_str(),
              e.address ? (" at " + hex(*e.address)).c_str() : "");
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// JSON

namespace {

nlohmann::json task_json(const TaskRef& t) {
  nlohmann::json j;
  j["address"] = hex(t.address);
  j["ok"] = t.ok;
  if (t.ok) {
    j["pid"] = t.pid;
    j["comm"] = t.comm;
    if (t.state) j["state"] = *t.state;
    if (t.stack) j["stack"] = hex(t.stack);
  }
  return j;
}

nlohmann::json backtrace_json(const Backtrace& b) {
  nlohmann::json frames = nlohmann::json::array();
  for (const Frame& f : b.frames) {
    nlohmann::json fj = {{"address", hex(f.address)}, {"text", f.format()}, {"verification", to_string(f.verification)}};
    if (!f.symbol.empty()) {
      fj["symbol"] = f.symbol;
      fj["offset"] = f.offset;
      fj["size"] = f.size;
    }
    if (!f.module.empty()) fj["module"] = f.module;
    if (f.stack_slot) fj["stack_slot"] = hex(f.stack_slot);
    if (f.stack != StackKind::kTask) fj["stack"] = to_string(f.stack);
    frames.push_back(std::move(fj));
  }
  nlohmann::json j = {{"task", hex(b.task)},       {"stack_base", hex(b.stack_base)}, {"stack_size", b.stack_size},
                      {"verification", to_string(b.verification)}, {"frames", frames}, {"truncated", b.truncated},
                      {"notes", b.notes}};
  if (b.pt_regs) j["pt_regs"] = hex(*b.pt_regs);
  if (b.irq_stack) j["irq_stack"] = hex(*b.irq_stack);
  if (b.exception_stack) j["exception_stack"] = hex(*b.exception_stack);
  return j;
}

}  // namespace

nlohmann::json snapshot_to_json(const GuestSnapshot& s) {
  using nlohmann::json;
  json j;
  j["taken_at_ns"] = s.taken_at_ns;
  j["duration_ns"] = s.duration_ns;
  j["nr_cpu_ids"] = s.nr_cpu_ids;
  j["online_cpus"] = s.online_cpus;
  json offs = json::array();
  for (uint64_t o : s.per_cpu_offsets) offs.push_back(hex(o));
  j["per_cpu_offsets"] = offs;
  if (s.watchdog_thresh) j["watchdog_thresh"] = *s.watchdog_thresh;
  if (s.jiffies) j["jiffies"] = *s.jiffies;
  j["guest_clock_ns"] = s.guest_clock_ns;
  if (s.panic_cpu) j["panic_cpu"] = *s.panic_cpu;
  json cpus = json::array();
  for (const CpuSnapshot& c : s.cpus) {
    json cj;
    cj["cpu"] = c.cpu;
    cj["online"] = c.online;
    json rq;
    rq["ok"] = c.rq.ok;
    rq["address"] = hex(c.rq.address);
    if (c.rq.ok) {
      rq["curr"] = task_json(c.rq.curr);
      rq["idle"] = hex(c.rq.idle);
      rq["curr_is_idle"] = c.rq.curr_is_idle;
      rq["nr_running"] = c.rq.nr_running;
      rq["cfs_h_nr_running"] = c.rq.cfs_h_nr_running;
      if (c.rq.ttwu_pending) rq["ttwu_pending"] = *c.rq.ttwu_pending;
      rq["clock_ns"] = c.rq.clock_ns;
    }
    cj["runqueue"] = rq;
    json q = json::array();
    for (const QueueEntry& e : c.call_single_queue) {
      json ej;
      ej["node"] = hex(e.node);
      ej["object"] = hex(e.object);
      ej["type"] = to_string(e.type);
      ej["flags"] = e.flags;
      ej["locked"] = e.locked;
      if (e.type == CsdType::kTtwu) {
        ej["task"] = task_json(e.task);
      } else {
        ej["func"] = hex(e.func);
        ej["func_name"] = e.func_name;
      }
      q.push_back(ej);
    }
    cj["call_single_queue"] = {{"ok", c.call_single_queue_ok}, {"truncated", c.call_single_queue_truncated}, {"entries", q}};
    json targets = json::array();
    for (const CfdTarget& t : c.cfd_targets) {
      json tj{{"target", t.target}, {"csd", hex(t.csd)}, {"ok", t.ok}};
      if (t.ok) {
        tj["flags"] = t.flags;
        tj["locked"] = t.locked;
        tj["type"] = to_string(t.type);
        tj["func"] = hex(t.func);
        tj["func_name"] = t.func_name;
      }
      targets.push_back(tj);
    }
    cj["cfd_data"] = {{"ok", c.cfd_ok}, {"cpumask", c.cfd_mask}, {"targets", targets}};
    json wd = json::object();
    if (c.watchdog.touch_ts) wd["touch_ts"] = *c.watchdog.touch_ts;
    if (c.watchdog.report_ts) wd["report_ts"] = *c.watchdog.report_ts;
    if (c.watchdog.hrtimer_interrupts) wd["hrtimer_interrupts"] = *c.watchdog.hrtimer_interrupts;
    if (c.watchdog.hrtimer_interrupts_saved) wd["hrtimer_interrupts_saved"] = *c.watchdog.hrtimer_interrupts_saved;
    cj["watchdog"] = wd;
    if (c.call_ipis) cj["call_ipis"] = *c.call_ipis;
    if (c.steal) cj["steal_time"] = {{"steal_ns", c.steal->steal_ns}, {"version", c.steal->version}, {"preempted", c.steal->preempted}};
    if (c.stack_end_corrupt) cj["stack_end_corrupt"] = *c.stack_end_corrupt;
    if (c.backtrace) cj["backtrace"] = backtrace_json(*c.backtrace);
    cpus.push_back(cj);
  }
  j["cpus"] = cpus;
  if (s.printk_read) {
    json p = json::array();
    for (const PrintkRecord& r : s.printk) {
      p.push_back({{"seq", r.seq}, {"ts_nsec", r.ts_nsec}, {"level", r.level}, {"facility", r.facility},
                   {"flags", r.flags}, {"caller_id", r.caller_id}, {"text", r.text}, {"truncated", r.text_truncated}});
    }
    j["printk"] = p;
  }
  json errs = json::array();
  for (const SnapshotError& e : s.errors) {
    json ej{{"cpu", e.cpu}, {"what", e.what}, {"message", e.message}};
    if (e.address) ej["address"] = hex(*e.address);
    errs.push_back(ej);
  }
  j["errors"] = errs;
  return j;
}

std::string snapshot_to_json_string(const GuestSnapshot& snapshot, int indent) {
  return snapshot_to_json(snapshot).dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace stallmon::introspect
