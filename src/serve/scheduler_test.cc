#include "serve/scheduler.h"

#include <gtest/gtest.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace outpost::serve {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr auto kWait = seconds(30);  // generous: CI machines are slow, never hit when correct

std::unique_ptr<Engine> LoadEngine(const std::string& model, int64_t max_batch_size) {
  const char* dir = std::getenv("OUTPOST_TEST_MODELS");
  EXPECT_NE(dir, nullptr) << "OUTPOST_TEST_MODELS is not set; run the test through ctest";
  if (dir == nullptr) return nullptr;
  EngineOptions options;
  options.model_path = std::filesystem::path(dir) / model / "1" / "model.onnx";
  options.config.max_batch_size = max_batch_size;
  options.config.intra_op_threads = 1;
  options.model_name = model;
  options.version = 1;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

SchedulerOptions Options(std::string name, int64_t max_batch_size) {
  SchedulerOptions options;
  options.name = std::move(name);
  options.max_batch_size = max_batch_size;
  return options;
}

DynamicBatching Batching(int64_t delay_us, std::vector<int64_t> preferred = {}) {
  DynamicBatching batching;
  batching.max_queue_delay_us = delay_us;
  batching.preferred_batch_sizes = std::move(preferred);
  return batching;
}

template <typename T>
std::span<const std::byte> Bytes(const std::vector<T>& values) {
  return std::as_bytes(std::span<const T>(values));
}

// add_one: y = x + 1, x: FP32[rows, 4]. `values` must outlive the request.
InferRequest AddOneRequest(const std::vector<float>& values) {
  InferRequest request;
  const int64_t rows = static_cast<int64_t>(values.size() / 4);
  request.inputs.push_back(InputTensor{"x", DataType::kFp32, {rows, 4}, Bytes(values)});
  return request;
}

std::vector<float> Rows(int64_t rows, float first) {
  std::vector<float> values(rows * 4);
  for (size_t i = 0; i < values.size(); ++i) values[i] = first + static_cast<float>(i);
  return values;
}

template <typename T>
std::vector<T> Values(const OutputTensor& tensor) {
  std::vector<T> out(tensor.data.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), tensor.data.data(), tensor.data.size());
  return out;
}

std::vector<float> PlusOne(std::vector<float> values) {
  for (float& v : values) v += 1;
  return values;
}

// Records each callback's result and how often it ran.
class Results {
 public:
  explicit Results(size_t n) : responses_(n), calls_(n) {}

  InferCallback Callback(size_t i) {
    return [this, i](absl::StatusOr<InferResponse> response) {
      std::lock_guard lock(mu_);
      responses_[i].emplace(std::move(response));
      ++calls_[i];
      ++total_;
      cv_.notify_all();
    };
  }

  bool WaitFor(int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return total_ >= n; });
  }
  int total() {
    std::lock_guard lock(mu_);
    return total_;
  }
  int calls(size_t i) {
    std::lock_guard lock(mu_);
    return calls_[i];
  }
  const absl::StatusOr<InferResponse>& operator[](size_t i) {
    std::lock_guard lock(mu_);
    return *responses_[i];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::optional<absl::StatusOr<InferResponse>>> responses_;
  std::vector<int> calls_;
  int total_ = 0;
};

// A callback that holds its instance thread until Open(), so that the test
// controls exactly what is queued when the thread comes back (no timing).
class Gate {
 public:
  InferCallback Hold(std::function<void()> after = {}) {
    return [this, after = std::move(after)](absl::StatusOr<InferResponse> response) {
      EXPECT_TRUE(response.ok()) << response.status();
      std::unique_lock lock(mu_);
      held_ = true;
      cv_.notify_all();
      // Bounded, so that a failing test ends instead of hanging in Drain.
      EXPECT_TRUE(cv_.wait_for(lock, kWait, [&] { return open_; }));
      lock.unlock();
      if (after) after();
      lock.lock();
      finished_ = true;
      cv_.notify_all();
    };
  }
  void WaitHeld() {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, kWait, [&] { return held_; }));
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void WaitFinished() {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, kWait, [&] { return finished_; }));
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  bool open_ = false;
  bool finished_ = false;
};

TEST(SchedulerTest, RunsSingleRequest) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  const std::vector<float> x = {1, 2, 3, 4};
  std::promise<absl::StatusOr<InferResponse>> promise;
  std::string thread_name;
  auto scheduler = Scheduler::Create(*engine, Options("add_one:1", 8));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  ASSERT_TRUE((*scheduler)
                  ->Submit(AddOneRequest(x),
                           [&](absl::StatusOr<InferResponse> response) {
                             char name[16] = {};
                             pthread_getname_np(pthread_self(), name, sizeof(name));
                             thread_name = name;
                             promise.set_value(std::move(response));
                           })
                  .ok());
  auto future = promise.get_future();
  ASSERT_EQ(future.wait_for(kWait), std::future_status::ready);
  absl::StatusOr<InferResponse> response = future.get();
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->outputs.size(), 1u);
  EXPECT_EQ(response->outputs[0].name, "y");
  EXPECT_EQ(response->outputs[0].shape, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(Values<float>(response->outputs[0]), (std::vector<float>{2, 3, 4, 5}));
  EXPECT_EQ(response->stats.batch_size, 1);
  EXPECT_GE(response->stats.queue_ns, 0);
  EXPECT_GT(response->stats.compute_ns, 0);
  EXPECT_EQ(thread_name, "infer-add_one:1");
  EXPECT_EQ((*scheduler)->queue_depth(), 0);
}

class ConcurrentSubmitTest : public ::testing::TestWithParam<bool> {};

