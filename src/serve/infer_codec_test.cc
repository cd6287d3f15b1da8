#include "serve/infer_codec.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

namespace outpost::serve {
namespace {

using nlohmann::json;

template <typename T>
std::vector<T> Values(const InputTensor& tensor) {
  std::vector<T> out;
  for (size_t i = 0; i < tensor.data.size() / sizeof(T); ++i) {
    T value;
    std::memcpy(&value, tensor.data.data() + i * sizeof(T), sizeof(T));
    out.push_back(value);
  }
  return out;
}

absl::Status Decode(const std::string& body, DecodedInferRequest* out,
                    std::optional<size_t> header_length = std::nullopt) {
  return DecodeInferRequest(body, header_length, out);
}

std::string Message(const absl::Status& status) { return std::string(MessageOf(status)); }

TEST(InferCodecTest, DecodesJsonTensorsFlatAndNested) {
  DecodedInferRequest req;
  ASSERT_TRUE(Decode(R"({"id":"7","inputs":[
      {"name":"a","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]},
      {"name":"b","shape":[3],"datatype":"INT64","data":[-1,0,9007199254740993]},
      {"name":"c","shape":[2],"datatype":"BOOL","data":[true,false]}]})",
                     &req)
                  .ok());
  EXPECT_EQ(req.id, "7");
  ASSERT_EQ(req.request.inputs.size(), 3u);
  EXPECT_EQ(Values<float>(req.request.inputs[0]), (std::vector<float>{1, 2, 3, 4.5}));
  EXPECT_EQ(Values<int64_t>(req.request.inputs[1]),
            (std::vector<int64_t>{-1, 0, 9007199254740993LL}));
  EXPECT_EQ(Values<bool>(req.request.inputs[2]), (std::vector<bool>{true, false}));
  EXPECT_EQ(req.request.inputs[0].shape, (std::vector<int64_t>{2, 2}));
}

TEST(InferCodecTest, BinaryInputsPointIntoTheBodyWithoutCopy) {
  std::string header =
      R"({"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},)"
      R"({"name":"y","shape":[1],"datatype":"INT32","parameters":{"binary_data_size":4}}],)"
      R"("outputs":[{"name":"z","parameters":{"binary_data":true}}]})";
  float x[2] = {1.5f, -2.f};
  int32_t y = 42;
  std::string body = header;
  body.append(reinterpret_cast<const char*>(x), sizeof(x));
  body.append(reinterpret_cast<const char*>(&y), sizeof(y));
  DecodedInferRequest req;
  ASSERT_TRUE(Decode(body, &req, header.size()).ok());
  ASSERT_EQ(req.request.inputs.size(), 2u);
  EXPECT_EQ(reinterpret_cast<const char*>(req.request.inputs[0].data.data()),
            body.data() + header.size());
  EXPECT_EQ(Values<float>(req.request.inputs[0]), (std::vector<float>{1.5f, -2.f}));
  EXPECT_EQ(Values<int32_t>(req.request.inputs[1]), (std::vector<int32_t>{42}));
  ASSERT_EQ(req.outputs.size(), 1u);
  EXPECT_TRUE(req.outputs[0].binary);
  EXPECT_EQ(req.request.requested_outputs, (std::vector<std::string>{"z"}));
}

TEST(InferCodecTest, RejectsBadRequestsWithActionableMessages) {
  struct Case {
    std::string body;
    std::optional<size_t> header_length;
    std::string expected;
  };
  std::vector<Case> cases = {
      {"", std::nullopt, "empty request body"},
      {"{", std::nullopt, "not valid JSON"},
      {"[]", std::nullopt, "must be a JSON object"},
      {R"({"inputs":[]})", std::nullopt, "non-empty array"},
      {R"({"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]})", std::nullopt, "'name'"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]})", std::nullopt,
       "unknown datatype 'FLOAT'"},
      {R"({"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]})", std::nullopt,
       "has 1 elements but shape holds 2"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]})", std::nullopt,
       "more than the 1 elements"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]})", std::nullopt,
       "expected a number"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]})", std::nullopt,
       "out of range"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]})", std::nullopt,
       "expected an integer"},
      {R"({"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]})", std::nullopt,
       "non-negative integers"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["a"]}]})", std::nullopt,
       "BYTES"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]})", std::nullopt,
       "'data' is required"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[[[1]]]}]})", std::nullopt,
       "nested deeper than its shape"},
      {R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]})",
       std::nullopt, "no Inference-Header-Content-Length"},
      {R"({"inputs":[{"name":"x","shape":[4611686018427387904,4],"datatype":"FP32","data":[1]}]})",
       std::nullopt, "too large"},
      // Found by the fuzzer: a huge shape with a few elements must not allocate 888 TB.
      {R"({"inputs":[{"name":"x","shape":[1,222000885449040],"datatype":"FP32","data":[1,2]}]})",
       std::nullopt, "more than a"},
  };
  for (const Case& c : cases) {
    DecodedInferRequest req;
    absl::Status status = Decode(c.body, &req, c.header_length);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << c.body;
    EXPECT_NE(Message(status).find(c.expected), std::string::npos)
        << c.body << " -> " << Message(status);
  }
}

