// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/exposition.h"

#include <gtest/gtest.h>

#include <cmath>

namespace stallmon::alerting {
namespace {

TEST(Exposition, EscapesLabelValues) {
  EXPECT_EQ(escape_label_value("plain"), "plain");
  EXPECT_EQ(escape_label_value("a\"b"), "a\\\"b");
  EXPECT_EQ(escape_label_value("a\\b"), "a\\\\b");
  EXPECT_EQ(escape_label_value("a\nb"), "a\\nb");
  EXPECT_EQ(escape_label_value("caf\xC3\xA9"), "caf\xC3\xA9");  // valid UTF-8 kept
  EXPECT_EQ(escape_label_value("x\xFFy"), "x\xEF\xBF\xBDy");     // invalid byte replaced
  EXPECT_EQ(escape_label_value("\xC3"), "\xEF\xBF\xBD");          // truncated sequence
  EXPECT_EQ(escape_label_value("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong NUL
}

TEST(Exposition, EscapesHelpButNotQuotes) {
  EXPECT_EQ(escape_help("say \"hi\"\\\n"), "say \"hi\"\\\\\\n");
}

TEST(Exposition, FormatsValues) {
  EXPECT_EQ(format_value(0), "0");
  EXPECT_EQ(format_value(1), "1");
  EXPECT_EQ(format_value(0.1), "0.1");
  EXPECT_EQ(format_value(1234567), "1234567");
  EXPECT_EQ(format_value(INFINITY), "+Inf");
  EXPECT_EQ(format_value(-INFINITY), "-Inf");
  EXPECT_EQ(format_value(NAN), "NaN");
  EXPECT_EQ(format_value(2.5e-05), "2.5e-05");
}

TEST(Exposition, ValidatesNames) {
  EXPECT_TRUE(valid_metric_name("stallmon_x:y_total"));
  EXPECT_FALSE(valid_metric_name("1abc"));
  EXPECT_FALSE(valid_metric_name("a-b"));
  EXPECT_FALSE(valid_metric_name(""));
  EXPECT_TRUE(valid_label_name("domain"));
  EXPECT_FALSE(valid_label_name("__name__"));
  EXPECT_FALSE(valid_label_name("a:b"));
}

TEST(Exposition, WritesFamiliesAndSamples) {
  ExpositionWriter w;
  w.family("stallmon_x_total", MetricType::kCounter, "Things.\nMore.");
  w.sample({{"domain", "vm \"1\""}, {"vcpu", "2"}}, 3);
  w.sample({}, 4.5);
  ASSERT_TRUE(w.ok()) << w.error();
  EXPECT_EQ(w.text(),
            "# HELP stallmon_x_total Things.\\nMore.\n"
            "# TYPE stallmon_x_total counter\n"
            "stallmon_x_total{domain=\"vm \\\"1\\\"\",vcpu=\"2\"} 3\n"
            "stallmon_x_total 4.5\n");
}

TEST(Exposition, WritesHistogramBucketsSumCount) {
  ExpositionWriter w;
  w.family("stallmon_lat_seconds", MetricType::kHistogram, "Latency.");
  w.histogram({{"a", "b"}}, HistogramValue{{0.1, 1}, {2, 5}, 7, 3.25});
  ASSERT_TRUE(w.ok()) << w.error();
  EXPECT_EQ(w.text(),
            "# HELP stallmon_lat_seconds Latency.\n"
            "# TYPE stallmon_lat_seconds histogram\n"
            "stallmon_lat_seconds_bucket{a=\"b\",le=\"0.1\"} 2\n"
            "stallmon_lat_seconds_bucket{a=\"b\",le=\"1\"} 5\n"
            "stallmon_lat_seconds_bucket{a=\"b\",le=\"+Inf\"} 7\n"
            "stallmon_lat_seconds_sum{a=\"b\"} 3.25\n"
            "stallmon_lat_seconds_count{a=\"b\"} 7\n");
}

TEST(Exposition, EmptyHistogramHasInfBucket) {
  ExpositionWriter w;
  w.family("h", MetricType::kHistogram, "h");
  w.histogram({}, HistogramValue{});
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w.text(), "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n");
}

TEST(Exposition, RejectsBadInputWithoutWritingIt) {
  {
    ExpositionWriter w;
    w.family("bad-name", MetricType::kGauge, "x");
    w.sample({}, 1);
    EXPECT_FALSE(w.ok());
    EXPECT_EQ(w.text(), "");
  }
  {
    ExpositionWriter w;
    w.family("a", MetricType::kGauge, "x");
    w.family("a", MetricType::kGauge, "x");
    EXPECT_FALSE(w.ok());
  }
  {
    ExpositionWriter w;
    w.family("a", MetricType::kGauge, "x");
    w.sample({{"__x", "1"}}, 1);
    EXPECT_FALSE(w.ok());
  }
  {
    ExpositionWriter w;
    w.family("h", MetricType::kHistogram, "x");
    w.histogram({}, HistogramValue{{1, 0.5}, {1, 1}, 1, 0});
    EXPECT_FALSE(w.ok());
  }
}

}  // namespace
}  // namespace stallmon::alerting
