// SPDX-License-Identifier: Apache-2.0
// Acceptance of the introspect core on a real Debian guest (testbed): discovery from a live qemu
// process and from ELF cores, symbols against the guest's /proc/kallsyms, BTF against its
// /sys/kernel/btf/vmlinux, and corrupted images.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

#include "live_guest.h"
#include "stallmon/introspect/elf_core.h"
#include "stallmon/introspect/kernel.h"
#include "testbed/guest.h"

namespace stallmon::introspect {
namespace {

using Clock = std::chrono::steady_clock;
using stallmon::testbed::GuestTest;

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

const bool kOptionsSet = [] {
  stallmon::testbed::GuestOptions o;
  o.tag = "introspect";
  o.vcpus = 4;
  o.memory_mib = 512;
  o.scenario = "sleepers";
  // Another guest kernel, e.g. STALLMON_INTROSPECT_KERNEL=linux-image-6.12.117+deb12-amd64.
  if (const char* pkg = std::getenv("STALLMON_INTROSPECT_KERNEL"); pkg && *pkg) o.kernel_package = pkg;
  stallmon::testbed::set_shared_guest_options(o);
  return true;
}();

class IntrospectGuest : public GuestTest {
 protected:
  // Discovered once per binary on the live guest.
  Kernel& kernel() {
    static std::shared_ptr<QemuProcessMemory> mem;
    static std::unique_ptr<Kernel> k;
    if (!k) {
      auto t0 = Clock::now();
      auto m = live::qemu_memory(guest().name(), guest().qemu_pid());
      if (!m.ok()) throw std::runtime_error("RAM layout: " + m.error().to_string());
      double layout_ms = ms_since(t0);
      mem = *m;
      clear_shared_kernel_cache();
      auto t1 = Clock::now();
      auto found = find_vmcoreinfo(*mem);
      double scan_ms = ms_since(t1);
      if (!found.ok()) throw std::runtime_error("scan: " + found.error().to_string());
      auto t2 = Clock::now();
      DiscoverOptions opts;
      opts.budget = std::make_shared<MemoryBudget>("live guest");
      DiscoveryReport report;
      auto d = Kernel::discover(mem, opts, &report);
      double discover_ms = ms_since(t2);
      if (!d.ok()) throw std::runtime_error("discover: " + d.error().to_string());
      k = std::move(*d);
      // The proof picked the running kernel's own note, and the default budget holds it.
      EXPECT_EQ(report.accepted_gpa.value_or(0), *found->note_gpa);
      EXPECT_LT(opts.budget->peak(), opts.budget->limit());
      std::printf("[ measure  ] proof: %llu note(s) seen, %llu candidate(s), %zu rejected; budget held %.1f MiB "
                  "(symbols %.1f, types %.1f), peak %.1f MiB of %.0f\n",
                  static_cast<unsigned long long>(report.notes_seen), static_cast<unsigned long long>(report.candidates),
                  report.rejected.size(), opts.budget->used() / 1048576.0,
                  opts.budget->breakdown()["kernel symbols"] / 1048576.0,
                  opts.budget->breakdown()["kernel types"] / 1048576.0, opts.budget->peak() / 1048576.0,
                  opts.budget->limit() / 1048576.0);
      std::printf("[ measure  ] RAM layout (info mtree -f + gpa2hva via virsh): %.1f ms, %zu ranges\n", layout_ms,
                  mem->ram().size());
      std::printf("[ measure  ] VMCOREINFO scan: note at 0x%llx, %.2f ms (%.2f GiB/s over the scanned prefix)\n",
                  static_cast<unsigned long long>(*found->note_gpa), scan_ms,
                  (*found->note_gpa / double(1ull << 30)) / (scan_ms / 1000.0));
      std::printf("[ measure  ] full discovery (scan + kallsyms %zu symbols + BTF %zu bytes): %.1f ms, %llu syscalls\n",
                  k->symbols().size(), k->types().btf_bytes(), discover_ms,
                  static_cast<unsigned long long>(mem->syscall_count()));
    }
    return *k;
  }
};

TEST_F(IntrospectGuest, DiscoversLiveGuest) {
  Kernel& k = kernel();
  EXPECT_EQ(k.vmcoreinfo().osrelease.rfind("6.", 0), 0u) << k.vmcoreinfo().osrelease;
  EXPECT_FALSE(k.vmcoreinfo().build_id.empty());
  auto n = k.nr_cpu_ids();
  ASSERT_TRUE(n.ok()) << n.error().to_string();
  EXPECT_EQ(*n, 4u);
  auto online = k.online_cpus();
  ASSERT_TRUE(online.ok());
  EXPECT_EQ(online->size(), 4u);
  // Every CPU's current task has a printable comm (swapper/N when idle).
  k.begin_snapshot();
  auto curr_off = k.types().member_offset("rq", "curr");
  auto comm_off = k.types().member_offset("task_struct", "comm");
  ASSERT_TRUE(curr_off.ok() && comm_off.ok());
  for (uint32_t cpu = 0; cpu < *n; ++cpu) {
    auto rq = k.percpu_address("runqueues", cpu);
    ASSERT_TRUE(rq.ok()) << rq.error().to_string();
    auto curr = k.memory().read_u64(*rq + *curr_off);
    ASSERT_TRUE(curr.ok()) << curr.error().to_string();
    auto comm = k.memory().read_cstring(*curr + *comm_off, 16);
    ASSERT_TRUE(comm.ok()) << comm.error().to_string();
    EXPECT_FALSE(comm->empty());
    std::printf("[ info     ] cpu%u current: %s\n", cpu, comm->c_str());
  }
  auto valid = k.still_valid();
  ASSERT_TRUE(valid.ok());
  EXPECT_TRUE(*valid);
}

TEST_F(IntrospectGuest, SymbolsEqualGuestProcKallsyms) {
  Kernel& k = kernel();
  auto r = guest().run("cat /proc/kallsyms", std::chrono::seconds(180));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::multimap<std::string, uint64_t> ours;
  for (const Symbol& s : k.symbols().symbols()) ours.emplace(s.name, s.address);
  size_t compared = 0, matched = 0, percpu = 0, modules = 0;
  std::vector<std::string> mismatches;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find('[') != std::string::npos) {  // module / bpf symbols: not in vmlinux's kallsyms
      ++modules;
      continue;
    }
    unsigned long long addr = 0;
    char type = 0;
    char name[600];
    if (std::sscanf(line.c_str(), "%llx %c %599s", &addr, &type, name) != 3) continue;
    ++compared;
    auto [lo, hi] = ours.equal_range(name);
    bool ok = false;
    for (auto it = lo; it != hi; ++it) ok |= it->second == addr;
    if (ok) {
      ++matched;
      if (type == 'A' || addr < 0x100000) ++percpu;
    } else if (mismatches.size() < 10) {
      mismatches.push_back(line);
    }
  }
  std::printf("[ measure  ] /proc/kallsyms: %zu vmlinux symbols compared, %zu equal (%zu per-cpu), %zu module lines skipped\n",
              compared, matched, percpu, modules);
  EXPECT_GE(matched, 1000u);
  EXPECT_GE(percpu, 100u);
  EXPECT_EQ(matched, compared);
  for (const auto& m : mismatches) ADD_FAILURE() << "not in guest-memory kallsyms: " << m;
  // Symbolization used for csd functions.
  auto dsc = k.symbol("do_sync_core");
  ASSERT_TRUE(dsc.ok());
  EXPECT_EQ(k.symbols().format(*dsc + 0x1f).rfind("do_sync_core+0x1f", 0), 0u);
}

