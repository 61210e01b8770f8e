// SPDX-License-Identifier: Apache-2.0
// spdlog set-up: a "stallmond" logger to stderr (plain, timestamped) or to journald (native
// sd_journal fields: PRIORITY from the level, SYSLOG_IDENTIFIER=stallmond).
#pragma once

#include <string>

#include "stallmon/base/result.h"

namespace stallmon::daemon {

// target: "stderr" or "journald"; level: spdlog level name. Replaces the default logger.
Result<void> setup_logging(const std::string& target, const std::string& level);
// Changes the level of the default logger (SIGHUP reload).
Result<void> set_log_level(const std::string& level);

}  // namespace stallmon::daemon
