// GoogleTest fixture for real-guest tests: a Debian guest under libvirt/QEMU (TCG here), booted
// once per test binary and shared by its tests, plus RAII host-side fault injectors.
// Everything is driven through tests/testbed/testbed.py (see tests/testbed/README.md).
//
//   #include "testbed/guest.h"
//   using stallmon::testbed::GuestTest;
//   TEST_F(GuestTest, Something) {
//     auto& g = guest();                       // the shared guest (booted on first use)
//     pid_t tid = g.vcpu_tid(2);
//     auto f = g.freeze_vcpu(2);               // undone when f goes out of scope
//     ASSERT_TRUE(f.applied()) << f.error();
//     auto r = g.run("cat /proc/loadavg");    // guest shell command over the control channel
//   }
//
// Register such a binary with add_test(... ) + LABELS integration (not gtest_discover_tests,
// which would run every test in its own process and boot a guest each time).
// If the testbed cannot run (no libvirt, not root, ...) GuestTest fails every test with the
// reason; it skips instead only when STALLMON_SKIP_INTEGRATION=1 is set.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include "testbed/process.h"

namespace stallmon::testbed {

using namespace std::chrono_literals;

struct TestbedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Absolute path of tests/testbed (env STALLMON_TESTBED_DIR overrides the compiled-in one).
std::string testbed_dir();
// Runs `python3 testbed.py args...`; throws TestbedError if it fails or times out.
ProcessResult run_testbed(const std::vector<std::string>& args,
                          std::chrono::milliseconds timeout = 120s, bool check = true);
// True when STALLMON_SKIP_INTEGRATION=1.
bool integration_skipped();
// Stops and starts libvirtd (running domains keep running; libvirt reconnects to them) and
// waits until it answers; returns testbed.py's JSON ({"libvirtd":"restarted","pid":..,
// "seconds":..}). Every libvirt client on the host sees the restart: use it only where needed.
nlohmann::json restart_libvirtd();

struct GuestOptions {
  std::string tag = "shared";  // domain name: stallmon-tb-<tag>-<pid>
  int vcpus = 4;
  int memory_mib = 512;
  // The RAM layout's shape (issue 11): "q35" or "pc" (i440fx, another below-4 GiB split);
  // "anonymous", "memfd" or "hugepages" backing; max_memory_mib > 0 leaves room for DIMMs.
  std::string machine = "q35";
  std::string memory_backing = "anonymous";
  int max_memory_mib = 0;
  std::string scenario = "ipi,wakeups,sleepers";  // or "none"
  std::optional<int> watchdog_thresh = 5;
  std::optional<double> ipi_interval;  // seconds (guest default 1)
  std::string kernel_package;          // empty: linux-image-amd64's target
  std::string extra_cmdline;
  int panic = -1;                    // kernel panic=
  std::string on_crash = "destroy";  // libvirt <on_crash>
  std::string on_reboot = "destroy";  // libvirt <on_reboot>: "restart" survives `reboot -f`
  std::string accel;                 // "", "tcg", "kvm", "auto"
  // Firmware with nothing to boot (no kernel, no disk): a guest without Linux. No control
  // channel, no ready marker, no boot-health gate; the vCPU threads exist.
  bool no_kernel = false;
  std::chrono::seconds boot_timeout = 180s;
  // Boot-health gate: the kernel must boot (a guest that vanishes, or times out with an Oops on
  // its console, before the ready marker fails it: testbed.py exit status 3); after ready
  // (testbed.py health) every guest CPU's local timer interrupts must advance and the console
  // must show no Oops/BUG/panic. A guest that fails is destroyed and booted again, at most
  // max_replacements times (counted: replaced_guests()).
  bool health_gate = true;
  int max_replacements = 2;
};

// Guests this process replaced because they failed the boot-health gate.
int replaced_guests();

struct FreezeOptions {
  // Wait up to this long for the thread to be asleep before freezing (0: freeze at once).
  // An idle vCPU thread (halt wait) does not hold QEMU's big lock.
  std::chrono::milliseconds when_idle = 2s;
  // "any", "vcpu-only" or "vm-wide": thaw and freeze again (up to `attempts` times, 1 s apart)
  // until the freeze produced that case. For "vm-wide", keep the vCPU busy with port I/O first
  // (guest: `insmod /bqlhog.ko cpu=N`), set when_idle to 0 and allow ~20 attempts.
  std::string want_case = "any";
  int attempts = 1;
  std::chrono::milliseconds measure = 1s;  // /proc sampling window for the case
  std::string cgroup = "auto";             // "auto", "v1" (freezer: D), "v2" (cgroup.freeze)
  // Also count an attempt only if the thread was asleep (halted vCPU: the guest CPU idle) just
  // before the freeze; status "frozen_idle" says whether it was. Seed case 1's idle-CPU shape.
  bool want_idle = false;
  // Also count an attempt only if every other vCPU thread ran (>= 1 ms, or is runnable) in the
  // measure window. For a guest that keeps every CPU busy: a VM whose other vCPUs all stopped is not vcpu-only
  // even when the main loop idles in poll (TCG vCPUs parked for an exclusive section the frozen
  // one never joins), which the case alone cannot tell from an idle guest.
  bool want_others_running = false;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;  // guest stdout (binary-safe)
  std::string err;  // guest stderr
};

// One fault applied by a `testbed.py inject` process; undone by release() or the destructor
// (or, should this test process die, by the injector itself when its stdin closes).
class Injector {
 public:
  Injector() = default;
  Injector(const std::vector<std::string>& args, std::chrono::milliseconds apply_timeout);
  ~Injector();
  Injector(Injector&&) noexcept = default;
  Injector& operator=(Injector&&) noexcept;

