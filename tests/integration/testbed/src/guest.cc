#include "testbed/guest.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#ifndef STALLMON_TESTBED_DIR
#error "STALLMON_TESTBED_DIR must be defined (path of tests/testbed)"
#endif

namespace stallmon::testbed {
namespace {

std::string ms_arg(std::chrono::milliseconds d) {
  std::ostringstream s;
  s << static_cast<double>(d.count()) / 1000.0;
  return s.str();
}

std::string first_line(const std::string& s) {
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

std::string tail(const std::string& s, size_t n) {
  return s.size() <= n ? s : s.substr(s.size() - n);
}

}  // namespace

std::string testbed_dir() {
  if (const char* d = std::getenv("STALLMON_TESTBED_DIR"); d && *d) return d;
  return STALLMON_TESTBED_DIR;
}

bool integration_skipped() {
  const char* s = std::getenv("STALLMON_SKIP_INTEGRATION");
  return s && std::string(s) == "1";
}

ProcessResult run_testbed(const std::vector<std::string>& args, std::chrono::milliseconds timeout,
                          bool check) {
  std::vector<std::string> argv = {"python3", testbed_dir() + "/testbed.py"};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcessResult r = run_process(argv, timeout);
  if (check && (r.timed_out || r.exit_code != 0)) {
    std::string what = "testbed.py";
    for (const auto& a : args) what += " " + a;
    throw TestbedError(
        what + (r.timed_out ? " timed out" : " failed (exit " + std::to_string(r.exit_code) + ")") +
        ": " + tail(r.err, 4000));
  }
  return r;
}

nlohmann::json restart_libvirtd() {
  return nlohmann::json::parse(first_line(run_testbed({"libvirtd-restart"}, 120s).out));
}

// ---------------------------------------------------------------------------------------------
// Injector

Injector::Injector(const std::vector<std::string>& args, std::chrono::milliseconds apply_timeout) {
  std::vector<std::string> argv = {"python3", testbed_dir() + "/testbed.py", "inject"};
  argv.insert(argv.end(), args.begin(), args.end());
  child_ = std::make_unique<Child>(argv);
  auto line = child_->read_line(apply_timeout);
  if (!line) {
    child_->wait(30s);
    error_ = "injector gave no status line: " + tail(child_->err(), 4000);
    released_ = true;
    return;
  }
  status_ = nlohmann::json::parse(*line, nullptr, false);
  if (status_.is_discarded() || !status_.contains("applied") || status_["applied"].is_null()) {
    child_->wait(30s);
    error_ = "injector failed: " + *line + " " + tail(child_->err(), 4000);
    released_ = true;
    return;
  }
  applied_ = true;
}

Injector& Injector::operator=(Injector&& o) noexcept {
  if (this != &o) {
    if (!released_ && child_) release();
    child_ = std::move(o.child_);
    applied_ = o.applied_;
    released_ = o.released_;
    error_ = std::move(o.error_);
    status_ = std::move(o.status_);
    undo_status_ = std::move(o.undo_status_);
    o.released_ = true;
  }
  return *this;
}

Injector::~Injector() {
  if (!released_ && child_) release();
}

pid_t Injector::pid() const {
  return status_.value("pid", -1);
}
pid_t Injector::tid() const {
  return status_.value("tid", -1);
}
std::string Injector::freeze_case() const {
  return status_.value("case", std::string());
}

const nlohmann::json& Injector::release() {
  if (released_ || !child_) return undo_status_;
  released_ = true;
  child_->close_stdin();
  auto line = child_->read_line(60s);
  child_->wait(30s);
  if (line) undo_status_ = nlohmann::json::parse(*line, nullptr, false);
  if (!line || undo_status_.is_discarded()) {
    undo_status_ = {{"ok", false}, {"problems", {"no undo status: " + tail(child_->err(), 2000)}}};
  }
  return undo_status_;
}

// ---------------------------------------------------------------------------------------------
// Guest

namespace {

int g_replaced_guests = 0;

// One line per replaced guest in $STALLMON_TESTBED_HEALTH_LOG (deploy/test.sh sums them up for
// the CI summary), and on stdout.
void record_replacement(const std::string& name, const std::string& why) {
  ++g_replaced_guests;
  std::string line = "STALLMON-TESTBED guest " + name + " failed the boot-health gate, replaced (" +
                     std::to_string(g_replaced_guests) + " in this binary): " + why;
  std::cout << line << std::endl;
  if (const char* log = std::getenv("STALLMON_TESTBED_HEALTH_LOG"); log && *log) {
    std::ofstream(log, std::ios::app) << line << "\n";
  }
}

}  // namespace

int replaced_guests() {
  return g_replaced_guests;
}

std::unique_ptr<Guest> Guest::boot(const GuestOptions& o) {
  if (geteuid() != 0) {
    throw TestbedError(
        "the real-guest testbed needs root (libvirt, cgroups, ptrace); "
        "set STALLMON_SKIP_INTEGRATION=1 to skip integration tests");
  }
  // Leftovers of earlier runs that were killed: faults, cgroups, orphaned domains.
  run_testbed({"cleanup"}, 120s, false);
  for (int replacement = 0;; ++replacement) {
    // Testbed health, decided before any fault and without stallmon: the kernel boots (it does
    // not vanish, or hang with an Oops on its console, before the ready marker), every guest
    // CPU's timer interrupts advance and the console shows no Oops/BUG/panic. A guest that fails
    // is replaced (a bounded number of times); this never reruns an assertion of a test.
    std::string why, console;  // a failed boot's `why` carries its console tail already
    if (std::unique_ptr<Guest> g = boot_once(o, &why)) {
      if (!o.health_gate || o.no_kernel) return g;  // no kernel: no timer interrupts to check
      ProcessResult r = run_testbed({"health", g->name_}, 120s, false);
      auto h = nlohmann::json::parse(first_line(r.out), nullptr, false);
      if (!h.is_discarded() && h.value("ok", false)) {
        g->health_ = h;
        return g;
      }
      why = h.is_discarded() ? "health check failed: " + tail(r.err, 2000) : h.dump();
      console = "\nconsole tail:\n" + tail(g->console(), 3000);
    }  // the domain is destroyed here; the next one may reuse its name
    if (replacement >= o.max_replacements) {
      throw TestbedError("test guest " + guest_name(o) + " failed the boot-health gate " +
                         std::to_string(replacement + 1) + " times; last: " + why + console);
    }
    record_replacement(guest_name(o), why);
  }
}

std::string Guest::guest_name(const GuestOptions& o) {
  return "stallmon-tb-" + o.tag + "-" + std::to_string(getpid());
}

std::unique_ptr<Guest> Guest::boot_once(const GuestOptions& o, std::string* boot_unhealthy) {
  std::unique_ptr<Guest> g(new Guest());
  g->name_ = guest_name(o);
  std::vector<std::string> args = {"start",       g->name_,
                                   "--vcpus",     std::to_string(o.vcpus),
                                   "--memory",    std::to_string(o.memory_mib),
                                   "--scenario",  o.scenario.empty() ? "none" : o.scenario,
                                   "--panic",     std::to_string(o.panic),
                                   "--on-crash",  o.on_crash,
                                   "--on-reboot", o.on_reboot,
                                   "--owner-pid", std::to_string(getpid()),
                                   "--wait",      std::to_string(o.boot_timeout.count())};
  if (o.watchdog_thresh) args.insert(args.end(), {"--wdt", std::to_string(*o.watchdog_thresh)});
  if (o.ipi_interval) args.insert(args.end(), {"--ipi-interval", std::to_string(*o.ipi_interval)});
  if (!o.kernel_package.empty()) args.insert(args.end(), {"--kernel", o.kernel_package});
  if (!o.extra_cmdline.empty()) args.insert(args.end(), {"--cmdline", o.extra_cmdline});
  if (!o.accel.empty()) args.insert(args.end(), {"--accel", o.accel});
  args.insert(args.end(), {"--machine", o.machine, "--memory-backing", o.memory_backing});
  if (o.max_memory_mib > 0) args.insert(args.end(), {"--max-memory", std::to_string(o.max_memory_mib)});
  if (o.no_kernel) args.push_back("--no-kernel");
  // Kit build (first time: download + module) + libvirt bring-up + boot.
  auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(o.boot_timeout) + 900s;
  ProcessResult r = run_testbed(args, timeout, false);
  if (r.timed_out || r.exit_code != 0) {
    run_testbed({"destroy", g->name_}, 120s, false);
    // Exit status 3 (testbed.py GuestBootUnhealthy): the guest kernel failed its own boot.
    if (!r.timed_out && r.exit_code == 3 && o.health_gate && !o.no_kernel) {
      *boot_unhealthy = "the guest failed its boot: " + tail(r.err, 2000);
      return nullptr;
    }
    throw TestbedError("cannot boot test guest " + g->name_ + ": " + tail(r.err, 6000));
  }
  g->info_ = nlohmann::json::parse(first_line(r.out));
  g->qemu_pid_ = g->info_.at("qemu_pid").get<pid_t>();
  g->console_path_ = g->info_.at("console").get<std::string>();
  g->run_dir_ = g->info_.at("run_dir").get<std::string>();
  g->boot_seconds_ = g->info_.value("boot_seconds", 0.0);
  for (auto& [k, v] : g->info_.at("vcpu_tids").items())
    g->vcpu_tids_[std::stoi(k)] = v.get<pid_t>();
  g->holder_ = std::make_unique<Child>(
      std::vector<std::string>{"python3", testbed_dir() + "/testbed.py", "hold", g->name_});
  g->holder_->read_line(30s);
  return g;
}

Guest::~Guest() {
  run_testbed({"destroy", name_}, 120s, false);
  if (holder_) holder_->wait(60s);
}

pid_t Guest::vcpu_tid(int index) const {
  auto it = vcpu_tids_.find(index);
  if (it == vcpu_tids_.end()) throw TestbedError("no vCPU " + std::to_string(index));
  return it->second;
}

std::string Guest::console(size_t from) const {
  std::ifstream f(console_path_, std::ios::binary);
  if (!f) return {};
  f.seekg(static_cast<std::streamoff>(from));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

size_t Guest::console_size() const {
  std::ifstream f(console_path_, std::ios::binary | std::ios::ate);
  return f ? static_cast<size_t>(f.tellg()) : 0;
}

std::optional<std::string> Guest::wait_console(const std::regex& re,
                                               std::chrono::milliseconds timeout,
                                               size_t from) const {
  std::optional<std::string> match;
  wait_console_until(
      [&](const std::string& text) {
        std::smatch m;
        if (!std::regex_search(text, m, re)) return false;
        match = m.str();
        return true;
      },
      timeout, from);
  return match;
}

bool Guest::wait_console_until(const std::function<bool(const std::string&)>& done,
                               std::chrono::milliseconds timeout, size_t from) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (done(console(from))) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    usleep(250000);
  }
}

CommandResult Guest::run(const std::string& command, std::chrono::milliseconds timeout,
                         const std::string& channel) const {
  ProcessResult r = run_testbed(
      {"guest", "--timeout", ms_arg(timeout), "--channel", channel, name_, "--", command},
      timeout + 30s, false);
  if (r.timed_out) throw TestbedError("guest command timed out: " + command);
  if (r.exit_code == 255 && r.err.find("testbed: ") != std::string::npos) {
    throw TestbedError("guest command failed (" + command + "): " + tail(r.err, 2000));
  }
  return {r.exit_code, std::move(r.out), std::move(r.err)};
}

Injector Guest::inject(const std::vector<std::string>& args) const {
  return Injector(args, 180s);  // a freeze with retries takes up to ~3 s per attempt
}

Injector Guest::freeze_vcpu(int index, const FreezeOptions& opts) const {
  return freeze_thread(vcpu_tid(index), opts);
}

Injector Guest::freeze_thread(pid_t tid, const FreezeOptions& opts) const {
  std::vector<std::string> args = {"freeze",
                                   "--pid",
                                   std::to_string(qemu_pid_),
                                   "--tid",
                                   std::to_string(tid),
                                   "--when-idle",
                                   ms_arg(opts.when_idle),
                                   "--want-case",
                                   opts.want_case,
                                   "--attempts",
                                   std::to_string(opts.attempts),
                                   "--measure",
                                   ms_arg(opts.measure),
                                   "--cgroup",
                                   opts.cgroup};
  if (opts.want_idle) args.push_back("--want-idle");
  if (opts.want_others_running) args.push_back("--want-others-running");
  return inject(args);
}

Injector Guest::freeze_vcpu_keeping_guest_time(int index, const FreezeOptions& opts,
                                                const std::function<std::optional<uint64_t>()>& read_jiffies,
                                                std::chrono::milliseconds settle, int tries) const {
  Injector f;
  for (int attempt = 1; attempt <= tries; ++attempt) {
    f = freeze_vcpu(index, opts);
    if (!f.applied() || f.freeze_case() != "vcpu-only") return f;
    const auto j0 = read_jiffies();
    std::this_thread::sleep_for(settle);
    const auto j1 = read_jiffies();
    if ((j0 && j1 && *j1 > *j0) || attempt == tries) return f;
    std::cout << "freeze attempt " << attempt << ": guest time stopped (jiffies "
              << (j1 ? std::to_string(*j1) : "unreadable") << "), refreezing" << std::endl;
    f.release();
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  return f;
}

bool Guest::leave_cpu_to(int cpu, const std::string& comm, std::chrono::milliseconds settle) const {
  std::string others;
  for (int c = 0; c < vcpu_count(); ++c) {
    if (c == cpu) continue;
    others += (others.empty() ? "" : ",") + std::to_string(c);
  }
  if (others.empty()) return false;
  auto r = run("for d in /proc/[0-9]*; do [ \"$(cat $d/comm 2>/dev/null)\" = " + comm + " ] || "
               "taskset -p -c " + others + " ${d#/proc/} >/dev/null 2>&1; done; true",
               std::chrono::seconds(60));
  if (r.exit_code != 0) return false;
  std::this_thread::sleep_for(settle);
  return true;
}

Injector Guest::throttle_vcpu(int index, int quota_us, int period_us) const {
  return inject({"throttle", "--pid", std::to_string(qemu_pid_), "--tid",
                 std::to_string(vcpu_tid(index)), "--quota-us", std::to_string(quota_us),
                 "--period-us", std::to_string(period_us)});
}

Injector Guest::ptrace_stop_vcpu(int index) const {
  return ptrace_stop_thread(vcpu_tid(index));
}

Injector Guest::ptrace_stop_thread(pid_t tid) const {
  return inject({"ptrace", "--pid", std::to_string(qemu_pid_), "--tid", std::to_string(tid)});
}

Injector Guest::sigstop() const {
  return inject({"sigstop", "--pid", std::to_string(qemu_pid_)});
}

// ---------------------------------------------------------------------------------------------
// Shared guest

namespace {

struct Shared {
  std::mutex mu;
  GuestOptions opts;
  std::unique_ptr<Guest> guest;
  std::string error;
};

Shared& shared() {
  static Shared* s = new Shared();  // never destroyed: the Environment tears the guest down
  return *s;
}

class SharedGuestEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    std::lock_guard lock(shared().mu);
    shared().guest.reset();
  }
};

// Registered whenever this translation unit is linked in (it is, by any use of the fixture).
[[maybe_unused]] ::testing::Environment* const kEnv =
    ::testing::AddGlobalTestEnvironment(new SharedGuestEnvironment);

}  // namespace

