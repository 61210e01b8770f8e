// SPDX-License-Identifier: Apache-2.0
// `stallctl incident ID` (format_incident) and `--html` (render_incident_html): the structure of
// the report, on an incident built like seed case 1 (vCPU 2 blocked in D on the host, CPU0
// waiting on CPU2's csd). Whether a browser renders it is the later real-browser check.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "format.h"
#include "incident_html.h"

namespace stallmon::server::client {
namespace {

void at(google::protobuf::Timestamp* t, int64_t ms) {
  const int64_t base = 1'795'248'000'000;  // ms
  t->set_seconds((base + ms) / 1000);
  t->set_nanos(static_cast<int32_t>(((base + ms) % 1000) * 1'000'000));
}

// 4 vCPUs over 70 s at 1 Hz: vCPU 2 in D from 60 s to 66 s; CPU0 waits on CPU2 from 61 to 66 s
// and, later, on CPU1 for one snapshot (a second, separate wait).
v1::Incident seed_case() {
  v1::Incident r;
  auto* f = r.mutable_finding();
  f->set_id("demo/VCPU_HOST_BLOCKED/vcpu2/4");
  f->set_kind(v1::VCPU_HOST_BLOCKED);
  f->set_severity(v1::CRITICAL);
  f->set_domain("demo");
  f->set_summary("vCPU 2 <blocked> & \"stuck\" in D");
  f->add_evidence()->set_text("CPU0 waits on CPU2's csd");
  at(f->mutable_onset(), 60'000);
  at(r.mutable_window_start(), 0);
  at(r.mutable_window_end(), 66'500);
  r.set_complete(true);
  for (int v = 0; v < 4; ++v) {
    auto* lane = r.add_vcpus();
    lane->set_vcpu(v);
    lane->set_host_tid(1000 + v);
    for (int s = 0; s <= 66; ++s) {
      auto* p = lane->add_points();
      at(p->mutable_at(), s * 1000);
      p->set_state(v == 2 && s >= 60 ? v1::THREAD_STATE_DISK_SLEEP : v1::THREAD_STATE_RUNNING);
    }
    auto* g = r.add_guest_cpus();
    g->set_cpu(v);
    for (int s = 0; s <= 66; ++s) {
      auto* p = g->add_points();
      at(p->mutable_at(), s * 1000);
      p->set_online(true);
      p->set_idle(v == 3);
      p->set_csd_target(v == 0 && s >= 61 && s < 66 ? 2 : v == 0 && s == 30 ? 1 : -1);
      p->mutable_watchdog_age()->set_seconds(v == 2 && s >= 60 ? s - 59 : 1);
    }
  }
  auto* w = r.mutable_at_worst();
  at(w->mutable_at(), 65'000);
  auto* c = w->add_cpus();
  c->set_cpu(0);
  c->set_current_comm("<script>alert(1)</script>");
  c->add_waiting_on(2);
  w->set_troubled_cpus(1);
  auto* h = r.add_host_stacks();
  h->set_tid(1002);
  h->set_vcpu(2);
  h->set_name("CPU 2/KVM");
  h->set_state(v1::THREAD_STATE_DISK_SLEEP);
  h->add_frames("fuse_wait_answer");
  h->add_frames("kvm_vcpu_ioctl");
  auto* rel = r.add_related();
  rel->set_id(f->id());
  rel->set_kind(v1::VCPU_HOST_BLOCKED);
  rel->set_severity(v1::CRITICAL);
  at(rel->mutable_onset(), 60'000);
  at(rel->mutable_resolved_at(), 66'500);
  auto* rel2 = r.add_related();
  rel2->set_id("demo/GUEST_IPI_STALL/root=cpu2/5");
  rel2->set_kind(v1::GUEST_IPI_STALL);
  at(rel2->mutable_onset(), 61'000);
  r.add_printk_tail("[   60.1] <6>hello & goodbye");
  return r;
}

// A small XML well-formedness check: every tag closed in order, attributes quoted, entities
// known, no stray '<' or '&' in text. Returns what is wrong, or "".
std::string xml_problem(const std::string& doc) {
  std::vector<std::string> open;
  std::size_t i = doc.find("<html");
  if (i == std::string::npos) return "no <html>";
  while (i < doc.size()) {
    if (doc[i] == '&') {
      const std::size_t semi = doc.find(';', i);
      const std::string ent = semi == std::string::npos ? "" : doc.substr(i, semi - i + 1);
      if (ent != "&amp;" && ent != "&lt;" && ent != "&gt;" && ent != "&quot;" && ent != "&#39;")
        return "bad entity at " + std::to_string(i);
      i = semi + 1;
      continue;
    }
    if (doc[i] != '<') {
      ++i;
      continue;
    }
    const std::size_t end = doc.find('>', i);
    if (end == std::string::npos) return "unterminated tag";
    std::string tag = doc.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.find('<') != std::string::npos) return "'<' inside a tag: " + tag;
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) return "unbalanced quotes: " + tag;
    if (tag.rfind("/", 0) == 0) {
      const std::string name = tag.substr(1);
      if (open.empty() || open.back() != name) return "</" + name + "> closes " + (open.empty() ? "nothing" : open.back());
      open.pop_back();
      continue;
    }
    if (!tag.empty() && tag.back() == '/') continue;  // self-closed
    const std::string name = tag.substr(0, tag.find_first_of(" \n"));
    if (name == "style") {  // CSS text: skip to its end
      const std::size_t close = doc.find("</style>", i);
      if (close == std::string::npos) return "unclosed style";
      i = close + 8;
      continue;
    }
    open.push_back(name);
  }
  return open.empty() ? "" : "unclosed <" + open.back() + ">";
}

std::size_t count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// The number in attribute `name` of the element that starts at or after `from` (string search:
// std::regex trips GCC 12's -Wmaybe-uninitialized inside <regex> in the ASan build).
double attribute(const std::string& html, std::size_t from, const std::string& name) {
  const std::size_t at = html.find(" " + name + "=\"", from);
  return at == std::string::npos ? -1 : std::stod(html.substr(at + name.size() + 3));
}

TEST(IncidentHtml, IsWellFormedAndSelfContained) {
  const std::string html = render_incident_html(seed_case());
  EXPECT_EQ(xml_problem(html), "");
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  // Nothing loaded from anywhere: no scripts at all, no links, no src, no URLs but the arrow's
  // own marker.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("http"), std::string::npos);
  EXPECT_EQ(html.find("@import"), std::string::npos);
  // The only url() is the arrow marker's, inside the document.
  EXPECT_EQ(count(html, "url("), count(html, "url(#arrow)"));
  // Guest text is escaped.
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("vCPU 2 &lt;blocked&gt; &amp; &quot;stuck&quot; in D"), std::string::npos);
  EXPECT_NE(html.find("&lt;6&gt;hello &amp; goodbye"), std::string::npos);
}

TEST(IncidentHtml, HasALanePerVcpuAndGuestCpuAndArrowsForCsdWaits) {
  const v1::Incident r = seed_case();
  const std::string html = render_incident_html(r);
  EXPECT_EQ(count(html, "class=\"lane vcpu\""), 4u);
  EXPECT_EQ(count(html, "class=\"lane guest\""), 4u);
  for (int v = 0; v < 4; ++v) {
    EXPECT_NE(html.find("data-vcpu=\"" + std::to_string(v) + "\""), std::string::npos);
    EXPECT_NE(html.find("data-cpu=\"" + std::to_string(v) + "\""), std::string::npos);
  }
  // vCPU 2's blocked span: D from 60 s on, one rect (samples merged into spans).
  const std::size_t lane2 = html.find("data-vcpu=\"2\"");
  const std::size_t lane3 = html.find("data-vcpu=\"3\"");
  const std::string l2 = html.substr(lane2, lane3 - lane2);
  EXPECT_EQ(count(l2, "class=\"st-d\""), 1u);
  EXPECT_EQ(count(l2, "class=\"st-r\""), 1u);
  // Two csd waits of CPU0: on CPU2 (61..65 s) and on CPU1 (30 s); none from the other CPUs.
  EXPECT_EQ(count(html, "class=\"csd-wait\""), 2u);
  EXPECT_EQ(count(html, "class=\"csd-wait\" data-waiter=\"0\" data-target=\"2\""), 1u);
  EXPECT_EQ(count(html, "class=\"csd-wait\" data-waiter=\"0\" data-target=\"1\""), 1u);
  EXPECT_EQ(count(html, "marker-end=\"url(#arrow)\""), 2u);
  // Onsets of both related findings, the resolution of the resolved one.
  EXPECT_EQ(count(html, "class=\"onset\""), 2u);
  EXPECT_EQ(count(html, "class=\"resolution\""), 1u);
  // The watchdog age lines.
  EXPECT_EQ(count(html, "class=\"wd\""), 4u);
  // The arrow to CPU2 points down to CPU2's lane: its y2 is below its y1.
  const std::size_t arrow = html.find("data-target=\"2\"");
  ASSERT_NE(arrow, std::string::npos);
  EXPECT_GT(attribute(html, arrow, "y2"), attribute(html, arrow, "y1"));
}

// The width of the first D-state span.
double blocked_width(const std::string& html) {
  const std::size_t rect = html.find("<rect class=\"st-d\"");
  return rect == std::string::npos ? -1 : attribute(html, rect, "width");
}

// A daemon that started just before the onset holds no lookback: the axis starts at the first
// sample (seen on a real guest: a 60-s empty window squeezed the incident into a tenth of the
// picture), and its ticks stay at whole seconds from the onset.
TEST(IncidentHtml, TheAxisStartsAtTheFirstSampleWhenTheLookbackIsShort) {
  v1::Incident r = seed_case();
  for (auto* lanes : {r.mutable_vcpus()}) {
    for (auto& l : *lanes) l.mutable_points()->DeleteSubrange(0, 58);  // from 58 s on
  }
  for (auto& l : *r.mutable_guest_cpus()) l.mutable_points()->DeleteSubrange(0, 58);
  const std::string html = render_incident_html(r);
  EXPECT_EQ(xml_problem(html), "");
  EXPECT_EQ(html.find(">-60s<"), std::string::npos) << "the empty lookback is drawn";
  EXPECT_NE(html.find(">-2s<"), std::string::npos);
  EXPECT_NE(html.find(">0s<"), std::string::npos);
  // vCPU 2's D span (60..66.5 s of a 58..66.5 s axis) fills most of the 1000-px axis.
  EXPECT_GT(blocked_width(html), 600.0);
  // The full lookback keeps the whole window: the same span is a tenth of it.
  const std::string full = render_incident_html(seed_case());
  EXPECT_LT(blocked_width(full), 150.0);
  EXPECT_NE(full.find(">-60s<"), std::string::npos);
}

TEST(IncidentHtml, AnEmptyOrActiveBundleStillRenders) {
  v1::Incident r;
  r.mutable_finding()->set_id("x");
  EXPECT_EQ(xml_problem(render_incident_html(r)), "");
  v1::Incident active = seed_case();
  active.clear_window_end();
  active.set_complete(false);
  const std::string html = render_incident_html(active);
  EXPECT_EQ(xml_problem(html), "");
  EXPECT_NE(html.find("still active"), std::string::npos);
}

TEST(IncidentHtml, WriteReportsTheFailingPath) {
  auto bad = write_incident_html(seed_case(), "/nonexistent-dir/report.html");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("/nonexistent-dir/report.html"), std::string::npos);
  const std::string path = ::testing::TempDir() + "incident_report_test.html";
  ASSERT_TRUE(write_incident_html(seed_case(), path).ok());
  std::ifstream in(path);
  const std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(back, render_incident_html(seed_case()));
  std::remove(path.c_str());
}

TEST(IncidentText, ShowsLanesSnapshotsStacksAndDrops) {
  v1::Incident r = seed_case();
  r.mutable_dropped()->set_vcpu_points(12);
  r.mutable_stride()->set_seconds(2);
  const std::string t = format_incident(r);
  EXPECT_NE(t.find("incident of demo/VCPU_HOST_BLOCKED/vcpu2/4 (VCPU_HOST_BLOCKED, critical) on demo"), std::string::npos) << t;
  EXPECT_NE(t.find("(resolved)"), std::string::npos);
  // vCPU 2: 60 s running, 6 s in D (each sample stands until the next).
  EXPECT_NE(t.find("D 6.0 s R 1 min 0 s"), std::string::npos) << t;
  // CPU0 waited on two CPUs.
  EXPECT_NE(t.find("CPU1,CPU2"), std::string::npos) << t;
  EXPECT_NE(t.find("guest snapshot at the worst point"), std::string::npos);
  EXPECT_EQ(t.find("guest snapshot at onset"), std::string::npos) << "none in this bundle";
  EXPECT_NE(t.find("fuse_wait_answer"), std::string::npos);
  EXPECT_NE(t.find("demo/GUEST_IPI_STALL/root=cpu2/5"), std::string::npos);
  EXPECT_NE(t.find("12 vCPU samples"), std::string::npos);
  EXPECT_NE(t.find("kept one per 2.0 s"), std::string::npos);
  r.clear_dropped();
  EXPECT_EQ(format_incident(r).find("dropped by"), std::string::npos);
}

}  // namespace
}  // namespace stallmon::server::client
