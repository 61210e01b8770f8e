// SPDX-License-Identifier: Apache-2.0
// Typed evidence to the API's string facts: the one place the engine's evidence values become
// text (the gRPC adapter calls it; the keys and their formats are the API's, keep them stable).
#include <chrono>
#include <cinttypes>
#include <cstdio>

#include "stallmon/diagnosis/finding.h"
#include "text.h"

namespace stallmon::diagnosis {

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

namespace {

std::string ms(Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

// "0,2,3"
std::string joined(const std::vector<int>& cpus) {
  std::string s;
  for (int c : cpus) s += (s.empty() ? "" : ",") + std::to_string(c);
  return s;
}

void add_trace(const KernelTraceEvidence& k, std::map<std::string, std::string>& out) {
  const KernelTrace& tr = k.trace;
  if (!tr.error.empty()) {
    out["trace_error"] = tr.error;
    return;
  }
  std::string frames;
  for (std::size_t i = 0; i < tr.frames.size(); ++i) frames += (i ? "\n" : "") + tr.frames[i];
  out["trace"] = frames;  // innermost first, one frame per line
  out["verification"] = to_string(tr.verification);
  out["task"] = tr.comm + "/" + std::to_string(tr.pid);
  out["frames"] = std::to_string(tr.frames.size());
  out["truncated"] = tr.truncated ? "1" : "0";
  out["age_ms"] = ms(k.age);
  // The outermost `stable_frames` lines of `trace` were shared by `stable_snapshots` consecutive
  // verified reads of this task's trace; "0" and "0": nothing confirmed yet.
  out["stable_frames"] = std::to_string(k.stable_frames);
  out["stable_snapshots"] = std::to_string(k.stable_snapshots);
}

}  // namespace

std::map<std::string, std::string> evidence_facts(const Evidence& e) {
  std::map<std::string, std::string> out = e.facts;
  for (const auto& [name, d] : e.durations) out[name + "_ms"] = ms(d);
  if (e.cpu) out["cpu"] = std::to_string(*e.cpu);
  if (e.vcpu) out["vcpu"] = std::to_string(*e.vcpu);
  if (const auto& w = e.csd_wait) {
    out["waiter_cpu"] = std::to_string(w->waiter_cpu);
    out["target_cpu"] = std::to_string(w->target_cpu);
    out["wait_ms"] = ms(w->age);
    out["function"] = w->function;
    out["csd_address"] = hex(w->csd_address);
    out["csd_flags"] = hex(w->csd_flags);
  }
  if (const auto& l = e.lock_wait) {
    out["lock_waiter_cpu"] = std::to_string(l->waiter_cpu);
    out["lock_frame"] = l->frame;
    if (l->holder_cpu) out["lock_holder_cpu"] = std::to_string(*l->holder_cpu);
    out["lock_holder_candidates"] = joined(l->holder_candidates);
    out["lock_holder_inference"] = l->inference;
  }
  if (const auto& r = e.wait_roots) {
    out["roots"] = joined(r->roots);
    out["waiters"] = joined(r->waiters);
    out["cycle"] = r->cycle ? "1" : "0";
  }
  if (e.kernel_trace) add_trace(*e.kernel_trace, out);
  if (const auto& p = e.panic_text) {
    out["panic_text_lines"] = std::to_string(p->lines);
    if (!p->message.empty()) out["panic_message"] = p->message;
  }
  if (const auto& so = e.stack_overflow) {
    out["stack_overflow"] = "1";
    if (so->cpu) out["stack_overflow_cpu"] = std::to_string(*so->cpu);
    if (so->pid) out["stack_overflow_pid"] = std::to_string(*so->pid);
    if (!so->comm.empty()) out["stack_overflow_comm"] = so->comm;
  }
  return out;
}

}  // namespace stallmon::diagnosis
