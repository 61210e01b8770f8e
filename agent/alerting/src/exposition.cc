// SPDX-License-Identifier: Apache-2.0
#include "stallmon/alerting/exposition.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "stallmon/base/utf8.h"

namespace stallmon::alerting {

const char* to_string(MetricType t) {
  switch (t) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
    case MetricType::kUntyped: return "untyped";
  }
  return "untyped";
}

namespace {


std::string escape(std::string_view in, bool quote) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size();) {
    const char c = in[i];
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      const size_t n = utf8_sequence_length(in, i);
      if (n == 0) {
        out += "\xEF\xBF\xBD";  // U+FFFD
        ++i;
        continue;
      }
      out.append(in.substr(i, n));
      i += n;
      continue;
    }
    ++i;
  }
  return out;
}

bool name_chars(std::string_view name, bool colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                       (colon && c == ':');
    const bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

}  // namespace

std::string escape_label_value(std::string_view value) { return escape(value, true); }
std::string escape_help(std::string_view text) { return escape(text, false); }

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

bool valid_metric_name(std::string_view name) { return name_chars(name, true); }
bool valid_label_name(std::string_view name) {
  return name_chars(name, false) && name.substr(0, 2) != "__";
}

void ExpositionWriter::fail(std::string why) {
  if (error_.empty()) error_ = std::move(why);
}

void ExpositionWriter::family(std::string_view name, MetricType type, std::string_view help) {
  current_.clear();
  if (!valid_metric_name(name)) return fail("invalid metric name: " + std::string(name));
  if (std::find(seen_.begin(), seen_.end(), name) != seen_.end()) {
    return fail("metric family repeated: " + std::string(name));
  }
  seen_.emplace_back(name);
  current_ = name;
  current_type_ = type;
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += escape_help(help);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += to_string(type);
  out_ += '\n';
}

void ExpositionWriter::line(std::string_view name, const Labels& labels,
                            const std::string* extra_le, double value) {
  std::string l(name);
  if (!labels.empty() || extra_le) {
    l += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!valid_label_name(k) || (extra_le && k == "le")) {
        return fail("invalid label name in " + std::string(name) + ": " + k);
      }
      if (!first) l += ',';
      first = false;
      l += k;
      l += "=\"";
      l += escape_label_value(v);
      l += '"';
    }
    if (extra_le) {
      if (!first) l += ',';
      l += "le=\"";
      l += *extra_le;
      l += '"';
    }
    l += '}';
  }
  l += ' ';
  l += format_value(value);
  l += '\n';
  out_ += l;
}

void ExpositionWriter::sample(const Labels& labels, double value) {
  if (current_.empty()) return fail("sample without a (valid) family");
  if (current_type_ == MetricType::kHistogram) {
    return fail("plain sample in histogram " + current_);
  }
  line(current_, labels, nullptr, value);
}

void ExpositionWriter::histogram(const Labels& labels, const HistogramValue& h) {
  if (current_.empty()) return fail("histogram without a (valid) family");
  if (current_type_ != MetricType::kHistogram) return fail("histogram in non-histogram " + current_);
  uint64_t last = 0;
  double prev_bound = -INFINITY;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    // Buckets must be increasing and cumulative; a bad bound list would make Prometheus reject
    // the whole scrape, so it is an error here instead.
    if (!(h.bounds[i] > prev_bound) || std::isinf(h.bounds[i])) {
      return fail("histogram " + current_ + ": bounds not increasing and finite");
    }
    prev_bound = h.bounds[i];
    if (i < h.counts.size()) last = std::max(last, h.counts[i]);
    const std::string le = format_value(h.bounds[i]);
    line(current_ + "_bucket", labels, &le, static_cast<double>(last));
  }
  const std::string inf = "+Inf";
  line(current_ + "_bucket", labels, &inf, static_cast<double>(std::max(last, h.count)));
  line(current_ + "_sum", labels, nullptr, h.sum);
  line(current_ + "_count", labels, nullptr, static_cast<double>(std::max(last, h.count)));
}

}  // namespace stallmon::alerting