void set_shared_guest_options(const GuestOptions& opts) {
  std::lock_guard lock(shared().mu);
  shared().opts = opts;
}

bool use_shared_guest_options(const GuestOptions& opts) {
  set_shared_guest_options(opts);
  return true;
}

Guest& shared_guest() {
  auto& s = shared();
  std::lock_guard lock(s.mu);
  if (s.guest) return *s.guest;
  if (!s.error.empty()) throw TestbedError(s.error);
  try {
    s.guest = Guest::boot(s.opts);
  } catch (const std::exception& e) {
    s.error = e.what();
    throw;
  }
  return *s.guest;
}

void GuestTest::SetUp() {
  if (integration_skipped()) GTEST_SKIP() << "STALLMON_SKIP_INTEGRATION=1";
  try {
    guest_ = &shared_guest();
  } catch (const std::exception& e) {
    FAIL() << "real-guest testbed unavailable: " << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// /proc helpers

std::string first_console_fault(const std::string& console) {
  static const std::regex re(
      R"((Oops|BUG:|Kernel panic|general protection fault|rcu: INFO: rcu_\w+ (self-)?detected stall|WARNING: CPU).*)");
  std::smatch m;
  return std::regex_search(console, m, re) ? m.str() : std::string();
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<pid_t> threads_of(pid_t pid) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    out.push_back(std::stoi(e.path().filename().string()));
  }
  return out;
}

char thread_state(pid_t pid, pid_t tid) {
  std::string s =
      read_text("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat");
  auto p = s.rfind(')');
  if (p == std::string::npos || p + 2 >= s.size()) return 0;
  return s[p + 2];
}

SchedStat thread_schedstat(pid_t pid, pid_t tid) {
  std::istringstream s(
      read_text("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/schedstat"));
  SchedStat st;
  s >> st.run_ns >> st.delay_ns >> st.slices;
  return st;
}

pid_t tracer_pid(pid_t tid) {
  std::istringstream s(read_text("/proc/" + std::to_string(tid) + "/status"));
  std::string line;
  while (std::getline(s, line)) {
    if (line.rfind("TracerPid:", 0) == 0) return std::stoi(line.substr(10));
  }
  return -1;
}

std::string thread_cgroup(pid_t pid, pid_t tid, const std::string& controller) {
  std::istringstream s(
      read_text("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/cgroup"));
  std::string line;
  while (std::getline(s, line)) {
    auto a = line.find(':');
    auto b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string ctrls = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    if (controller.empty()) {
      if (line.rfind("0::", 0) == 0) return path;
      continue;
    }
    std::istringstream cs(ctrls);
    std::string c;
    while (std::getline(cs, c, ',')) {
      if (c == controller) return path;
    }
  }
  return {};
}

}  // namespace stallmon::testbed
