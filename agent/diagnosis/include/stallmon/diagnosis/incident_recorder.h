// SPDX-License-Identifier: Apache-2.0
// IncidentRecorder: keeps an incident bundle (incident_bundle.h) for every critical finding.
//
// Two inputs, because the material is in two places:
//   - the finding events (it is a FindingListener on the monitor's fan-out): a critical finding
//     opens a bundle, its updates refresh it, its resolution closes it; every finding of the
//     domain is remembered briefly as a candidate for `related`;
//   - each tick's observation, after the engine observed it (on_observation, from the domain's
//     pipeline): vCPU points, guest snapshot summaries, the printk tail and the host stacks of
//     blocked threads are appended to the domain's open bundles. A bundle opened this tick gets
//     its history from before the onset from the caller's `lookback` (the sampler's vCPU ring)
//     and from the recorder's own short guest ring (one point a second per CPU).
// Completed and open bundles are handed to an IncidentSink (the store) as shared snapshots.
//
// Thread safety: every public method takes the recorder's own mutex (never the engine's);
// on_finding_event is called with the engine's lock held and only touches the recorder.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "stallmon/diagnosis/engine.h"
#include "stallmon/diagnosis/incident_bundle.h"

namespace stallmon::diagnosis {

class IncidentSink {
 public:
  virtual ~IncidentSink() = default;
  // A new state of a bundle (same finding id: replaces the previous). Must return quickly.
  virtual void on_incident(std::shared_ptr<const IncidentBundle> bundle) = 0;
};

struct IncidentStats {
  uint64_t bundles_opened = 0;
  uint64_t bundles_completed = 0;
  uint64_t bundles_refused = 0;  // max_bundles open at once
  uint64_t bundles_evicted = 0;  // completed ones dropped from memory for room
  uint64_t thinnings = 0;        // a bundle's lanes halved for its byte budget
  std::size_t bundles = 0;       // held now
  std::size_t bytes = 0;         // their estimate, plus the guest rings
};

class IncidentRecorder final : public FindingListener {
 public:
  // The vCPU lanes of a domain from `since` to now (the sampler's rings), each bounded by the
  // caller; called by on_observation, with the recorder's lock held, for bundles opened since
  // the previous observation of that domain.
  using Lookback = std::function<std::vector<IncidentVcpuLane>(Timestamp since)>;

  explicit IncidentRecorder(IncidentLimits limits);
  ~IncidentRecorder() override;
  IncidentRecorder(const IncidentRecorder&) = delete;
  IncidentRecorder& operator=(const IncidentRecorder&) = delete;

  void on_finding_event(const FindingEvent& event) override;
  // One tick of a domain, after DiagnosisEngine::observe(obs) at `now`.
  void on_observation(const DomainObservation& obs, Timestamp now, const Lookback& lookback);
  // The domain is no longer watched: its guest ring goes (its findings resolve by events).
  void forget_domain(const DomainIdentity& domain);

  // The bundle of a finding (open or complete), or nullopt if none is held in memory.
  std::optional<IncidentBundle> get(const std::string& finding_id) const;
  // Bundles a previous run persisted for findings that are still active: an UPDATED event of a
  // restored finding continues its bundle (its history before the restart kept). Before the
  // first event; beyond max_bundles, the rest are ignored.
  void restore(std::vector<IncidentBundle> open_bundles);

  void set_sink(IncidentSink* sink);  // nullptr to detach
  // Hands every open bundle to the sink now (a clean stop: the next run continues them).
  void emit_open();
  void set_limits(const IncidentLimits& limits);
  IncidentStats stats() const;

 private:
  struct Open;
  struct DomainRing;
  void open_bundle(const FindingEvent& e);
  void close_bundle(const std::string& id, const Finding& f);
  void make_room();
  void fit_budget(IncidentBundle& b);
  void emit(const IncidentBundle& b);
  std::string domain_key(const std::string& uuid, const std::string& name) const;

  mutable std::mutex mu_;
  IncidentLimits limits_;
  IncidentSink* sink_ = nullptr;
  // Held bundles by finding id, with insertion order for eviction of completed ones.
  std::map<std::string, std::shared_ptr<Open>> bundles_;
  std::deque<std::string> order_;
  std::map<std::string, std::unique_ptr<DomainRing>> domains_;  // by domain key
  IncidentStats stats_;
};

}  // namespace stallmon::diagnosis
