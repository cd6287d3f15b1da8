#include "serve/output_score.h"

#include <gtest/gtest.h>

#include <cmath>
#include <thread>

namespace outpost::serve {
namespace {

OutputTensor Tensor(const std::string& name, std::vector<int64_t> shape, std::vector<float>& data) {
  OutputTensor t;
  t.name = name;
  t.datatype = DataType::kFp32;
  t.shape = std::move(shape);
  t.data = std::as_bytes(std::span(data));
  return t;
}

TEST(OutputScoreTest, SoftmaxMaxIsTheTopClassProbability) {
  const float logits[] = {1.f, 2.f, 3.f};
  const double expected = std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  EXPECT_NEAR(ScoreRow(logits, 3, ScoreKind::kSoftmaxMax), expected, 1e-9);
  EXPECT_NEAR(ScoreRow(logits, 3, ScoreKind::kAuto), expected, 1e-9);
  // Large logits do not overflow (the max is subtracted first).
  const float big[] = {1000.f, 1000.f};
  EXPECT_NEAR(ScoreRow(big, 2, ScoreKind::kSoftmaxMax), 0.5, 1e-9);
}

TEST(OutputScoreTest, ARowThatIsAlreadyADistributionScoresItsMax) {
  const float probabilities[] = {0.1f, 0.7f, 0.2f};
  EXPECT_NEAR(ScoreRow(probabilities, 3, ScoreKind::kSoftmaxMax), 0.7, 1e-6);
  // Not a distribution (sum 1.4): softmax'ed.
  const float not_probabilities[] = {0.5f, 0.7f, 0.2f};
  EXPECT_LT(ScoreRow(not_probabilities, 3, ScoreKind::kSoftmaxMax), 0.5);
}

TEST(OutputScoreTest, MaxAndValueKinds) {
  const float row[] = {-3.f, 7.5f, 2.f};
  EXPECT_DOUBLE_EQ(ScoreRow(row, 3, ScoreKind::kMax), 7.5);
  EXPECT_TRUE(std::isnan(ScoreRow(row, 3, ScoreKind::kValue)));  // needs one value per row
  const double one[] = {0.42};
  EXPECT_DOUBLE_EQ(ScoreRow(one, 1, ScoreKind::kValue), 0.42);
  EXPECT_DOUBLE_EQ(ScoreRow(one, 1, ScoreKind::kAuto), 0.42);
  EXPECT_TRUE(std::isnan(ScoreRow(one, 0, ScoreKind::kAuto)));
}

TEST(OutputScoreTest, BucketsUseLessOrEqualEdges) {
  ScoreHistogram h({0.5, 0.9, 1.0});
  EXPECT_EQ(h.BucketOf(-1), 0u);
  EXPECT_EQ(h.BucketOf(0.5), 0u);  // le = 0.5
  EXPECT_EQ(h.BucketOf(0.51), 1u);
  EXPECT_EQ(h.BucketOf(1.0), 2u);
  EXPECT_EQ(h.BucketOf(1.01), 3u);  // +Inf
  const uint64_t counts[] = {1, 0, 2, 3};
  h.Add(counts, 4.5);
  ScoreHistogram::Snapshot s = h.Take();
  EXPECT_EQ(s.counts, (std::vector<uint64_t>{1, 0, 2, 3}));
  EXPECT_EQ(s.count, 6u);
  EXPECT_DOUBLE_EQ(s.sum, 4.5);
}

TEST(OutputScoreTest, ObserveScoresEveryRowOfTheNamedOutput) {
  auto histogram = std::make_shared<ScoreHistogram>(std::vector<double>{0.3, 0.6, 1.0});
  auto scorer = OutputScorer::Create(
      {{"other", DataType::kInt64, {-1, 2}}, {"prob", DataType::kFp32, {-1, 2}}}, {}, histogram);
  ASSERT_TRUE(scorer.ok()) << MessageOf(scorer.status());
  ASSERT_TRUE(scorer->has_value());
  EXPECT_EQ((*scorer)->output(), "prob");  // the first float output
  // Three rows that are distributions: tops 0.9, 0.5, 0.5.
  std::vector<float> prob = {0.9f, 0.1f, 0.5f, 0.5f, 0.5f, 0.5f};
  std::vector<float> other = {9, 9, 9, 9};
  OutputTensor outputs[] = {Tensor("other", {2, 2}, other), Tensor("prob", {3, 2}, prob)};
  (*scorer)->Observe(outputs);
  ScoreHistogram::Snapshot s = histogram->Take();
  EXPECT_EQ(s.counts, (std::vector<uint64_t>{0, 2, 1, 0}));
  EXPECT_NEAR(s.sum, 1.9, 1e-6);
  // A batch that did not compute the scored output is not counted.
  (*scorer)->Observe(std::span(outputs, 1));
  EXPECT_EQ(histogram->Take().count, 3u);
}

TEST(OutputScoreTest, ValueKindScoresEachElementOfAVector) {
  auto histogram = std::make_shared<ScoreHistogram>(std::vector<double>{0.5, 1.0});
  auto scorer = OutputScorer::Create({{"score", DataType::kFp32, {-1}}},
                                     {.output = "score", .kind = ScoreKind::kValue}, histogram);
  ASSERT_TRUE(scorer.ok());
  std::vector<float> scores = {0.2f, 0.7f, 0.8f, 3.f};
  OutputTensor outputs[] = {Tensor("score", {4}, scores)};
  (*scorer)->Observe(outputs);
  EXPECT_EQ(histogram->Take().counts, (std::vector<uint64_t>{1, 2, 1}));
}

TEST(OutputScoreTest, CreateRefusesUnknownOrNonFloatOutputs) {
  auto histogram = std::make_shared<ScoreHistogram>(DefaultScoreBuckets());
  std::vector<TensorSpec> outputs = {{"labels", DataType::kInt64, {-1}},
                                     {"prob", DataType::kFp32, {-1, 10}}};
  auto missing = OutputScorer::Create(outputs, {.output = "nope"}, histogram);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(MessageOf(missing.status()).find("no output 'nope' (outputs: labels, prob)"),
            std::string_view::npos);
  auto integer = OutputScorer::Create(outputs, {.output = "labels"}, histogram);
  ASSERT_FALSE(integer.ok());
  EXPECT_NE(MessageOf(integer.status()).find("only FP32 and FP64"), std::string_view::npos);
  // Off, or nothing scorable: no scorer, no error.
  EXPECT_FALSE(OutputScorer::Create(outputs, {.enabled = false}, histogram)->has_value());
  EXPECT_FALSE(
      OutputScorer::Create({{"labels", DataType::kInt64, {-1}}}, {}, histogram)->has_value());
}

TEST(OutputScoreTest, ConcurrentObserversLoseNoCount) {
  auto histogram = std::make_shared<ScoreHistogram>(DefaultScoreBuckets());
  auto scorer = OutputScorer::Create({{"y", DataType::kFp32, {-1, 2}}}, {}, histogram);
  ASSERT_TRUE(scorer.ok());
  const OutputScorer& s = **scorer;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&s] {
      std::vector<float> rows = {0.f, 0.f, 5.f, 0.f};  // 0.5 and ~0.993
      OutputTensor outputs[] = {Tensor("y", {2, 2}, rows)};
      for (int i = 0; i < 10000; ++i) s.Observe(outputs);
    });
  }
  for (std::thread& t : threads) t.join();
  ScoreHistogram::Snapshot snapshot = histogram->Take();
  EXPECT_EQ(snapshot.count, 80000u);
  EXPECT_EQ(snapshot.counts[histogram->BucketOf(0.5)], 40000u);
}

}  // namespace
}  // namespace outpost::serve
