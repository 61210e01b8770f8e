// SPDX-License-Identifier: Apache-2.0
#include "console.h"

#include <algorithm>
#include <array>
#include <string_view>

namespace stallmon::diagnosis {

namespace {

constexpr std::size_t kMaxTailLines = 256;  // the daemon reads 20 a tick, 200 while panicked

bool starts_block(std::string_view line) {
  // The first line of what the kernel prints for a fatal fault (kernel/panic.c, arch/x86/mm/
  // fault.c, lib/bug.c, drivers/tty/sysrq.c, kernel/watchdog.c, arch/x86/kernel/traps.c).
  static constexpr std::array<std::string_view, 10> kStarts = {
      "BUG: ",          "Oops: ",         "kernel BUG at ",        "general protection fault",
      "Kernel panic - not syncing", "sysrq: Trigger a crash", "Unable to handle kernel",
      "watchdog: BUG: ", "stack guard page was hit", "Kernel stack is corrupted"};
  const auto first = line.find_first_not_of(' ');
  if (first == std::string_view::npos) return false;
  line.remove_prefix(first);
  return std::any_of(kStarts.begin(), kStarts.end(), [&](std::string_view s) { return line.substr(0, s.size()) == s; });
}

std::string panic_message(std::string_view line) {
  constexpr std::string_view kPanic = "Kernel panic - not syncing";
  const auto at = line.find(kPanic);
  if (at == std::string_view::npos) return {};
  std::string_view m = line.substr(at);
  // The trailer: "---[ end Kernel panic - not syncing: sysrq triggered crash ]---".
  if (const auto end = m.rfind(" ]---"); end != std::string_view::npos) m = m.substr(0, end);
  while (!m.empty() && (m.back() == ' ' || m.back() == '\n')) m.remove_suffix(1);
  return std::string(m);
}

// "CPU: 1 PID: 212 Comm: stackend/1 Tainted: ..." / "CPU: 1 UID: 0 PID: 912 Comm: bash ...".
bool parse_task_header(std::string_view line, StackOverflowNote& n) {
  const auto first = line.find_first_not_of(' ');
  if (first == std::string_view::npos) return false;
  line.remove_prefix(first);
  auto number_after = [&](std::string_view key, int& out) {
    const auto at = line.find(key);
    if (at == std::string_view::npos) return false;
    std::size_t i = at + key.size();
    long v = 0;
    std::size_t digits = 0;
    for (; i < line.size() && line[i] >= '0' && line[i] <= '9' && digits < 9; ++i, ++digits) v = v * 10 + (line[i] - '0');
    if (digits == 0) return false;
    out = static_cast<int>(v);
    return true;
  };
  if (line.substr(0, 5) != "CPU: ") return false;
  int cpu = -1, pid = -1;
  if (!number_after("CPU: ", cpu) || !number_after(" PID: ", pid)) return false;
  n.cpu = cpu;
  n.pid = pid;
  if (const auto at = line.find(" Comm: "); at != std::string_view::npos) {
    std::string_view c = line.substr(at + 7);
    n.comm = std::string(c.substr(0, std::min(c.find(' '), std::size_t{16})));
  }
  return true;
}

}  // namespace

std::optional<StackOverflowNote> find_stack_overflow(const std::vector<std::string>& text) {
  static constexpr std::array<std::string_view, 3> kNames = {
      "corrupted stack end detected inside scheduler", "stack guard page was hit", "kernel stack overflow"};
  for (std::size_t i = 0; i < text.size(); ++i) {
    const std::string& line = text[i];
    if (std::none_of(kNames.begin(), kNames.end(), [&](std::string_view s) { return line.find(s) != std::string::npos; }))
      continue;
    StackOverflowNote n;
    n.line = line;
    for (std::size_t j = i; j < text.size(); ++j)
      if (parse_task_header(text[j], n)) break;
    if (n.cpu < 0)
      for (std::size_t j = 0; j < i; ++j)
        if (parse_task_header(text[j], n)) break;
    return n;
  }
  return std::nullopt;
}

void ConsoleLog::merge(const std::vector<std::string>& tail_in) {
  if (tail_in.empty()) return;
  const std::size_t n = std::min(tail_in.size(), kMaxTailLines);
  const auto tail = tail_in.end() - static_cast<std::ptrdiff_t>(n);
  // Largest k: the log's last k lines == the tail's first k. The longest overlap appends the
  // fewest lines, so a tail seen again adds nothing.
  std::size_t overlap = 0;
  for (std::size_t k = std::min(n, lines_.size()); k > 0; --k) {
    if (std::equal(tail, tail + static_cast<std::ptrdiff_t>(k), lines_.end() - static_cast<std::ptrdiff_t>(k))) {
      overlap = k;
      break;
    }
  }
  for (auto it = tail + static_cast<std::ptrdiff_t>(overlap); it != tail_in.end(); ++it) lines_.push_back(*it);
  while (lines_.size() > max_lines_) lines_.pop_front();
}

PanicText extract_panic_text(const std::deque<std::string>& log, std::size_t max_lines) {
  PanicText out;
  // The last panic line (or its trailer) names the panic; its block starts at the earliest
  // fault line of the lines just before it (an oops printed, then "Fatal exception").
  std::ptrdiff_t panic_at = -1;
  for (std::ptrdiff_t i = static_cast<std::ptrdiff_t>(log.size()) - 1; i >= 0; --i) {
    std::string m = panic_message(log[static_cast<std::size_t>(i)]);
    if (m.empty()) continue;
    if (out.message.empty()) out.message = std::move(m);
    // Keep walking to the panic line itself when this was the trailer.
    if (log[static_cast<std::size_t>(i)].find("---[ end") == std::string::npos) {
      panic_at = i;
      break;
    }
    panic_at = i;
  }
  std::ptrdiff_t start = -1;
  const std::ptrdiff_t search_to = panic_at >= 0 ? panic_at : static_cast<std::ptrdiff_t>(log.size()) - 1;
  const std::ptrdiff_t search_from = std::max<std::ptrdiff_t>(0, search_to - static_cast<std::ptrdiff_t>(max_lines));
  for (std::ptrdiff_t i = search_from; i <= search_to; ++i)
    if (starts_block(log[static_cast<std::size_t>(i)])) {
      start = i;
      break;
    }
  if (start < 0) start = panic_at;
  if (start < 0) return out;
  for (auto i = static_cast<std::size_t>(start); i < log.size() && out.lines.size() < max_lines; ++i)
    out.lines.push_back(log[i]);
  return out;
}

}  // namespace stallmon::diagnosis
