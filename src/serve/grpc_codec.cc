#include "serve/grpc_codec.h"

#include <charconv>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace outpost::serve {
namespace {

using inference::InferTensorContents;
using inference::ModelInferRequest;

absl::Status Invalid(std::string_view message) {
  return absl::InvalidArgumentError(absl::string_view(message.data(), message.size()));
}

// The typed field a datatype travels in; nullptr for FP16 (raw only).
const char* ContentsFieldFor(DataType type) {
  switch (type) {
    case DataType::kBool:
      return "bool_contents";
    case DataType::kInt8:
    case DataType::kInt16:
    case DataType::kInt32:
      return "int_contents";
    case DataType::kInt64:
      return "int64_contents";
    case DataType::kUint8:
    case DataType::kUint16:
    case DataType::kUint32:
      return "uint_contents";
    case DataType::kUint64:
      return "uint64_contents";
    case DataType::kFp32:
      return "fp32_contents";
    case DataType::kFp64:
      return "fp64_contents";
    default:
      return nullptr;
  }
}

// Names of the typed fields of `contents` that hold elements.
std::string FilledFields(const InferTensorContents& c) {
  std::string out;
  auto add = [&out](int size, const char* name) {
    if (size > 0) StrAppend(&out, out.empty() ? "" : ", ", name);
  };
  add(c.bool_contents_size(), "bool_contents");
  add(c.int_contents_size(), "int_contents");
  add(c.int64_contents_size(), "int64_contents");
  add(c.uint_contents_size(), "uint_contents");
  add(c.uint64_contents_size(), "uint64_contents");
  add(c.fp32_contents_size(), "fp32_contents");
  add(c.fp64_contents_size(), "fp64_contents");
  add(c.bytes_contents_size(), "bytes_contents");
  return out;
}

// Points `tensor` at a repeated field whose element type is the tensor's.
template <typename T>
std::span<const std::byte> Borrow(const google::protobuf::RepeatedField<T>& field) {
  return std::as_bytes(std::span<const T>(field.data(), static_cast<size_t>(field.size())));
}

// Narrows a wider repeated field into a new buffer, checking each value.
template <typename To, typename From>
absl::Status Narrow(const google::protobuf::RepeatedField<From>& field, std::string_view name,
                    GrpcDecodedRequest* out, std::span<const std::byte>* data) {
  size_t bytes = static_cast<size_t>(field.size()) * sizeof(To);
  auto buffer = std::make_unique<std::byte[]>(bytes == 0 ? 1 : bytes);
  To* dst = reinterpret_cast<To*>(buffer.get());
  for (int i = 0; i < field.size(); ++i) {
    From v = field.Get(i);
    if (v < static_cast<From>(std::numeric_limits<To>::min()) ||
        v > static_cast<From>(std::numeric_limits<To>::max())) {
      return Invalid(
          StrCat("input '", name, "': element ", i, " (", v, ") is out of range for the datatype"));
    }
    dst[i] = static_cast<To>(v);
  }
  *data = std::span<const std::byte>(buffer.get(), bytes);
  out->buffers.push_back(std::move(buffer));
  return absl::OkStatus();
}

// Sets `tensor.data` from the typed contents of `input`, which must hold
// exactly `count` elements in the field of the tensor's datatype and nothing
// in any other field.
absl::Status DecodeTyped(const ModelInferRequest::InferInputTensor& input, int64_t count,
                         InputTensor* tensor, GrpcDecodedRequest* out) {
  const std::string_view name = tensor->name;
  const InferTensorContents& c = input.contents();
  const char* field = ContentsFieldFor(tensor->datatype);
  if (field == nullptr) {
    return Invalid(StrCat("input '", name, "': ", DataTypeName(tensor->datatype),
                          " has no typed contents field; send it in raw_input_contents"));
  }
  std::string filled = FilledFields(c);
  if (filled != field && !(filled.empty() && count == 0)) {
    return Invalid(StrCat("input '", name, "': datatype ", DataTypeName(tensor->datatype),
                          " takes its elements in contents.", field, ", got ",
                          filled.empty() ? std::string("no elements") : filled));
  }
  int64_t given = 0;
  switch (tensor->datatype) {
    case DataType::kBool:
      given = c.bool_contents_size();
      break;
    case DataType::kInt8:
    case DataType::kInt16:
    case DataType::kInt32:
      given = c.int_contents_size();
      break;
    case DataType::kInt64:
      given = c.int64_contents_size();
      break;
    case DataType::kUint8:
    case DataType::kUint16:
    case DataType::kUint32:
      given = c.uint_contents_size();
      break;
    case DataType::kUint64:
      given = c.uint64_contents_size();
      break;
    case DataType::kFp32:
      given = c.fp32_contents_size();
      break;
    case DataType::kFp64:
      given = c.fp64_contents_size();
      break;
    default:
      break;
  }
  if (given != count) {
    return Invalid(StrCat("input '", name, "': contents.", field, " has ", given,
                          " elements but shape ", ShapeString(tensor->shape), " holds ", count));
  }
  static_assert(sizeof(bool) == 1, "BOOL tensors are one byte per element");
  switch (tensor->datatype) {
    case DataType::kBool:
      tensor->data = Borrow(c.bool_contents());
      return absl::OkStatus();
    case DataType::kInt8:
      return Narrow<int8_t>(c.int_contents(), name, out, &tensor->data);
    case DataType::kInt16:
      return Narrow<int16_t>(c.int_contents(), name, out, &tensor->data);
    case DataType::kInt32:
      tensor->data = Borrow(c.int_contents());
      return absl::OkStatus();
    case DataType::kInt64:
      tensor->data = Borrow(c.int64_contents());
      return absl::OkStatus();
    case DataType::kUint8:
      return Narrow<uint8_t>(c.uint_contents(), name, out, &tensor->data);
    case DataType::kUint16:
      return Narrow<uint16_t>(c.uint_contents(), name, out, &tensor->data);
    case DataType::kUint32:
      tensor->data = Borrow(c.uint_contents());
      return absl::OkStatus();
    case DataType::kUint64:
      tensor->data = Borrow(c.uint64_contents());
      return absl::OkStatus();
    case DataType::kFp32:
      tensor->data = Borrow(c.fp32_contents());
      return absl::OkStatus();
    case DataType::kFp64:
      tensor->data = Borrow(c.fp64_contents());
      return absl::OkStatus();
    default:
      return Invalid(StrCat("input '", name, "': unsupported datatype"));
  }
}

// Parameters that only make sense over HTTP (or not at all here).
absl::Status CheckParameters(
    const google::protobuf::Map<std::string, inference::InferParameter>& params,
    std::string_view where) {
  for (const char* key : {"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset",
                          "classification"}) {
    if (params.contains(key)) {
      return Invalid(StrCat(where, ": parameter '", key,
                            "' is not supported over gRPC; send the tensor in the request "
                            "(shared memory is offered on the loopback HTTP listener)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int64_t> ParseModelVersion(std::string_view text) {
  if (text.empty()) return 0;
  int64_t version = 0;
  auto result = std::from_chars(text.data(), text.data() + text.size(), version);
  if (result.ec != std::errc() || result.ptr != text.data() + text.size() || version <= 0) {
    return Invalid(StrCat("model_version '", text, "' is not a positive integer"));
  }
  return version;
}

absl::Status DecodeGrpcInferRequest(const ModelInferRequest& in, GrpcDecodedRequest* out) {
  if (in.inputs_size() == 0) return Invalid("the request has no inputs");
  const bool raw = in.raw_input_contents_size() > 0;
  if (raw && in.raw_input_contents_size() != in.inputs_size()) {
    return Invalid(StrCat("raw_input_contents has ", in.raw_input_contents_size(), " entries for ",
                          in.inputs_size(), " inputs; give one entry per input, in order"));
  }
  RETURN_IF_ERROR(CheckParameters(in.parameters(), "request"));
  out->request.inputs.reserve(in.inputs_size());
  for (int i = 0; i < in.inputs_size(); ++i) {
    const ModelInferRequest::InferInputTensor& input = in.inputs(i);
    if (input.name().empty()) return Invalid(StrCat("inputs[", i, "]: 'name' is required"));
    InputTensor tensor;
    tensor.name = input.name();
    const std::string where = StrCat("input '", tensor.name, "'");
    tensor.datatype = DataTypeFromName(input.datatype());
    if (tensor.datatype == DataType::kInvalid) {
      return Invalid(StrCat(where, ": unknown datatype '", input.datatype(),
                            "'; use BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32 or FP64"));
    }
    if (tensor.datatype == DataType::kBytes) {
      return Invalid(StrCat(where, ": BYTES tensors are not supported by ONNX models here"));
    }
    if (input.shape_size() > 16)
      return Invalid(StrCat(where, ": shape has more than 16 dimensions"));
    tensor.shape.assign(input.shape().begin(), input.shape().end());
    for (int64_t dim : tensor.shape) {
      if (dim < 0) {
        return Invalid(StrCat(where, ": shape must hold non-negative integers, got ",
                              ShapeString(tensor.shape)));
      }
    }
    RETURN_IF_ERROR(CheckParameters(input.parameters(), where));
    int64_t count = ElementCount(tensor.shape);
    size_t element = DataTypeSize(tensor.datatype);
    if (count < 0 ||
        static_cast<uint64_t>(count) > std::numeric_limits<uint64_t>::max() / element) {
      return Invalid(StrCat(where, ": shape ", ShapeString(tensor.shape), " is too large"));
    }
    const uint64_t bytes = static_cast<uint64_t>(count) * element;
    if (raw) {
      if (input.has_contents()) {
        return Invalid(StrCat(where,
                              ": has 'contents' but the request uses raw_input_contents; "
                              "send every input one way"));
      }
      const std::string& data = in.raw_input_contents(i);
      if (data.size() != bytes) {
        return Invalid(StrCat(where, ": raw_input_contents[", i, "] has ", data.size(),
                              " bytes but shape ", ShapeString(tensor.shape), " of ",
                              DataTypeName(tensor.datatype), " needs ", bytes));
      }
      const auto* p = reinterpret_cast<const std::byte*>(data.data());
      if (reinterpret_cast<uintptr_t>(p) % element == 0) {
        tensor.data = std::span<const std::byte>(p, bytes);
      } else {
        // Protobuf allocates long strings from the heap (aligned), so this
        // is rare: copy rather than hand the engine a misaligned tensor.
        auto buffer = std::make_unique<std::byte[]>(bytes);
        std::memcpy(buffer.get(), p, bytes);
        tensor.data = std::span<const std::byte>(buffer.get(), bytes);
        out->buffers.push_back(std::move(buffer));
      }
    } else {
      if (!input.has_contents() && count > 0) {
        return Invalid(StrCat(where,
                              ": no data; give its elements in 'contents' or every input in "
                              "raw_input_contents"));
      }
      RETURN_IF_ERROR(DecodeTyped(input, count, &tensor, out));
    }
    out->request.inputs.push_back(std::move(tensor));
  }
  out->request.requested_outputs.reserve(in.outputs_size());
  for (int i = 0; i < in.outputs_size(); ++i) {
    const auto& output = in.outputs(i);
    if (output.name().empty()) return Invalid(StrCat("outputs[", i, "]: 'name' is required"));
    RETURN_IF_ERROR(CheckParameters(output.parameters(), StrCat("output '", output.name(), "'")));
    out->request.requested_outputs.push_back(output.name());
  }
  return absl::OkStatus();
}

void EncodeGrpcInferResponse(const ModelInferRequest& request, std::string_view model_name,
                             std::string_view model_version,
                             const std::vector<OutputTensor>& outputs,
                             inference::ModelInferResponse* out) {
  out->set_model_name(model_name.data(), model_name.size());
  out->set_model_version(model_version.data(), model_version.size());
  if (!request.id().empty()) out->set_id(request.id());
  out->mutable_outputs()->Reserve(static_cast<int>(outputs.size()));
  out->mutable_raw_output_contents()->Reserve(static_cast<int>(outputs.size()));
  for (const OutputTensor& tensor : outputs) {
    auto* o = out->add_outputs();
    o->set_name(tensor.name);
    std::string_view datatype = DataTypeName(tensor.datatype);
    o->set_datatype(datatype.data(), datatype.size());
    o->mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
    out->add_raw_output_contents(reinterpret_cast<const char*>(tensor.data.data()),
                                 tensor.data.size());
  }
}

}  // namespace outpost::serve
