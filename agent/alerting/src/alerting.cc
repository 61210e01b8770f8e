// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/alerting.h"

#include <unistd.h>

namespace stallmon::alerting {

namespace {

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace

AlertingService::~AlertingService() { stop(); }

void AlertingService::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (server_) server_->stop();
  if (pusher_) {
    // Unsubscribe first: no event may arrive at a pusher being torn down.
    if (unsubscribe_) unsubscribe_(pusher_.get());
    pusher_->stop();
    collector_->remove_contributor(pusher_.get());
  }
}

int AlertingService::metrics_port() const { return server_ ? server_->port() : 0; }

Result<std::unique_ptr<AlertingService>> start(
    std::unique_ptr<MonitorView> view, std::function<void(diagnosis::FindingListener*)> subscribe,
    std::function<void(diagnosis::FindingListener*)> unsubscribe, AlertingConfig config,
    const diagnosis::Clock& clock) {
  if (!view) return Error(ErrorCode::kInvalidArgument, "alerting: no monitor view");
  std::optional<ListenAddress> listen;
  if (!config.metrics_listen.empty()) {
    auto a = parse_listen_address(config.metrics_listen);
    if (!a) return std::move(a).error().context("metrics listen address");
    listen = *a;
  }
  for (const auto& u : config.alertmanager_urls) {
    auto p = parse_http_url(u);
    if (!p) return std::move(p).error().context("alertmanager URL");
  }
  if (config.metrics.version.empty()) config.metrics.version = STALLMON_VERSION;
  if (config.pusher.alert.host.empty()) config.pusher.alert.host = host_name();
  config.pusher.urls = config.alertmanager_urls;

  std::unique_ptr<AlertingService> s(new AlertingService());
  s->view_ = std::move(view);
  s->collector_ = std::make_unique<MetricsCollector>(*s->view_, config.metrics);
  if (!config.pusher.urls.empty()) {
    s->transport_ = std::make_unique<HttpAlertTransport>();
    MonitorView* v = s->view_.get();
    s->pusher_ = std::make_unique<AlertPusher>(config.pusher, *s->transport_, clock,
                                               [v] { return v->active_findings(); });
    s->collector_->add_contributor(s->pusher_.get());
    if (subscribe) subscribe(s->pusher_.get());
    s->unsubscribe_ = std::move(unsubscribe);
    s->pusher_->start();
  }
  if (listen) {
    MetricsCollector* c = s->collector_.get();
    auto srv = MetricsHttpServer::start(*listen, [c] { return c->render(); });
    if (!srv) {
      s->stop();
      return std::move(srv.error());
    }
    s->server_ = std::move(srv.value());
  }
  return s;
}

Result<std::unique_ptr<AlertingService>> start(core::StallMonitor& monitor, AlertingConfig config) {
  // Wall time that never jumps, like the engine's own clock (alerts carry wall times).
  static const diagnosis::SteadyWallClock clock;
  core::StallMonitor* m = &monitor;
  return start(
      monitor_view(monitor), [m](diagnosis::FindingListener* l) { m->add_finding_listener(l); },
      [m](diagnosis::FindingListener* l) { m->remove_finding_listener(l); }, std::move(config),
      clock);
}

}  // namespace stallmon::alerting