TEST_P(ConcurrentSubmitTest, AnswersEveryRequestExactlyOnce) {
  const bool batching = GetParam();
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  if (batching) options.dynamic_batching = Batching(200);
  options.instance_count = 2;
  options.max_queue_size = 64;
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  constexpr int kTotal = kThreads * kPerThread;
  std::vector<std::vector<float>> inputs(kTotal);
  for (int i = 0; i < kTotal; ++i) inputs[i] = Rows(1 + i % 3, static_cast<float>(i * 16));
  Results results(kTotal);
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  std::atomic<int> rejected{0};
  std::vector<std::thread> submitters;
  for (int t = 0; t < kThreads; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = t * kPerThread; i < (t + 1) * kPerThread; ++i) {
        while (true) {
          absl::Status status = (*scheduler)->Submit(AddOneRequest(inputs[i]), results.Callback(i));
          if (status.ok()) break;
          ASSERT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
          rejected.fetch_add(1);
          std::this_thread::yield();
        }
      }
    });
  }
  for (std::thread& t : submitters) t.join();
  ASSERT_TRUE(results.WaitFor(kTotal)) << results.total() << " of " << kTotal << " answered";

  int batched = 0;
  for (int i = 0; i < kTotal; ++i) {
    ASSERT_EQ(results.calls(i), 1) << "request " << i;
    const absl::StatusOr<InferResponse>& response = results[i];
    ASSERT_TRUE(response.ok()) << response.status();
    ASSERT_EQ(response->outputs.size(), 1u);
    ASSERT_EQ(response->outputs[0].shape[0], 1 + i % 3);
    ASSERT_EQ(Values<float>(response->outputs[0]), PlusOne(inputs[i])) << "request " << i;
    if (response->stats.batch_size > 1 + i % 3) ++batched;
  }
  EXPECT_EQ((*scheduler)->queue_depth(), 0);
  if (!batching) {
    EXPECT_EQ(batched, 0);
  }
  std::cout << "rejected (retried) submits: " << rejected.load()
            << ", requests run in a batch: " << batched << "\n";
  // No callback may run after the scheduler is gone.
  scheduler->reset();
  EXPECT_EQ(results.total(), kTotal);
}

INSTANTIATE_TEST_SUITE_P(Batching, ConcurrentSubmitTest, ::testing::Bool());

TEST(SchedulerTest, DynamicBatchingFormsBatches) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  // A long delay: the batch runs as soon as it holds max_batch_size rows.
  options.dynamic_batching = Batching(1'000'000);
  std::vector<std::vector<float>> inputs;
  for (int i = 0; i < 8; ++i) inputs.push_back(Rows(1, 100.0f * i));
  Results results(8);
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(inputs[i]), results.Callback(i)).ok());
  }
  ASSERT_TRUE(results.WaitFor(8));
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(results[i]->stats.batch_size, 8) << "request " << i;
    EXPECT_EQ(Values<float>(results[i]->outputs[0]), PlusOne(inputs[i])) << "request " << i;
  }
}

TEST(SchedulerTest, SplitsBatchBackPerRequest) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  options.dynamic_batching = Batching(5'000);
  std::mutex batches_mu;
  std::vector<std::pair<int, bool>> batches;
  options.on_batch = [&](int batch_size, int64_t compute_ns, bool ok) {
    std::lock_guard lock(batches_mu);
    batches.emplace_back(batch_size, ok);
  };
  // Queued while the only instance is held: 1+2+3+2 = 8 fills a batch, the
  // last two (1+1) form the next one.
  const std::vector<int64_t> rows = {1, 2, 3, 2, 1, 1};
  std::vector<std::vector<float>> inputs;
  for (size_t i = 0; i < rows.size(); ++i) inputs.push_back(Rows(rows[i], 1000.0f * (i + 1)));
  const std::vector<float> gate_input = Rows(1, 0);
  Gate gate;
  Results results(rows.size());
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();

  ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(gate_input), gate.Hold()).ok());
  gate.WaitHeld();
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(inputs[i]), results.Callback(i)).ok());
  }
  EXPECT_EQ((*scheduler)->queue_depth(), 6);
  gate.Open();
  ASSERT_TRUE(results.WaitFor(rows.size()));

  const std::vector<int> expected_batch = {8, 8, 8, 8, 2, 2};
  for (size_t i = 0; i < rows.size(); ++i) {
    const absl::StatusOr<InferResponse>& response = results[i];
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->stats.batch_size, expected_batch[i]) << "request " << i;
    ASSERT_EQ(response->outputs.size(), 1u);
    EXPECT_EQ(response->outputs[0].shape, (std::vector<int64_t>{rows[i], 4}));
    EXPECT_EQ(Values<float>(response->outputs[0]), PlusOne(inputs[i])) << "request " << i;
  }
  // Zero copy: the requests of a batch share one output buffer, back to back.
  for (size_t i = 1; i < 4; ++i) {
    EXPECT_EQ(results[i]->outputs[0].owner, results[0]->outputs[0].owner);
    EXPECT_EQ(results[i]->outputs[0].data.data(),
              results[i - 1]->outputs[0].data.data() + results[i - 1]->outputs[0].data.size());
  }
  EXPECT_NE(results[4]->outputs[0].owner, results[0]->outputs[0].owner);
  EXPECT_EQ((*scheduler)->queue_depth(), 0);
  scheduler->reset();
  std::lock_guard lock(batches_mu);
  EXPECT_EQ(batches, (std::vector<std::pair<int, bool>>{{1, true}, {8, true}, {2, true}}));
}

