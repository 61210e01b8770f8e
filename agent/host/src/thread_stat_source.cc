// SPDX-License-Identifier: Apache-2.0
#include "stallmon/host/thread_stat_source.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <linux/types.h>

#include "bpf_thread_stat_source.h"
#include "task_stats_record.h"

namespace stallmon::host {
namespace {

int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

bool is_text_type(char t) { return t == 't' || t == 'T' || t == 'w' || t == 'W'; }

}  // namespace

char task_state_letter(uint32_t state, uint32_t exit_state) {
  static constexpr char kLetters[] = "RSDTtXZPI";
  uint32_t i = stallmon_report_state(state, exit_state);
  return i < sizeof kLetters - 1 ? kLetters[i] : '?';
}

uint64_t ThreadStat::starttime_ticks() const {
  static const uint64_t ns_per_tick = [] {
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? 1'000'000'000ULL / static_cast<uint64_t>(hz) : 10'000'000ULL;
  }();
  return start_boottime_ns / ns_per_tick;
}

// ---- ThreadStatPass ----

std::span<const ThreadStat> ThreadStatPass::threads_of(int32_t tgid) const {
  auto lo = std::lower_bound(threads.begin(), threads.end(), tgid,
                             [](const ThreadStat& t, int32_t g) { return t.tgid < g; });
  auto hi = std::upper_bound(lo, threads.end(), tgid,
                             [](int32_t g, const ThreadStat& t) { return g < t.tgid; });
  return std::span<const ThreadStat>(threads).subspan(
      static_cast<size_t>(lo - threads.begin()), static_cast<size_t>(hi - lo));
}

const ThreadStat* ThreadStatPass::find(int32_t tgid, int32_t tid) const {
  std::span<const ThreadStat> g = threads_of(tgid);
  auto it = std::lower_bound(g.begin(), g.end(), tid,
                             [](const ThreadStat& t, int32_t id) { return t.tid < id; });
  return it != g.end() && it->tid == tid ? &*it : nullptr;
}

bool ThreadStatPass::was_watched(int32_t tgid) const {
  return std::binary_search(watched.begin(), watched.end(), tgid);
}

// ---- KernelSymbols ----

KernelSymbols::KernelSymbols(std::string kallsyms_path) : path_(std::move(kallsyms_path)) {}

size_t KernelSymbols::memory_bytes() const {
  return addrs_.capacity() * sizeof(uint64_t) + name_off_.capacity() * sizeof(uint32_t) +
         names_.capacity();
}

void KernelSymbols::load_text(std::string_view text) {
  struct Entry {
    uint64_t addr;
    uint32_t off;
  };
  std::vector<Entry> entries;
  std::string names;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    // "ffffffff81000000 T _stext" or "ffffffffc0a01000 t fn\t[module]"
    size_t sp1 = line.find(' ');
    if (sp1 == std::string_view::npos || sp1 + 3 > line.size()) continue;
    uint64_t addr = 0;
    auto [p, ec] = std::from_chars(line.data(), line.data() + sp1, addr, 16);
    if (ec != std::errc() || p != line.data() + sp1 || addr == 0) continue;
    char type = line[sp1 + 1];
    std::string_view rest = line.substr(sp1 + 3);
    std::string_view name = rest, module;
    if (size_t tab = rest.find('\t'); tab != std::string_view::npos) {
      name = rest.substr(0, tab);
      module = rest.substr(tab + 1);
      if (module.size() >= 2 && module.front() == '[' && module.back() == ']') {
        module = module.substr(1, module.size() - 2);
      }
    }
    if (name.empty() || name.size() > 256 || module.size() > 64) continue;
    // Every symbol bounds the one before it (the kernel sizes a symbol up to the next address
    // in its table, whatever its type); only text symbols are named in frames.
    entries.push_back({addr, is_text_type(type) ? static_cast<uint32_t>(names.size())
                                                : UINT32_MAX});
    if (is_text_type(type)) {
      names.append(name);
      names.push_back('\0');
      names.append(module);
      names.push_back('\0');
    }
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.addr < b.addr; });
  addrs_.clear();
  name_off_.clear();
  addrs_.reserve(entries.size());
  name_off_.reserve(entries.size());
  for (const Entry& e : entries) {
    addrs_.push_back(e.addr);
    name_off_.push_back(e.off);
  }
  names_ = std::move(names);
  loaded_ = true;
}

void KernelSymbols::ensure_loaded() {
  if (loaded_) return;
  std::ifstream in(path_);
  std::stringstream ss;
  ss << in.rdbuf();
  load_text(ss.str());
  last_reload_ns_ = monotonic_ns();
}

