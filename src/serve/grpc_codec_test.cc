#include "serve/grpc_codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

namespace outpost::serve {
namespace {

using inference::ModelInferRequest;
using ::testing::HasSubstr;

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

std::string Message(const absl::Status& status) { return std::string(MessageOf(status)); }

ModelInferRequest::InferInputTensor* AddInput(ModelInferRequest* req, const std::string& name,
                                              const std::string& datatype,
                                              std::vector<int64_t> shape) {
  auto* in = req->add_inputs();
  in->set_name(name);
  in->set_datatype(datatype);
  for (int64_t d : shape) in->add_shape(d);
  return in;
}

TEST(GrpcCodecTest, TypedContentsOfTheTensorsTypeAreBorrowedNotCopied) {
  ModelInferRequest req;
  auto* a = AddInput(&req, "a", "FP32", {2, 2});
  for (float v : {1.f, 2.f, 3.f, 4.5f}) a->mutable_contents()->add_fp32_contents(v);
  auto* b = AddInput(&req, "b", "INT64", {3});
  for (int64_t v : {-1LL, 0LL, 9007199254740993LL}) b->mutable_contents()->add_int64_contents(v);
  auto* c = AddInput(&req, "c", "BOOL", {2});
  c->mutable_contents()->add_bool_contents(true);
  c->mutable_contents()->add_bool_contents(false);
  req.add_outputs()->set_name("y");

  GrpcDecodedRequest out;
  ASSERT_TRUE(DecodeGrpcInferRequest(req, &out).ok());
  ASSERT_EQ(out.request.inputs.size(), 3u);
  EXPECT_EQ(Values<float>(out.request.inputs[0]), (std::vector<float>{1, 2, 3, 4.5}));
  EXPECT_EQ(out.request.inputs[0].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(Values<int64_t>(out.request.inputs[1]),
            (std::vector<int64_t>{-1, 0, 9007199254740993LL}));
  EXPECT_EQ(Values<bool>(out.request.inputs[2]), (std::vector<bool>{true, false}));
  EXPECT_EQ(out.request.inputs[0].data.data(),
            reinterpret_cast<const std::byte*>(a->contents().fp32_contents().data()));
  EXPECT_TRUE(out.buffers.empty());
  EXPECT_EQ(out.request.requested_outputs, (std::vector<std::string>{"y"}));
}

TEST(GrpcCodecTest, NarrowIntegersAreConvertedAndRangeChecked) {
  ModelInferRequest req;
  auto* a = AddInput(&req, "a", "INT8", {3});
  for (int v : {-128, 0, 127}) a->mutable_contents()->add_int_contents(v);
  auto* b = AddInput(&req, "b", "UINT16", {2});
  for (unsigned v : {0u, 65535u}) b->mutable_contents()->add_uint_contents(v);
  GrpcDecodedRequest out;
  ASSERT_TRUE(DecodeGrpcInferRequest(req, &out).ok());
  EXPECT_EQ(Values<int8_t>(out.request.inputs[0]), (std::vector<int8_t>{-128, 0, 127}));
  EXPECT_EQ(Values<uint16_t>(out.request.inputs[1]), (std::vector<uint16_t>{0, 65535}));
  EXPECT_EQ(out.buffers.size(), 2u);

  a->mutable_contents()->set_int_contents(2, 128);
  GrpcDecodedRequest bad;
  absl::Status status = DecodeGrpcInferRequest(req, &bad);
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_EQ(Message(status), "input 'a': element 2 (128) is out of range for the datatype");
}

TEST(GrpcCodecTest, RawContentsPointIntoTheMessage) {
  ModelInferRequest req;
  AddInput(&req, "x", "FP32", {1, 4});
  AddInput(&req, "h", "FP16", {2});
  float x[4] = {1, 2, 3, 4};
  req.add_raw_input_contents(x, sizeof(x));
  uint16_t h[2] = {0x3c00, 0x4000};
  req.add_raw_input_contents(h, sizeof(h));
  GrpcDecodedRequest out;
  ASSERT_TRUE(DecodeGrpcInferRequest(req, &out).ok());
  EXPECT_EQ(Values<float>(out.request.inputs[0]), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(Values<uint16_t>(out.request.inputs[1]), (std::vector<uint16_t>{0x3c00, 0x4000}));
  EXPECT_EQ(out.request.inputs[0].data.data(),
            reinterpret_cast<const std::byte*>(req.raw_input_contents(0).data()));
  EXPECT_TRUE(out.buffers.empty());
}

TEST(GrpcCodecTest, BadRequestsSayWhatToFix) {
  struct Case {
    const char* what;
    std::function<void(ModelInferRequest*)> build;
    const char* message;
  };
  std::vector<Case> cases = {
      {"no inputs", [](ModelInferRequest*) {}, "the request has no inputs"},
      {"raw size",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP32", {1, 4});
         r->add_raw_input_contents(std::string(12, '\0'));
       },
       "input 'x': raw_input_contents[0] has 12 bytes but shape [1,4] of FP32 needs 16"},
      {"raw count",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP32", {1});
         AddInput(r, "y", "FP32", {1});
         r->add_raw_input_contents(std::string(4, '\0'));
       },
       "raw_input_contents has 1 entries for 2 inputs; give one entry per input, in order"},
      {"both ways",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP32", {1})->mutable_contents()->add_fp32_contents(1);
         r->add_raw_input_contents(std::string(4, '\0'));
       },
       "input 'x': has 'contents' but the request uses raw_input_contents; send every input "
       "one way"},
      {"wrong field",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP32", {1})->mutable_contents()->add_int64_contents(1);
       },
       "input 'x': datatype FP32 takes its elements in contents.fp32_contents, got "
       "int64_contents"},
      {"count",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP32", {1, 4})->mutable_contents()->add_fp32_contents(1);
       },
       "input 'x': contents.fp32_contents has 1 elements but shape [1,4] holds 4"},
      {"no data",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP32", {1, 4});
       },
       "input 'x': no data; give its elements in 'contents' or every input in "
       "raw_input_contents"},
      {"datatype",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FLOAT", {1})->mutable_contents()->add_fp32_contents(1);
       },
       "input 'x': unknown datatype 'FLOAT'; use BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32 "
       "or FP64"},
      {"fp16 typed",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP16", {1})->mutable_contents()->add_fp32_contents(1);
       },
       "input 'x': FP16 has no typed contents field; send it in raw_input_contents"},
      {"negative dim",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP32", {-1, 4});
         r->add_raw_input_contents(std::string(16, '\0'));
       },
       "input 'x': shape must hold non-negative integers, got [-1,4]"},
      {"huge shape",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP64", {1LL << 40, 1LL << 22});
         r->add_raw_input_contents(std::string(8, '\0'));
       },
       "input 'x': shape [1099511627776,4194304] is too large"},
      {"shared memory",
       [](ModelInferRequest* r) {
         auto* in = AddInput(r, "x", "FP32", {1});
         (*in->mutable_parameters())["shared_memory_region"].set_string_param("r");
       },
       "input 'x': parameter 'shared_memory_region' is not supported over gRPC; send the tensor "
       "in the request (shared memory is offered on the loopback HTTP listener)"},
      {"nameless output",
       [](ModelInferRequest* r) {
         AddInput(r, "x", "FP32", {1})->mutable_contents()->add_fp32_contents(1);
         r->add_outputs();
       },
       "outputs[0]: 'name' is required"},
  };
  for (const Case& c : cases) {
    ModelInferRequest req;
    c.build(&req);
    GrpcDecodedRequest out;
    absl::Status status = DecodeGrpcInferRequest(req, &out);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << c.what << ": " << status;
    EXPECT_EQ(Message(status), c.message) << c.what;
  }
}