TEST(SchedulerTest, PreferredBatchSizeRunsWithoutWaiting) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  options.dynamic_batching = Batching(/*delay_us=*/60'000'000, {4});
  std::vector<std::vector<float>> inputs;
  for (int i = 0; i < 6; ++i) inputs.push_back(Rows(1, 10.0f * i));
  Results results(6);
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(inputs[i]), results.Callback(i)).ok());
  }
  // The first four reach the preferred size and run long before the
  // 60 s delay; the other two wait for more requests until Drain.
  ASSERT_TRUE(results.WaitFor(4));
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(results[i]->stats.batch_size, 4);
    EXPECT_EQ(Values<float>(results[i]->outputs[0]), PlusOne(inputs[i]));
  }
  EXPECT_EQ(results.calls(4), 0);
  EXPECT_EQ((*scheduler)->queue_depth(), 2);
  // Draining runs what is gathered at once instead of waiting out the delay.
  (*scheduler)->Drain();
  ASSERT_EQ(results.total(), 6);
  for (int i = 4; i < 6; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(results[i]->stats.batch_size, 2);
    EXPECT_EQ(Values<float>(results[i]->outputs[0]), PlusOne(inputs[i]));
  }
}

TEST(SchedulerTest, PartialBatchRunsAfterQueueDelay) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  constexpr int64_t kDelayUs = 200'000;
  options.dynamic_batching = Batching(kDelayUs);
  std::vector<std::vector<float>> inputs;
  for (int i = 0; i < 3; ++i) inputs.push_back(Rows(1, 10.0f * i));
  Results results(3);
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(inputs[i]), results.Callback(i)).ok());
  }
  ASSERT_TRUE(results.WaitFor(3));
  ASSERT_TRUE(results[0].ok()) << results[0].status();
  // The first request waited out the delay (a lower bound, so not flaky).
  EXPECT_GE(results[0]->stats.queue_ns, kDelayUs * 1000);
  EXPECT_GE(results[0]->stats.batch_size, 2);
}

TEST(SchedulerTest, FullQueueReturnsUnavailableWithoutCallback) {
  auto engine = LoadEngine("heavy", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("heavy:1", 8);
  options.max_queue_size = 2;
  options.instance_count = 1;
  const std::vector<float> x(256, 0.5f);
  Gate gate;
  Results results(3);
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();

  auto request = [&] {
    InferRequest r;
    r.inputs.push_back(InputTensor{"input", DataType::kFp32, {1, 256}, Bytes(x)});
    return r;
  };
  ASSERT_TRUE((*scheduler)->Submit(request(), gate.Hold()).ok());
  gate.WaitHeld();  // the instance is busy; the queue is empty
  ASSERT_TRUE((*scheduler)->Submit(request(), results.Callback(0)).ok());
  ASSERT_TRUE((*scheduler)->Submit(request(), results.Callback(1)).ok());
  EXPECT_EQ((*scheduler)->queue_depth(), 2);
  absl::Status full = (*scheduler)->Submit(request(), results.Callback(2));
  EXPECT_EQ(full.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(full.message(), "model 'heavy' version 1: queue full (2 requests); retry later");
  gate.Open();
  ASSERT_TRUE(results.WaitFor(2));
  EXPECT_TRUE(results[0].ok());
  EXPECT_TRUE(results[1].ok());
  scheduler->reset();
  EXPECT_EQ(results.calls(2), 0);
}

// Submits `request` and returns the error; fails the test if the callback runs.
absl::Status SubmitError(Scheduler& scheduler, InferRequest request) {
  bool called = false;
  absl::Status status = scheduler.Submit(std::move(request), [&](auto) { called = true; });
  EXPECT_FALSE(called);
  return status;
}

class ValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    add_one_ = LoadEngine("add_one", 8);
    two_io_ = LoadEngine("two_io", 8);
    fixed_ = LoadEngine("fixed", 0);
    ASSERT_TRUE(add_one_ && two_io_ && fixed_);
  }

  // The message of ValidateRequest, "OK" when valid; checks that Submit
  // rejects the same way without calling back.
  std::string Check(const Engine& engine, int64_t max_batch_size, const InferRequest& request) {
    absl::Status status = ValidateRequest(engine, max_batch_size, request);
    auto scheduler = Scheduler::Create(engine, Options("m:1", max_batch_size));
    EXPECT_TRUE(scheduler.ok()) << scheduler.status();
    if (!status.ok()) {
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(SubmitError(**scheduler, request), status);
      return std::string(status.message());
    }
    return "OK";
  }

  InferRequest X(std::vector<int64_t> shape, DataType type = DataType::kFp32, size_t bytes = 0) {
    if (bytes == 0) bytes = ElementCount(shape) * DataTypeSize(type);
    buffer_.assign(bytes, std::byte{0});
    InferRequest request;
    request.inputs.push_back(InputTensor{"x", type, std::move(shape), buffer_});
    return request;
  }

  std::unique_ptr<Engine> add_one_, two_io_, fixed_;
  std::vector<std::byte> buffer_;
};

TEST_F(ValidationTest, AcceptsValidRequests) {
  EXPECT_EQ(Check(*add_one_, 8, X({1, 4})), "OK");
  EXPECT_EQ(Check(*add_one_, 8, X({8, 4})), "OK");
  EXPECT_EQ(Check(*fixed_, 0, X({2, 2})), "OK");
}

TEST_F(ValidationTest, RejectsUnknownDuplicateAndMissingInputs) {
  InferRequest unknown = X({1, 4});
  unknown.inputs.push_back(InputTensor{"z", DataType::kFp32, {1, 4}, buffer_});
  EXPECT_EQ(Check(*add_one_, 8, unknown), "unknown input 'z'; the model's inputs are: x");

  InferRequest twice = X({1, 4});
  twice.inputs.push_back(twice.inputs[0]);
  EXPECT_EQ(Check(*add_one_, 8, twice), "input 'x' given more than once");

  std::vector<float> a(3);
  InferRequest missing;
  missing.inputs.push_back(InputTensor{"a", DataType::kFp32, {1, 3}, Bytes(a)});
  EXPECT_EQ(Check(*two_io_, 8, missing), "missing input 'b'; the model's inputs are: a, b");
}