TEST_F(IntrospectGuest, BtfEqualsGuestSysfsBtf) {
  Kernel& k = kernel();
  auto r = guest().run("cat /sys/kernel/btf/vmlinux", std::chrono::seconds(180));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto file_types = Types::from_btf_bytes(std::vector<uint8_t>(r.out.begin(), r.out.end()));
  ASSERT_TRUE(file_types.ok()) << file_types.error().to_string();
  const Types& mem = k.types();
  EXPECT_EQ(mem.btf_bytes(), (*file_types)->btf_bytes());
  EXPECT_EQ(mem.type_count(), (*file_types)->type_count());
  // The acceptance four must exist; the others are compared when present (layouts move:
  // cfs_rq.h_nr_running became h_nr_queued in 6.12).
  const std::pair<const char*, const char*> required[] = {
      {"rq", "nr_running"}, {"rq", "curr"}, {"task_struct", "pid"}, {"task_struct", "comm"}};
  for (auto [type, path] : required) EXPECT_TRUE(mem.has_member(type, path)) << type << "." << path;
  const std::pair<const char*, const char*> members[] = {
      {"rq", "nr_running"}, {"rq", "curr"}, {"rq", "idle"}, {"rq", "clock"}, {"rq", "cfs.h_nr_running"},
      {"rq", "cfs.h_nr_queued"}, {"rq", "ttwu_pending"}, {"task_struct", "pid"}, {"task_struct", "comm"},
      {"task_struct", "__state"}, {"__call_single_data", "node.u_flags"}, {"__call_single_node", "u_flags"},
      {"call_function_data", "cpumask"},
  };
  for (auto [type, path] : members) {
    auto a = mem.member_offset(type, path);
    auto b = (*file_types)->member_offset(type, path);
    ASSERT_EQ(a.ok(), b.ok()) << type << "." << path;
    if (!a.ok()) continue;
    EXPECT_EQ(*a, *b) << type << "." << path;
    std::printf("[ info     ] %s.%s = %llu\n", type, path, static_cast<unsigned long long>(*a));
  }
  EXPECT_FALSE(mem.has_member("task_struct", "state"));  // __state since 5.14
  EXPECT_EQ(*mem.variable_type_name("runqueues"), "struct rq");
}

