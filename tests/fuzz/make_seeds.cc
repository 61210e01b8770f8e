// SPDX-License-Identifier: Apache-2.0
// Writes the binary seed corpus (corpus/<target>/) from the same synthetic guests the unit
// tests use, so the fuzzers start from inputs every parser accepts. Run once after changing a
// fuzz target's input format:  fuzz_make_seeds tests/fuzz/corpus
#include <bpf/btf.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fake_guest.h"
#include "stallmon/introspect/elf_core.h"
#include "module_input.h"
#include "orc_input.h"
#include "synthetic_kernel.h"

namespace fs = std::filesystem;
using namespace stallmon::introspect;

namespace {

void put(const fs::path& dir, const std::string& name, const void* data, size_t size) {
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary).write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}
void put(const fs::path& dir, const std::string& name, const std::vector<uint8_t>& v) { put(dir, name, v.data(), v.size()); }
template <typename T>
void append(std::vector<uint8_t>& out, const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const fs::path root(argv[1]);
  fake::FakeGuestOptions small;
  small.filler_symbols = 40;
  fake::FakeGuest g(small);

  // VMCOREINFO: the note, and the text alone.
  put(root / "vmcoreinfo", "note", fake::make_vmcoreinfo_note(g.vmcoreinfo_text()));
  put(root / "vmcoreinfo", "text", g.vmcoreinfo_text().data(), g.vmcoreinfo_text().size());

  // kallsyms in fuzz_kallsyms's layout: u32 n, u8 flags, token_index, then three equal thirds.
  for (bool absolute : {true, false}) {
    auto enc = fake::FakeGuest::encode_kallsyms(g.symbols(), g.text_va(), absolute);
    size_t third = std::max({enc.token_table.size(), enc.names.size(), enc.offsets.size() * 4});
    std::vector<uint8_t> in;
    append(in, static_cast<uint32_t>(g.symbols().size()));
    in.push_back(absolute ? 3 : 1);
    for (uint16_t i : enc.token_index) append(in, i);
    auto pad = [&](const uint8_t* p, size_t n) {
      in.insert(in.end(), p, p + n);
      in.insert(in.end(), third - n, 0);
    };
    pad(enc.token_table.data(), enc.token_table.size());
    pad(enc.names.data(), enc.names.size());
    pad(reinterpret_cast<const uint8_t*>(enc.offsets.data()), enc.offsets.size() * 4);
    put(root / "kallsyms", absolute ? "absolute_percpu" : "relative", in);
  }

  // BTF: discovery's fake types and the snapshot tests' 6.1 and legacy layouts.
  put(root / "btf", "fake_guest", fake::FakeGuest::build_btf());
  for (auto layout : {testing::SyntheticKernel::Layout::kLinux61, testing::SyntheticKernel::Layout::kLegacy}) {
    testing::SyntheticKernel k(2, layout);
    uint32_t n = 0;
    const void* raw = btf__raw_data(k.btf(), &n);
    put(root / "btf", layout == testing::SyntheticKernel::Layout::kLinux61 ? "linux61" : "legacy", raw, n);
  }

  // Page tables: the fake guest's first 2 MiB from its top-level table, and a self-reference.
  {
    std::vector<uint8_t> in;
    append(in, g.text_va() + 0x1230);
    in.push_back(0);
    std::vector<uint8_t> ram(16 << 10);
    (void)g.memory()->read(g.top_pgt_pa(), ram.data(), 4096);
    in.insert(in.end(), ram.begin(), ram.end());
    put(root / "paging", "kernel_top_table", in);
    std::vector<uint8_t> loop;
    append(loop, 0xffff888000001000ull);
    loop.push_back(1);
    for (int i = 0; i < 512; ++i) append(loop, uint64_t{0x0000000000000003});  // every entry → page 0
    put(root / "paging", "self_reference_l5", loop);
  }

  // ELF core: a small image with the note, and the same with e_machine = EM_AARCH64.
  {
    auto mem = RawImageMemory::zeroed(0, 8 << 10);
    auto note = fake::make_vmcoreinfo_note(g.vmcoreinfo_text());
    (void)mem->write(0x1000, note.data(), note.size());
    char path[] = "/tmp/stallmon-seed-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 1;
    close(fd);
    ElfCoreWriteOptions o;
    o.vmcoreinfo_text = g.vmcoreinfo_text();
    if (!write_elf_core(*mem, path, o).ok()) return 1;
    std::ifstream in(path, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    unlink(path);
    put(root / "elf_core", "x86_64", bytes);
    bytes[18] = 183;  // e_machine EM_AARCH64
    put(root / "elf_core", "wrong_machine", bytes);
  }

  // Snapshot / printk records (12 bytes: u32 selector, u64 value): nothing changed; CPU2's
  // queue pointing at itself (a cycle); a garbage cfd pointer; a printk head far ahead.
  put(root / "snapshot", "unchanged", std::vector<uint8_t>{});
  {
    std::vector<uint8_t> in;
    append(in, uint32_t{4 * 2 + 1});  // CPU2's call_single_queue head
    append(in, uint64_t{0xffff888010000000ull + 2 * 0x100000 + 0x3000});
    put(root / "snapshot", "queue_cycle", in);
    std::vector<uint8_t> cfd;
    append(cfd, uint32_t{2});
    append(cfd, uint64_t{0xdead000000000000ull});
    put(root / "snapshot", "cfd_garbage", cfd);
  }
  put(root / "printk", "unchanged", std::vector<uint8_t>{});
  {
    std::vector<uint8_t> in;
    append(in, uint32_t{4 * 4 + 5});  // the ring header
    append(in, uint64_t{0x7fffffffffffffffull});
    put(root / "printk", "ring_header", in);
    // The 3.10 guest's log_buf (fuzz_printk.cc, 17 targets): selector 0x809 is target 0 (its
    // globals) at offset 8, log_buf_len: far above the buffer.
    std::vector<uint8_t> len;
    append(len, uint32_t{0x809});
    append(len, uint64_t{0xffffffff00100000ull});
    put(root / "printk", "log_buf_len", len);
  }
  // ORC backtracer (orc_input.h): the fixture's chain in both formats, without its interrupt
  // frame, and a stack of self-chaining return addresses.
  {
    fuzz::OrcGuest o;
    put(root / "orc", "chain_v64", fuzz::encode_orc_input(o.g, false));
    put(root / "orc", "chain_v61", fuzz::encode_orc_input(o.g, true));
    o.g.clear_pt_regs();
    put(root / "orc", "chain_no_pt_regs", fuzz::encode_orc_input(o.g, false));
    o.g.fill_stack_with(o.g.f_loop + 4);
    put(root / "orc", "self_chaining", fuzz::encode_orc_input(o.g, false));
  }
  // The fixture's hardirq stack (its 40 top bytes, copied to the same place at the top of the
  // task stack, which is empty there): fuzz_orc unwinds its bytes as both stacks, and chains go
  // from the hardirq copy onto the task stack (the innermost one through the copy of irq_entry's
  // interrupt frame; irq_switch's SP_INDIRECT hint is in the table too).
  {
    fuzz::OrcGuest o;
    o.g.build_irq_stack();
    std::vector<uint8_t> top(40);
    const uint64_t from = o.g.irq_tos - 32;
    (void)o.k.read(from, top.data(), top.size());
    o.k.mem.write(fuzz::OrcStack::kStack + (from - fuzz::OrcStack::kIrqStack), top.data(), top.size());
    put(root / "orc", "irq_and_task", fuzz::encode_orc_input(o.g, false));
  }
  // Loaded modules (module_input.h): the fixture's module in both struct module layouts, and one
  // whose list link points back at itself.
  for (bool v61 : {false, true}) {
    fuzz::ModuleGuest mg(v61);
    put(root / "modules", v61 ? "irqoff_v61" : "irqoff_v612", fuzz::encode_module_input(mg, v61));
  }
  {
    fuzz::ModuleGuest mg(false);
    mg.kg.k.mem.put<uint64_t>(mg.m.addr + testing::ModuleFixture::kList, mg.m.addr + testing::ModuleFixture::kList);
    put(root / "modules", "self_link", fuzz::encode_module_input(mg, false));
  }
  std::printf("seeds written to %s\n", root.c_str());
  return 0;
}
