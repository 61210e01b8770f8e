// SPDX-License-Identifier: Apache-2.0
// Internal: SHA-256 over the bytes read from a guest, the only key under which introspect shares
// decoded symbols and parsed types between guests (a BUILD-ID or KERNELOFFSET is written by the
// guest and proves nothing about the tables).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace stallmon::introspect::detail {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::span<const uint8_t> bytes);
  template <typename T>
  void update_value(const T& v) {
    update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&v), sizeof v));
  }
  // Lower-case hex digest; the object is finished afterwards.
  std::string hex_digest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace stallmon::introspect::detail
