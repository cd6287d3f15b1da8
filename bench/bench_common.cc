#include "bench/bench_common.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <thread>

#include "absl/strings/str_format.h"

namespace outpost::bench {

absl::StatusOr<Flags> Flags::Parse(int argc, char** argv, std::vector<std::string_view> known) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (!arg.starts_with("--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", std::string(arg),
                       "': every option is --name value; see --help"));
    }
    arg.remove_prefix(2);
    std::string name, value;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else {
      name = arg;
      if (i + 1 < argc && !std::string_view(argv[i + 1]).starts_with("--")) {
        value = argv[++i];
      } else {
        value = "true";
      }
    }
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, "; see --help"));
    }
    flags.values_[name] = value;
  }
  return flags;
}

bool Flags::Has(std::string_view name) const { return values_.find(name) != values_.end(); }

std::string Flags::Get(std::string_view name, std::string_view fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::string(fallback) : it->second;
}

absl::StatusOr<double> Flags::GetDouble(std::string_view name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double v = 0;
  auto [end, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  if (ec != std::errc() || end != it->second.data() + it->second.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", std::string(name), ": expected a number, got '", it->second, "'"));
  }
  return v;
}

absl::StatusOr<int64_t> Flags::GetInt(std::string_view name, int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t v = 0;
  auto [end, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  if (ec != std::errc() || end != it->second.data() + it->second.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", std::string(name), ": expected an integer, got '", it->second, "'"));
  }
  return v;
}

Summary RunClosedLoop(const LoopOptions& options, const std::function<bool(int)>& op) {
  using Clock = std::chrono::steady_clock;
  const int n = std::max(1, options.concurrency);
  const bool by_count = options.requests > 0;

  // Room for ~40k requests/s per thread over the window, so the vector does
  // not grow while measuring (it still can, correctly, if the op is faster).
  size_t reserve = by_count ? static_cast<size_t>(options.requests / n + 16)
                            : static_cast<size_t>(options.duration_seconds * 40000 + 16);
  std::vector<std::vector<int64_t>> latencies(n);
  for (auto& v : latencies) v.reserve(std::min<size_t>(reserve, size_t{1} << 24));
  std::vector<int64_t> errors(n, 0);
  std::vector<Clock::time_point> last_done(n);

  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<int64_t> remaining{options.requests};
  Clock::time_point start, measure_from, measure_to;

  auto worker = [&](int w) {
    auto& lat = latencies[w];
    int64_t errs = 0;
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    Clock::time_point done = measure_from;
    for (;;) {
      Clock::time_point t0 = Clock::now();
      // By count: a request is measured when it starts after the warm-up
      // and wins one of the `requests` tickets.
      const bool counted = by_count && t0 >= measure_from;
      if (counted && remaining.fetch_sub(1, std::memory_order_relaxed) <= 0) break;
      bool ok = op(w);
      Clock::time_point t1 = Clock::now();
      if (by_count ? counted : (t1 >= measure_from && t1 <= measure_to)) {
        lat.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
        if (!ok) ++errs;
        done = t1;
      }
      if (!by_count && t1 >= measure_to) break;
    }
    errors[w] = errs;
    last_done[w] = done;
  };

  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int w = 0; w < n; ++w) threads.emplace_back(worker, w);
  while (ready.load() < n) std::this_thread::yield();
  start = Clock::now();
  measure_from = start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(options.warmup_seconds));
  measure_to = measure_from + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(options.duration_seconds));
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();

  Summary s;
  std::vector<int64_t> all;
  for (auto& v : latencies) all.insert(all.end(), v.begin(), v.end());
  for (int64_t e : errors) s.errors += e;
  s.requests = static_cast<int64_t>(all.size());
  if (by_count) {
    Clock::time_point end = *std::max_element(last_done.begin(), last_done.end());
    s.seconds = std::chrono::duration<double>(end - measure_from).count();
  } else {
    s.seconds = options.duration_seconds;
  }
  if (all.empty()) return s;
  std::sort(all.begin(), all.end());
  // Nearest-rank percentile.
  auto pct = [&](double p) {
    size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(all.size())));
    return static_cast<double>(all[std::clamp<size_t>(rank, 1, all.size()) - 1]) / 1e6;
  };
  s.p50_ms = pct(0.50);
  s.p95_ms = pct(0.95);
  s.p99_ms = pct(0.99);
  double sum = 0;
  for (int64_t v : all) sum += static_cast<double>(v);
  s.mean_ms = sum / static_cast<double>(all.size()) / 1e6;
  s.throughput_rps = s.seconds > 0 ? static_cast<double>(s.requests - s.errors) / s.seconds : 0;
  return s;
}

std::string SummaryJson(const Summary& s) {
  return absl::StrFormat(
      R"({"p50_ms":%.4f,"p95_ms":%.4f,"p99_ms":%.4f,"mean_ms":%.4f,"throughput_rps":%.2f,)"
      R"("requests":%d,"errors":%d,"seconds":%.3f})",
      s.p50_ms, s.p95_ms, s.p99_ms, s.mean_ms, s.throughput_rps, s.requests, s.errors, s.seconds);
}

Ort::SessionOptions ServeSessionOptions(int intra_op_threads, int inter_op_threads) {
  Ort::SessionOptions options;
  options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  options.SetIntraOpNumThreads(intra_op_threads);
  options.SetInterOpNumThreads(inter_op_threads);
  options.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
  options.EnableCpuMemArena();
  return options;
}

absl::StatusOr<Ort::Session> LoadSession(Ort::Env& env, const std::string& model_path,
                                         const Ort::SessionOptions& options) {
  try {
    return Ort::Session(env, model_path.c_str(), options);
  } catch (const Ort::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load ONNX model ", model_path, ": ",
                                                   e.what(),
                                                   " (generate it with scripts/bench.sh)"));
  }
}

int ToolMain(int argc, char** argv, const char* tool, std::vector<std::string_view> known,
             std::string_view usage, const std::function<int(const Flags&)>& run) {
  auto flags = Flags::Parse(argc, argv, std::move(known));
  if (!flags.ok()) {
    std::fprintf(stderr, "%s: %.*s\n%.*s", tool, static_cast<int>(flags.status().message().size()),
                 flags.status().message().data(), static_cast<int>(usage.size()), usage.data());
    return 2;
  }
  if (flags->Has("help")) {
    std::fwrite(usage.data(), 1, usage.size(), stdout);
    return 0;
  }
  try {
    return run(*flags);
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "%s: ONNX Runtime: %s\n", tool, e.what());
    return 1;
  }
}

}  // namespace outpost::bench