void expect_same_kernel(Kernel& a, Kernel& b) {
  EXPECT_EQ(a.vmcoreinfo().build_id, b.vmcoreinfo().build_id);
  EXPECT_EQ(a.symbols().size(), b.symbols().size());
  EXPECT_EQ(*a.symbol("runqueues"), *b.symbol("runqueues"));
  EXPECT_EQ(*a.percpu_address("runqueues", 3), *b.percpu_address("runqueues", 3));
  EXPECT_EQ(a.types().btf_bytes(), b.types().btf_bytes());
}

TEST_F(IntrospectGuest, DiscoversOwnElfCoreWrittenWithoutQemu) {
  Kernel& live = kernel();
  std::string path = "/tmp/stallmon-introspect-core-" + std::to_string(getpid()) + ".elf";
  {
    auto stop = guest().sigstop();  // a consistent image; SIGCONT when released
    ASSERT_TRUE(stop.applied()) << stop.error();
    ElfCoreWriteOptions o;
    o.vmcoreinfo_text = live.vmcoreinfo().text;
    auto t0 = Clock::now();
    auto w = write_elf_core(live.memory().physical(), path, o);
    ASSERT_TRUE(w.ok()) << w.error().to_string();
    std::printf("[ measure  ] write_elf_core: %llu bytes in %.0f ms\n", static_cast<unsigned long long>(*w), ms_since(t0));
  }
  auto core = ElfCoreMemory::open(path);
  ASSERT_TRUE(core.ok()) << core.error().to_string();
  EXPECT_FALSE((*core)->vmcoreinfo_note().empty());
  std::shared_ptr<ElfCoreMemory> mem = std::move(*core);
  DiscoverOptions d;
  d.use_shared_cache = false;
  auto k = Kernel::discover(mem, d);
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  expect_same_kernel(live, **k);
  // Without using the note (wrapped, so discover does not see an ElfCoreMemory): the scan
  // finds VMCOREINFO in the image.
  auto wrapped = std::make_shared<live::PatchedMemory>(mem);
  auto k2 = Kernel::discover(wrapped, d);
  ASSERT_TRUE(k2.ok()) << k2.error().to_string();
  EXPECT_EQ((*k2)->vmcoreinfo().note_gpa, live.vmcoreinfo().note_gpa);
  expect_same_kernel(live, **k2);
  ::unlink(path.c_str());
}

