// Output helpers for the `outpost` CLI's human-readable mode: aligned
// tables, times, sizes, progress bars, and JSON field access that never
// throws on an unexpected shape (the hub may add or change fields).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace outpost::cli {

// Columns separated by two spaces, padded to the widest cell; the header
// row in capitals. Prints "(none)" under the header when there are no rows.
class Table {
 public:
  explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  void AddRow(std::vector<std::string> cells);
  void Print(std::ostream& out) const;
  size_t rows() const { return rows_.size(); }

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// `j[key]` as display text: strings as they are, numbers and booleans as
// JSON, null / missing / not an object as "".
std::string Text(const nlohmann::json& j, std::string_view key);
// `j[key]` as an integer (0 when missing or not a number).
int64_t Int(const nlohmann::json& j, std::string_view key);
// `j[key]` if it is an array/object, else an empty one.
const nlohmann::json& Array(const nlohmann::json& j, std::string_view key);
const nlohmann::json& Object(const nlohmann::json& j, std::string_view key);

// Unix ms as "2024-05-01 12:00:03Z" (UTC); "-" for 0.
std::string FormatTime(int64_t unix_ms);
// How long before `now_ms` `then_ms` was: "3s ago", "5m ago", "2h ago",
// "4d ago"; "never" for 0; "just now" when not before now.
std::string FormatAgo(int64_t then_ms, int64_t now_ms);
// 1536 -> "1.5 KiB".
std::string FormatBytes(uint64_t bytes);
// "k=v, k2=v2" of a JSON object of labels; "-" when empty.
std::string FormatLabels(const nlohmann::json& labels);
// "[#######.............]" for fraction in [0, 1].
std::string ProgressBar(double fraction, int width = 20);
// A cell that is "-" when empty.
std::string OrDash(std::string text);

// Prints an upload's progress on `err`: on a terminal one line redrawn
// (at most ~10 times a second), otherwise a line at every 10% so logs stay
// short.
class UploadProgress {
 public:
  UploadProgress(std::ostream& err, std::string label, bool interactive)
      : err_(err), label_(std::move(label)), interactive_(interactive) {}
  void Update(uint64_t sent, uint64_t total);
  // Ends the redrawn line (terminal only).
  void Finish();

 private:
  std::ostream& err_;
  std::string label_;
  bool interactive_;
  int last_decile_ = -1;
  int64_t last_draw_ms_ = 0;
  bool drawn_ = false;
};

}  // namespace outpost::cli
