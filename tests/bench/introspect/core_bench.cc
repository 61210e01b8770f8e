// SPDX-License-Identifier: Apache-2.0
// Benchmarks of the introspect core: VMCOREINFO scan rate (in-memory image and through
// process_vm_readv), kallsyms decoding, BTF parsing, batched kernel-virtual reads.
// Run: <build>/tests/bench/introspect/introspect_core_bench
#include <benchmark/benchmark.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "fake_guest.h"
#include "stallmon/introspect/btf_types.h"
#include "stallmon/introspect/kernel.h"
#include "stallmon/introspect/snapshot_kernel_access.h"
#include "stallmon/introspect/type_profile.h"
#include "stallmon/introspect/vmcoreinfo.h"

namespace stallmon::introspect {
namespace {

constexpr uint64_t kRam = 256ull << 20;
const std::string kNoteText =
    "OSRELEASE=6.1.0-56-amd64\nBUILD-ID=abcdef\nPAGESIZE=4096\nSYMBOL(init_top_pgt)=ffffffff9b60a000\n"
    "NUMBER(phys_base)=-446693376\nKERNELOFFSET=19a00000\n";

// 256 MiB of "guest RAM" with non-trivial content and the note in its last page, so the scan
// covers all of it.
std::vector<uint8_t>& ram() {
  static std::vector<uint8_t> r = [] {
    std::vector<uint8_t> v(kRam);
    for (size_t i = 0; i < v.size(); i += 64) v[i] = static_cast<uint8_t>(i >> 12);
    auto note = fake::make_vmcoreinfo_note(kNoteText);
    std::memcpy(v.data() + kRam - 4096, note.data(), note.size());
    return v;
  }();
  return r;
}

void BM_VmcoreinfoScan_InMemory(benchmark::State& state) {
  std::vector<RawImageMemory::Segment> segs;
  segs.push_back({0, ram()});
  auto mem = std::move(RawImageMemory::from_segments(std::move(segs)).value());
  for (auto _ : state) {
    auto r = find_vmcoreinfo(*mem);
    if (!r.ok()) state.SkipWithError(r.error().message.c_str());
    benchmark::DoNotOptimize(r);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kRam));
}
BENCHMARK(BM_VmcoreinfoScan_InMemory)->Unit(benchmark::kMillisecond);

// The live path: guest RAM read out of another address space with process_vm_readv (here our
// own, which costs the same per byte), in chunks of `state.range(0)` bytes.
void BM_VmcoreinfoScan_ProcessVmReadv(benchmark::State& state) {
  auto& r = ram();
  auto mem = std::move(
      QemuProcessMemory::create(getpid(), {{0, kRam, reinterpret_cast<uint64_t>(r.data()), "pc.ram"}}).value());
  VmcoreInfoScanOptions o;
  o.chunk_bytes = static_cast<uint64_t>(state.range(0));
  for (auto _ : state) {
    auto res = find_vmcoreinfo(*mem, o);
    if (!res.ok()) state.SkipWithError(res.error().message.c_str());
    benchmark::DoNotOptimize(res);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kRam));
}
BENCHMARK(BM_VmcoreinfoScan_ProcessVmReadv)->Arg(1 << 20)->Arg(8 << 20)->Unit(benchmark::kMillisecond);

// kallsyms of a kernel-sized table (~100k symbols, like Debian 6.1's 94k), decode only.
void BM_KallsymsDecode(benchmark::State& state) {
  std::vector<Symbol> syms;
  const uint64_t base = 0xffffffff81000000ull;
  for (int i = 0; i < 100000; ++i) {
    char name[48];
    std::snprintf(name, sizeof name, "%s_%s_%d", i % 3 ? "filler_func" : "kallsyms", i % 5 ? "cpu" : "run", i);
    syms.push_back({name, base + i * 0x40ull, i % 2 ? 't' : 'T'});
  }
  auto enc = fake::FakeGuest::encode_kallsyms(syms, base, true);
  KallsymsTables t;
  t.num_syms = static_cast<uint32_t>(syms.size());
  t.names = enc.names;
  t.token_table = enc.token_table;
  t.token_index = enc.token_index;
  t.offsets = enc.offsets;
  t.relative_base = enc.relative_base;
  for (auto _ : state) {
    auto r = decode_kallsyms(t);
    if (!r.ok()) state.SkipWithError(r.error().message.c_str());
    benchmark::DoNotOptimize(r);
  }
  state.counters["symbols"] = static_cast<double>(syms.size());
}
BENCHMARK(BM_KallsymsDecode)->Unit(benchmark::kMillisecond);

