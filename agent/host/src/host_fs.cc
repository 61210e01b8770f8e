// SPDX-License-Identifier: Apache-2.0
#include "stallmon/host/host_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>

#include "stallmon/host/clock.h"

namespace stallmon::host {

bool is_gone(const Error& e) {
  return e.code == ErrorCode::kNotFound ||
         (e.code == ErrorCode::kIo && (e.sys_errno == ESRCH || e.sys_errno == ENOENT));
}

Result<std::string> read_whole(HostFs& fs, const std::string& path, size_t max_bytes) {
  STALLMON_TRY(int h, fs.open(path));
  // Not a zero-filled string of max_bytes: /proc files are short and the 16 KiB default's memset
  // was most of the user-space cost of a vCPU's cgroup refresh (callgrind, tests/scale).
  std::unique_ptr<char[]> buf(new char[max_bytes]);
  Result<size_t> n = fs.read(h, buf.get(), max_bytes);
  fs.close(h);
  if (!n.ok()) return std::move(n).error();
  return std::string(buf.get(), std::min(*n, max_bytes));
}

int64_t MonotonicClock::now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// ---- RealHostFs ----

RealHostFs::RealHostFs(const std::string& root) : root_(root) {
  root_fd_ = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) root_errno_ = errno;
}

RealHostFs::~RealHostFs() {
  if (root_fd_ >= 0) ::close(root_fd_);
}

Result<void> RealHostFs::status() const {
  if (root_fd_ < 0) return Error::io("opening root " + root_, root_errno_);
  return Ok();
}

Result<int> RealHostFs::open(const std::string& path) {
  if (root_fd_ < 0) return Error::io("opening root " + root_, root_errno_);
  int fd = ::openat(root_fd_, path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error::io("open " + path, errno);
  return fd;
}

Result<size_t> RealHostFs::read(int handle, char* buf, size_t len) {
  for (;;) {
    ssize_t n = ::pread(handle, buf, len, 0);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    return Error::io("pread", errno);
  }
}

void RealHostFs::close(int handle) { ::close(handle); }

Result<std::vector<std::string>> RealHostFs::list_dir(const std::string& path) {
  if (root_fd_ < 0) return Error::io("opening root " + root_, root_errno_);
  int fd = ::openat(root_fd_, path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Error::io("opendir " + path, errno);
  DIR* dir = ::fdopendir(fd);
  if (dir == nullptr) {
    int err = errno;
    ::close(fd);
    return Error::io("fdopendir " + path, err);
  }
  std::vector<std::string> names;
  errno = 0;
  while (dirent* de = ::readdir(dir)) {
    if (std::strcmp(de->d_name, ".") == 0 || std::strcmp(de->d_name, "..") == 0) continue;
    names.emplace_back(de->d_name);
  }
  int err = errno;
  ::closedir(dir);
  // readdir of /proc/PID/task after the process exited fails with ENOENT.
  if (err != 0) return Error::io("readdir " + path, err);
  return names;
}

// ---- FakeHostFs ----

void FakeHostFs::set_file(const std::string& path, std::string content) {
  auto it = files_.find(path);
  if (it != files_.end()) {
    it->second.content = std::move(content);  // same file, new text: handles stay valid
    return;
  }
  uint64_t gen = ++last_generation_[path];
  files_[path] = File{std::move(content), gen};
}

void FakeHostFs::remove(const std::string& path) {
  files_.erase(path);
  std::string prefix = path + "/";
  for (auto it = files_.lower_bound(prefix); it != files_.end() && it->first.starts_with(prefix);) {
    it = files_.erase(it);
  }
}

void FakeHostFs::set_error(const std::string& path, int err) {
  if (err == 0) {
    errors_.erase(path);
  } else {
    errors_[path] = err;
  }
}

uint64_t FakeHostFs::opens(const std::string& path) const {
  auto it = opens_.find(path);
  return it == opens_.end() ? 0 : it->second;
}

uint64_t FakeHostFs::reads(const std::string& path) const {
  auto it = reads_.find(path);
  return it == reads_.end() ? 0 : it->second;
}

Result<int> FakeHostFs::open(const std::string& path) {
  ++opens_[path];
  if (auto e = errors_.find(path); e != errors_.end()) return Error::io("open " + path, e->second);
  auto it = files_.find(path);
  if (it == files_.end()) return Error::io("open " + path, ENOENT);
  int h = next_handle_++;
  handles_[h] = Handle{path, it->second.generation};
  return h;
}

Result<size_t> FakeHostFs::read(int handle, char* buf, size_t len) {
  auto h = handles_.find(handle);
  if (h == handles_.end()) return Error::io("pread", EBADF);
  ++reads_[h->second.path];
  if (auto e = errors_.find(h->second.path); e != errors_.end()) {
    return Error::io("pread " + h->second.path, e->second);
  }
  auto it = files_.find(h->second.path);
  // The kernel ties a /proc descriptor to the task it was opened for: once that task is gone
  // the descriptor reads ESRCH, even if a new task took the same tid.
  if (it == files_.end() || it->second.generation != h->second.generation) {
    return Error::io("pread " + h->second.path, ESRCH);
  }
  size_t n = std::min(len, it->second.content.size());
  std::memcpy(buf, it->second.content.data(), n);
  return n;
}

void FakeHostFs::close(int handle) { handles_.erase(handle); }

Result<std::vector<std::string>> FakeHostFs::list_dir(const std::string& path) {
  std::string prefix = path + "/";
  std::vector<std::string> names;
  for (auto it = files_.lower_bound(prefix); it != files_.end() && it->first.starts_with(prefix);
       ++it) {
    std::string_view rest = std::string_view(it->first).substr(prefix.size());
    std::string_view name = rest.substr(0, rest.find('/'));
    if (names.empty() || names.back() != name) names.emplace_back(name);
  }
  if (names.empty()) return Error::io("opendir " + path, ENOENT);
  return names;
}

}  // namespace stallmon::host
