// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/http.h"

#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include <httplib.h>

namespace stallmon::alerting {

namespace {

Result<int> parse_port(std::string_view s) {
  int port = -1;
  auto r = std::from_chars(s.data(), s.data() + s.size(), port);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size() || port < 0 ||
      port > 65535) {
    return Error(ErrorCode::kInvalidArgument, "bad port: '" + std::string(s) + "'");
  }
  return port;
}

}  // namespace

Result<ListenAddress> parse_listen_address(std::string_view s) {
  ListenAddress a;
  std::string_view port;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      return Error(ErrorCode::kInvalidArgument, "bad listen address: '" + std::string(s) + "'");
    }
    a.host = std::string(s.substr(1, close - 1));
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos || s.find(':') != colon) {
      return Error(ErrorCode::kInvalidArgument,
                   "bad listen address (host:port, [v6]:port): '" + std::string(s) + "'");
    }
    a.host = std::string(s.substr(0, colon));
    port = s.substr(colon + 1);
  }
  if (a.host.empty()) a.host = "0.0.0.0";
  auto p = parse_port(port);
  if (!p) return p.error();
  a.port = *p;
  return a;
}

Result<HttpUrl> parse_http_url(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return Error(ErrorCode::kInvalidArgument,
                 "only http:// Alertmanager URLs are supported: '" + std::string(url) + "'");
  }
  const auto rest = url.substr(kScheme.size());
  const auto slash = rest.find('/');
  const auto hostport = rest.substr(0, slash);
  if (hostport.empty()) {
    return Error(ErrorCode::kInvalidArgument, "no host in URL: '" + std::string(url) + "'");
  }
  HttpUrl u;
  u.scheme_host_port = std::string(kScheme) + std::string(hostport);
  if (slash != std::string_view::npos) u.path_prefix = std::string(rest.substr(slash));
  while (!u.path_prefix.empty() && u.path_prefix.back() == '/') u.path_prefix.pop_back();
  return u;
}

// --- MetricsHttpServer ---------------------------------------------------------------------