KernelSymbols::Hit KernelSymbols::lookup(uint64_t addr) {
  ensure_loaded();
  auto find = [&]() -> Hit {
    auto it = std::upper_bound(addrs_.begin(), addrs_.end(), addr);
    if (it == addrs_.begin()) return {};
    size_t i = static_cast<size_t>(it - addrs_.begin()) - 1;
    // Several names at one address (aliases): the kernel prints the first in its table.
    while (i > 0 && addrs_[i - 1] == addrs_[i]) --i;
    size_t j = i;
    while (j < addrs_.size() && addrs_[j] == addrs_[i] && name_off_[j] == UINT32_MAX) ++j;
    if (j == addrs_.size() || addrs_[j] != addrs_[i]) return {};
    auto next = std::upper_bound(addrs_.begin(), addrs_.end(), addrs_[i]);
    if (next == addrs_.end()) return {};  // past the last symbol: size unknown
    Hit h;
    h.found = true;
    const char* n = names_.data() + name_off_[j];
    h.name = n;
    h.module = n + h.name.size() + 1;
    h.offset = addr - addrs_[i];
    h.size = *next - addrs_[i];
    return h;
  };
  Hit h = find();
  if (!h.found && !path_.empty()) {
    int64_t now = monotonic_ns();
    if (now - last_reload_ns_ >= 60'000'000'000) {
      loaded_ = false;
      ensure_loaded();
      h = find();
    }
  }
  return h;
}

std::string KernelSymbols::frame(uint64_t addr) {
  Hit h = lookup(addr);
  if (!h.found) return hex(addr);
  std::string out(h.name);
  out += "+" + hex(h.offset) + "/" + hex(h.size);
  if (!h.module.empty()) out += " [" + std::string(h.module) + "]";
  return out;
}

std::string KernelSymbols::name(uint64_t addr) {
  Hit h = lookup(addr);
  return h.found ? std::string(h.name) : std::string();
}

// ---- ThreadStatSource ----

Result<std::shared_ptr<const ThreadStatPass>> ThreadStatSource::collect(int64_t now_ns) {
  std::lock_guard<std::mutex> lk(mu_);
  return collect_locked(now_ns);
}

Result<std::shared_ptr<const ThreadStatPass>> ThreadStatSource::collect_locked(int64_t now_ns) {
  auto pass = std::make_shared<ThreadStatPass>();
  pass->t_ns = now_ns;
  STALLMON_TRY_VOID(run_pass(*pass));
  auto by_id = [](const ThreadStat& a, const ThreadStat& b) {
    return a.tgid != b.tgid ? a.tgid < b.tgid : a.tid < b.tid;
  };
  // The kernel walks tasks in pid order, so a pass over one process arrives sorted.
  if (!std::is_sorted(pass->threads.begin(), pass->threads.end(), by_id)) {
    std::sort(pass->threads.begin(), pass->threads.end(), by_id);
  }
  std::sort(pass->watched.begin(), pass->watched.end());
  pass->generation = ++generation_;
  latest_ = pass;
  return std::shared_ptr<const ThreadStatPass>(std::move(pass));
}

Result<std::shared_ptr<const ThreadStatPass>> ThreadStatSource::fresh(int64_t now_ns,
                                                                      int64_t max_age_ns) {
  // Checked and run under one lock: two workers ticking domains of the same period must not
  // both find the pass stale and run two (the second waits for the first and reuses it).
  std::lock_guard<std::mutex> lk(mu_);
  if (latest_ && now_ns - latest_->t_ns <= max_age_ns && now_ns >= latest_->t_ns) return latest_;
  return collect_locked(now_ns);
}

std::shared_ptr<const ThreadStatPass> ThreadStatSource::latest() const {
  std::lock_guard<std::mutex> lk(mu_);
  return latest_;
}

std::vector<std::string> ThreadStatSource::frames(std::span<const uint64_t> stack) {
  std::lock_guard<std::mutex> lk(sym_mu_);
  std::vector<std::string> out;
  out.reserve(stack.size());
  for (uint64_t a : stack) out.push_back(symbols_.frame(a));
  return out;
}

std::string ThreadStatSource::wchan(std::span<const uint64_t> stack) {
  if (stack.empty()) return {};
  std::lock_guard<std::mutex> lk(sym_mu_);
  return symbols_.name(stack.front());
}

}  // namespace stallmon::host

namespace stallmon::host {

#if !STALLMON_HAVE_BPF
bool bpf_source_built() { return false; }

Result<std::unique_ptr<ThreadStatSource>> open_bpf_thread_stat_source(const StatSourceOptions&) {
  return Error(ErrorCode::kUnsupported, "built without BPF (no clang, bpftool or kernel BTF)");
}
#endif

StatSourceChoice choose_thread_stat_source(const StatSourceOptions& opts) {
  StatSourceChoice c;
  c.kind = "proc";
  if (!opts.allow_bpf) {
    c.reason = "/proc per thread: BPF disabled by configuration";
    return c;
  }
  Result<std::unique_ptr<ThreadStatSource>> s = open_bpf_thread_stat_source(opts);
  if (!s.ok()) {
    c.reason = "/proc per thread: BPF unavailable: " + s.error().message;
    return c;
  }
  c.source = std::move(s).value();
  c.kind = std::string(c.source->kind());
  c.reason = c.source->description();
  return c;
}

}  // namespace stallmon::host