TEST_F(ValidationTest, RejectsWrongDatatype) {
  EXPECT_EQ(Check(*add_one_, 8, X({1, 4}, DataType::kInt64)),
            "input 'x': expected datatype FP32, got INT64");
  EXPECT_EQ(Check(*add_one_, 8, X({1, 4}, DataType::kBytes, 16)),
            "input 'x': datatype BYTES is not supported; the model expects FP32");
}

TEST_F(ValidationTest, RejectsWrongShape) {
  EXPECT_EQ(Check(*add_one_, 8, X({1, 5})), "input 'x': expected shape [-1,4], got [1,5]");
  EXPECT_EQ(Check(*add_one_, 8, X({1, 4, 1})), "input 'x': expected shape [-1,4], got [1,4,1]");
  EXPECT_EQ(Check(*add_one_, 8, X({-1, 4}, DataType::kFp32, 16)),
            "input 'x': expected shape [-1,4], got [-1,4]");
  EXPECT_EQ(Check(*fixed_, 0, X({1, 2})), "input 'x': expected shape [2,2], got [1,2]");
}

TEST_F(ValidationTest, RejectsBatchSizeOutsideLimits) {
  EXPECT_EQ(Check(*add_one_, 8, X({9, 4})),
            "input 'x': batch size (first dimension) 9 is outside 1..8 (max_batch_size)");
  EXPECT_EQ(Check(*add_one_, 8, X({0, 4}, DataType::kFp32, 16)),
            "input 'x': batch size (first dimension) 0 is outside 1..8 (max_batch_size)");

  std::vector<float> a(3);
  std::vector<int64_t> b(6);
  InferRequest differ;
  differ.inputs.push_back(InputTensor{"a", DataType::kFp32, {1, 3}, Bytes(a)});
  differ.inputs.push_back(InputTensor{"b", DataType::kInt64, {2, 3}, Bytes(b)});
  EXPECT_EQ(Check(*two_io_, 8, differ),
            "input 'b': batch size 2, but input 'a' has batch size 1; all inputs need the same "
            "first dimension");
}

TEST_F(ValidationTest, RejectsDataSizeMismatch) {
  EXPECT_EQ(Check(*add_one_, 8, X({1, 4}, DataType::kFp32, 12)),
            "input 'x': 12 bytes for shape [1,4] FP32, expected 16");
}

TEST_F(ValidationTest, RejectsUnknownOrRepeatedOutputs) {
  InferRequest unknown = X({1, 4});
  unknown.requested_outputs = {"z"};
  EXPECT_EQ(Check(*add_one_, 8, unknown), "unknown output 'z'; the model's outputs are: y");
  InferRequest twice = X({1, 4});
  twice.requested_outputs = {"y", "y"};
  EXPECT_EQ(Check(*add_one_, 8, twice), "output 'y' requested more than once");
}

TEST(SchedulerTest, RejectsBadOptions) {
  auto fixed = LoadEngine("fixed", 0);
  auto add_one = LoadEngine("add_one", 8);
  ASSERT_TRUE(fixed && add_one);
  auto batched_fixed = Scheduler::Create(*fixed, Options("fixed:1", 8));
  EXPECT_EQ(batched_fixed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(batched_fixed.status().message(),
            "scheduler for model 'fixed' version 1: max_batch_size 8 needs a dynamic first "
            "dimension on every input, but input 'x' has shape [2,2]; set max_batch_size: 0");

  SchedulerOptions no_queue = Options("add_one:1", 8);
  no_queue.max_queue_size = 0;
  EXPECT_EQ(Scheduler::Create(*add_one, no_queue).status().code(),
            absl::StatusCode::kInvalidArgument);

  SchedulerOptions preferred = Options("add_one:1", 8);
  preferred.dynamic_batching = Batching(100, {16});
  EXPECT_EQ(Scheduler::Create(*add_one, preferred).status().message(),
            "scheduler for model 'add_one' version 1: preferred batch size 16 is outside 1..8 "
            "(max_batch_size)");
}

TEST(SchedulerTest, ReordersInputsAndSelectsOutputsPerRequest) {
  auto engine = LoadEngine("two_io", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("two_io:1", 8);
  options.dynamic_batching = Batching(1'000);
  struct Case {
    int64_t rows;
    std::vector<std::string> outputs;
    bool b_first;
  };
  // Batch 1 mixes output selections; batch 2 has two requests asking the same.
  // 2+2+3 = 7 and the next 4 would overflow 8: two batches.
  const std::vector<Case> cases = {{2, {"b_plus_one"}, true},
                                   {2, {"b_plus_one", "twice_a"}, false},
                                   {3, {}, true},
                                   {4, {"twice_a"}, false},
                                   {4, {"twice_a"}, true}};
  std::vector<std::vector<float>> as;
  std::vector<std::vector<int64_t>> bs;
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<float> a(cases[i].rows * 3);
    std::vector<int64_t> b(cases[i].rows * 3);
    for (size_t j = 0; j < a.size(); ++j) {
      a[j] = static_cast<float>(100 * i + j);
      b[j] = static_cast<int64_t>(1000 * i + j);
    }
    as.push_back(std::move(a));
    bs.push_back(std::move(b));
  }
  auto request = [&](size_t i) {
    InferRequest r;
    InputTensor a{"a", DataType::kFp32, {cases[i].rows, 3}, Bytes(as[i])};
    InputTensor b{"b", DataType::kInt64, {cases[i].rows, 3}, Bytes(bs[i])};
    if (cases[i].b_first) {
      r.inputs = {b, a};
    } else {
      r.inputs = {a, b};
    }
    r.requested_outputs = cases[i].outputs;
    return r;
  };

  const std::vector<float> gate_a(3);
  const std::vector<int64_t> gate_b(3);
  InferRequest gate_request;
  gate_request.inputs = {InputTensor{"a", DataType::kFp32, {1, 3}, Bytes(gate_a)},
                         InputTensor{"b", DataType::kInt64, {1, 3}, Bytes(gate_b)}};
  Gate gate;
  Results results(cases.size());
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  ASSERT_TRUE((*scheduler)->Submit(std::move(gate_request), gate.Hold()).ok());
  gate.WaitHeld();
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE((*scheduler)->Submit(request(i), results.Callback(i)).ok());
  }
  gate.Open();
  ASSERT_TRUE(results.WaitFor(cases.size()));

  const std::vector<int> expected_batch = {7, 7, 7, 8, 8};
  for (size_t i = 0; i < cases.size(); ++i) {
    const absl::StatusOr<InferResponse>& response = results[i];
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->stats.batch_size, expected_batch[i]) << "request " << i;
    std::vector<std::string> names = cases[i].outputs;
    if (names.empty()) names = {"twice_a", "b_plus_one"};
    ASSERT_EQ(response->outputs.size(), names.size()) << "request " << i;
    for (size_t k = 0; k < names.size(); ++k) {
      const OutputTensor& out = response->outputs[k];
      EXPECT_EQ(out.name, names[k]);
      EXPECT_EQ(out.shape, (std::vector<int64_t>{cases[i].rows, 3}));
      if (names[k] == "twice_a") {
        std::vector<float> expected = as[i];
        for (float& v : expected) v *= 2;
        EXPECT_EQ(Values<float>(out), expected) << "request " << i;
      } else {
        std::vector<int64_t> expected = bs[i];
        for (int64_t& v : expected) v += 1;
        EXPECT_EQ(Values<int64_t>(out), expected) << "request " << i;
      }
    }
  }
}

