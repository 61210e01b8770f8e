// SPDX-License-Identifier: Apache-2.0
#include "stallmon/introspect/btf_types.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "fake_guest.h"

namespace stallmon::introspect {
namespace {

using fake::FakeGuest;

std::shared_ptr<const Types> types() {
  auto t = Types::from_btf_bytes(FakeGuest::build_btf());
  EXPECT_TRUE(t.ok()) << t.error().to_string();
  return *t;
}

TEST(Types, MemberOffsetsNestedAnonymousAndTypedefs) {
  auto t = types();
  EXPECT_EQ(*t->member_offset("rq", "nr_running"), FakeGuest::kRqNrRunning);
  EXPECT_EQ(*t->member_offset("struct rq", "curr"), FakeGuest::kRqCurr);
  EXPECT_EQ(*t->member_offset("rq.cfs.h_nr_running"), 0x90u);
  EXPECT_EQ(*t->member_offset("task_struct", "pid"), FakeGuest::kTaskPid);
  EXPECT_EQ(*t->member_offset("task_struct", "comm"), FakeGuest::kTaskComm);
  // u_flags sits in an anonymous union inside __call_single_node.
  EXPECT_EQ(*t->member_offset("__call_single_data", "node.u_flags"), 8u);
  EXPECT_EQ(*t->member_offset("call_single_data_t", "node.u_flags"), 8u);
  EXPECT_EQ(*t->member_offset("call_single_data_t", "node.a_flags.counter"), 8u);
  EXPECT_EQ(*t->member_offset("__call_single_data", "func"), 16u);

  auto m = t->member("task_struct", "comm");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->size, 16u);
  EXPECT_EQ(m->type_name, "char[16]");
  EXPECT_EQ(t->member("rq", "curr")->type_name, "struct task_struct *");
  EXPECT_EQ(t->member("rq", "curr")->size, 8u);

  // Feature detection.
  EXPECT_TRUE(t->has_member("task_struct", "__state"));
  EXPECT_FALSE(t->has_member("task_struct", "state"));
  EXPECT_TRUE(t->has_member("__call_single_data", "node.u_flags"));
  EXPECT_FALSE(t->has_member("__call_single_data", "flags"));
  EXPECT_TRUE(t->has_type("rq"));
  EXPECT_FALSE(t->has_type("call_single_queue_t"));

  EXPECT_EQ(*t->type_size("rq"), FakeGuest::kRqSize);
  EXPECT_EQ(*t->type_size("call_single_data_t"), 32u);
  EXPECT_EQ(*t->type_size("unsigned int"), 4u);
  EXPECT_EQ(*t->variable_type_name("runqueues"), "struct rq");

  EXPECT_EQ(t->member_offset("rq", "nope").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(t->member_offset("nope", "x").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(t->member_offset("rq", "nr_running.x").error().code, ErrorCode::kNotFound);  // not a struct
  EXPECT_EQ(t->member_offset("rq").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(t->variable_type_name("nope").error().code, ErrorCode::kNotFound);
}

TEST(Types, FromRawFile) {
  auto bytes = FakeGuest::build_btf();
  std::string path = ::testing::TempDir() + "/stallmon_btf_" + std::to_string(getpid());
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  auto t = Types::from_file(path);
  ::unlink(path.c_str());
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  EXPECT_EQ(*(*t)->member_offset("rq", "nr_running"), FakeGuest::kRqNrRunning);
  EXPECT_EQ(Types::from_file("/nonexistent/btf").error().code, ErrorCode::kNotFound);
}

TEST(Types, CorruptBtfIsRejectedNotCrashing) {
  const auto good = FakeGuest::build_btf();
  EXPECT_EQ(Types::from_btf_bytes({}).error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(Types::from_btf_bytes(std::vector<uint8_t>(100, 0)).error().code, ErrorCode::kCorrupt);
  auto trunc = good;
  trunc.resize(good.size() / 2);
  EXPECT_EQ(Types::from_btf_bytes(trunc).error().code, ErrorCode::kCorrupt);
  // Random byte flips after the header: libbpf either rejects them or we survive every query.
  std::mt19937 rng(1234);
  for (int i = 0; i < 300; ++i) {
    auto b = good;
    for (int k = 0; k < 4; ++k) b[24 + rng() % (b.size() - 24)] ^= static_cast<uint8_t>(1u << (rng() % 8));
    auto t = Types::from_btf_bytes(std::move(b));
    if (!t.ok()) continue;
    (void)(*t)->member_offset("__call_single_data", "node.u_flags");
    (void)(*t)->member("rq", "cfs.h_nr_running");
    (void)(*t)->type_size("call_single_data_t");
    (void)(*t)->variable_type_name("runqueues");
  }
}

}  // namespace
}  // namespace stallmon::introspect