  bool applied() const { return applied_; }
  std::string error() const { return error_; }              // why it is not applied
  const nlohmann::json& status() const { return status_; }  // the injector's first line
  pid_t pid() const;                                        // target process
  pid_t tid() const;                                        // target thread
  std::string freeze_case() const;                          // freeze: "vcpu-only" or "vm-wide"
  // Undoes now (idempotent); returns the injector's final line ({"undone":..,"ok":..}).
  const nlohmann::json& release();
  bool released() const { return released_; }

 private:
  std::unique_ptr<Child> child_;
  bool applied_ = false, released_ = false;
  std::string error_;
  nlohmann::json status_, undo_status_;
};

class Guest {
 public:
  // Boots a guest, waits until it is ready and passes the boot-health gate (replacing it when
  // it does not, see GuestOptions::health_gate); throws TestbedError (with the console tail).
  static std::unique_ptr<Guest> boot(const GuestOptions& opts);
  ~Guest();  // destroys the domain (after undoing any testbed fault on it)
  Guest(const Guest&) = delete;
  Guest& operator=(const Guest&) = delete;

  const std::string& name() const { return name_; }
  pid_t qemu_pid() const { return qemu_pid_; }
  int vcpu_count() const { return static_cast<int>(vcpu_tids_.size()); }
  pid_t vcpu_tid(int index) const;  // throws if unknown
  const std::map<int, pid_t>& vcpu_tids() const { return vcpu_tids_; }
  const std::string& console_path() const { return console_path_; }
  const std::string& run_dir() const { return run_dir_; }
  const nlohmann::json& info() const { return info_; }  // testbed.py start's JSON
  double boot_seconds() const { return boot_seconds_; }
  // The passed boot-health check (testbed.py health JSON; null without the gate).
  const nlohmann::json& health() const { return health_; }

  // Console (ttyS0) text so far, from byte offset `from`.
  std::string console(size_t from = 0) const;
  size_t console_size() const;
  // Waits until the console text after `from` matches re; returns the match or nullopt.
  std::optional<std::string> wait_console(const std::regex& re, std::chrono::milliseconds timeout,
                                          size_t from = 0) const;
  // Waits until `done` holds for the console text after `from` (for conditions a regex would
  // have to scan the whole log for, e.g. "this line, then that one after it"); whether it did.
  bool wait_console_until(const std::function<bool(const std::string&)>& done, std::chrono::milliseconds timeout,
                          size_t from = 0) const;

  // Runs a shell command (sh) in the guest over its control channel. Throws TestbedError when
  // the channel fails or times out; a non-zero exit of the command itself is in exit_code.
  // Channel "auto" (default): the virtio-serial port when the guest serves it (MB/s), else
  // ttyS1; "serial" or "virtio" to choose.
  CommandResult run(const std::string& command, std::chrono::milliseconds timeout = 60s,
                    const std::string& channel = "auto") const;

  // Moves every guest process not named `comm` off guest CPU `cpu` (CPU-bound kernel threads
  // refuse, harmlessly), then pauses `settle` so what ran there is switched out: a busy freeze of
  // that vCPU then stops a thread of `comm`, not the previous guest command's shell (whose mm
  // TLB shootdowns and membarrier skip, so no IPI would ever wait on the frozen CPU).
  // Throws TestbedError as run() does; false if the guest command failed.
  bool leave_cpu_to(int cpu, const std::string& comm,
                    std::chrono::milliseconds settle = std::chrono::seconds(2)) const;

