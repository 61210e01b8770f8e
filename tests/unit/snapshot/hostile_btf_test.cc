// SPDX-License-Identifier: Apache-2.0
// Issue 10, finding 1 as regression tests: member sizes from a guest's BTF are checked against
// what a kernel really has before anything is sized by them, the CPU count is the caller's
// (libvirt's vCPU count), and the snapshot buffers are charged to the domain's budget. Before,
// a 295-byte BTF declaring rq.nr_running as char[256 MiB] drove a 4-CPU snapshot to 1.05 GB.
#include <bpf/btf.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include "stallmon/introspect/snapshot.h"
#include "synthetic_kernel.h"

namespace stallmon::introspect {
namespace {

using testing::SyntheticKernel;

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

// The synthetic 6.1 kernel, except that struct rq comes from a hostile BTF.
class HostileRq final : public KernelAccess {
 public:
  enum class Shape { kHugeArrayInSmallRq, kHugeRq, kWideScalar };
  explicit HostileRq(Shape shape) : k_(4, SyntheticKernel::Layout::kLinux61), btf_(btf__new_empty()) {
    const int u8 = btf__add_int(btf_, "char", 1, 0);
    const int u64 = btf__add_int(btf_, "u64", 8, 0);
    const int wide = btf__add_int(btf_, "__int128", 16, 0);
    const int huge = btf__add_array(btf_, u8, u8, 256u << 20);  // char[256 MiB]
    const uint32_t rq_size = shape == Shape::kHugeRq ? (256u << 20) + 4096 : 3200;
    btf__add_struct(btf_, "rq", rq_size);
    btf__add_field(btf_, "nr_running", shape == Shape::kWideScalar ? wide : huge, 64, 0);
    btf__add_field(btf_, "curr", u64, 8 * 2400, 0);
    btf__add_field(btf_, "idle", u64, 8 * 2408, 0);
    btf__add_field(btf_, "clock", u64, 8 * 2560, 0);
  }
  ~HostileRq() override { btf__free(btf_); }
  Result<void> read(uint64_t va, void* buf, size_t len) override { return k_.read(va, buf, len); }
  Result<uint64_t> symbol(std::string_view name) const override { return k_.symbol(name); }
  std::string symbolize(uint64_t a) const override { return k_.symbolize(a); }
  Result<MemberLayout> member(std::string_view type, std::string_view path) const override {
    if (type == "rq") return btf_member_layout(btf_, type, path);
    return k_.member(type, path);
  }
  Result<uint64_t> type_size(std::string_view type) const override { return k_.type_size(type); }
  SyntheticKernel& kernel() { return k_; }

 private:
  SyntheticKernel k_;
  struct btf* btf_;
};

void expect_refused(HostileRq::Shape shape, const std::string& why) {
  HostileRq k(shape);
  k.kernel().mem.put<uint32_t>(k.kernel().symbol("nr_cpu_ids").value(), 4);
  const uint64_t before = peak_rss_bytes();
  auto r = SnapshotReader::create(k);
  const uint64_t growth = peak_rss_bytes() - before;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt) << r.error().to_string();
  EXPECT_NE(r.error().message.find("rq.nr_running"), std::string::npos) << r.error().to_string();
  EXPECT_NE(r.error().message.find(why), std::string::npos) << r.error().to_string();
  EXPECT_LT(growth, 16u << 20);
}

TEST(HostileBtf, HugeMemberInsideASmallStructIsRefused) {
  expect_refused(HostileRq::Shape::kHugeArrayInSmallRq, "lies outside rq");
}

TEST(HostileBtf, HugeStructIsRefused) { expect_refused(HostileRq::Shape::kHugeRq, "BTF size of rq implausible"); }

TEST(HostileBtf, ScalarWiderThanEightBytesIsRefused) {
  expect_refused(HostileRq::Shape::kWideScalar, "16-byte scalar");
}

TEST(HostileBtf, SnapshotBuffersAreChargedAndBoundedByTheCallersCpuCount) {
  SyntheticKernel k(4, SyntheticKernel::Layout::kLinux61);
  k.mem.put<uint32_t>(k.symbol("nr_cpu_ids").value(), 4);
  auto budget = std::make_shared<MemoryBudget>("vm");
  SnapshotOptions o;
  o.budget = budget;
  o.max_cpus = 2;  // libvirt says two vCPUs, whatever nr_cpu_ids claims
  {
    auto r = SnapshotReader::create(k, o);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(budget->breakdown()["snapshot buffers"], (*r)->take_memory_bytes());
    EXPECT_GT((*r)->take_memory_bytes(), 0u);
    EXPECT_LT((*r)->take_memory_bytes(), 1u << 20);
    GuestSnapshot s = (*r)->take();
    EXPECT_EQ(s.cpus.size(), 2u);
    EXPECT_EQ(s.nr_cpu_ids, 4u);
  }
  EXPECT_EQ(budget->used(), 0u);
  o.budget = std::make_shared<MemoryBudget>("vm", 4096);
  auto r = SnapshotReader::create(k, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kOverBudget);
  EXPECT_NE(r.error().message.find("snapshot buffers"), std::string::npos) << r.error().to_string();
}

}  // namespace
}  // namespace stallmon::introspect
