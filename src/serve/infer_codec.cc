#include "serve/infer_codec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>

namespace outpost::serve {
namespace {

using nlohmann::json;

absl::Status Invalid(std::string_view message) {
  return absl::InvalidArgumentError(absl::string_view(message.data(), message.size()));
}

// Writes JSON `data` (flat or nested row-major) as elements of T into `dst`.
template <typename T, bool kHalf>
class DataWriter {
 public:
  DataWriter(T* dst, int64_t count, std::string_view input)
      : dst_(dst), count_(count), input_(input) {}

  absl::Status Walk(const json& value, size_t depth, size_t max_depth) {
    if (value.is_array()) {
      if (depth >= max_depth) {
        return Invalid(StrCat("input '", input_, "': 'data' is nested deeper than its shape"));
      }
      for (const json& item : value) RETURN_IF_ERROR(Walk(item, depth + 1, max_depth));
      return absl::OkStatus();
    }
    if (written_ >= count_) return TooMany();
    RETURN_IF_ERROR(Convert(value, &dst_[written_]));
    ++written_;
    return absl::OkStatus();
  }

  int64_t written() const { return written_; }

 private:
  absl::Status TooMany() const {
    return Invalid(StrCat("input '", input_, "': 'data' has more than the ", count_,
                          " elements its shape holds"));
  }
  absl::Status TypeError(const json& value, std::string_view expected) const {
    return Invalid(StrCat("input '", input_, "': element ", written_, " is ", value.type_name(),
                          ", expected ", expected));
  }

  absl::Status Convert(const json& value, T* out) const {
    if constexpr (std::is_same_v<T, bool>) {
      if (!value.is_boolean()) return TypeError(value, "true or false");
      *out = value.get<bool>();
    } else if constexpr (kHalf) {
      if (!value.is_number()) return TypeError(value, "a number");
      *out = FloatToHalf(value.get<float>());
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!value.is_number()) return TypeError(value, "a number");
      *out = value.get<T>();
    } else {
      if (value.is_number_unsigned()) {
        uint64_t v = value.get<uint64_t>();
        if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) return Range(value);
        *out = static_cast<T>(v);
      } else if (value.is_number_integer()) {
        int64_t v = value.get<int64_t>();
        if constexpr (std::is_unsigned_v<T>) {
          if (v < 0) return Range(value);
        } else {
          if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
            return Range(value);
          }
        }
        *out = static_cast<T>(v);
      } else {
        return TypeError(value, "an integer");
      }
    }
    return absl::OkStatus();
  }

  absl::Status Range(const json& value) const {
    return Invalid(StrCat("input '", input_, "': element ", written_, " (", value.dump(),
                          ") is out of range for the datatype"));
  }

 private:
  T* dst_;
  int64_t count_;
  std::string_view input_;
  int64_t written_ = 0;
};

template <typename T, bool kHalf = false>
absl::Status DecodeJsonData(const json& data, int64_t count, size_t rank, std::string_view name,
                            std::byte* dst) {
  DataWriter<T, kHalf> writer(reinterpret_cast<T*>(dst), count, name);
  // A scalar is accepted for a single-element tensor.
  RETURN_IF_ERROR(writer.Walk(data, 0, std::max<size_t>(rank, 1)));
  if (writer.written() != count) {
    return Invalid(StrCat("input '", name, "': 'data' has ", writer.written(),
                          " elements but shape ", "holds ", count));
  }
  return absl::OkStatus();
}

absl::Status DecodeJsonTensor(const json& data, DataType type, int64_t count, size_t rank,
                              std::string_view name, std::byte* dst) {
  switch (type) {
    case DataType::kBool:
      return DecodeJsonData<bool>(data, count, rank, name, dst);
    case DataType::kUint8:
      return DecodeJsonData<uint8_t>(data, count, rank, name, dst);
    case DataType::kUint16:
      return DecodeJsonData<uint16_t>(data, count, rank, name, dst);
    case DataType::kUint32:
      return DecodeJsonData<uint32_t>(data, count, rank, name, dst);
    case DataType::kUint64:
      return DecodeJsonData<uint64_t>(data, count, rank, name, dst);
    case DataType::kInt8:
      return DecodeJsonData<int8_t>(data, count, rank, name, dst);
    case DataType::kInt16:
      return DecodeJsonData<int16_t>(data, count, rank, name, dst);
    case DataType::kInt32:
      return DecodeJsonData<int32_t>(data, count, rank, name, dst);
    case DataType::kInt64:
      return DecodeJsonData<int64_t>(data, count, rank, name, dst);
    case DataType::kFp16:
      return DecodeJsonData<uint16_t, true>(data, count, rank, name, dst);
    case DataType::kFp32:
      return DecodeJsonData<float>(data, count, rank, name, dst);
    case DataType::kFp64:
      return DecodeJsonData<double>(data, count, rank, name, dst);
    default:
      return Invalid(StrCat("input '", name, "': datatype ", DataTypeName(type),
                            " cannot be sent as JSON data here"));
  }
}

