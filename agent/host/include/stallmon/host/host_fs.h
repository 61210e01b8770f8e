// SPDX-License-Identifier: Apache-2.0
// Read-only access to /proc and /sys/fs/cgroup, behind an interface so tests can drive the
// sampler with fake trees.
//
// Paths are relative to a root ("proc/123/task/124/stat", no leading '/'). The sampler keeps
// handles open and re-reads them from offset 0 each tick, which is what makes it cheap: a /proc
// file re-read through the same descriptor regenerates its text without a path walk.
//
// Errors are kIo with sys_errno set. A thread that exited reads as ESRCH on a kept handle and
// ENOENT on open; callers treat both as "gone" (see is_gone()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "stallmon/base/result.h"

namespace stallmon::host {

class HostFs {
 public:
  virtual ~HostFs() = default;
  // Opens a file for reading. The handle stays valid until close().
  virtual Result<int> open(const std::string& path) = 0;
  // Reads up to len bytes at offset 0 (files here are regenerated on every read).
  virtual Result<size_t> read(int handle, char* buf, size_t len) = 0;
  virtual void close(int handle) = 0;
  // Names in a directory, without "." and "..", in no particular order.
  virtual Result<std::vector<std::string>> list_dir(const std::string& path) = 0;
};

// True for the errors that mean "the thread or process no longer exists".
bool is_gone(const Error& e);

// Opens, reads at most max_bytes and closes. For files read rarely (wchan, stack, cgroup).
Result<std::string> read_whole(HostFs& fs, const std::string& path, size_t max_bytes = 16384);

// The real file system under a root directory ("/" on a host; a temp dir holding proc/ and
// sys/fs/cgroup/ in tests). Uses openat/pread on real descriptors.
class RealHostFs final : public HostFs {
 public:
  // The root must be an existing directory; check ok() after construction.
  explicit RealHostFs(const std::string& root = "/");
  ~RealHostFs() override;
  RealHostFs(const RealHostFs&) = delete;
  RealHostFs& operator=(const RealHostFs&) = delete;

  Result<void> status() const;
  Result<int> open(const std::string& path) override;
  Result<size_t> read(int handle, char* buf, size_t len) override;
  void close(int handle) override;
  Result<std::vector<std::string>> list_dir(const std::string& path) override;

 private:
  std::string root_;
  int root_fd_ = -1;
  int root_errno_ = 0;
};

// An in-memory tree for tests that models the kernel's behaviour a plain temp dir cannot: a
// handle opened on a file that is later removed (the thread exited), or removed and recreated
// (the tid was reused), reads ESRCH, exactly like a kept /proc descriptor. Errors can be
// injected per path (EACCES on stack, EIO, ...). It counts opens and reads per path so tests can
// check the sampler keeps files open and rate-limits expensive reads.
class FakeHostFs final : public HostFs {
 public:
  void set_file(const std::string& path, std::string content);
  // Removes one file, or every file under path + "/" when it names a directory.
  void remove(const std::string& path);
  // Makes open() and read() of path fail with err (0 clears).
  void set_error(const std::string& path, int err);

  uint64_t opens(const std::string& path) const;
  uint64_t reads(const std::string& path) const;
  size_t open_handles() const { return handles_.size(); }

  Result<int> open(const std::string& path) override;
  Result<size_t> read(int handle, char* buf, size_t len) override;
  void close(int handle) override;
  Result<std::vector<std::string>> list_dir(const std::string& path) override;

 private:
  struct File {
    std::string content;
    uint64_t generation = 0;
  };
  struct Handle {
    std::string path;
    uint64_t generation = 0;
  };
  std::map<std::string, File> files_;
  std::map<std::string, uint64_t> last_generation_;  // survives removal, so recreation differs
  std::map<std::string, int> errors_;
  std::map<int, Handle> handles_;
  std::map<std::string, uint64_t> opens_, reads_;
  int next_handle_ = 3;
};

}  // namespace stallmon::host