TEST(SchedulerTest, DrainCompletesQueuedRequestsThenRejects) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  const std::vector<float> x = Rows(1, 1);
  Gate gate;
  Results results(3);
  auto scheduler = Scheduler::Create(*engine, Options("add_one:1", 8));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();

  ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(x), gate.Hold()).ok());
  gate.WaitHeld();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(x), results.Callback(i)).ok());
  }
  auto drained = std::async(std::launch::async, [&] { (*scheduler)->Drain(); });
  // Drain waits for the queued requests, which wait for the gate.
  EXPECT_EQ(drained.wait_for(milliseconds(100)), std::future_status::timeout);
  EXPECT_EQ(results.total(), 0);
  gate.Open();
  ASSERT_EQ(drained.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(results.total(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(results[i].ok());

  absl::Status after = SubmitError(**scheduler, AddOneRequest(x));
  EXPECT_EQ(after.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(after.message(), "model 'add_one' version 1 is unloading");
  (*scheduler)->Drain();  // idempotent
}

TEST(SchedulerTest, AbandonAnswersQueuedRequestsWithoutRunningThem) {
  for (bool batching : {false, true}) {
    SCOPED_TRACE(batching ? "dynamic batching" : "no batching");
    auto engine = LoadEngine("add_one", 8);
    ASSERT_NE(engine, nullptr);
    const std::vector<float> x = Rows(1, 1);
    Gate gate;
    Results results(3);
    std::atomic<int> batches = 0;
    SchedulerOptions options = Options("add_one:1", 8);
    if (batching) options.dynamic_batching = Batching(/*delay_us=*/200000);
    options.on_batch = [&](int, int64_t, bool) { batches.fetch_add(1); };
    auto scheduler = Scheduler::Create(*engine, options);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();

    ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(x), gate.Hold()).ok());
    gate.WaitHeld();  // the only instance thread is held after the first run
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(x), results.Callback(i)).ok());
    }
    const absl::Status reason = absl::UnavailableError("server is shutting down");
    (*scheduler)->Abandon(reason);
    (*scheduler)->Abandon(absl::CancelledError("second"));  // the first reason stays
    gate.Open();
    ASSERT_TRUE(results.WaitFor(3));
    for (int i = 0; i < 3; ++i) EXPECT_EQ(results[i].status(), reason);
    EXPECT_EQ(batches.load(), 1);  // only the request that was running ran
    EXPECT_EQ(SubmitError(**scheduler, AddOneRequest(x)), reason);
    EXPECT_EQ((*scheduler)->queue_depth(), 0);
    (*scheduler)->Drain();
  }
}

TEST(SchedulerTest, AbandonCutsABatchBeingGatheredShort) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  std::atomic<int> batches = 0;
  SchedulerOptions options = Options("add_one:1", 8);
  options.dynamic_batching = Batching(/*delay_us=*/10000000);  // would wait 10 s for more
  options.on_batch = [&](int, int64_t, bool) { batches.fetch_add(1); };
  auto scheduler = Scheduler::Create(*engine, options);
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  Results results(1);
  ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(Rows(1, 1)), results.Callback(0)).ok());
  std::this_thread::sleep_for(milliseconds(50));  // the instance thread is gathering
  const auto start = std::chrono::steady_clock::now();
  (*scheduler)->Abandon(absl::UnavailableError("gone"));
  ASSERT_TRUE(results.WaitFor(1));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(results[0].status().message(), "gone");
  EXPECT_EQ(batches.load(), 0);
}

