// SPDX-License-Identifier: Apache-2.0
// A small writer for the Prometheus text exposition format (version 0.0.4): HELP and TYPE lines,
// samples with escaped label values, histograms with cumulative `le` buckets, `_sum`, `_count`.
//
// Names are the caller's constants and are checked (an invalid one is a stallmon bug, reported
// by ok()/error() rather than written); label *values* are data (domain names, kinds) and are
// escaped, and bytes that are not valid UTF-8 are replaced, so no input can break the output.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stallmon::alerting {

enum class MetricType { kCounter, kGauge, kHistogram, kUntyped };
const char* to_string(MetricType t);  // "counter", "gauge", "histogram", "untyped"

using Labels = std::vector<std::pair<std::string, std::string>>;

// Escapes a label value: backslash, double quote and line feed (\\, \", \n); invalid UTF-8
// bytes become U+FFFD.
std::string escape_label_value(std::string_view value);
// Escapes HELP text: backslash and line feed.
std::string escape_help(std::string_view text);
// A sample value as Prometheus parses it: shortest round-trip decimal, "+Inf", "-Inf", "NaN".
std::string format_value(double v);
bool valid_metric_name(std::string_view name);  // [a-zA-Z_:][a-zA-Z0-9_:]*
bool valid_label_name(std::string_view name);   // [a-zA-Z_][a-zA-Z0-9_]*, not "__" prefixed

// Cumulative histogram: counts[i] = observations <= bounds[i]; `count` includes +Inf.
struct HistogramValue {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;
  uint64_t count = 0;
  double sum = 0;
};

class ExpositionWriter {
 public:
  // Starts a metric family: writes its HELP and TYPE lines. Every sample until the next
  // family() belongs to it. A family name may appear once per exposition.
  void family(std::string_view name, MetricType type, std::string_view help);
  // A sample of the current family (counter, gauge, untyped).
  void sample(const Labels& labels, double value);
  // The current family must be a histogram: writes _bucket{le=...} lines (+Inf last), _sum and
  // _count. counts shorter than bounds are treated as repeating the last count.
  void histogram(const Labels& labels, const HistogramValue& h);

  // False once a name was invalid, a family repeated, or a sample had no family; the offending
  // lines were not written.
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& text() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  void line(std::string_view name, const Labels& labels, const std::string* extra_le,
            double value);
  void fail(std::string why);

  std::string out_;
  std::string current_;
  MetricType current_type_ = MetricType::kUntyped;
  std::vector<std::string> seen_;
  std::string error_;
};

}  // namespace stallmon::alerting