TEST_F(IntrospectGuest, DiscoversVirshMemoryOnlyDump) {
  Kernel& live = kernel();
  std::string path = "/tmp/stallmon-introspect-virsh-" + std::to_string(getpid()) + ".elf";
  std::string cmd = "timeout 180 virsh -c qemu:///system dump '" + guest().name() + "' " + path +
                    " --memory-only --format elf >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto core = ElfCoreMemory::open(path);
  ASSERT_TRUE(core.ok()) << core.error().to_string();
  std::printf("[ info     ] virsh dump: %zu PT_LOAD ranges, VMCOREINFO note %s\n", (*core)->ranges().size(),
              (*core)->vmcoreinfo_note().empty() ? "absent (scan)" : "present");
  std::shared_ptr<ElfCoreMemory> mem = std::move(*core);
  DiscoverOptions d;
  d.use_shared_cache = false;
  auto k = Kernel::discover(mem, d);
  ASSERT_TRUE(k.ok()) << k.error().to_string();
  expect_same_kernel(live, **k);

  // Corrupted variants of this real image error out (run this binary under ASan+UBSan too).
  auto kpa = [&](uint64_t va) { return va - kKernelImageVaBase + static_cast<uint64_t>(live.vmcoreinfo().phys_base); };
  auto expect_error = [&](const char* what, auto&& corrupt) {
    auto pm = std::make_shared<live::PatchedMemory>(mem);
    corrupt(*pm);
    auto r = Kernel::discover(pm, d);
    EXPECT_FALSE(r.ok()) << what;
    if (!r.ok()) std::printf("[ info     ] corrupt %s: %s\n", what, r.error().to_string().c_str());
  };
  const VmcoreInfo& vi = live.vmcoreinfo();
  expect_error("kallsyms_num_syms", [&](live::PatchedMemory& pm) {
    uint32_t v = 0x7fffffff;
    pm.patch(kpa(*vi.symbol("kallsyms_num_syms")), &v, 4);
  });
  expect_error("kallsyms_token_index", [&](live::PatchedMemory& pm) {
    uint16_t v = 0xffff;
    for (int i = 0; i < 256; ++i) pm.patch(kpa(*vi.symbol("kallsyms_token_index")) + 2 * i, &v, 2);
  });
  expect_error("kallsyms_names", [&](live::PatchedMemory& pm) {
    std::vector<uint8_t> zeros(4096);
    pm.patch(kpa(*vi.symbol("kallsyms_names")), zeros.data(), zeros.size());
  });
  expect_error("BTF header", [&](live::PatchedMemory& pm) {
    uint32_t v = 0xffffff00;
    pm.patch(kpa(*live.symbol("__start_BTF")) + 16, &v, 4);  // type_len
  });
  expect_error("page_offset_base", [&](live::PatchedMemory& pm) {
    uint64_t v = 0x4141414141414141ull;
    pm.patch(kpa(*live.symbol("page_offset_base")), &v, 8);
  });
  if (mem->vmcoreinfo_note().empty()) {
    expect_error("VMCOREINFO note", [&](live::PatchedMemory& pm) {
      uint32_t v = 0;
      pm.patch(*vi.note_gpa, &v, 4);
    });
  }
  ::unlink(path.c_str());
}