TEST(SchedulerTest, DrainFromCallbackDoesNotDeadlock) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  options.instance_count = 2;
  const std::vector<float> x = Rows(1, 1);
  Gate gate;
  Results results(3);
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  Scheduler& s = **scheduler;

  std::atomic<int> answered_when_drained{-1};
  ASSERT_TRUE(s.Submit(AddOneRequest(x), gate.Hold([&] {
                 s.Drain();
                 answered_when_drained = results.total();
               })).ok());
  gate.WaitHeld();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(s.Submit(AddOneRequest(x), results.Callback(i)).ok());
  gate.Open();
  gate.WaitFinished();
  // The Drain inside the callback returned only after the queue was done.
  EXPECT_EQ(answered_when_drained.load(), 3);
  auto destroyed = std::async(std::launch::async, [&] { scheduler->reset(); });
  ASSERT_EQ(destroyed.wait_for(kWait), std::future_status::ready);
}

TEST(SchedulerTest, DestroyFromCallbackFinishesQueueAndDetaches) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  options.dynamic_batching = Batching(1'000);
  const std::vector<float> x = Rows(2, 1);
  Gate gate;
  Results results(3);
  auto created = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Scheduler> scheduler = std::move(*created);

  // The gate's callback drops the last reference, as a hot-swapped model
  // version's last in-flight request does.
  std::atomic<int> answered_when_destroyed{-1};
  ASSERT_TRUE(scheduler
                  ->Submit(AddOneRequest(x), gate.Hold([&] {
                    scheduler.reset();
                    // The destructor ran the queue on this thread.
                    answered_when_destroyed = results.total();
                  }))
                  .ok());
  gate.WaitHeld();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(scheduler->Submit(AddOneRequest(x), results.Callback(i)).ok());
  }
  gate.Open();
  gate.WaitFinished();
  EXPECT_EQ(scheduler, nullptr);
  EXPECT_EQ(answered_when_destroyed.load(), 3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(Values<float>(results[i]->outputs[0]), PlusOne(x));
  }
}

TEST(SchedulerTest, DestroyingModelInFirstCallbackOfBatchKeepsOutputsValid) {
  std::unique_ptr<Engine> engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  options.dynamic_batching = Batching(1'000);
  // 2+2+2 rows form one batch; the last request (4 rows) overflows into the next.
  const std::vector<int64_t> rows = {2, 2, 2, 4};
  std::vector<std::vector<float>> inputs;
  for (size_t i = 0; i < rows.size(); ++i) inputs.push_back(Rows(rows[i], 50.0f * (i + 1)));
  const std::vector<float> gate_input = Rows(1, 0);
  Gate gate;
  Results results(rows.size());
  std::atomic<int> answered_when_destroyed{-1};
  auto created = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Scheduler> scheduler = std::move(*created);

  ASSERT_TRUE(scheduler->Submit(AddOneRequest(gate_input), gate.Hold()).ok());
  gate.WaitHeld();
  // The first request's callback drops the whole model version, engine
  // included, while the rest of its batch still waits for callbacks.
  auto first = [&, record = results.Callback(0)](absl::StatusOr<InferResponse> response) mutable {
    std::move(record)(std::move(response));
    scheduler.reset();
    engine.reset();
    answered_when_destroyed = results.total();
  };
  ASSERT_TRUE(scheduler->Submit(AddOneRequest(inputs[0]), std::move(first)).ok());
  for (size_t i = 1; i < rows.size(); ++i) {
    ASSERT_TRUE(scheduler->Submit(AddOneRequest(inputs[i]), results.Callback(i)).ok());
  }
  gate.Open();
  ASSERT_TRUE(results.WaitFor(rows.size()));
  // The destructor ran the last request (the next batch) before returning.
  EXPECT_EQ(answered_when_destroyed.load(), 2);
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(results[i]->stats.batch_size, i < 3 ? 6 : 4);
    EXPECT_EQ(Values<float>(results[i]->outputs[0]), PlusOne(inputs[i])) << "request " << i;
  }
}

