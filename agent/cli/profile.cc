// SPDX-License-Identifier: Apache-2.0
// `stallctl profile make VMLINUX`: the type profile of a kernel build from its DWARF (libdw),
// for guests without BTF (introspect/README.md, "Type profiles").
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "commands.h"
#include "stallmon/introspect/dwarf_types.h"
#include "stallmon/introspect/isf_types.h"
#include "stallmon/introspect/snapshot_kernel_access.h"
#include "stallmon/introspect/type_profile.h"

namespace stallmon::cli {

namespace {

struct ProfileMakeArgs {
  std::string vmlinux, out, dir, btf, isf, build_id;
};

int fail_make(const Error& e) {
  std::fprintf(stderr, "stallctl profile make: %s\n", e.to_string().c_str());
  return kExitFailure;
}

int run_profile_make(const ProfileMakeArgs& a) {
  using namespace stallmon::introspect;
  if (a.vmlinux.empty() && ((a.btf.empty() && a.isf.empty()) || a.build_id.empty())) {
    std::fprintf(stderr, "stallctl profile make: VMLINUX, or --btf/--isf with --build-id\n");
    return kExitUsage;
  }
  if (!a.out.empty() && !a.dir.empty()) {
    std::fprintf(stderr, "stallctl profile make: --out or --dir, not both\n");
    return kExitUsage;
  }
  const auto start = std::chrono::steady_clock::now();
  // From BTF (a kernel that has it: a reference profile to compare with the DWARF one) the
  // BUILD-ID comes from the command line or the BTF file's own ELF note.
  Result<std::string> id = !a.build_id.empty() ? Result<std::string>(a.build_id) : elf_build_id(a.vmlinux);
  if (!id) return fail_make(id.error());
  Result<std::unique_ptr<KernelAccess>> source = Error(ErrorCode::kInternal, "no source");
  if (!a.isf.empty()) {
    source = open_isf_types(a.isf);
  } else if (!a.btf.empty()) {
    auto types = Types::from_file(a.btf);
    if (!types) return fail_make(types.error());
    source = make_types_access(std::move(types).value());
  } else {
    source = open_dwarf_types(a.vmlinux);
  }
  if (!source) return fail_make(source.error());
  auto profile = record_reader_types(**source);
  if (!profile) return fail_make(profile.error());
  profile->build_id = *id;
  // What it writes must load: the same parser and BTF synthesis the daemon uses.
  const std::string text = format_type_profile(*profile);
  auto check = parse_type_profile(text);
  if (!check) return fail_make(std::move(check).error().context("the profile made does not parse"));
  if (auto t = types_from_profile(*check); !t) return fail_make(std::move(t).error().context("the profile made does not load"));
  const std::string path = !a.dir.empty() ? a.dir + "/" + *id + ".profile" : a.out;
  if (path.empty() || path == "-") {
    std::fputs(text.c_str(), stdout);
  } else {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!(f << text) || !f.flush()) {
      std::fprintf(stderr, "stallctl profile make: cannot write %s\n", path.c_str());
      return kExitFailure;
    }
  }
  size_t members = 0;
  for (const auto& t : profile->types) members += t.members.size();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "stallctl profile make: BUILD-ID %s: %zu types, %zu members, %zu variables, %zu bytes%s%s (%.0f ms)\n",
               id->c_str(), profile->types.size(), members, profile->variables.size(), text.size(),
               path.empty() || path == "-" ? "" : " -> ", path.empty() || path == "-" ? "" : path.c_str(), ms);
  return kExitOk;
}

}  // namespace

void add_profile_command(CLI::App& app, std::function<int()>& run) {
  CLI::App* p = app.add_subcommand("profile", "type profiles for guests without BTF");
  p->require_subcommand(1);
  auto a = std::make_shared<ProfileMakeArgs>();
  CLI::App* m = p->add_subcommand("make", "write the type profile of a vmlinux with DWARF (keyed by its BUILD-ID)");
  m->add_option("VMLINUX", a->vmlinux, "vmlinux with debuginfo (Debian linux-image-*-dbg, Fedora kernel-debuginfo)");
  m->add_option("--btf", a->btf, "record from this BTF (raw or ELF .BTF) instead of VMLINUX's DWARF");
  m->add_option("--isf", a->isf, "record from a Volatility 3 ISF JSON file (dwarf2json output, uncompressed)");
  m->add_option("--build-id", a->build_id, "BUILD-ID to write (default: VMLINUX's .note.gnu.build-id)");
  m->add_option("--out,-o", a->out, "output file (default: stdout)");
  m->add_option("--dir", a->dir, "write DIR/<BUILD-ID>.profile (a profile directory, the daemon's profile_dir)");
  m->callback([a, &run] { run = [a] { return run_profile_make(*a); }; });
}

}  // namespace stallmon::cli
