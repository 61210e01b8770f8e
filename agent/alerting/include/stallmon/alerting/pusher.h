// SPDX-License-Identifier: Apache-2.0
// AlertPusher: active findings → Alertmanager v2 (`POST /api/v2/alerts`) on one or more URLs.
//
//   sampling thread ──on_finding_event()──▶ bounded queue (drop-oldest, counted)
//                                               │
//   pusher thread:  step(): drain queue → resync from the engine when events were dropped (and
//                   every resend_interval) → choose the alerts: one per incident, its root
//                   finding, with the symptoms summarised (symptoms are never alerts of their
//                   own) → per URL, POST every active alert with
//                   endsAt = now + ends_at_margin (so a dead stallmond's alerts expire), plus
//                   resolutions (endsAt = resolved_at) not yet delivered there → on failure,
//                   exponential backoff for that URL.
//
// The listener side never blocks: it takes the queue mutex for a push. Everything slow (HTTP,
// reading the engine) happens on the pusher's own thread. step() is public so tests drive it
// with a ManualClock and a fake transport, deterministically.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "stallmon/alerting/alerts.h"
#include "stallmon/alerting/metrics.h"
#include "stallmon/base/result.h"
#include "stallmon/diagnosis/engine.h"

namespace stallmon::alerting {

using namespace std::chrono_literals;

// How alerts leave the process. http.h has the cpp-httplib one. Called only from the pusher
// thread; may block up to its own timeout.
class AlertTransport {
 public:
  virtual ~AlertTransport() = default;
  // POSTs `json` (an array of postableAlert) to the Alertmanager at `url`.
  virtual Result<void> post(const std::string& url, const std::string& json) = 0;
};

struct PusherOptions {
  // Alertmanager base URLs ("http://127.0.0.1:9093"); every alert goes to each of them (an
  // Alertmanager cluster dedups). Empty: the pusher does nothing.
  std::vector<std::string> urls;
  AlertOptions alert;
  // Active alerts are re-sent this often (Alertmanager expects clients to repeat them).
  diagnosis::Duration resend_interval = 30s;
  // endsAt of an active alert = send time + this: if stallmond dies, Alertmanager resolves its
  // alerts on its own after at most this long. Several resends fit in it, so one lost POST
  // does not flap the alert.
  diagnosis::Duration ends_at_margin = 2min;
  // One fault, one page: only incident roots become alerts, and a root only once it has been a
  // root for root_settle (a symptom seen a tick before its root - an IPI wait on a vCPU whose
  // VM-wide stall opens 100 ms later - never pages on its own) ...
  diagnosis::Duration root_settle = 1s;
  // ... and its cause is decided (a root "undetermined, evaluating" is usually a starvation whose
  // window has not closed yet, ~4.5 s). A root still undetermined after this long is sent anyway:
  // a real stall must page.
  diagnosis::Duration undetermined_max_wait = 15s;
  size_t max_symptom_lines = 8;  // in the `symptoms` annotation
  diagnosis::Duration backoff_initial = 1s;
  diagnosis::Duration backoff_max = 60s;
  size_t queue_capacity = 1024;
};

struct PusherStats {
  uint64_t events_received = 0;
  uint64_t events_dropped = 0;  // queue full: the oldest was dropped (then a resync follows)
  uint64_t resyncs = 0;
  size_t queue_length = 0;
  size_t active_alerts = 0;
  size_t pending_resolutions = 0;
  struct Target {
    std::string url;
    uint64_t posts_ok = 0;
    uint64_t posts_failed = 0;
    uint32_t consecutive_failures = 0;
    std::optional<diagnosis::Timestamp> last_success;
    std::string last_error;
  };
  std::vector<Target> targets;
};

class AlertPusher final : public diagnosis::FindingListener, public MetricsContributor {
 public:
  // `active_source` returns the engine's active findings (called on the pusher thread, never
  // from on_finding_event). transport, clock and the source must outlive the pusher.
  AlertPusher(PusherOptions options, AlertTransport& transport, const diagnosis::Clock& clock,
              std::function<std::vector<diagnosis::Finding>()> active_source);
  ~AlertPusher() override;  // stop()
  AlertPusher(const AlertPusher&) = delete;
  AlertPusher& operator=(const AlertPusher&) = delete;

  // FindingListener: queues the event and returns (called with the engine's mutex held).
  void on_finding_event(const diagnosis::FindingEvent& event) override;

  // One round at clock.now(); returns when the next round is due. Not concurrent with itself
  // (start() runs it on the pusher thread; tests call it directly without start()).
  diagnosis::Timestamp step();

  // Starts the pusher thread (first round at once: it resyncs from the engine). Idempotent.
  void start();
  // Stops and joins the thread; a POST in flight finishes (bounded by the transport timeout).
  void stop();

  PusherStats stats() const;
  void write_metrics(ExpositionWriter& out) const override;
  const PusherOptions& options() const { return options_; }

 private:
  struct Resolution {
    PostableAlert alert;                // ends_at set
    std::set<size_t> delivered;         // target indexes
    diagnosis::Timestamp drop_after{};  // Alertmanager has expired it by then anyway
  };
  struct Target {
    std::string url;
    diagnosis::Timestamp next_due{};
    bool dirty = true;  // something changed since its last successful POST
  };

  void apply(const diagnosis::FindingEvent& e, diagnosis::Timestamp now);
  void resync(diagnosis::Timestamp now);
  void upsert(const diagnosis::Finding& f);
  // Which active findings are alerts now (roots past their settle), and their alert bodies.
  // Returns when a held-back root becomes due (or Timestamp::max()).
  diagnosis::Timestamp choose_alerts(diagnosis::Timestamp now);
  PostableAlert build_alert(const diagnosis::Finding& root) const;
  void resolve(const std::string& id, diagnosis::Timestamp at, diagnosis::Timestamp now);
  void retire(const PostableAlert& sent, diagnosis::Timestamp at, diagnosis::Timestamp now);
  void mark_dirty();
  diagnosis::Duration backoff(uint32_t failures) const;

  PusherOptions options_;
  AlertTransport& transport_;
  const diagnosis::Clock& clock_;
  std::function<std::vector<diagnosis::Finding>()> active_source_;

  // Queue (listener side).
  mutable std::mutex queue_mu_;
  std::condition_variable wake_;
  std::deque<diagnosis::FindingEvent> queue_;
  bool resync_needed_ = true;  // at start, and after a drop
  bool stopping_ = false;

  // Pusher-thread state.
  std::map<std::string, diagnosis::Finding> active_;  // by finding id: roots and symptoms
  std::map<std::string, diagnosis::Timestamp> root_since_;  // root id -> first seen as a root
  std::map<std::string, PostableAlert> sent_labels_;  // last alert built per alerted root id
  std::vector<Resolution> resolutions_;
  std::vector<Target> targets_;
  diagnosis::Timestamp next_resync_{};

  mutable std::mutex stats_mu_;
  PusherStats stats_;

  std::thread thread_;
};

}  // namespace stallmon::alerting