// Reads an optional boolean parameter; errors when present but not a bool.
absl::Status BoolParameter(const json& object, const char* key, std::string_view where,
                           bool* value) {
  auto params = object.find("parameters");
  if (params == object.end()) return absl::OkStatus();
  if (!params->is_object()) return Invalid(StrCat(where, ": 'parameters' must be an object"));
  auto it = params->find(key);
  if (it == params->end()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return Invalid(StrCat(where, ": parameter '", key, "' must be true or false"));
  }
  *value = it->get<bool>();
  return absl::OkStatus();
}

struct ShmReference {
  std::shared_ptr<const SharedMemoryRegion> region;
  size_t offset = 0;
  size_t size = 0;
};

// Reads the shared_memory_* parameters of an input or output, if any.
absl::Status ShmParameters(const json& object, std::string_view where,
                           const SharedMemoryRegistry* shm, std::optional<ShmReference>* ref) {
  auto params = object.find("parameters");
  if (params == object.end() || !params->is_object()) return absl::OkStatus();
  auto region = params->find("shared_memory_region");
  if (region == params->end()) return absl::OkStatus();
  if (!region->is_string()) {
    return Invalid(StrCat(where, ": 'shared_memory_region' must be a string"));
  }
  if (shm == nullptr) {
    return Invalid(StrCat(where,
                          ": shared memory is only offered on a loopback listener; send the "
                          "tensor in the request instead"));
  }
  auto size = params->find("shared_memory_byte_size");
  if (size == params->end() || !size->is_number_unsigned()) {
    return Invalid(StrCat(where,
                          ": 'shared_memory_byte_size' (a non-negative integer) is "
                          "required with 'shared_memory_region'"));
  }
  ShmReference out;
  out.size = size->get<size_t>();
  if (auto offset = params->find("shared_memory_offset"); offset != params->end()) {
    if (!offset->is_number_unsigned()) {
      return Invalid(StrCat(where, ": 'shared_memory_offset' must be a non-negative integer"));
    }
    out.offset = offset->get<size_t>();
  }
  auto found = shm->Find(region->get<std::string>());
  if (!found.ok()) return Invalid(StrCat(where, ": ", MessageOf(found.status())));
  out.region = std::move(found).value();
  auto slice = out.region->Slice(out.offset, out.size);
  if (!slice.ok()) return Invalid(StrCat(where, ": ", MessageOf(slice.status())));
  *ref = std::move(out);
  return absl::OkStatus();
}

