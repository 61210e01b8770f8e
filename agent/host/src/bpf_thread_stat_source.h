// SPDX-License-Identifier: Apache-2.0
// Internal: the BPF task-iterator ThreadStatSource. Public entry: choose_thread_stat_source().
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "stallmon/host/thread_stat_source.h"

struct task_stats;
struct bpf_link;

namespace stallmon::host {

// kUnsupported (with the reason) when the build has no BPF, or the kernel, privilege or
// namespace does not allow it, or the start-up check against /proc fails.
Result<std::unique_ptr<ThreadStatSource>> open_bpf_thread_stat_source(const StatSourceOptions& o);

#if STALLMON_HAVE_BPF
class BpfThreadStatSource final : public ThreadStatSource {
 public:
  static Result<std::unique_ptr<BpfThreadStatSource>> open(const StatSourceOptions& opts);
  ~BpfThreadStatSource() override;

  std::string_view kind() const override { return "bpf-task-iter"; }
  std::string description() const override;
  Result<void> watch(int32_t tgid) override;
  void unwatch(int32_t tgid) override;

 protected:
  Result<void> run_pass(ThreadStatPass& out) override;

 private:
  explicit BpfThreadStatSource(const StatSourceOptions& opts);
  Result<void> self_check();

  StatSourceOptions opts_;
  task_stats* skel_ = nullptr;
  bpf_link* link_ = nullptr;
  std::mutex watch_mu_;
  std::set<int32_t> watched_;
  std::vector<char> buf_;  // the iterator's output of one pass (grows, kept across passes)
  std::string notes_;
};
#endif

}  // namespace stallmon::host
