// SPDX-License-Identifier: Apache-2.0
// Guest kernel traces as finding evidence (issue 12 item 1). The daemon reads the traces (the
// engine never reads guest memory) and hands them in with the guest view; here each finding of
// a kind that carries traces gets one Evidence link per CPU it involves.
#include <chrono>

#include "rules.h"
#include "stallmon/diagnosis/finding.h"
#include "stallmon/diagnosis/observation.h"

namespace stallmon::diagnosis {

const char* to_string(TraceVerification v) {
  switch (v) {
    case TraceVerification::kOrcChain: return "orc_chain";
    case TraceVerification::kInterruptFrame: return "interrupt_frame";
    case TraceVerification::kUnverified: return "unverified";
  }
  return "unverified";
}

// Every guest-snapshot kind names guest CPUs whose stacks say where they are; so does a panic.
bool carries_kernel_traces(FindingKind k) { return is_guest_kind(k) || k == FindingKind::kGuestPanic; }

namespace {

const char* verification_phrase(TraceVerification v) {
  switch (v) {
    case TraceVerification::kOrcChain: return "orc-verified";
    case TraceVerification::kInterruptFrame: return "interrupt frame, orc-verified";
    case TraceVerification::kUnverified: return "unverified stack scan";
  }
  return "unverified stack scan";
}

// A trace older than this (the daemon refreshes once a second) says how old it is.
constexpr Duration kStaleAfter = std::chrono::seconds(2);

Evidence trace_evidence(int cpu, const KernelTrace& tr, Timestamp now) {
  Evidence e;
  const std::string name = "CPU" + std::to_string(cpu);
  e.cpu = cpu;
  e.kernel_trace = KernelTraceEvidence{tr, now - tr.taken_at};
  if (!tr.error.empty()) {
    e.text = name + " trace unavailable: " + tr.error;
    return e;
  }
  const std::string task = tr.comm + "/" + std::to_string(tr.pid);
  e.text = name + " trace (" + verification_phrase(tr.verification) + ", " + task;
  if (now - tr.taken_at >= kStaleAfter) e.text += ", read " + format_duration(now - tr.taken_at) + " ago";
  e.text += "): ";
  for (std::size_t i = 0; i < tr.frames.size(); ++i) e.text += (i ? " \u2190 " : "") + tr.frames[i];
  if (tr.frames.empty()) e.text += "(no kernel frame found)";
  if (tr.truncated) e.text += " \u2190 \u2026";
  return e;
}

}  // namespace

void attach_kernel_traces(const GuestView* view, Timestamp now, Candidate& c) {
  if (view == nullptr || !carries_kernel_traces(c.finding.kind)) return;
  for (int cpu : c.finding.cpus) {
    for (const GuestCpuView& cv : view->cpus) {
      if (cv.cpu != cpu || !cv.kernel_trace) continue;
      c.finding.evidence.push_back(trace_evidence(cpu, *cv.kernel_trace, now));
      // A trace appearing (or becoming unavailable) is material: the stream gets it at once;
      // a refreshed trace rides on the next periodic update.
      c.signature += " trace" + std::to_string(cpu) + (cv.kernel_trace->error.empty() ? "+" : "-");
      break;
    }
  }
}

}  // namespace stallmon::diagnosis