  // Fault injectors on this guest's qemu threads.
  // freeze: cgroup freezer (v1: state D). The status's freeze_case() says whether the rest of
  // the VM keeps running ("vcpu-only") or the thread was caught holding QEMU's big lock and the
  // whole VM stopped ("vm-wide"), or the main loop already waits for that lock while other
  // vCPUs still ran ("lock-held", the VM about to stop); see FreezeOptions to ask for one.
  Injector freeze_vcpu(int index, const FreezeOptions& opts = {}) const;
  Injector freeze_thread(pid_t tid, const FreezeOptions& opts = {}) const;
  // A vcpu-only freeze after which the guest's time still advances. A busy freeze (when_idle 0)
  // can stop the vCPU inside the guest's jiffies update; every other CPU's tick then spins on
  // that lock and the whole guest goes silent (tests/testbed/README.md, "TLB load and frozen lock
  // holders"). Each freeze is kept only if two `read_jiffies` calls `settle` apart show progress
  // (printed and refrozen otherwise, up to `tries` freezes; the last one is kept either way).
  // `read_jiffies` must not go through the code a test checks.
  Injector freeze_vcpu_keeping_guest_time(int index, const FreezeOptions& opts,
                                          const std::function<std::optional<uint64_t>()>& read_jiffies,
                                          std::chrono::milliseconds settle = std::chrono::milliseconds(300),
                                          int tries = 5) const;
  // throttle: cgroup cpu quota (quota_us per period_us) on one thread.
  Injector throttle_vcpu(int index, int quota_us = 5000, int period_us = 100000) const;
  // ptrace: PTRACE_SEIZE + PTRACE_INTERRUPT, only that thread stops (state t).
  Injector ptrace_stop_vcpu(int index) const;
  Injector ptrace_stop_thread(pid_t tid) const;
  // SIGSTOP the whole qemu (state T), SIGCONT on release.
  Injector sigstop() const;

 private:
  Guest() = default;
  // nullptr (with *boot_unhealthy saying why) when the guest kernel failed its own boot and
  // the gate applies; throws TestbedError for anything else.
  static std::unique_ptr<Guest> boot_once(const GuestOptions& opts, std::string* boot_unhealthy);
  static std::string guest_name(const GuestOptions& opts);
  Injector inject(const std::vector<std::string>& args) const;
  std::string name_, console_path_, run_dir_;
  pid_t qemu_pid_ = -1;
  std::map<int, pid_t> vcpu_tids_;
  nlohmann::json info_, health_;
  double boot_seconds_ = 0;
  std::unique_ptr<Child> holder_;  // destroys the domain if this process dies
};

// The guest shared by every test of this binary: booted on the first call with the options set
// by set_shared_guest_options() (defaults otherwise), destroyed after the last test. A boot
// failure is remembered and rethrown on later calls.
Guest& shared_guest();
void set_shared_guest_options(const GuestOptions& opts);
// The same, as an expression for a namespace-scope initializer:
//   const bool kGuest = tb::use_shared_guest_options({.tag = "x", .scenario = "sleepers"});
bool use_shared_guest_options(const GuestOptions& opts);

// Base fixture: SetUp() fails the test with the reason when the testbed cannot run, or skips it
// when STALLMON_SKIP_INTEGRATION=1.
class GuestTest : public ::testing::Test {
 protected:
  void SetUp() override;
  Guest& guest() { return *guest_; }

 private:
  Guest* guest_ = nullptr;
};

// First console line that shows the guest kernel broken or reporting (Oops, BUG: incl. soft
// lockups, Kernel panic, general protection fault, RCU stall, WARNING), "" if none. Same
// criterion as testbed.py's boot-health gate.
std::string first_console_fault(const std::string& console);

// Whole file as text ("" if unreadable).
std::string read_text(const std::string& path);
// Thread ids of a process (/proc/PID/task).
std::vector<pid_t> threads_of(pid_t pid);

// Host /proc views of a thread (parse after the last ')', see shared/docs/testbed.md).
char thread_state(pid_t pid, pid_t tid);  // 'R', 'S', 'D', 't', 'T', ... ; 0 if gone
struct SchedStat {
  unsigned long long run_ns = 0, delay_ns = 0, slices = 0;
};
SchedStat thread_schedstat(pid_t pid, pid_t tid);
pid_t tracer_pid(pid_t tid);
// Cgroup path of a thread in the v1 hierarchy holding `controller` ("" = the cgroup2 line).
std::string thread_cgroup(pid_t pid, pid_t tid, const std::string& controller);
// Polls pred every 20 ms until true or timeout; returns its last value.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    ::usleep(20000);
  }
  return pred();
}

}  // namespace stallmon::testbed