absl::Status DecodeInput(const json& input, size_t index, std::string_view binary,
                         size_t* binary_used, bool has_binary_section,
                         const SharedMemoryRegistry* shm, size_t json_size,
                         DecodedInferRequest* out) {
  std::string where = StrCat("inputs[", index, "]");
  if (!input.is_object()) return Invalid(StrCat(where, " must be an object"));
  auto name = input.find("name");
  if (name == input.end() || !name->is_string()) {
    return Invalid(StrCat(where, ": 'name' (a string) is required"));
  }
  InputTensor tensor;
  tensor.name = name->get<std::string>();
  where = StrCat("input '", tensor.name, "'");

  auto datatype = input.find("datatype");
  if (datatype == input.end() || !datatype->is_string()) {
    return Invalid(StrCat(where, ": 'datatype' (a string such as \"FP32\") is required"));
  }
  tensor.datatype = DataTypeFromName(datatype->get<std::string>());
  if (tensor.datatype == DataType::kInvalid) {
    return Invalid(StrCat(where, ": unknown datatype '", datatype->get<std::string>(),
                          "'; use BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32 or FP64"));
  }
  if (tensor.datatype == DataType::kBytes) {
    return Invalid(StrCat(where, ": BYTES tensors are not supported by ONNX models here"));
  }

  auto shape = input.find("shape");
  if (shape == input.end() || !shape->is_array()) {
    return Invalid(StrCat(where, ": 'shape' (an array of integers) is required"));
  }
  if (shape->size() > 16) return Invalid(StrCat(where, ": shape has more than 16 dimensions"));
  tensor.shape.reserve(shape->size());
  for (const json& dim : *shape) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
      return Invalid(StrCat(where, ": shape must hold non-negative integers, got ", shape->dump()));
    }
    tensor.shape.push_back(dim.get<int64_t>());
  }
  int64_t count = ElementCount(tensor.shape);
  size_t element = DataTypeSize(tensor.datatype);
  if (count < 0 || static_cast<uint64_t>(count) > std::numeric_limits<uint64_t>::max() / element) {
    return Invalid(StrCat(where, ": shape ", ShapeString(tensor.shape), " is too large"));
  }
  uint64_t bytes = static_cast<uint64_t>(count) * element;

  int64_t binary_size = -1;
  if (auto params = input.find("parameters"); params != input.end()) {
    if (!params->is_object()) return Invalid(StrCat(where, ": 'parameters' must be an object"));
    if (auto size = params->find("binary_data_size"); size != params->end()) {
      if (!size->is_number_unsigned()) {
        return Invalid(StrCat(where, ": 'binary_data_size' must be a non-negative integer"));
      }
      binary_size = static_cast<int64_t>(size->get<uint64_t>());
    }
  }
  auto data = input.find("data");
  std::optional<ShmReference> shm_ref;
  RETURN_IF_ERROR(ShmParameters(input, where, shm, &shm_ref));
  if (shm_ref.has_value()) {
    if (data != input.end() || binary_size >= 0) {
      return Invalid(StrCat(where,
                            ": give one of 'data', 'binary_data_size' or "
                            "'shared_memory_region'"));
    }
    if (shm_ref->size != bytes) {
      return Invalid(StrCat(where, ": shared_memory_byte_size ", shm_ref->size,
                            " does not match shape ", ShapeString(tensor.shape), " of ",
                            DataTypeName(tensor.datatype), " (", bytes, " bytes)"));
    }
    auto slice = shm_ref->region->Slice(shm_ref->offset, shm_ref->size);
    tensor.data = *slice;
    out->regions.push_back(std::move(shm_ref->region));
  } else if (binary_size >= 0) {
    if (!has_binary_section) {
      return Invalid(StrCat(where,
                            ": has 'binary_data_size' but the request has no "
                            "Inference-Header-Content-Length header"));
    }
    if (data != input.end()) {
      return Invalid(StrCat(where, ": give either 'data' or 'binary_data_size', not both"));
    }
    if (static_cast<uint64_t>(binary_size) > binary.size() - *binary_used) {
      return Invalid(StrCat(where, ": binary_data_size ", binary_size, " exceeds the ",
                            binary.size() - *binary_used,
                            " bytes left in the binary section (truncated body?)"));
    }
    if (static_cast<uint64_t>(binary_size) != bytes) {
      return Invalid(StrCat(where, ": binary_data_size ", binary_size, " does not match shape ",
                            ShapeString(tensor.shape), " of ", DataTypeName(tensor.datatype), " (",
                            bytes, " bytes)"));
    }
    tensor.data = std::as_bytes(std::span(binary.data() + *binary_used, bytes));
    *binary_used += bytes;
  } else {
    if (data == input.end()) {
      return Invalid(StrCat(where,
                            ": 'data' is required (or binary_data_size with the "
                            "binary tensor extension)"));
    }
    // Every JSON element takes at least one character of the request, so a
    // shape larger than the request cannot be filled: refuse before allocating.
    if (static_cast<uint64_t>(count) > json_size) {
      return Invalid(StrCat(where, ": shape ", ShapeString(tensor.shape), " holds ", count,
                            " elements, more than a ", json_size,
                            "-byte request can carry in 'data'"));
    }
    auto buffer = std::make_unique<std::byte[]>(bytes == 0 ? 1 : bytes);
    RETURN_IF_ERROR(DecodeJsonTensor(*data, tensor.datatype, count, tensor.shape.size(),
                                     tensor.name, buffer.get()));
    tensor.data = std::span<const std::byte>(buffer.get(), bytes);
    out->buffers.push_back(std::move(buffer));
  }
  out->request.inputs.push_back(std::move(tensor));
  return absl::OkStatus();
}

