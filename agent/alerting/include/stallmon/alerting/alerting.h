// SPDX-License-Identifier: Apache-2.0
// stallmond's alerting start-up step: the /metrics server and the Alertmanager pusher over a
// StallMonitor, in one object with stop().
//
//   auto svc = alerting::start(monitor, config);   // after the monitor exists, before watcher.start()
//   if (!svc) fail(svc.error());
//   ...
//   (*svc)->stop();                                 // before the monitor is destroyed
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "stallmon/alerting/http.h"
#include "stallmon/alerting/metrics.h"
#include "stallmon/alerting/pusher.h"
#include "stallmon/base/result.h"
#include "stallmon/core/stall_monitor.h"

namespace stallmon::alerting {

// Default /metrics address. Loopback: exposing the host's guest inventory is an explicit choice
// (set 0.0.0.0:9910 or the management address). 9910 is in the 9100-9999 range Prometheus
// exporters use and is not a Prometheus, Alertmanager or node_exporter default.
inline constexpr const char* kDefaultMetricsListen = "127.0.0.1:9910";

struct AlertingConfig {
  std::string metrics_listen = kDefaultMetricsListen;  // "" disables the /metrics server
  MetricsOptions metrics;
  // Alertmanager base URLs, e.g. {"http://am1:9093", "http://am2:9093"}; empty: no push.
  std::vector<std::string> alertmanager_urls;
  PusherOptions pusher;  // `urls` is replaced by alertmanager_urls; alert.host defaults to
                         // gethostname()
};

// The running service. Destruction stops it.
class AlertingService {
 public:
  ~AlertingService();
  AlertingService(const AlertingService&) = delete;
  AlertingService& operator=(const AlertingService&) = delete;

  // Stops the HTTP server and the pusher and unsubscribes from the engine. Idempotent.
  // Must be called before the monitor (or the view/subscription functions) go away.
  void stop();

  int metrics_port() const;  // 0 without a server
  MetricsCollector& collector() { return *collector_; }
  AlertPusher* pusher() { return pusher_.get(); }  // nullptr without URLs

 private:
  friend Result<std::unique_ptr<AlertingService>> start(
      std::unique_ptr<MonitorView>, std::function<void(diagnosis::FindingListener*)>,
      std::function<void(diagnosis::FindingListener*)>, AlertingConfig, const diagnosis::Clock&);
  AlertingService() = default;

  std::unique_ptr<MonitorView> view_;
  std::unique_ptr<MetricsCollector> collector_;
  std::unique_ptr<HttpAlertTransport> transport_;
  std::unique_ptr<AlertPusher> pusher_;
  std::unique_ptr<MetricsHttpServer> server_;
  std::function<void(diagnosis::FindingListener*)> unsubscribe_;
  bool stopped_ = false;
};

// Validates the configuration (listen address, URLs) and starts. Errors: kInvalidArgument for
// a bad address or URL, kIo when the /metrics address cannot be bound.
Result<std::unique_ptr<AlertingService>> start(core::StallMonitor& monitor, AlertingConfig config);

// The same over any view: `subscribe`/`unsubscribe` register the pusher as a finding listener
// (e.g. StallMonitor::add_finding_listener); `clock` stamps alerts and must outlive the service.
Result<std::unique_ptr<AlertingService>> start(
    std::unique_ptr<MonitorView> view, std::function<void(diagnosis::FindingListener*)> subscribe,
    std::function<void(diagnosis::FindingListener*)> unsubscribe, AlertingConfig config,
    const diagnosis::Clock& clock);

}  // namespace stallmon::alerting
