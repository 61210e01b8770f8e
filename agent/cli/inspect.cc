// SPDX-License-Identifier: Apache-2.0
// stallctl inspect / dump / ram-layout.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <utility>

#include <cstdio>
#include <memory>

#include "commands.h"
#include "guest_source.h"
#include "stallmon/introspect/elf_core.h"
#include "stallmon/introspect/kernel.h"
#include "stallmon/introspect/snapshot.h"
#include "stallmon/introspect/snapshot_format.h"
#include "stallmon/introspect/snapshot_json.h"
#include "stallmon/introspect/snapshot_kernel_access.h"
#include "stallmon/introspect/vmcoreinfo.h"

namespace stallmon::cli {

namespace {

using namespace stallmon::introspect;

// Continues a SIGSTOPped qemu however stallctl ends. A forked helper holds a pidfd of qemu (so a
// reused pid is never signalled) and waits for EOF on a pipe whose write end only stallctl
// holds: a normal return, an exception, Ctrl-C, SIGTERM or SIGKILL all close it (the kernel
// closes a dead process's files), and the helper then sends SIGCONT and exits. It ignores the
// terminal's signals (Ctrl-C goes to the whole process group); PR_SET_PDEATHSIG (SIGHUP, ignored)
// only interrupts its read when stallctl dies: the pipe's EOF decides.
class ResumeGuard {
 public:
  ResumeGuard() = default;
  ResumeGuard(ResumeGuard&& o) noexcept : write_fd_(std::exchange(o.write_fd_, -1)), helper_(std::exchange(o.helper_, 0)) {}
  ResumeGuard& operator=(ResumeGuard&& o) noexcept {
    std::swap(write_fd_, o.write_fd_);
    std::swap(helper_, o.helper_);
    return *this;
  }
  ~ResumeGuard() {
    if (write_fd_ >= 0) ::close(write_fd_);  // the helper continues qemu now
    if (helper_ > 0) ::waitpid(helper_, nullptr, 0);
  }

  static Result<ResumeGuard> stop(pid_t pid) {
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) return Error::io("pidfd_open qemu " + std::to_string(pid), errno);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) {
      ::close(pidfd);
      return Error::io("pipe", errno);
    }
    pid_t parent = ::getpid();
    pid_t child = ::fork();
    if (child < 0) {
      ::close(pidfd);
      ::close(p[0]);
      ::close(p[1]);
      return Error::io("fork", errno);
    }
    if (child == 0) {
      // Async-signal-safe calls only (the parent may have threads).
      for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP}) ::signal(s, SIG_IGN);
      ::prctl(PR_SET_PDEATHSIG, SIGHUP);
      ::close(p[1]);
      if (::getppid() == parent) {
        char c;
        while (::read(p[0], &c, 1) < 0 && errno == EINTR) {
        }
      }
      ::syscall(SYS_pidfd_send_signal, pidfd, SIGCONT, nullptr, 0);
      ::_exit(0);
    }
    ::close(p[0]);
    ResumeGuard g;
    g.write_fd_ = p[1];
    g.helper_ = child;
    int rc = static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, SIGSTOP, nullptr, 0));
    int err = errno;
    ::close(pidfd);
    if (rc != 0) return Error::io("SIGSTOP qemu", err);
    return g;
  }

 private:
  int write_fd_ = -1;
  pid_t helper_ = 0;
};

int fail(const std::string& what, const Error& e) {
  std::fprintf(stderr, "stallctl: %s: %s\n", what.c_str(), e.to_string().c_str());
  return kExitFailure;
}

void add_source_options(CLI::App* c, SourceOptions& o, bool allow_core) {
  if (allow_core) c->add_option("--core", o.core, "ELF core file (virsh dump --memory-only --format elf, stallctl dump)");
  c->add_option("--qemu-pid", o.qemu_pid, "live qemu process (needs ptrace rights: root)");
  c->add_option("--domain", o.domain, "libvirt domain: pid and RAM layout through a read-only libvirt connection (no monitor command)");
  c->add_option("--qmp", o.qmp, "QMP unix socket of a qemu NOT managed by libvirt");
  c->add_option("--ranges", o.ranges, "RAM ranges file (GPA SIZE HVA [NAME] per line; see ram-layout)");
  c->add_option("--connect", o.connect, "libvirt URI for --domain")->capture_default_str();
  c->add_option_function<int>(
      "--monitor-timeout-ms", [&o](const int& ms) { o.monitor_timeout = std::chrono::milliseconds(ms); },
      "deadline for each monitor command");
}