namespace {

// httplib's ThreadPool queues accepted connections without limit: a flood of slow clients grows
// the queue (and the open sockets) without bound. Here at most kMaxQueued wait; past that the
// accept thread serves the connection itself, so it stops accepting and further clients wait in
// the kernel's listen backlog (bounded) instead of in our memory. Each connection is bounded by
// the 5 s read/write timeouts.
class BoundedPool final : public httplib::TaskQueue {
 public:
  static constexpr size_t kMaxQueued = 16;
  explicit BoundedPool(size_t n) {
    for (size_t i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  }
  void enqueue(std::function<void()> fn) override {
    {
      std::unique_lock lock(mu_);
      if (!stop_ && jobs_.size() < kMaxQueued) {
        jobs_.push_back(std::move(fn));
        cv_.notify_one();
        return;
      }
    }
    fn();  // backpressure: served on the accept thread
  }
  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (stop_ && jobs_.empty()) return;
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      fn();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

}  // namespace

struct MetricsHttpServer::Impl {
  httplib::Server server;
  std::thread thread;
  std::string host;
  int port = 0;
};

MetricsHttpServer::MetricsHttpServer() : impl_(std::make_unique<Impl>()) {}
MetricsHttpServer::~MetricsHttpServer() { stop(); }

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::start(
    const ListenAddress& address, std::function<Result<std::string>()> render) {
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
  auto& srv = s->impl_->server;
  // Two workers: a scrape is one request every few seconds; the default pool (8+ threads)
  // would only sit idle on a host whose cores belong to the guests.
  srv.new_task_queue = [] { return new BoundedPool(2); };
  // The endpoint takes no input. Decided on the headers, before httplib reads any body (its
  // routing reads the body into memory first, and inflates gzip/deflate/br bodies: a 400 MiB POST
  // or a 300 KB gzip bomb cost hundreds of MB): only GET and HEAD, no request body at all, no
  // Content-Encoding. The connection is closed after such an answer, so an unread body is never
  // parsed as a next request.
  srv.set_payload_max_length(4096);
  // One request per connection: a refused request's unread body must never be parsed as the
  // next request (httplib keeps the connection open despite "Connection: close"); a scrape
  // every few seconds gains nothing from keep-alive.
  srv.set_keep_alive_max_count(1);
  srv.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    auto refuse = [&](int status, const char* why) {
      res.status = status;
      res.set_header("Connection", "close");
      if (status == 405) res.set_header("Allow", "GET, HEAD");
      res.set_content(why, "text/plain; charset=utf-8");
      return httplib::Server::HandlerResponse::Handled;
    };
    if (req.method != "GET" && req.method != "HEAD") return refuse(405, "only GET and HEAD\n");
    if (req.has_header("Content-Encoding")) return refuse(415, "no encoded request bodies\n");
    if (req.has_header("Transfer-Encoding") ||
        (req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0")) {
      return refuse(413, "no request body\n");
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // httplib's default socket options add SO_REUSEPORT, with which a second stallmond (or
  // anything else) could bind the same port and silently take half the scrapes. Only
  // SO_REUSEADDR: a restart binds again at once, a conflict is an error.
  srv.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  srv.set_read_timeout(std::chrono::seconds(5));
  srv.set_write_timeout(std::chrono::seconds(5));
  srv.Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    auto text = render();
    if (!text) {
      res.status = 500;
      res.set_content(text.error().to_string() + "\n", "text/plain; charset=utf-8");
      return;
    }
    res.set_content(std::move(text.value()), "text/plain; version=0.0.4; charset=utf-8");
  });
  srv.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("stallmond: metrics at /metrics\n", "text/plain; charset=utf-8");
  });
  int port = address.port;
  if (port == 0) {
    port = srv.bind_to_any_port(address.host);
    if (port <= 0) {
      return Error::io("cannot bind metrics server to " + address.host + ":0", errno);
    }
  } else if (!srv.bind_to_port(address.host, port)) {
    return Error::io("cannot bind metrics server to " + address.host + ":" + std::to_string(port) +
                         " (in use, or no such address)",
                     errno);
  }
  s->impl_->host = address.host;
  s->impl_->port = port;
  auto* impl = s->impl_.get();
  impl->thread = std::thread([impl] { impl->server.listen_after_bind(); });
  // httplib's stop() does nothing until the accept loop runs: wait for it, so that a stop()
  // right after start() cannot leave the thread listening forever.
  for (int i = 0; i < 2000 && !impl->server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return s;
}

int MetricsHttpServer::port() const { return impl_->port; }
const std::string& MetricsHttpServer::host() const { return impl_->host; }

void MetricsHttpServer::stop() {
  if (!impl_) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

// --- HttpAlertTransport ----------------------------------------------------------------------

HttpAlertTransport::HttpAlertTransport(std::chrono::milliseconds connect_timeout,
                                       std::chrono::milliseconds timeout)
    : connect_timeout_(connect_timeout), timeout_(timeout) {}

Result<void> HttpAlertTransport::post(const std::string& url, const std::string& json) {
  auto u = parse_http_url(url);
  if (!u) return u.error();
  std::string path = u->path_prefix;
  constexpr std::string_view kApi = "/api/v2/alerts";
  if (path.size() < kApi.size() || path.substr(path.size() - kApi.size()) != kApi) path += kApi;
  httplib::Client cli(u->scheme_host_port);
  cli.set_connection_timeout(connect_timeout_);
  cli.set_read_timeout(timeout_);
  cli.set_write_timeout(timeout_);
  cli.set_keep_alive(false);
  auto res = cli.Post(path, json, "application/json");
  if (!res) {
    return Error(ErrorCode::kIo,
                 "POST " + u->scheme_host_port + path + ": " + httplib::to_string(res.error()));
  }
  if (res->status >= 200 && res->status < 300) return Ok();
  std::string body = res->body.substr(0, 200);
  return Error(res->status >= 400 && res->status < 500 ? ErrorCode::kInvalidArgument
                                                       : ErrorCode::kUnsupported,
               "POST " + u->scheme_host_port + path + ": HTTP " + std::to_string(res->status) +
                   ": " + body);
}

}  // namespace stallmon::alerting
