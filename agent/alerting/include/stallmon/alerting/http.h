// SPDX-License-Identifier: Apache-2.0
// The HTTP edge (cpp-httplib): the /metrics server and the Alertmanager client. Nothing else in
// stallmon_alerting knows HTTP; no httplib type appears in this header.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "stallmon/alerting/pusher.h"
#include "stallmon/base/result.h"

namespace stallmon::alerting {

struct ListenAddress {
  std::string host;  // "127.0.0.1", "::1", "0.0.0.0"
  int port = 0;      // 0: any free port
};
// "127.0.0.1:9910", "[::1]:9910", ":9910" (= 0.0.0.0), "localhost:0". kInvalidArgument
// otherwise.
Result<ListenAddress> parse_listen_address(std::string_view s);

struct HttpUrl {
  std::string scheme_host_port;  // "http://127.0.0.1:9093"
  std::string path_prefix;       // "" or "/alertmanager" (no trailing slash)
};
// Only http:// (an Alertmanager is normally reached on the host network or through a local
// proxy; TLS would need the OpenSSL build of the client). kInvalidArgument otherwise.
Result<HttpUrl> parse_http_url(std::string_view url);

// Serves GET /metrics (Prometheus text format 0.0.4) from `render` on its own threads.
class MetricsHttpServer {
 public:
  ~MetricsHttpServer();  // stop()
  // Binds and starts serving. kIo when the address cannot be bound (in use, no such address).
  static Result<std::unique_ptr<MetricsHttpServer>> start(
      const ListenAddress& address, std::function<Result<std::string>()> render);
  int port() const;  // the bound port (useful with port 0)
  const std::string& host() const;
  void stop();  // idempotent; joins the server thread

 private:
  MetricsHttpServer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// POSTs alerts with cpp-httplib. One short-lived connection per POST: a restarted
// Alertmanager never leaves a dead keep-alive socket behind.
class HttpAlertTransport final : public AlertTransport {
 public:
  explicit HttpAlertTransport(std::chrono::milliseconds connect_timeout = std::chrono::seconds(2),
                              std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // url: the Alertmanager's base URL ("http://127.0.0.1:9093"); "/api/v2/alerts" is appended
  // unless the URL already ends with it. kIo (connection), kInvalidArgument (bad URL, 4xx),
  // kUnsupported (other non-2xx status) errors.
  Result<void> post(const std::string& url, const std::string& json) override;

 private:
  std::chrono::milliseconds connect_timeout_, timeout_;
};

}  // namespace stallmon::alerting
