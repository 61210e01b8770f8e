// SPDX-License-Identifier: Apache-2.0
// Request validation: malformed requests give INVALID_ARGUMENT naming the field; defaults apply.
#include <gtest/gtest.h>

#include "stallmon/server/validate.h"

namespace stallmon::server {
namespace {

void expect_invalid(const grpc::Status& st, const std::string& field) {
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message().rfind(field + ":", 0), 0u) << st.error_message();
}

TEST(Validate, DomainIsRequiredAndSane) {
  std::string d;
  v1::GetDomainRequest req;
  expect_invalid(parse(req, &d), "domain");
  req.set_domain(std::string(300, 'a'));
  expect_invalid(parse(req, &d), "domain");
  req.set_domain("bad\nname");
  expect_invalid(parse(req, &d), "domain");
  req.set_domain("demo");
  EXPECT_TRUE(parse(req, &d).ok());
  EXPECT_EQ(d, "demo");
}

TEST(Validate, HistoryDefaultsAndBounds) {
  v1::GetVcpuHistoryRequest req;
  HistoryParams p;
  expect_invalid(parse(req, &p), "domain");
  req.set_domain("demo");
  ASSERT_TRUE(parse(req, &p).ok());
  EXPECT_EQ(p.window, std::chrono::seconds(60));
  EXPECT_EQ(p.max_samples, 600u);
  EXPECT_TRUE(p.vcpus.empty());

  auto bad = req;
  bad.add_vcpus(-1);
  HistoryParams q;
  expect_invalid(parse(bad, &q), "vcpus");
  bad = req;
  bad.mutable_window()->set_seconds(-5);
  expect_invalid(parse(bad, &q), "window");
  bad = req;
  bad.mutable_window()->set_seconds(7200);
  expect_invalid(parse(bad, &q), "window");
  bad = req;
  bad.mutable_window()->set_seconds(1);
  bad.mutable_window()->set_nanos(-1);  // mixed signs: not a Duration
  expect_invalid(parse(bad, &q), "window");
  bad = req;
  bad.set_max_samples(-3);
  expect_invalid(parse(bad, &q), "max_samples");

  req.add_vcpus(2);
  req.add_vcpus(2);
  req.mutable_window()->set_seconds(5);
  req.set_max_samples(10);
  HistoryParams ok;
  ASSERT_TRUE(parse(req, &ok).ok());
  EXPECT_EQ(ok.vcpus, std::vector<int>{2});
  EXPECT_EQ(ok.window, std::chrono::seconds(5));
  EXPECT_EQ(ok.max_samples, 10u);
}

TEST(Validate, FindingsFilters) {
  v1::ListFindingsRequest req;
  FindingsParams p;
  ASSERT_TRUE(parse(req, &p).ok());  // everything optional
  EXPECT_EQ(p.limit, 1000u);
  EXPECT_FALSE(p.query.active_only);

  auto bad = req;
  bad.add_kinds(v1::FINDING_KIND_UNSPECIFIED);
  FindingsParams q;
  expect_invalid(parse(bad, &q), "kinds");
  bad = req;
  bad.add_kinds(static_cast<v1::FindingKind>(77));
  expect_invalid(parse(bad, &q), "kinds");
  bad = req;
  bad.set_limit(10001);
  expect_invalid(parse(bad, &q), "limit");
  bad = req;
  bad.set_state(static_cast<v1::FindingStateFilter>(9));
  expect_invalid(parse(bad, &q), "state");
  bad = req;
  bad.mutable_since()->set_nanos(-1);
  expect_invalid(parse(bad, &q), "since");

  req.set_state(v1::FINDING_STATE_FILTER_ACTIVE);
  req.add_kinds(v1::GUEST_IPI_STALL);
  req.set_domain("demo");
  FindingsParams ok;
  ASSERT_TRUE(parse(req, &ok).ok());
  EXPECT_TRUE(ok.query.active_only);
  ASSERT_EQ(ok.query.kinds.size(), 1u);
  EXPECT_EQ(ok.query.kinds[0], diagnosis::FindingKind::kGuestIpiStall);
  req.set_state(v1::FINDING_STATE_FILTER_RESOLVED);
  FindingsParams res;
  ASSERT_TRUE(parse(req, &res).ok());
  EXPECT_FALSE(res.query.active_only);
  EXPECT_EQ(res.query.limit, SIZE_MAX);  // the limit is applied after dropping active ones
}

TEST(Validate, WatchAndInspect) {
  v1::WatchFindingsRequest w;
  WatchParams wp;
  ASSERT_TRUE(parse(w, &wp).ok());
  w.add_kinds(static_cast<v1::FindingKind>(-1));
  expect_invalid(parse(w, &wp), "kinds");

  v1::InspectDomainRequest i;
  InspectParams ip;
  expect_invalid(parse(i, &ip), "domain");
  i.set_domain("demo");
  ASSERT_TRUE(parse(i, &ip).ok());
  EXPECT_EQ(ip.printk_records, 20);
  EXPECT_EQ(ip.timeout, std::chrono::seconds(5));
  i.set_printk_records(5000);
  expect_invalid(parse(i, &ip), "printk_records");
  i.set_printk_records(3);
  i.mutable_timeout()->set_seconds(120);
  expect_invalid(parse(i, &ip), "timeout");
  i.mutable_timeout()->set_seconds(0);
  i.mutable_timeout()->set_nanos(250'000'000);
  InspectParams ok;
  ASSERT_TRUE(parse(i, &ok).ok());
  EXPECT_EQ(ok.timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(ok.printk_records, 3);
}

}  // namespace
}  // namespace stallmon::server
