#include "cli/format.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <ostream>

#include "common/status.h"

namespace outpost::cli {
namespace {

using json = nlohmann::json;

const json& Member(const json& j, std::string_view key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(std::string(key));
  return it == j.end() ? kNull : *it;
}

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void Table::AddRow(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

void Table::Print(std::ostream& out) const {
  std::vector<size_t> widths(headers_.size());
  for (size_t c = 0; c < headers_.size(); ++c) widths[c] = headers_[c].size();
  for (const auto& row : rows_) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  auto print_row = [&](const std::vector<std::string>& row, bool header) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      std::string cell = header ? Upper(row[c]) : row[c];
      if (c + 1 < row.size()) cell.resize(std::max(widths[c], cell.size()), ' ');
      StrAppend(&line, c == 0 ? "" : "  ", cell);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  };
  print_row(headers_, true);
  for (const auto& row : rows_) print_row(row, false);
  if (rows_.empty()) out << "(none)\n";
}

std::string Text(const json& j, std::string_view key) {
  const json& v = Member(j, key);
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

int64_t Int(const json& j, std::string_view key) {
  const json& v = Member(j, key);
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number()) return static_cast<int64_t>(v.get<double>());
  return 0;
}

const json& Array(const json& j, std::string_view key) {
  static const json kEmpty = json::array();
  const json& v = Member(j, key);
  return v.is_array() ? v : kEmpty;
}

const json& Object(const json& j, std::string_view key) {
  static const json kEmpty = json::object();
  const json& v = Member(j, key);
  return v.is_object() ? v : kEmpty;
}

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

std::string FormatAgo(int64_t then_ms, int64_t now_ms) {
  if (then_ms <= 0) return "never";
  int64_t s = (now_ms - then_ms) / 1000;
  if (s <= 0) return "just now";
  if (s < 120) return StrCat(s, "s ago");
  if (s < 2 * 3600) return StrCat(s / 60, "m ago");
  if (s < 2 * 86400) return StrCat(s / 3600, "h ago");
  return StrCat(s / 86400, "d ago");
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", value, kUnits[unit]);
  }
  return buf;
}

std::string FormatLabels(const json& labels) {
  if (!labels.is_object() || labels.empty()) return "-";
  std::string out;
  for (auto it = labels.begin(); it != labels.end(); ++it) {
    std::string value = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    StrAppend(&out, out.empty() ? "" : ",", it.key(), "=", value);
  }
  return out;
}

std::string ProgressBar(double fraction, int width) {
  fraction = std::clamp(fraction, 0.0, 1.0);
  int filled = static_cast<int>(fraction * width + 0.5);
  return StrCat("[", std::string(filled, '#'), std::string(width - filled, '.'), "]");
}

std::string OrDash(std::string text) { return text.empty() ? "-" : text; }

void UploadProgress::Update(uint64_t sent, uint64_t total) {
  const double fraction = total > 0 ? static_cast<double>(sent) / total : 1.0;
  const int percent = static_cast<int>(fraction * 100);
  std::string line = StrCat(label_, " ", ProgressBar(fraction), " ", percent, "% (",
                            FormatBytes(sent), " of ", FormatBytes(total), ")");
  if (interactive_) {
    const int64_t now = SteadyMs();
    if (sent != total && now - last_draw_ms_ < 100) return;
    last_draw_ms_ = now;
    err_ << "\r" << line << "\x1b[K" << std::flush;
    drawn_ = true;
    return;
  }
  const int decile = percent / 10;
  if (decile == last_decile_) return;
  last_decile_ = decile;
  err_ << line << "\n";
}

void UploadProgress::Finish() {
  if (drawn_) err_ << "\n";
  drawn_ = false;
}

}  // namespace outpost::cli
