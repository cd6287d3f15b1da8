// Tensor types shared by the engine, the scheduler and the API frontends.
// Names follow the KServe v2 protocol ("FP32", "INT64", ...).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace outpost::serve {

enum class DataType : uint8_t {
  kInvalid = 0,
  kBool,
  kUint8,
  kUint16,
  kUint32,
  kUint64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFp16,
  kFp32,
  kFp64,
  kBytes,  // variable-length strings; not batched, not supported as ONNX input here
};

// "FP32" etc. "INVALID" for kInvalid.
std::string_view DataTypeName(DataType type);
// Parses a KServe v2 datatype name; kInvalid when unknown.
DataType DataTypeFromName(std::string_view name);
// Bytes per element; 0 for kBytes and kInvalid.
size_t DataTypeSize(DataType type);

// IEEE 754 binary16 <-> binary32. FloatToHalf rounds to nearest (ties away
// from zero), overflows to infinity and keeps NaN a NaN.
uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t half);

// Number of elements of a fully known shape; -1 if any dimension is negative
// or the product overflows int64.
int64_t ElementCount(std::span<const int64_t> shape);

// "[1,3,224,224]" with -1 for dynamic dimensions.
std::string ShapeString(std::span<const int64_t> shape);

// A model input or output as the model declares it. Dynamic dimensions are -1.
struct TensorSpec {
  std::string name;
  DataType datatype = DataType::kInvalid;
  std::vector<int64_t> shape;
};

// An input tensor of one request. `data` is borrowed: it points into memory
// owned by the request (the HTTP body, or a buffer decoded from JSON) that
// outlives the inference call.
struct InputTensor {
  std::string name;
  DataType datatype = DataType::kInvalid;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

// An output tensor of one request. `data` points into memory kept alive by
// `owner` (typically the ONNX Runtime output value of a whole batch, shared
// by every request of that batch), so splitting a batch copies nothing.
struct OutputTensor {
  std::string name;
  DataType datatype = DataType::kInvalid;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
  std::shared_ptr<const void> owner;
};

}  // namespace outpost::serve