// Usage problems the parser cannot express (exactly one source).
std::string check_source(const SourceOptions& o, bool allow_core) {
  const bool live = o.qemu_pid != 0 || !o.domain.empty();
  if (allow_core && !o.core.empty()) {
    if (live || !o.qmp.empty() || !o.ranges.empty()) return "--core excludes the live-qemu options";
    return {};
  }
  if (!live) return allow_core ? "one of --core, --qemu-pid or --domain is required" : "--qemu-pid or --domain is required";
  if (o.domain.empty() && o.qmp.empty() && o.ranges.empty())
    return "--qemu-pid needs the RAM layout: --domain, --qmp or --ranges";
  return {};
}

struct InspectArgs {
  SourceOptions src;
  bool json = false;
  uint32_t printk_lines = 20;
  bool backtraces = false;
  std::string vmlinux, system_map, btf, profile, profile_dir, debug_dir = "/usr/lib/debug";
  bool ignore_guest_btf = false;
  uint32_t repeat = 1;
};

int run_inspect(const InspectArgs& a) {
  if (auto u = check_source(a.src, true); !u.empty()) {
    std::fprintf(stderr, "stallctl inspect: %s\n", u.c_str());
    return kExitUsage;
  }
  auto mem = open_memory(a.src);
  if (!mem) return fail("inspect", mem.error());
  DiscoverOptions d;
  d.vmlinux_path = a.vmlinux;
  d.system_map_path = a.system_map;
  d.btf_path = a.btf;
  d.profile_path = a.profile;
  d.profile_dir = a.profile_dir;
  d.debug_dir = a.debug_dir;
  d.ignore_guest_btf = a.ignore_guest_btf;
  auto kernel = Kernel::discover(*mem, d);
  if (!kernel) return fail("discovering the guest kernel", kernel.error());
  auto access = make_kernel_access(**kernel);
  SnapshotOptions so;
  so.read_printk = a.printk_lines > 0;
  so.read_backtraces = a.backtraces;
  so.printk_records = std::max<uint32_t>(a.printk_lines, 1);
  auto reader = SnapshotReader::create(*access, so);
  if (!reader) return fail("snapshot layout", reader.error());
  for (uint32_t i = 0; i < std::max<uint32_t>(a.repeat, 1); ++i) {
    GuestSnapshot s = (*reader)->take();
    if (a.json) {
      nlohmann::json j = snapshot_to_json(s);
      j["kernel"] = {{"osrelease", (*kernel)->vmcoreinfo().osrelease},
                     {"build_id", (*kernel)->vmcoreinfo().build_id}};
      std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::printf("kernel: %s\n", (*kernel)->vmcoreinfo().osrelease.c_str());
      for (const auto& n : (*reader)->layout_notes()) std::printf("note: %s\n", n.c_str());
      SnapshotFormatOptions fo;
      fo.printk = a.printk_lines > 0;
      fo.printk_lines = a.printk_lines;
      std::fputs(format_snapshot(s, fo).c_str(), stdout);
    }
  }
  return kExitOk;
}

struct DumpArgs {
  SourceOptions src;
  std::string out;
  bool stop = false;
};

int run_dump(const DumpArgs& a) {
  if (auto u = check_source(a.src, false); !u.empty()) {
    std::fprintf(stderr, "stallctl dump: %s\n", u.c_str());
    return kExitUsage;
  }
  auto mem = open_memory(a.src);
  if (!mem) return fail("dump", mem.error());
  auto* qemu = dynamic_cast<QemuProcessMemory*>(mem->get());
  // The VMCOREINFO note is found before stopping the guest (the scan is the slow part), and it is
  // the note the running kernel proves is its own (Kernel::discover), never merely the first one
  // in RAM: guest userspace can plant notes, and a warm reboot leaves the previous boot's note.
  // Without a proven note the core is written without one: an offline reader then rescans and
  // applies the same proof to the image, instead of trusting a note this tool chose blindly.
  ElfCoreWriteOptions wo;
  if (auto kernel = Kernel::discover(*mem, DiscoverOptions{}); kernel) {
    wo.vmcoreinfo_text = (*kernel)->vmcoreinfo().text;
  } else {
    std::fprintf(stderr,
                 "stallctl dump: warning: no VMCOREINFO proven by the running kernel (%s); core "
                 "written without a VMCOREINFO note\n",
                 kernel.error().to_string().c_str());
  }
  // The core holds guest memory (keys, passwords): created new, never through a symlink an
  // attacker placed, readable by the owner only.
  int out_fd = ::open(a.out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (out_fd < 0) return fail("dump", Error::io("create " + a.out + " (must not exist)", errno));
  std::string out_path = "/proc/self/fd/" + std::to_string(out_fd);
  // Only with --stop: SIGSTOP the whole qemu for a consistent image (QEMU's own dump pauses vCPUs
  // and hangs on a frozen one). stallmon never pauses a guest unless the operator asks for it by
  // name, and the guest is continued on every path out, including Ctrl-C, SIGTERM and SIGKILL of
  // stallctl: see ResumeGuard.
  ResumeGuard resume;
  if (a.stop && qemu) {
    auto g = ResumeGuard::stop(qemu->pid());
    if (!g) {
      ::close(out_fd);
      ::unlink(a.out.c_str());
      return fail("dump", g.error());
    }
    resume = std::move(g).value();
  }
  auto n = write_elf_core(**mem, out_path, wo);
  ::close(out_fd);
  if (!n) {
    ::unlink(a.out.c_str());
    return fail("writing " + a.out, n.error());
  }
  std::fprintf(stderr, "stallctl dump: wrote %llu bytes to %s\n", static_cast<unsigned long long>(*n), a.out.c_str());
  return kExitOk;
}

}  // namespace