TEST(SchedulerTest, InstancesRunInParallel) {
  auto engine = LoadEngine("heavy", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("heavy:1", 8);
  options.instance_count = 2;
  // Each callback waits until both are running at once, which only two
  // instance threads can do.
  std::mutex mu;
  std::condition_variable cv;
  int running = 0;
  int saw_both = 0;
  auto callback = [&](absl::StatusOr<InferResponse> response) {
    EXPECT_TRUE(response.ok()) << response.status();
    std::unique_lock lock(mu);
    ++running;
    cv.notify_all();
    if (cv.wait_for(lock, kWait, [&] { return running == 2; })) ++saw_both;
  };
  const std::vector<float> x(4 * 256, 0.25f);
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  for (int i = 0; i < 2; ++i) {
    InferRequest r;
    r.inputs.push_back(InputTensor{"input", DataType::kFp32, {4, 256}, Bytes(x)});
    ASSERT_TRUE((*scheduler)->Submit(std::move(r), callback).ok());
  }
  scheduler->reset();
  EXPECT_EQ(saw_both, 2);
}

// Holds the first `held` engine runs in on_batch, which the scheduler calls
// while the run still occupies its instance, until Open().
class BatchHold {
 public:
  explicit BatchHold(int held = 1) : held_(held) {}
  std::function<void(int, int64_t, bool)> Hook() {
    return [this](int, int64_t, bool ok) {
      EXPECT_TRUE(ok);
      std::unique_lock lock(mu_);
      const int call = calls_++;
      concurrent_ = std::max(concurrent_, ++in_hook_);
      cv_.notify_all();
      if (call < held_) EXPECT_TRUE(cv_.wait_for(lock, kWait, [&] { return open_; }));
      --in_hook_;
    };
  }
  void WaitCalls(int n) {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, kWait, [&] { return calls_ >= n; }));
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  int calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  int max_concurrent() {
    std::lock_guard lock(mu_);
    return concurrent_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int held_;
  int calls_ = 0;
  int in_hook_ = 0;
  int concurrent_ = 0;
  bool open_ = false;
};

std::string ThreadName() {
  char name[16] = {};
  pthread_getname_np(pthread_self(), name, sizeof(name));
  return name;
}

// Where and when a request's callback ran.
struct Answer {
  std::optional<absl::StatusOr<InferResponse>> response;
  std::thread::id thread;
  std::string thread_name;
};

InferCallback Record(Answer& answer, std::promise<void>* done = nullptr) {
  return [&answer, done](absl::StatusOr<InferResponse> response) {
    answer.thread = std::this_thread::get_id();
    answer.thread_name = ThreadName();
    answer.response.emplace(std::move(response));
    if (done != nullptr) done->set_value();
  };
}

TEST(SchedulerInlineTest, IdleSchedulerRunsOnCallingThread) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  std::atomic<int> batches{0};
  options.on_batch = [&](int batch_size, int64_t compute_ns, bool ok) {
    EXPECT_EQ(batch_size, 2);
    EXPECT_GT(compute_ns, 0);
    EXPECT_TRUE(ok);
    ++batches;
  };
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const std::vector<float> x = Rows(2, 10);
  for (int i = 0; i < 3; ++i) {
    Answer answer;
    ASSERT_TRUE(
        (*scheduler)->Submit(AddOneRequest(x), Record(answer), SubmitMode::kMayRunInline).ok());
    // Answered before Submit returned, on this thread.
    ASSERT_TRUE(answer.response.has_value());
    EXPECT_EQ(answer.thread, std::this_thread::get_id());
    const absl::StatusOr<InferResponse>& response = *answer.response;
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->outputs[0].shape, (std::vector<int64_t>{2, 4}));
    EXPECT_EQ(Values<float>(response->outputs[0]), PlusOne(x));
    EXPECT_EQ(response->stats.batch_size, 2);
    EXPECT_GE(response->stats.queue_ns, 0);
    EXPECT_GT(response->stats.compute_ns, 0);
  }
  EXPECT_EQ(batches.load(), 3);
  EXPECT_EQ((*scheduler)->queue_depth(), 0);
}

TEST(SchedulerInlineTest, QueuedModeOrDisabledOptionUseInstanceThread) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  const std::vector<float> x = Rows(1, 1);
  for (bool option : {true, false}) {
    SchedulerOptions options = Options("add_one:1", 8);
    options.inline_execution = option;
    auto scheduler = Scheduler::Create(*engine, std::move(options));
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    // The option off ignores kMayRunInline; kQueued never runs inline.
    const SubmitMode mode = option ? SubmitMode::kQueued : SubmitMode::kMayRunInline;
    Answer answer;
    std::promise<void> done;
    ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(x), Record(answer, &done), mode).ok());
    ASSERT_EQ(done.get_future().wait_for(kWait), std::future_status::ready);
    EXPECT_NE(answer.thread, std::this_thread::get_id());
    EXPECT_EQ(answer.thread_name, "infer-add_one:1");
    ASSERT_TRUE(answer.response->ok()) << answer.response->status();
    EXPECT_EQ(Values<float>((*answer.response)->outputs[0]), PlusOne(x));
  }
}

TEST(SchedulerInlineTest, BusyInstanceQueuesInsteadOfRunningInline) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  BatchHold hold;
  options.on_batch = hold.Hook();
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const std::vector<float> x = Rows(1, 1);
  const std::vector<float> y = Rows(1, 5);

  Answer first;
  std::promise<void> first_done;
  ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(x), Record(first, &first_done)).ok());
  hold.WaitCalls(1);  // the only instance is computing
  Answer second;
  std::promise<void> second_done;
  ASSERT_TRUE(
      (*scheduler)
          ->Submit(AddOneRequest(y), Record(second, &second_done), SubmitMode::kMayRunInline)
          .ok());
  EXPECT_FALSE(second.response.has_value());  // queued, Submit did not wait
  EXPECT_EQ((*scheduler)->queue_depth(), 1);
  hold.Open();
  ASSERT_EQ(first_done.get_future().wait_for(kWait), std::future_status::ready);
  ASSERT_EQ(second_done.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(second.thread_name, "infer-add_one:1");
  ASSERT_TRUE(second.response->ok()) << second.response->status();
  EXPECT_EQ(Values<float>((*second.response)->outputs[0]), PlusOne(y));
}

TEST(SchedulerInlineTest, InlineRunHoldsAnInstance) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  BatchHold hold;
  options.on_batch = hold.Hook();
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const std::vector<float> x = Rows(1, 1);

  Answer inline_answer;
  std::thread io([&] {
    EXPECT_TRUE((*scheduler)
                    ->Submit(AddOneRequest(x), Record(inline_answer), SubmitMode::kMayRunInline)
                    .ok());
  });
  hold.WaitCalls(1);  // running inline on `io`, holding the only instance
  Results results(2);
  ASSERT_TRUE((*scheduler)->Submit(AddOneRequest(x), results.Callback(0)).ok());
  // A second inline request does not run beside it either.
  ASSERT_TRUE(
      (*scheduler)->Submit(AddOneRequest(x), results.Callback(1), SubmitMode::kMayRunInline).ok());
  EXPECT_EQ((*scheduler)->queue_depth(), 2);
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(hold.calls(), 1);  // the instance thread waited for the instance
  EXPECT_EQ(results.total(), 0);
  hold.Open();
  const std::thread::id io_id = io.get_id();
  io.join();
  ASSERT_TRUE(inline_answer.response.has_value());
  ASSERT_TRUE(inline_answer.response->ok());
  EXPECT_EQ(inline_answer.thread, io_id);
  ASSERT_TRUE(results.WaitFor(2));
  EXPECT_TRUE(results[0].ok());
  EXPECT_TRUE(results[1].ok());
  EXPECT_EQ(hold.max_concurrent(), 1);
}

