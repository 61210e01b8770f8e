// SPDX-License-Identifier: Apache-2.0
#include "logging.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/sinks/systemd_sink.h>
#include <spdlog/spdlog.h>

namespace stallmon::daemon {
namespace {

Result<spdlog::level::level_enum> parse_level(const std::string& level) {
  auto l = spdlog::level::from_str(level);
  if (l == spdlog::level::off && level != "off") {
    return Error(ErrorCode::kInvalidArgument, "unknown log level '" + level + "'");
  }
  return l;
}

}  // namespace

Result<void> setup_logging(const std::string& target, const std::string& level) {
  auto l = parse_level(level);
  if (!l.ok()) return l.error();
  std::shared_ptr<spdlog::logger> logger;
  if (target == "journald") {
    // The journal stamps time and priority itself: the message alone.
    auto sink = std::make_shared<spdlog::sinks::systemd_sink_mt>("stallmond");
    logger = std::make_shared<spdlog::logger>("stallmond", sink);
  } else if (target == "stderr") {
    // Plain (not colour) stderr: under systemd without journald output it still reads cleanly.
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    logger = std::make_shared<spdlog::logger>("stallmond", sink);
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  } else {
    return Error(ErrorCode::kInvalidArgument, "unknown log target '" + target + "' (stderr or journald)");
  }
  logger->set_level(*l);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  return {};
}

Result<void> set_log_level(const std::string& level) {
  auto l = parse_level(level);
  if (!l.ok()) return l.error();
  spdlog::set_level(*l);
  return {};
}

}  // namespace stallmon::daemon
