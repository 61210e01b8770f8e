// SPDX-License-Identifier: Apache-2.0
// Internal: the BPF task-iterator ThreadStatSource. Public entry: choose_thread_stat_source().
#pragma once

#include <memory>
#include <mutex>
#include <map>
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
  // Per-process iterator for tgid (kernels with parameterized task iterators, 6.1+), or nullptr.
  bpf_link* attach_process(int32_t tgid);
  Result<void> read_iterator(bpf_link* link, size_t& used);

  StatSourceOptions opts_;
  task_stats* skel_ = nullptr;
  bpf_link* link_ = nullptr;  // every task of the host (when per-process iterators are missing)
  bool per_process_ = false;  // one iterator per watched process instead of one host-wide walk
  std::mutex watch_mu_;       // held through a pass: a link is never destroyed while read
  std::map<int32_t, bpf_link*> watched_;  // tgid → its iterator (per_process_) or nullptr
  std::vector<char> buf_;  // the iterator's output of one pass (grows, kept across passes)
  std::string notes_;
};
#endif

}  // namespace stallmon::host