TEST(SchedulerInlineTest, OneInlineRunAtATimeWithFreeInstances) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  options.instance_count = 3;
  BatchHold hold(2);
  options.on_batch = hold.Hook();
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const std::vector<float> x = Rows(1, 1);

  Answer inline_answer;
  std::thread io([&] {
    EXPECT_TRUE((*scheduler)
                    ->Submit(AddOneRequest(x), Record(inline_answer), SubmitMode::kMayRunInline)
                    .ok());
  });
  hold.WaitCalls(1);
  // An instance is free, but another io thread is not held: it queues and
  // an instance thread runs it beside the inline run.
  Answer second;
  std::promise<void> second_done;
  ASSERT_TRUE(
      (*scheduler)
          ->Submit(AddOneRequest(x), Record(second, &second_done), SubmitMode::kMayRunInline)
          .ok());
  hold.WaitCalls(2);
  EXPECT_FALSE(second.response.has_value());
  EXPECT_EQ(hold.max_concurrent(), 2);
  hold.Open();
  const std::thread::id io_id = io.get_id();
  io.join();
  ASSERT_EQ(second_done.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(second.thread_name, "infer-add_one:1");
  EXPECT_EQ(inline_answer.thread, io_id);
  ASSERT_TRUE(inline_answer.response.has_value());
}

TEST(SchedulerInlineTest, BatchingDelayRunsOnInstanceUnlessBatchCannotGrow) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  struct Case {
    int64_t delay_us;
    std::vector<int64_t> preferred;
    int64_t rows;
    bool expect_inline;
  };
  const std::vector<Case> cases = {
      {100'000, {}, 1, false},  // more requests could join within the delay
      {0, {}, 1, true},         // no delay: batching could not wait for more
      {100'000, {}, 8, true},   // fills max_batch_size alone
      {100'000, {4}, 4, true},  // a preferred size alone
      {100'000, {4}, 2, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "delay " << c.delay_us << " rows " << c.rows);
    SchedulerOptions options = Options("add_one:1", 8);
    options.dynamic_batching = Batching(c.delay_us, c.preferred);
    auto scheduler = Scheduler::Create(*engine, std::move(options));
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    const std::vector<float> x = Rows(c.rows, 3);
    Answer answer;
    std::promise<void> done;
    ASSERT_TRUE((*scheduler)
                    ->Submit(AddOneRequest(x), Record(answer, &done), SubmitMode::kMayRunInline)
                    .ok());
    ASSERT_EQ(done.get_future().wait_for(kWait), std::future_status::ready);
    EXPECT_EQ(answer.thread == std::this_thread::get_id(), c.expect_inline);
    ASSERT_TRUE(answer.response->ok()) << answer.response->status();
    EXPECT_EQ(Values<float>((*answer.response)->outputs[0]), PlusOne(x));
    EXPECT_EQ((*answer.response)->stats.batch_size, c.rows);
  }
}

TEST(SchedulerInlineTest, DrainWaitsForInlineRun) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  SchedulerOptions options = Options("add_one:1", 8);
  BatchHold hold;
  options.on_batch = hold.Hook();
  auto scheduler = Scheduler::Create(*engine, std::move(options));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const std::vector<float> x = Rows(1, 1);
  Answer answer;
  std::thread io([&] {
    EXPECT_TRUE(
        (*scheduler)->Submit(AddOneRequest(x), Record(answer), SubmitMode::kMayRunInline).ok());
  });
  hold.WaitCalls(1);
  auto drained = std::async(std::launch::async, [&] { (*scheduler)->Drain(); });
  // The engine is still in use by the inline run: Drain must not return.
  EXPECT_EQ(drained.wait_for(milliseconds(100)), std::future_status::timeout);
  hold.Open();
  ASSERT_EQ(drained.wait_for(kWait), std::future_status::ready);
  io.join();
  ASSERT_TRUE(answer.response.has_value());
  EXPECT_TRUE(answer.response->ok());
}

TEST(SchedulerInlineTest, InlineCallbackMayDestroyScheduler) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  auto created = Scheduler::Create(*engine, Options("add_one:1", 8));
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Scheduler> scheduler = std::move(*created);
  const std::vector<float> x = Rows(1, 1);
  bool answered = false;
  absl::Status status = scheduler->Submit(
      AddOneRequest(x),
      [&](absl::StatusOr<InferResponse> response) {
        EXPECT_TRUE(response.ok());
        scheduler.reset();  // as a hot swap's last request may
        answered = true;
      },
      SubmitMode::kMayRunInline);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_TRUE(answered);
  EXPECT_EQ(scheduler, nullptr);
}

TEST(SchedulerInlineTest, InvalidRequestIsRejectedWithoutCallback) {
  auto engine = LoadEngine("add_one", 8);
  ASSERT_NE(engine, nullptr);
  auto scheduler = Scheduler::Create(*engine, Options("add_one:1", 8));
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const std::vector<float> x = {1, 2, 3};
  InferRequest request;
  request.inputs.push_back(InputTensor{"x", DataType::kFp32, {1, 3}, Bytes(x)});
  bool called = false;
  absl::Status status =
      (*scheduler)
          ->Submit(
              std::move(request), [&](auto) { called = true; }, SubmitMode::kMayRunInline);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace outpost::serve
