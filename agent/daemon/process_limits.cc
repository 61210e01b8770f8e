// SPDX-License-Identifier: Apache-2.0
#include "process_limits.h"

#include <sys/resource.h>

#include <cerrno>

namespace stallmon::daemon {

Result<OpenFilesLimit> raise_open_files_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return Error::io("getrlimit(RLIMIT_NOFILE)", errno);
  OpenFilesLimit out{rl.rlim_cur, rl.rlim_cur, rl.rlim_max};
  if (rl.rlim_cur == RLIM_INFINITY || (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur >= rl.rlim_max)) return out;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return Error::io("setrlimit(RLIMIT_NOFILE)", errno);
  out.soft = rl.rlim_cur;
  return out;
}

}  // namespace stallmon::daemon