void add_inspect_command(CLI::App& app, std::function<int()>& run) {
  auto a = std::make_shared<InspectArgs>();
  CLI::App* c = app.add_subcommand("inspect", "print the guest kernel's per-CPU state (runqueues, IPIs, watchdogs, printk)");
  add_source_options(c, a->src, true);
  c->add_flag("--json", a->json, "JSON instead of a table");
  c->add_flag("--backtraces", a->backtraces,
              "each CPU's kernel backtrace from its stack, verified with the guest's ORC tables");
  c->add_option("--printk", a->printk_lines, "printk records to show (0: none)")->capture_default_str();
  c->add_option("--vmlinux", a->vmlinux, "vmlinux with symbols (default: kallsyms from guest memory)");
  c->add_option("--system-map", a->system_map,
                "System.map of the guest's kernel build, for guests whose kallsyms cannot be decoded");
  c->add_option("--btf", a->btf, "BTF file (default: BTF from guest memory)");
  c->add_option("--profile", a->profile, "type profile file (stallctl profile make) instead of the guest's BTF");
  c->add_option("--profile-dir", a->profile_dir,
                "directory of type profiles (<BUILD-ID>.profile), tried when the guest has no BTF, and of System.maps "
                "(<BUILD-ID>.System.map, or <OSRELEASE>.System.map for kernels before 5.9), tried when its kallsyms cannot be read");
  c->add_option("--debug-dir", a->debug_dir,
                "debuginfo directory searched by BUILD-ID (.build-id/xx/yyyy.debug) after the profiles ('' to skip)")
      ->capture_default_str();
  c->add_flag("--ignore-guest-btf", a->ignore_guest_btf,
              "do not use the guest's BTF (compare a profile's snapshot with the BTF one)");
  c->add_option("--repeat", a->repeat, "take N snapshots")->capture_default_str();
  c->callback([a, &run] { run = [a] { return run_inspect(*a); }; });
}

void add_dump_command(CLI::App& app, std::function<int()>& run) {
  auto a = std::make_shared<DumpArgs>();
  CLI::App* c = app.add_subcommand("dump", "write a live qemu's guest RAM as an ELF core (never pauses the guest unless --stop)");
  add_source_options(c, a->src, false);
  c->add_option("--out", a->out, "output file")->required();
  c->add_flag("--stop", a->stop,
              "SIGSTOP qemu while copying, for a consistent image (pauses the guest; without it the "
              "image may be torn where the guest writes meanwhile)");
  c->callback([a, &run] { run = [a] { return run_dump(*a); }; });
}

void add_ram_layout_command(CLI::App& app, std::function<int()>& run) {
  auto a = std::make_shared<SourceOptions>();
  CLI::App* c = app.add_subcommand("ram-layout", "print a qemu's guest RAM ranges (for --ranges)");
  c->add_option("--domain", a->domain, "libvirt domain");
  c->add_option("--qmp", a->qmp, "QMP unix socket");
  c->add_option("--connect", a->connect, "libvirt URI")->capture_default_str();
  c->callback([a, &run] {
    run = [a] {
      if (a->domain.empty() == a->qmp.empty()) {
        std::fprintf(stderr, "stallctl ram-layout: exactly one of --domain or --qmp\n");
        return kExitUsage;
      }
      if (!a->domain.empty()) {
        auto v = describe_libvirt_domain(*a);
        if (!v) return fail("ram-layout", v.error());
        std::printf("# domain %s, qemu pid %d: %s\n", a->domain.c_str(), static_cast<int>(v->pid), v->source.c_str());
        std::fputs(format_ranges(v->ranges).c_str(), stdout);
        return kExitOk;
      }
      auto r = resolve_layout(*a);
      if (!r) return fail("ram-layout", r.error());
      std::fputs(format_ranges(*r).c_str(), stdout);
      return kExitOk;
    };
  });
}

}  // namespace stallmon::cli
