// SPDX-License-Identifier: Apache-2.0
#include "stallmon/base/result.h"

#include <cstring>
#include <cstdio>

namespace stallmon {

const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kUnmapped: return "unmapped address";
    case ErrorCode::kCorrupt: return "corrupt data";
    case ErrorCode::kLimit: return "limit exceeded";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kInternal: return "internal error";
    case ErrorCode::kOverBudget: return "over memory budget";
  }
  return "unknown error";
}

std::string Error::to_string() const {
  std::string out = stallmon::to_string(code);
  out += ": ";
  out += message;
  if (address) {
    char buf[32];
    std::snprintf(buf, sizeof buf, " (address 0x%llx)", static_cast<unsigned long long>(*address));
    out += buf;
  }
  if (sys_errno != 0) {
    out += " (";
    out += std::strerror(sys_errno);
    out += ")";
  }
  return out;
}

}  // namespace stallmon
