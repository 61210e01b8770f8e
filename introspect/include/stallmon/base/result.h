// SPDX-License-Identifier: Apache-2.0
// Errors as values: every fallible stallmon call returns Result<T>. Nothing throws across a
// library boundary, and guest memory never causes an assert: a bad value is an Error that says
// which symbol, address or file it came from.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace stallmon {

enum class ErrorCode {
  kInvalidArgument,  // the caller passed something unusable
  kNotFound,         // a symbol, type, member, file or domain does not exist
  kUnmapped,         // an address is outside guest RAM or not mapped by the page tables
  kCorrupt,          // data read from the guest (or a file) violates its own format: hostile input
  kLimit,            // a bound was hit (list too long, string too long, too many CPUs)
  kIo,               // a system call failed; sys_errno says why
  kTimeout,          // a deadline passed (libvirt/QMP calls)
  kUnsupported,      // a kernel or host feature this code does not handle
  kInternal,         // a bug in stallmon
  kOverBudget,       // a guest-decided size passed the domain's memory budget (introspect::MemoryBudget)
};

const char* to_string(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  std::optional<uint64_t> address;  // the faulting guest address, when there is one
  int sys_errno = 0;                // errno, for kIo

  Error() = default;
  Error(ErrorCode c, std::string msg) : code(c), message(std::move(msg)) {}
  Error(ErrorCode c, std::string msg, uint64_t addr) : code(c), message(std::move(msg)), address(addr) {}

  static Error io(std::string msg, int err) {
    Error e(ErrorCode::kIo, std::move(msg));
    e.sys_errno = err;
    return e;
  }

  // Prepends what the caller was doing: "reading runqueues[2]: address 0x... unmapped".
  Error& context(const std::string& what) & {
    message = what + ": " + message;
    return *this;
  }
  Error&& context(const std::string& what) && {
    message = what + ": " + message;
    return std::move(*this);
  }

  std::string to_string() const;
};

template <typename T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<T, Error>, "Result<Error> is ambiguous");

 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  // Preconditions: ok() for value(), !ok() for error(). Violations are stallmon bugs.
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  template <typename U>
  T value_or(U&& fallback) const& {
    return ok() ? value() : static_cast<T>(std::forward<U>(fallback));
  }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const& { return *error_; }
  Error&& error() && { return std::move(*error_); }

 private:
  std::optional<Error> error_;
};

inline Result<void> Ok() { return {}; }

}  // namespace stallmon

// Propagates an error: STALLMON_TRY(auto x, read_u64(addr)); or STALLMON_TRY_VOID(check()).
#define STALLMON_CONCAT_INNER(a, b) a##b
#define STALLMON_CONCAT(a, b) STALLMON_CONCAT_INNER(a, b)
#define STALLMON_TRY_IMPL(tmp, decl, expr)   \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return std::move(tmp).error(); \
  decl = std::move(tmp).value()
#define STALLMON_TRY(decl, expr) STALLMON_TRY_IMPL(STALLMON_CONCAT(stallmon_try_, __LINE__), decl, expr)
#define STALLMON_TRY_VOID(expr)                      \
  do {                                               \
    auto stallmon_try_v = (expr);                    \
    if (!stallmon_try_v.ok()) return std::move(stallmon_try_v).error(); \
  } while (0)
