// SPDX-License-Identifier: Apache-2.0
#include "fake_guest.h"

#include <bpf/btf.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace stallmon::introspect::fake {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPresentRw = 0x63;          // present, rw, accessed, dirty
constexpr uint64_t kLarge = 0x80;              // PS
constexpr uint64_t kNx = 1ull << 63;
constexpr uint64_t kAddrMask = 0x000ffffffffff000ull;
constexpr uint64_t kImageSize = 12ull << 20;   // 6 × 2 MiB
constexpr uint32_t kNrCpusMax = 64;            // NR_CPUS of the fake

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("fake guest: ") + what);
}

std::string hexs(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

std::vector<uint8_t> make_elf_note(std::string_view name, uint32_t type, std::span<const uint8_t> desc) {
  const uint32_t hdr[3] = {static_cast<uint32_t>(name.size() + 1), static_cast<uint32_t>(desc.size()), type};
  std::vector<uint8_t> note(12);
  std::memcpy(note.data(), hdr, 12);
  note.insert(note.end(), name.begin(), name.end());
  note.push_back(0);
  note.resize((note.size() + 3) & ~size_t{3});
  note.insert(note.end(), desc.begin(), desc.end());
  note.resize((note.size() + 3) & ~size_t{3});
  return note;
}

std::vector<uint8_t> make_vmcoreinfo_note(const std::string& text) {
  return make_elf_note("VMCOREINFO", 0, std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

FakeGuest::~FakeGuest() = default;

FakeGuest::FakeGuest(FakeGuestOptions options) : opt_(std::move(options)) {
  if (opt_.l5 && opt_.page_offset_base == FakeGuestOptions{}.page_offset_base) {
    opt_.page_offset_base = 0xff3d000000000000ull;
  }
  check(opt_.nr_cpus >= 1 && opt_.nr_cpus <= kNrCpusMax, "nr_cpus");
  pob_ = opt_.page_offset_base;
  mem_ = std::shared_ptr<RawImageMemory>(RawImageMemory::zeroed(0, opt_.ram_size));
  phys_next_ = 48ull << 20;
  check(opt_.ram_size >= (56ull << 20), "ram_size too small");

  // Kernel image: text in the first 2 MiB, data after it.
  image_next_ = text_va() + (2ull << 20);
  image_end_ = text_va() + kImageSize;
  check(image_pa(text_va()) % (2ull << 20) == 0 && image_pa(image_end_) <= (48ull << 20), "image placement");
  top_pgt_va_ = alloc_image(kPage, kPage);

  // Page tables: kernel image in 2 MiB pages, direct map in one 1 GiB page, per-cpu areas in
  // 4 KiB pages of the vmalloc area.
  for (uint64_t va = text_va(); va < image_end_; va += 2ull << 20) {
    uint64_t pmd = table_for(va, 1);
    uint64_t e = image_pa(va) | kPresentRw | kLarge;
    write_pa(pmd + ((va >> 21) & 511) * 8, &e, 8);
  }
  {
    uint64_t pud = table_for(pob_, 2);
    uint64_t e = 0 | kPresentRw | kLarge | kNx;
    write_pa(pud + ((pob_ >> 30) & 511) * 8, &e, 8);
  }
  uint64_t percpu_section = 0;  // absolute per-cpu: symbols are offsets from 0
  if (!opt_.absolute_percpu) percpu_section = alloc_image(kPercpuAreaSize, kPage);
  for (uint32_t cpu = 0; cpu < opt_.nr_cpus; ++cpu) {
    uint64_t area = kVmallocBase + cpu * 0x10000ull;  // 64 KiB stride: unmapped gaps between areas
    for (uint64_t off = 0; off < kPercpuAreaSize; off += kPage) map_4k(area + off, alloc_page_pa());
    percpu_offsets_.push_back(area - percpu_section);
  }

  // Text symbols.
  add_symbol("_text", 'T', text_va());
  add_symbol("_stext", 'T', text_va());
  add_symbol("_end", 'B', image_end_);
  add_symbol("do_sync_core", 't', text_va() + 0x1230);
  add_symbol("smp_call_function_many_cond", 'T', text_va() + 0x1400);
  for (uint32_t i = 0; i < opt_.filler_symbols; ++i) {
    char name[40];
    std::snprintf(name, sizeof name, "filler_func_%05u", i);
    add_symbol(name, i % 3 ? 't' : 'T', text_va() + 0x2000 + i * 0x40ull);
  }
  std::string long_name;
  while (long_name.size() < 240) long_name += "a_very_long_symbol_name_";
  add_symbol(long_name, 't', text_va() + 0x1800);

  // Data symbols.
  add_symbol("init_top_pgt", 'D', top_pgt_va_);
  uint64_t v = alloc_image(8);
  put_va(v, pob_);
  add_symbol("page_offset_base", 'D', v);
  v = alloc_image(4);
  put_va(v, opt_.nr_cpus);
  add_symbol("nr_cpu_ids", 'D', v);
  v = alloc_image(8 * kNrCpusMax);
  for (uint32_t cpu = 0; cpu < opt_.nr_cpus; ++cpu) put_va(v + cpu * 8, percpu_offsets_[cpu]);
  add_symbol("__per_cpu_offset", 'D', v);
  v = alloc_image(8);
  put_va<uint64_t>(v, opt_.nr_cpus == 64 ? ~0ull : (1ull << opt_.nr_cpus) - 1);
  add_symbol("__cpu_online_mask", 'D', v);
  // u32 *vmcoreinfo_note: where the kernel keeps its note (a direct-map address), and the clock.
  v = alloc_image(8, 8);
  put_va<uint64_t>(v, pob_ + opt_.note_gpa);
  add_symbol("vmcoreinfo_note", 'D', v);
  v = alloc_image(8, 8);
  put_va<uint64_t>(v, 4294937296ull);  // INITIAL_JIFFIES
  add_symbol("jiffies_64", 'D', v);

  // Per-cpu symbols ('A' with absolute per-cpu, as scripts/kallsyms makes them).
  const char pc_type = opt_.absolute_percpu ? 'A' : 'D';
  add_symbol("cpu_number", pc_type, percpu_section + 0x20);
  add_symbol("runqueues", pc_type, percpu_section + 0x1000);
  for (uint32_t cpu = 0; cpu < opt_.nr_cpus; ++cpu) {
    put_va<uint32_t>(percpu_section + 0x20 + percpu_offsets_[cpu], cpu);
    put_va<uint32_t>(percpu_section + 0x1000 + kRqNrRunning + percpu_offsets_[cpu], cpu + 1);
  }

  // BTF.
  btf_bytes_ = build_btf();
  v = alloc_image(btf_bytes_.size(), 8);
  write_va(v, btf_bytes_.data(), btf_bytes_.size());
  add_symbol("__start_BTF", 'R', v);
  add_symbol("__stop_BTF", 'R', v + btf_bytes_.size());

  // .notes: a Xen note first (as in a Debian vmlinux), then the GNU build id.
  {
    const uint8_t xen_desc[] = {'l', 'i', 'n', 'u', 'x', 0};
    std::vector<uint8_t> notes = make_elf_note("Xen", 6, xen_desc);
    std::vector<uint8_t> id;
    for (size_t i = 0; i + 1 < opt_.build_id.size(); i += 2) id.push_back(static_cast<uint8_t>(std::stoul(opt_.build_id.substr(i, 2), nullptr, 16)));
    const auto gnu = make_elf_note("GNU", 3, id);
    notes.insert(notes.end(), gnu.begin(), gnu.end());
    v = alloc_image(notes.size(), 8);
    write_va(v, notes.data(), notes.size());
    add_symbol("__start_notes", 'R', v);
    add_symbol("__stop_notes", 'R', v + notes.size());
  }

  // kallsyms: the tables are symbols too, so encode once to learn the sizes, place the tables,
  // then encode again with their final addresses (names do not depend on addresses).
  const char* kTables[] = {"kallsyms_offsets", "kallsyms_relative_base", "kallsyms_num_syms",
                           "kallsyms_names", "kallsyms_markers", "kallsyms_token_table",
                           "kallsyms_token_index"};
  for (const char* t : kTables) add_symbol(t, 'R', text_va());
  std::sort(symbols_.begin(), symbols_.end(), [](const Symbol& a, const Symbol& b) { return a.address < b.address; });
  EncodedKallsyms enc = encode_kallsyms(symbols_, text_va(), opt_.absolute_percpu);
  std::map<std::string, uint64_t> where;
  where["kallsyms_offsets"] = alloc_image(enc.offsets.size() * 4, 8);
  where["kallsyms_relative_base"] = alloc_image(8, 8);
  where["kallsyms_num_syms"] = alloc_image(8, 8);
  where["kallsyms_names"] = alloc_image(enc.names.size(), 8);
  where["kallsyms_markers"] = alloc_image(8, 8);
  where["kallsyms_token_table"] = alloc_image(enc.token_table.size(), 8);
  where["kallsyms_token_index"] = alloc_image(512, 8);
  for (Symbol& s : symbols_) {
    if (auto it = where.find(s.name); it != where.end()) s.address = it->second;
  }
  std::stable_sort(symbols_.begin(), symbols_.end(), [](const Symbol& a, const Symbol& b) { return a.address < b.address; });
  enc = encode_kallsyms(symbols_, text_va(), opt_.absolute_percpu);
  write_va(where["kallsyms_offsets"], enc.offsets.data(), enc.offsets.size() * 4);
  put_va<uint64_t>(where["kallsyms_relative_base"], enc.relative_base);
  put_va<uint32_t>(where["kallsyms_num_syms"], static_cast<uint32_t>(symbols_.size()));
  write_va(where["kallsyms_names"], enc.names.data(), enc.names.size());
  write_va(where["kallsyms_token_table"], enc.token_table.data(), enc.token_table.size());
  write_va(where["kallsyms_token_index"], enc.token_index.data(), 512);

  // VMCOREINFO (the lines a Debian 6.1 kernel writes that discovery uses, plus some others).
  std::string t;
  t += "OSRELEASE=" + opt_.osrelease + "\n";
  if (opt_.vmcoreinfo_build_id) t += "BUILD-ID=" + opt_.build_id + "\n";
  t += "PAGESIZE=4096\n";
  t += "SYMBOL(init_uts_ns)=" + hexs(text_va() + 0x900000) + "\n";
  t += "OFFSET(uts_namespace.name)=4\n";
  t += "SYMBOL(swapper_pg_dir)=" + hexs(top_pgt_va_) + "\n";
  t += "SYMBOL(_stext)=" + hexs(text_va()) + "\n";
  for (const char* name : {"kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table", "kallsyms_token_index",
                           "kallsyms_offsets", "kallsyms_relative_base"}) {
    if (opt_.vmcoreinfo_kallsyms) t += std::string("SYMBOL(") + name + ")=" + hexs(symbol(name)) + "\n";
  }
  t += "SYMBOL(prb)=" + hexs(text_va() + 0x910000) + "\n";
  t += "SIZE(printk_ringbuffer)=80\nOFFSET(printk_ringbuffer.desc_ring)=0\n";
  t += "NUMBER(phys_base)=" + std::to_string(opt_.phys_base) + "\n";
  t += "SYMBOL(init_top_pgt)=" + hexs(top_pgt_va_) + "\n";
  t += "NUMBER(pgtable_l5_enabled)=" + std::string(opt_.l5 ? "1" : "0") + "\n";
  t += "KERNELOFFSET=" + hexs(opt_.kaslr_offset) + "\n";
  if (opt_.vmcoreinfo_image_size) t += "NUMBER(KERNEL_IMAGE_SIZE)=1073741824\n";
  vmcoreinfo_ = t;
  auto note = make_vmcoreinfo_note(t);
  write_pa(opt_.note_gpa, note.data(), note.size());
  // Decoys earlier in RAM: the raw text page without a header (vmcoreinfo_data), a note whose
  // text is not VMCOREINFO, and a note that looks right but lacks the page-table symbol.
  write_pa(opt_.note_gpa - 2 * kPage, t.data(), t.size());
  auto bad1 = make_vmcoreinfo_note("GARBAGE=1\n");
  write_pa(opt_.note_gpa - 0x200000, bad1.data(), bad1.size());
  auto bad2 = make_vmcoreinfo_note("OSRELEASE=decoy\nPAGESIZE=4096\n");
  write_pa(opt_.note_gpa - 0x100000, bad2.data(), bad2.size());
}

uint64_t FakeGuest::symbol(const std::string& name) const {
  for (const Symbol& s : symbols_) {
    if (s.name == name) return s.address;
  }
  throw std::runtime_error("fake guest: no symbol " + name);
}

uint64_t FakeGuest::alloc_image(uint64_t size, uint64_t align) {
  image_next_ = (image_next_ + align - 1) / align * align;
  uint64_t va = image_next_;
  image_next_ += size;
  check(image_next_ <= image_end_, "kernel image full");
  return va;
}

uint64_t FakeGuest::alloc_page_pa() {
  uint64_t pa = phys_next_;
  phys_next_ += kPage;
  check(phys_next_ <= opt_.ram_size, "RAM full");
  return pa;
}

void FakeGuest::write_pa(uint64_t pa, const void* data, size_t len) {
  check(mem_->write(pa, data, len).ok(), "write outside RAM");
}

uint64_t FakeGuest::table_for(uint64_t va, int stop_level) {
  int levels = opt_.l5 ? 5 : 4;
  uint64_t table = top_pgt_pa();
  for (int level = levels - 1; level > stop_level; --level) {
    uint64_t slot = table + ((va >> (12 + 9 * level)) & 511) * 8;
    uint64_t e = 0;
    check(mem_->read(slot, &e, 8).ok(), "table read");
    if (!(e & 1)) {
      e = alloc_page_pa() | kPresentRw;
      write_pa(slot, &e, 8);
    }
    check(!(e & kLarge) || level == levels - 1, "mapping under a large page");
    table = e & kAddrMask;
  }
  return table;
}

void FakeGuest::map_4k(uint64_t va, uint64_t pa) {
  uint64_t pte = table_for(va, 0);
  uint64_t e = pa | kPresentRw | kNx;
  write_pa(pte + ((va >> 12) & 511) * 8, &e, 8);
  small_pages_[va & ~(kPage - 1)] = pa;
}

uint64_t FakeGuest::translate(uint64_t va) const {
  if (va >= text_va() && va < image_end_) return image_pa(va);
  if (va >= pob_ && va - pob_ < opt_.ram_size) return va - pob_;
  auto it = small_pages_.find(va & ~(kPage - 1));
  check(it != small_pages_.end(), "fake write to an unmapped address");
  return it->second + (va & (kPage - 1));
}

void FakeGuest::write_va(uint64_t va, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    size_t n = std::min<uint64_t>(len, kPage - (va & (kPage - 1)));
    write_pa(translate(va), p, n);
    p += n;
    va += n;
    len -= n;
  }
}

void FakeGuest::add_symbol(const std::string& name, char type, uint64_t addr) {
  symbols_.push_back(Symbol{name, addr, type});
}

FakeGuest::EncodedKallsyms FakeGuest::encode_kallsyms(const std::vector<Symbol>& symbols, uint64_t relative_base,
                                                      bool absolute_percpu) {
  // Token table like scripts/kallsyms: single characters map to themselves, the other byte
  // values hold multi-character tokens (here a fixed set of frequent fragments).
  static const char* const kMulti[] = {"filler_func_", "kallsyms_", "_per_cpu", "tfiller_", "Tfiller_",
                                       "__", "_t", "ru", "cpu", "_s", "er", "in", "on", "nu", "0", "00"};
  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b) tokens[b] = (b >= 0x21 && b < 0x7f) ? std::string(1, static_cast<char>(b)) : "?";
  size_t next = 0x80;
  std::vector<std::pair<std::string, uint8_t>> multi;
  for (const char* m : kMulti) {
    tokens[next] = m;
    multi.emplace_back(m, static_cast<uint8_t>(next));
    ++next;
  }
  std::sort(multi.begin(), multi.end(), [](auto& a, auto& b) { return a.first.size() > b.first.size(); });

  EncodedKallsyms out;
  out.relative_base = relative_base;
  out.token_index.resize(256);
  for (int b = 0; b < 256; ++b) {
    out.token_index[b] = static_cast<uint16_t>(out.token_table.size());
    out.token_table.insert(out.token_table.end(), tokens[b].begin(), tokens[b].end());
    out.token_table.push_back(0);
  }
  for (const Symbol& s : symbols) {
    std::string full = std::string(1, s.type) + s.name;
    std::vector<uint8_t> enc;
    for (size_t i = 0; i < full.size();) {
      bool done = false;
      for (auto& [tok, code] : multi) {
        if (full.compare(i, tok.size(), tok) == 0) {
          enc.push_back(code);
          i += tok.size();
          done = true;
          break;
        }
      }
      if (done) continue;
      unsigned char c = static_cast<unsigned char>(full[i]);
      check(c >= 0x21 && c < 0x7f, "unencodable symbol character");
      enc.push_back(c);
      ++i;
    }
    check(enc.size() < 0x4000, "name too long to encode");
    if (enc.size() > 0x7f) {
      out.names.push_back(static_cast<uint8_t>(0x80 | (enc.size() & 0x7f)));
      out.names.push_back(static_cast<uint8_t>(enc.size() >> 7));
    } else {
      out.names.push_back(static_cast<uint8_t>(enc.size()));
    }
    out.names.insert(out.names.end(), enc.begin(), enc.end());
    int64_t off;
    bool percpu = s.type == 'A';
    if (absolute_percpu) {
      off = percpu ? static_cast<int64_t>(s.address) : static_cast<int64_t>(relative_base) - 1 - static_cast<int64_t>(s.address);
    } else {
      off = static_cast<int64_t>(s.address - relative_base);
    }
    out.offsets.push_back(static_cast<int32_t>(off));
  }
  return out;
}

std::vector<uint8_t> FakeGuest::build_btf() {
  struct btf* b = btf__new_empty();
  check(b != nullptr, "btf__new_empty");
  int u32 = btf__add_int(b, "unsigned int", 4, 0);
  int i32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  int u16 = btf__add_int(b, "short unsigned int", 2, 0);
  int u64 = btf__add_int(b, "long long unsigned int", 8, 0);
  int chr = btf__add_int(b, "char", 1, BTF_INT_CHAR);
  int voidp = btf__add_ptr(b, 0);
  int comm = btf__add_array(b, u32, chr, 16);

  int task = btf__add_struct(b, "task_struct", kTaskSize);
  btf__add_field(b, "__state", u32, kTaskState * 8, 0);
  btf__add_field(b, "pid", i32, kTaskPid * 8, 0);
  btf__add_field(b, "comm", comm, kTaskComm * 8, 0);
  int taskp = btf__add_ptr(b, task);

  int cfs = btf__add_struct(b, "cfs_rq", 0x40);
  btf__add_field(b, "nr_running", u32, 0, 0);
  btf__add_field(b, "h_nr_running", u32, 0x10 * 8, 0);
  int rq = btf__add_struct(b, "rq", kRqSize);
  btf__add_field(b, "nr_running", u32, kRqNrRunning * 8, 0);
  btf__add_field(b, "curr", taskp, kRqCurr * 8, 0);
  btf__add_field(b, "idle", taskp, (kRqCurr + 8) * 8, 0);
  btf__add_field(b, "clock", u64, 0x60 * 8, 0);
  btf__add_field(b, "cfs", cfs, 0x80 * 8, 0);
  btf__add_field(b, "ttwu_pending", u32, 0x140 * 8, 0);

  int llist = btf__add_struct(b, "llist_node", 8);
  btf__add_field(b, "next", voidp, 0, 0);
  int atomic = btf__add_struct(b, "atomic_t", 4);  // a typedef'd anonymous struct in the kernel
  btf__add_field(b, "counter", i32, 0, 0);
  int anon = btf__add_union(b, nullptr, 4);
  btf__add_field(b, "u_flags", u32, 0, 0);
  btf__add_field(b, "a_flags", atomic, 0, 0);
  int node = btf__add_struct(b, "__call_single_node", 16);
  btf__add_field(b, "llist", llist, 0, 0);
  btf__add_field(b, nullptr, anon, 64, 0);
  btf__add_field(b, "src", u16, 96, 0);
  btf__add_field(b, "dst", u16, 112, 0);
  int csd = btf__add_struct(b, "__call_single_data", 32);
  btf__add_field(b, "node", node, 0, 0);
  btf__add_field(b, "func", voidp, 128, 0);
  btf__add_field(b, "info", voidp, 192, 0);
  btf__add_typedef(b, "call_single_data_t", csd);

  int var = btf__add_var(b, "runqueues", BTF_VAR_GLOBAL_ALLOCATED, rq);
  btf__add_datasec(b, ".data..percpu", 0x2000);
  btf__add_datasec_var_info(b, var, 0x1000, kRqSize);
  (void)u64;

  uint32_t size = 0;
  const void* raw = btf__raw_data(b, &size);
  check(raw != nullptr, "btf__raw_data");
  std::vector<uint8_t> out(static_cast<const uint8_t*>(raw), static_cast<const uint8_t*>(raw) + size);
  btf__free(b);
  return out;
}

}  // namespace stallmon::introspect::fake