template <typename T>
void AppendNumber(T value, std::string* out) {
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(value)) {
      out->append("null");
      return;
    }
  }
  char buf[32];
  auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}

template <typename T>
void AppendElements(const std::byte* data, size_t count, std::string* out) {
  for (size_t i = 0; i < count; ++i) {
    if (i > 0) out->push_back(',');
    T value;
    std::memcpy(&value, data + i * sizeof(T), sizeof(T));
    if constexpr (std::is_same_v<T, bool>) {
      out->append(value ? "true" : "false");
    } else {
      AppendNumber(value, out);
    }
  }
}

void AppendJsonData(const OutputTensor& tensor, std::string* out) {
  size_t element = DataTypeSize(tensor.datatype);
  size_t count = element == 0 ? 0 : tensor.data.size() / element;
  const std::byte* p = tensor.data.data();
  out->reserve(out->size() + count * 12);
  switch (tensor.datatype) {
    case DataType::kBool:
      return AppendElements<bool>(p, count, out);
    case DataType::kUint8:
      return AppendElements<uint8_t>(p, count, out);
    case DataType::kUint16:
      return AppendElements<uint16_t>(p, count, out);
    case DataType::kUint32:
      return AppendElements<uint32_t>(p, count, out);
    case DataType::kUint64:
      return AppendElements<uint64_t>(p, count, out);
    case DataType::kInt8:
      return AppendElements<int8_t>(p, count, out);
    case DataType::kInt16:
      return AppendElements<int16_t>(p, count, out);
    case DataType::kInt32:
      return AppendElements<int32_t>(p, count, out);
    case DataType::kInt64:
      return AppendElements<int64_t>(p, count, out);
    case DataType::kFp32:
      return AppendElements<float>(p, count, out);
    case DataType::kFp64:
      return AppendElements<double>(p, count, out);
    case DataType::kFp16:
      for (size_t i = 0; i < count; ++i) {
        if (i > 0) out->push_back(',');
        uint16_t h;
        std::memcpy(&h, p + i * 2, 2);
        AppendNumber(HalfToFloat(h), out);
      }
      return;
    default:
      return;
  }
}

}  // namespace

void AppendJsonString(std::string_view s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned char>(c));
          out->append(buf);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