// Symbols from guest memory through page tables, plus indexing (SymbolTable), on the fake guest.
void BM_KallsymsFromGuestMemory(benchmark::State& state) {
  fake::FakeGuestOptions o;
  o.filler_symbols = 50000;
  o.ram_size = 64ull << 20;
  fake::FakeGuest g(o);
  auto info = find_vmcoreinfo(*g.memory());
  PagingConfig cfg;
  cfg.top_pgt_pa = g.top_pgt_pa();
  cfg.phys_base = o.phys_base;
  KernelMemory km(g.memory(), cfg);
  for (auto _ : state) {
    auto t = SymbolTable::from_kallsyms(km, *info);
    if (!t.ok()) state.SkipWithError(t.error().message.c_str());
    benchmark::DoNotOptimize(t);
  }
  state.counters["symbols"] = static_cast<double>(g.symbols().size());
}
BENCHMARK(BM_KallsymsFromGuestMemory)->Unit(benchmark::kMillisecond);

// A real kernel's BTF (the host's, when it has one): libbpf parse + name index.
void BM_BtfParseHostVmlinux(benchmark::State& state) {
  struct stat st {};
  if (::stat("/sys/kernel/btf/vmlinux", &st) != 0) {
    state.SkipWithError("no /sys/kernel/btf/vmlinux on this host");
    return;
  }
  for (auto _ : state) {
    auto t = Types::from_file("/sys/kernel/btf/vmlinux");
    if (!t.ok()) state.SkipWithError(t.error().message.c_str());
    benchmark::DoNotOptimize(t);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * st.st_size));
}
BENCHMARK(BM_BtfParseHostVmlinux)->Unit(benchmark::kMillisecond);

// The same kernel's types as a type profile (what the readers ask for, recorded from that BTF
// once): parse + BTF synthesis + name index, i.e. what discovery pays instead of the BTF parse
// for a guest without BTF. Compare with BM_BtfParseHostVmlinux in the same run.
void BM_TypeProfileLoadHostVmlinux(benchmark::State& state) {
  auto btf = Types::from_file("/sys/kernel/btf/vmlinux");
  if (!btf.ok()) {
    state.SkipWithError("no /sys/kernel/btf/vmlinux on this host");
    return;
  }
  auto recorded = record_reader_types(*make_types_access(std::move(btf).value()));
  if (!recorded.ok()) {
    state.SkipWithError(recorded.error().message.c_str());
    return;
  }
  recorded->build_id = "00112233";
  const std::string text = format_type_profile(*recorded);
  for (auto _ : state) {
    auto p = parse_type_profile(text);
    if (!p.ok()) state.SkipWithError(p.error().message.c_str());
    auto t = types_from_profile(*p);
    if (!t.ok()) state.SkipWithError(t.error().message.c_str());
    benchmark::DoNotOptimize(t);
  }
  state.counters["profile_bytes"] = static_cast<double>(text.size());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_TypeProfileLoadHostVmlinux)->Unit(benchmark::kMicrosecond);

void BM_MemberOffsetLookup(benchmark::State& state) {
  auto t = std::move(Types::from_btf_bytes(fake::FakeGuest::build_btf()).value());
  for (auto _ : state) benchmark::DoNotOptimize(t->member_offset("__call_single_data", "node.u_flags"));
}
BENCHMARK(BM_MemberOffsetLookup);

// 4 CPUs × 8 per-cpu fields through vmalloc page tables, one batch, cache cleared per snapshot.
void BM_PercpuReadBatch(benchmark::State& state) {
  fake::FakeGuest g;
  auto k = std::move(Kernel::discover(g.memory()).value());
  std::vector<uint64_t> addrs;
  for (uint32_t cpu = 0; cpu < 4; ++cpu) {
    uint64_t rq = k->percpu_address("runqueues", cpu).value();
    for (int f = 0; f < 8; ++f) addrs.push_back(rq + f * 0x30);
  }
  std::vector<uint64_t> out(addrs.size());
  std::vector<ReadRequest> reqs(addrs.size());
  for (auto _ : state) {
    k->begin_snapshot();
    for (size_t i = 0; i < addrs.size(); ++i) reqs[i] = {addrs[i], &out[i], 8};
    auto r = k->memory().read_batch(reqs);
    if (!r.ok()) state.SkipWithError(r.error().message.c_str());
  }
}
BENCHMARK(BM_PercpuReadBatch)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace stallmon::introspect