TEST(InferCodecTest, RejectsBinarySectionMismatches) {
  std::string header =
      R"({"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]})";
  DecodedInferRequest truncated;
  absl::Status status = Decode(header + std::string(4, '\0'), &truncated, header.size());
  EXPECT_NE(Message(status).find("exceeds the 4 bytes left"), std::string::npos) << Message(status);

  DecodedInferRequest extra;
  status = Decode(header + std::string(12, '\0'), &extra, header.size());
  EXPECT_NE(Message(status).find("binary section has 12 bytes"), std::string::npos)
      << Message(status);

  DecodedInferRequest too_long;
  status = Decode(header, &too_long, header.size() + 1);
  EXPECT_NE(Message(status).find("Inference-Header-Content-Length is"), std::string::npos);

  std::string wrong =
      R"({"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":4}}]})";
  DecodedInferRequest mismatch;
  status = Decode(wrong + std::string(4, '\0'), &mismatch, wrong.size());
  EXPECT_NE(Message(status).find("does not match shape [1,2]"), std::string::npos)
      << Message(status);
}

TEST(InferCodecTest, EncodesJsonAndBinaryOutputs) {
  DecodedInferRequest req;
  req.id = "r\"1";
  req.outputs = {{"a", false}, {"b", true}};
  auto a = std::make_shared<std::vector<float>>(std::vector<float>{1.5f, 2.f, NAN});
  auto b = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{7, -8});
  std::vector<OutputTensor> outputs = {
      {"a", DataType::kFp32, {1, 3}, std::as_bytes(std::span(*a)), a},
      {"b", DataType::kInt64, {2}, std::as_bytes(std::span(*b)), b},
  };
  EncodedInferResponse encoded;
  ASSERT_TRUE(EncodeInferResponse(req, "m", "3", outputs, &encoded).ok());
  ASSERT_TRUE(encoded.header_length.has_value());
  json header = json::parse(encoded.body.substr(0, *encoded.header_length));
  EXPECT_EQ(header["id"], "r\"1");
  EXPECT_EQ(header["model_name"], "m");
  EXPECT_EQ(header["model_version"], "3");
  EXPECT_EQ(header["outputs"][0]["data"], json::parse("[1.5,2.0,null]"));
  EXPECT_EQ(header["outputs"][0]["shape"], json::parse("[1,3]"));
  EXPECT_EQ(header["outputs"][1]["parameters"]["binary_data_size"], 16);
  ASSERT_EQ(encoded.body.size(), *encoded.header_length + 16);
  int64_t values[2];
  std::memcpy(values, encoded.body.data() + *encoded.header_length, 16);
  EXPECT_EQ(values[0], 7);
  EXPECT_EQ(values[1], -8);

  DecodedInferRequest plain;
  ASSERT_TRUE(EncodeInferResponse(plain, "m", "3", {outputs[1]}, &encoded).ok());
  EXPECT_FALSE(encoded.header_length.has_value());
  EXPECT_EQ(json::parse(encoded.body)["outputs"][0]["data"], json::parse("[7,-8]"));
}

TEST(InferCodecTest, Fp16RoundTripsThroughJson) {
  DecodedInferRequest req;
  ASSERT_TRUE(
      Decode(
          R"({"inputs":[{"name":"h","shape":[4],"datatype":"FP16","data":[1.5,-2,0.0001,65504]}]})",
          &req)
          .ok());
  auto owner = std::make_shared<std::string>(
      reinterpret_cast<const char*>(req.request.inputs[0].data.data()), 8);
  std::vector<OutputTensor> outputs = {
      {"h", DataType::kFp16, {4}, std::as_bytes(std::span(*owner)), owner}};
  EncodedInferResponse encoded;
  DecodedInferRequest plain;
  ASSERT_TRUE(EncodeInferResponse(plain, "m", "1", outputs, &encoded).ok());
  json data = json::parse(encoded.body)["outputs"][0]["data"];
  EXPECT_FLOAT_EQ(data[0].get<float>(), 1.5f);
  EXPECT_FLOAT_EQ(data[1].get<float>(), -2.f);
  EXPECT_NEAR(data[2].get<float>(), 0.0001f, 1e-6);
  EXPECT_FLOAT_EQ(data[3].get<float>(), 65504.f);
}

}  // namespace
}  // namespace outpost::serve