absl::Status DecodeInferRequest(std::string_view body, std::optional<size_t> header_length,
                                DecodedInferRequest* out, const SharedMemoryRegistry* shm) {
  std::string_view header = body;
  std::string_view binary;
  if (header_length.has_value()) {
    if (*header_length > body.size()) {
      return Invalid(StrCat("Inference-Header-Content-Length is ", *header_length,
                            " but the body has only ", body.size(), " bytes"));
    }
    header = body.substr(0, *header_length);
    binary = body.substr(*header_length);
  }
  if (header.empty()) return Invalid("empty request body; expected a JSON inference request");

  json root;
  try {
    root = json::parse(header);
  } catch (const json::exception& e) {
    return Invalid(StrCat("request is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return Invalid("request must be a JSON object with an 'inputs' array");

  if (auto id = root.find("id"); id != root.end()) {
    if (!id->is_string()) return Invalid("'id' must be a string");
    out->id = id->get<std::string>();
  }
  RETURN_IF_ERROR(BoolParameter(root, "binary_data_output", "request", &out->binary_default));

  auto inputs = root.find("inputs");
  if (inputs == root.end() || !inputs->is_array() || inputs->empty()) {
    return Invalid("'inputs' must be a non-empty array of tensors");
  }
  out->request.inputs.reserve(inputs->size());
  size_t binary_used = 0;
  for (size_t i = 0; i < inputs->size(); ++i) {
    RETURN_IF_ERROR(DecodeInput((*inputs)[i], i, binary, &binary_used, header_length.has_value(),
                                shm, header.size(), out));
  }
  if (binary_used != binary.size()) {
    return Invalid(StrCat("the binary section has ", binary.size(), " bytes but the inputs' ",
                          "binary_data_size values add up to ", binary_used));
  }

  if (auto outputs = root.find("outputs"); outputs != root.end()) {
    if (!outputs->is_array()) return Invalid("'outputs' must be an array");
    for (size_t i = 0; i < outputs->size(); ++i) {
      const json& output = (*outputs)[i];
      std::string where = StrCat("outputs[", i, "]");
      if (!output.is_object()) return Invalid(StrCat(where, " must be an object"));
      auto name = output.find("name");
      if (name == output.end() || !name->is_string()) {
        return Invalid(StrCat(where, ": 'name' (a string) is required"));
      }
      RequestedOutput requested{name->get<std::string>(), out->binary_default};
      RETURN_IF_ERROR(BoolParameter(output, "binary_data", where, &requested.binary));
      std::optional<ShmReference> shm_ref;
      RETURN_IF_ERROR(ShmParameters(output, where, shm, &shm_ref));
      if (shm_ref.has_value()) {
        requested.binary = false;
        requested.shm = std::move(shm_ref->region);
        requested.shm_offset = shm_ref->offset;
        requested.shm_size = shm_ref->size;
      }
      if (auto params = output.find("parameters");
          params != output.end() && params->contains("classification")) {
        return Invalid(StrCat(where, ": the 'classification' parameter is not supported"));
      }
      out->request.requested_outputs.push_back(requested.name);
      out->outputs.push_back(std::move(requested));
    }
  }
  return absl::OkStatus();
}

absl::Status EncodeInferResponse(const DecodedInferRequest& request, std::string_view model_name,
                                 std::string_view model_version,
                                 const std::vector<OutputTensor>& outputs,
                                 EncodedInferResponse* out) {
  std::string& body = out->body;
  body.clear();
  body.append("{");
  if (!request.id.empty()) {
    body.append("\"id\":");
    AppendJsonString(request.id, &body);
    body.append(",");
  }
  body.append("\"model_name\":");
  AppendJsonString(model_name, &body);
  body.append(",\"model_version\":");
  AppendJsonString(model_version, &body);
  body.append(",\"outputs\":[");

  size_t binary_bytes = 0;
  std::vector<bool> binary(outputs.size(), request.binary_default);
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i < request.outputs.size()) binary[i] = request.outputs[i].binary;
    const OutputTensor& tensor = outputs[i];
    if (i > 0) body.push_back(',');
    body.append("{\"name\":");
    AppendJsonString(tensor.name, &body);
    body.append(",\"datatype\":\"");
    body.append(DataTypeName(tensor.datatype));
    body.append("\",\"shape\":[");
    for (size_t d = 0; d < tensor.shape.size(); ++d) {
      if (d > 0) body.push_back(',');
      AppendNumber(tensor.shape[d], &body);
    }
    body.append("]");
    const RequestedOutput* requested = i < request.outputs.size() ? &request.outputs[i] : nullptr;
    if (requested != nullptr && requested->shm) {
      if (tensor.data.size() > requested->shm_size) {
        return Invalid(StrCat("output '", tensor.name, "' has ", tensor.data.size(),
                              " bytes but its shared_memory_byte_size is ", requested->shm_size));
      }
      auto slice = requested->shm->Slice(requested->shm_offset, tensor.data.size());
      if (!slice.ok()) return slice.status();
      std::memcpy(slice->data(), tensor.data.data(), tensor.data.size());
      body.append(",\"parameters\":{\"shared_memory_region\":");
      AppendJsonString(requested->shm->name(), &body);
      body.append(",\"shared_memory_byte_size\":");
      AppendNumber(tensor.data.size(), &body);
      body.append("}}");
    } else if (binary[i]) {
      body.append(",\"parameters\":{\"binary_data_size\":");
      AppendNumber(tensor.data.size(), &body);
      body.append("}}");
      binary_bytes += tensor.data.size();
    } else {
      body.append(",\"data\":[");
      AppendJsonData(tensor, &body);
      body.append("]}");
    }
  }
  body.append("]}");
  if (binary_bytes == 0 && std::find(binary.begin(), binary.end(), true) == binary.end()) {
    out->header_length.reset();
    return absl::OkStatus();
  }
  out->header_length = body.size();
  body.reserve(body.size() + binary_bytes);
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!binary[i]) continue;
    body.append(reinterpret_cast<const char*>(outputs[i].data.data()), outputs[i].data.size());
  }
  return absl::OkStatus();
}

}  // namespace outpost::serve
