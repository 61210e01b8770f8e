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

// Whether a trace can confirm (or be confirmed by) another: frames that ORC verified. An
// unverified scan lists whatever text addresses the stack holds, stale ones included, and those
// stay put from one read to the next.
bool confirmable(const KernelTrace& t) {
  return t.verified() && !t.frames.empty();
}

Evidence trace_evidence(int cpu, const KernelTrace& tr, const TraceHistory* h, Timestamp now) {
  Evidence e;
  const std::string name = "CPU" + std::to_string(cpu);
  e.cpu = cpu;
  e.kernel_trace = KernelTraceEvidence{tr, now - tr.taken_at};
  if (!tr.error.empty()) {
    e.text = name + " trace unavailable: " + tr.error;
    return e;
  }
  // The history must be of this very read (update_trace_history ran on the same view).
  std::size_t stable = 0;
  if (h != nullptr && h->reads >= 2 && h->pid == tr.pid && h->taken_at == tr.taken_at && confirmable(tr) &&
      h->stable.size() <= tr.frames.size()) {
    stable = h->stable.size();
    e.kernel_trace->stable_frames = stable;
    e.kernel_trace->stable_snapshots = h->reads;
  }
  const std::string task = tr.comm + "/" + std::to_string(tr.pid);
  e.text = name + " trace (" + verification_phrase(tr.verification) + ", " + task;
  if (stable > 0) {
    e.text += stable == tr.frames.size() ? ", all " + std::to_string(stable)
                                         : ", outer " + std::to_string(stable) + " of " + std::to_string(tr.frames.size());
    e.text += (stable == 1 && tr.frames.size() == 1 ? " frame" : " frames");
    e.text += " stable over " + std::to_string(h->reads) + " snapshots";
  }
  if (now - tr.taken_at >= kStaleAfter) e.text += ", read " + format_duration(now - tr.taken_at) + " ago";
  e.text += "): ";
  // The confirmed outer frames are bracketed: "a \u2190 [b \u2190 c]".
  const std::size_t first_stable = tr.frames.size() - stable;
  for (std::size_t i = 0; i < tr.frames.size(); ++i) {
    if (i) e.text += " \u2190 ";
    if (stable > 0 && i == first_stable) e.text += "[";
    e.text += tr.frames[i];
  }
  if (stable > 0) e.text += "]";
  if (tr.frames.empty()) e.text += "(no kernel frame found)";
  if (tr.truncated) e.text += " \u2190 \u2026";
  return e;
}

}  // namespace

// Consecutive reads are compared at their outer end, where a live chain is stable while the CPU
// stays in the same call path (the innermost frames come and go as it calls and returns). The
// stable part is what every read of the run shared, so it only shrinks until a read shares
// nothing with it (the outer frames changed) and the run starts over from that read. Truncated
// traces keep only their innermost frames: they are compared only with each other, and a change
// of depth then shows as nothing shared (a reset: under-claims, never over-claims).
void update_trace_history(GuestCpuTracker& tr, const GuestCpuView& cv) {
  std::optional<TraceHistory>& h = tr.trace_history;
  if (!cv.kernel_trace || !confirmable(*cv.kernel_trace)) {
    // No trace in this snapshot (the CPU left every finding), an error, or an unverified scan:
    // the consecutive run is broken.
    h.reset();
    return;
  }
  const KernelTrace& t = *cv.kernel_trace;
  if (h && t.taken_at <= h->taken_at) return;  // the daemon handed in the same read again
  if (h && h->pid == t.pid && h->truncated == t.truncated) {
    std::size_t n = 0;
    while (n < h->stable.size() && n < t.frames.size() &&
           h->stable[h->stable.size() - 1 - n] == t.frames[t.frames.size() - 1 - n])
      ++n;
    if (n > 0) {
      h->stable.erase(h->stable.begin(), h->stable.end() - static_cast<std::ptrdiff_t>(n));
      h->taken_at = t.taken_at;
      ++h->reads;
      return;
    }
  }
  h = TraceHistory{t.pid, t.taken_at, t.truncated, t.frames, 1};
}

void attach_kernel_traces(const GuestState* guest, Timestamp now, Candidate& c) {
  if (guest == nullptr || !carries_kernel_traces(c.finding.kind)) return;
  for (int cpu : c.finding.cpus) {
    for (const GuestCpuView& cv : guest->view.cpus) {
      if (cv.cpu != cpu || !cv.kernel_trace) continue;
      const auto it = guest->cpus.find(cpu);
      const TraceHistory* h = it != guest->cpus.end() && it->second.trace_history ? &*it->second.trace_history : nullptr;
      c.finding.evidence.push_back(trace_evidence(cpu, *cv.kernel_trace, h, now));
      // A trace appearing (or becoming unavailable) is material: the stream gets it at once;
      // a refreshed trace rides on the next periodic update.
      c.signature += " trace" + std::to_string(cpu) + (cv.kernel_trace->error.empty() ? "+" : "-");
      break;
    }
  }
}

}  // namespace stallmon::diagnosis