// Issue 10: guest root plants forged VMCOREINFO notes in its own memory (every field right but
// one extra line; another KASLR slide with every symbol moved; another BUILD-ID; another
// phys_base; see tests/testbed/guestprog/notespray.c), each at a page start where the scan looks.
// Discovery must still take the note the running kernel points to, reject every forgery and
// stay within the default memory budget. Last in this binary: the forgeries stay in guest RAM.
TEST_F(IntrospectGuest, ForgedNotesPlantedByGuestRootAreRejectedByProof) {
  Kernel& live = kernel();  // discovered before the spray
  auto where = guest().run("cat /sys/kernel/vmcoreinfo");
  ASSERT_EQ(where.exit_code, 0) << where.err;
  const uint64_t real_gpa = std::strtoull(where.out.c_str(), nullptr, 16);
  ASSERT_EQ(real_gpa, live.vmcoreinfo().note_gpa.value_or(0)) << where.out;

  constexpr int kForged = 40;
  auto start = guest().run("notespray " + std::to_string(kForged) +
                           " </dev/null >/tmp/notespray.out 2>&1 & echo $! >/tmp/notespray.pid");
  ASSERT_EQ(start.exit_code, 0) << start.err;
  struct StopSpray {
    stallmon::testbed::Guest& g;
    ~StopSpray() { g.run("kill $(cat /tmp/notespray.pid)"); }
  } stop{guest()};
  std::string out;
  for (int i = 0; i < 120 && out.find("ready") == std::string::npos; ++i) {
    if (out.find("notespray:") != std::string::npos) break;  // it failed: its message says why
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    out = guest().run("cat /tmp/notespray.out").out;
  }
  ASSERT_NE(out.find("ready"), std::string::npos) << "notespray: " << out;

  auto m = live::qemu_memory(guest().name(), guest().qemu_pid());
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  auto found = find_vmcoreinfo_candidates(**m);
  ASSERT_TRUE(found.ok()) << found.error().to_string();
  EXPECT_EQ(found->distinct.size(), static_cast<size_t>(kForged + 1));
  clear_shared_kernel_cache();
  DiscoverOptions opts;
  opts.budget = std::make_shared<MemoryBudget>("sprayed guest");
  DiscoveryReport report;
  auto t0 = Clock::now();
  auto d = Kernel::discover(*m, opts, &report);
  const double ms = ms_since(t0);
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(report.accepted_gpa.value_or(0), real_gpa);
  EXPECT_EQ(report.candidates, static_cast<uint64_t>(kForged + 1));
  EXPECT_LT(opts.budget->peak(), opts.budget->limit());
  expect_same_kernel(live, **d);
  std::printf("[ measure  ] %d forged notes planted: %llu notes seen, %llu candidates, discovery %.0f ms, "
              "budget peak %.1f MiB\n",
              kForged, static_cast<unsigned long long>(report.notes_seen),
              static_cast<unsigned long long>(report.candidates), ms, opts.budget->peak() / 1048576.0);

  // The scan order (the hint's note first, then by address) must not matter: each forgery in
  // turn is made the first candidate, as a stale or planted hint would, and is rejected with a
  // reason while the real note is still the one accepted.
  std::map<std::string, int> reasons;
  for (const VmcoreInfoCandidate& c : found->distinct) {
    if (std::find(c.gpas.begin(), c.gpas.end(), real_gpa) != c.gpas.end()) continue;
    DiscoverOptions o;
    o.scan.hint_gpa = c.gpas.front();
    DiscoveryReport r;
    auto k = Kernel::discover(*m, o, &r);
    ASSERT_TRUE(k.ok()) << "forgery first at " << std::hex << c.gpas.front() << ": " << k.error().to_string();
    EXPECT_EQ(r.accepted_gpa.value_or(0), real_gpa);
    ASSERT_FALSE(r.rejected.empty()) << "the forgery at " << std::hex << c.gpas.front() << " was not evaluated first";
    char prefix[32];
    std::snprintf(prefix, sizeof(prefix), "0x%llx: ", static_cast<unsigned long long>(c.gpas.front()));
    EXPECT_EQ(r.rejected.front().rfind(prefix, 0), 0u) << r.rejected.front();
    std::string why = r.rejected.front().substr(std::strlen(prefix));
    reasons[why.substr(0, why.find_first_of("0123456789"))]++;
  }
  int rejected = 0;
  for (const auto& [why, n] : reasons) {
    rejected += n;
    std::printf("[ info     ] %2d forgeries rejected: %s...\n", n, why.c_str());
  }
  EXPECT_EQ(rejected, kForged);
}

}  // namespace
}  // namespace stallmon::introspect