TEST(GrpcCodecTest, EncodesOutputsAsRawContents) {
  ModelInferRequest req;
  req.set_id("req-7");
  float y[4] = {2, 3, 4, 5};
  OutputTensor out{
      "y", DataType::kFp32, {1, 4}, std::as_bytes(std::span<const float>(y, 4)), nullptr};
  inference::ModelInferResponse response;
  EncodeGrpcInferResponse(req, "add_one", "1", {out}, &response);
  EXPECT_EQ(response.id(), "req-7");
  EXPECT_EQ(response.model_name(), "add_one");
  EXPECT_EQ(response.model_version(), "1");
  ASSERT_EQ(response.outputs_size(), 1);
  EXPECT_EQ(response.outputs(0).name(), "y");
  EXPECT_EQ(response.outputs(0).datatype(), "FP32");
  EXPECT_THAT(response.outputs(0).shape(), ::testing::ElementsAre(1, 4));
  ASSERT_EQ(response.raw_output_contents_size(), 1);
  EXPECT_EQ(response.raw_output_contents(0), std::string(reinterpret_cast<char*>(y), sizeof(y)));
  EXPECT_FALSE(response.outputs(0).has_contents());
}

TEST(GrpcCodecTest, ParsesModelVersions) {
  EXPECT_EQ(*ParseModelVersion(""), 0);
  EXPECT_EQ(*ParseModelVersion("12"), 12);
  for (const char* bad : {"0", "-1", "1a", "v1", " 1"}) {
    auto parsed = ParseModelVersion(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(parsed.status())) << bad;
    EXPECT_THAT(Message(parsed.status()), HasSubstr("is not a positive integer")) << bad;
  }
}

}  // namespace
}  // namespace outpost::serve
