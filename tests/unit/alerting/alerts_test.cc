// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/alerts.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace stallmon::alerting {
namespace {

using namespace std::chrono_literals;

diagnosis::Finding ipi_stall() {
  diagnosis::Finding f;
  f.id = "vm1/GUEST_IPI_STALL/2/1";
  f.kind = diagnosis::FindingKind::kGuestIpiStall;
  f.severity = diagnosis::Severity::kCritical;
  f.cause = diagnosis::Cause::kHostBlocked;
  f.domain = "vm1";
  f.cpus = {0, 2};
  f.onset = diagnosis::Timestamp(std::chrono::seconds(1'700'000'000)) + 123ms;
  f.summary = "CPU0 has waited 1.4 s for CPU2";
  f.evidence.resize(2);
  f.evidence[0].text = "CPU0 waits for CPU2 (do_sync_core) for 1.4 s";
  f.evidence[1].text = "vCPU 2 host thread in D for 1.5 s";
  f.evidence[1].host_stack = {"__refrigerator"};
  f.explained_by = "vm1/VCPU_HOST_BLOCKED/2/1";
  return f;
}

TEST(Alerts, LabelVocabulary) {
  EXPECT_EQ(alertname_for(diagnosis::FindingKind::kGuestIpiStall), "StallmonGuestIpiStall");
  EXPECT_EQ(alertname_for(diagnosis::FindingKind::kVcpuHostBlocked), "StallmonVcpuHostBlocked");
  EXPECT_EQ(alertname_for(diagnosis::FindingKind::kGuestStackOverflow), "StallmonGuestStackOverflow");
  EXPECT_EQ(kind_label(diagnosis::FindingKind::kGuestStackOverflow), "GUEST_STACK_OVERFLOW");
  EXPECT_EQ(severity_label(diagnosis::Severity::kWarning), "warning");
  EXPECT_EQ(cause_label(diagnosis::Cause::kGuestIrqsOff), "guest_irqs_off");
  EXPECT_EQ(cause_label(diagnosis::Cause::kUnknown), "unknown");
  EXPECT_EQ(kind_label(diagnosis::FindingKind::kGuestSoftlockupImminent),
            "GUEST_SOFTLOCKUP_IMMINENT");
}

TEST(Alerts, PanicMessageIsItsOwnAnnotation) {
  diagnosis::Finding f = ipi_stall();
  f.kind = diagnosis::FindingKind::kGuestPanic;
  EXPECT_EQ(alert_from_finding(f, {}, std::nullopt).annotations.count("panic_message"), 0u);
  diagnosis::Evidence text;
  text.text = "oops/panic text:\nKernel panic - not syncing: Fatal exception";
  text.panic_text = diagnosis::PanicTextEvidence{1, "Kernel panic - not syncing: Fatal exception"};
  f.evidence.push_back(std::move(text));
  const auto a = alert_from_finding(f, {}, std::nullopt);
  EXPECT_EQ(a.annotations.at("panic_message"), "Kernel panic - not syncing: Fatal exception");
}

TEST(Alerts, Rfc3339) {
  EXPECT_EQ(format_rfc3339(diagnosis::Timestamp(std::chrono::seconds(1'700'000'000)) + 45ms),
            "2023-11-14T22:13:20.045Z");
}

TEST(Alerts, FromFinding) {
  AlertOptions o;
  o.host = "hv1";
  o.generator_url = "http://hv1:9910/";
  const auto a = alert_from_finding(ipi_stall(), o, std::nullopt);
  EXPECT_EQ(a.labels.at("alertname"), "StallmonGuestIpiStall");
  EXPECT_EQ(a.labels.at("host"), "hv1");
  EXPECT_EQ(a.labels.at("domain"), "vm1");
  EXPECT_EQ(a.labels.at("kind"), "GUEST_IPI_STALL");
  EXPECT_EQ(a.labels.at("severity"), "critical");
  EXPECT_EQ(a.labels.at("cause"), "host_blocked");
  EXPECT_EQ(a.labels.at("cpus"), "0,2");
  EXPECT_EQ(a.labels.at("finding_id"), "vm1/GUEST_IPI_STALL/2/1");
  EXPECT_EQ(a.annotations.at("summary"), "CPU0 has waited 1.4 s for CPU2");
  EXPECT_EQ(a.annotations.at("evidence"),
            "CPU0 waits for CPU2 (do_sync_core) for 1.4 s\nvCPU 2 host thread in D for 1.5 s");
  EXPECT_EQ(a.annotations.at("explained_by"), "vm1/VCPU_HOST_BLOCKED/2/1");
  EXPECT_EQ(a.starts_at, ipi_stall().onset);
  EXPECT_FALSE(a.ends_at);
}

TEST(Alerts, JsonIsPostableAlertArray) {
  AlertOptions o;
  o.host = "hv1";
  auto a = alert_from_finding(ipi_stall(), o,
                              diagnosis::Timestamp(std::chrono::seconds(1'700'000'100)));
  a.annotations["summary"] = "bad \xFF byte";
  const auto j = nlohmann::json::parse(alerts_to_json({a}));
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["labels"]["kind"], "GUEST_IPI_STALL");
  EXPECT_EQ(j[0]["startsAt"], "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(j[0]["endsAt"], "2023-11-14T22:15:00.000Z");
  EXPECT_FALSE(j[0].contains("generatorURL"));
  EXPECT_EQ(j[0]["annotations"]["summary"], "bad \xEF\xBF\xBD byte");
}

TEST(Alerts, LongEvidenceIsCut) {
  auto f = ipi_stall();
  f.evidence.clear();
  for (int i = 0; i < 20; ++i) {
    diagnosis::Evidence e;
    e.text = std::string(500, 'x');
    f.evidence.push_back(std::move(e));
  }
  AlertOptions o;
  o.max_evidence_lines = 3;
  o.max_annotation_bytes = 1000;
  const auto a = alert_from_finding(f, o, std::nullopt);
  EXPECT_LE(a.annotations.at("evidence").size(), 1000u);
  EXPECT_EQ(a.annotations.at("evidence").substr(a.annotations.at("evidence").size() - 3), "...");
}

}  // namespace
}  // namespace stallmon::alerting
