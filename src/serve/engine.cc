#include "serve/engine.h"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
#include "spdlog/spdlog.h"

#if defined(__SANITIZE_ADDRESS__)
#define OUTPOST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define OUTPOST_ASAN 1
#endif
#endif
#ifdef OUTPOST_ASAN
#include <sanitizer/lsan_interface.h>
#endif

namespace outpost::serve {
namespace {

// Most models have a handful of inputs and outputs: keep Run's per-call
// bookkeeping on the stack.
constexpr size_t kInlineTensors = 8;

// While set, ONNX Runtime's error lines logged on this thread are collected
// here instead of logged: a failed provider registration returns only "Failed
// to load shared library" and logs the useful part (which library, why).
thread_local std::string* captured_ort_errors = nullptr;

// Routes ONNX Runtime's own log lines into spdlog so they share the
// process's format and level.
void OrtLog(void* /*param*/, OrtLoggingLevel severity, const char* category, const char* /*logid*/,
            const char* code_location, const char* message) {
  std::string_view text(message);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (captured_ort_errors != nullptr && severity >= ORT_LOGGING_LEVEL_ERROR) {
    if (!captured_ort_errors->empty()) captured_ort_errors->append("; ");
    captured_ort_errors->append(text);
    return;
  }
  spdlog::level::level_enum level = spdlog::level::info;
  switch (severity) {
    case ORT_LOGGING_LEVEL_VERBOSE:
      level = spdlog::level::trace;
      break;
    case ORT_LOGGING_LEVEL_INFO:
      level = spdlog::level::debug;
      break;
    case ORT_LOGGING_LEVEL_WARNING:
      level = spdlog::level::warn;
      break;
    case ORT_LOGGING_LEVEL_ERROR:
      level = spdlog::level::err;
      break;
    case ORT_LOGGING_LEVEL_FATAL:
      level = spdlog::level::critical;
      break;
  }
  spdlog::log(level, "onnxruntime [{}] {}: {}", category, code_location, text);
}

// Collects ORT's error lines on this thread for the scope's lifetime.
class CaptureOrtErrors {
 public:
  CaptureOrtErrors() { captured_ort_errors = &text_; }
  ~CaptureOrtErrors() { captured_ort_errors = nullptr; }
  CaptureOrtErrors(const CaptureOrtErrors&) = delete;
  CaptureOrtErrors& operator=(const CaptureOrtErrors&) = delete;
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

// One Ort::Env for the process. It is never destroyed: sessions may still be
// torn down by static destructors at exit, and ORT must outlive them.
absl::StatusOr<Ort::Env*> SharedEnv() {
  static const absl::StatusOr<Ort::Env*> env = []() -> absl::StatusOr<Ort::Env*> {
#ifdef OUTPOST_ASAN
    // ORT leaks 14 bytes once while creating its Env (a bare Ort::Env
    // constructed and destroyed in main shows it too); keep LeakSanitizer
    // quiet about this one allocation only.
    __lsan::ScopedDisabler ort_env_leaks_once;
#endif
    try {
      return new Ort::Env(ORT_LOGGING_LEVEL_WARNING, "outpost", OrtLog, nullptr);
    } catch (const Ort::Exception& e) {
      return absl::InternalError(fmt::format("cannot initialise ONNX Runtime: {}", e.what()));
    }
  }();
  return env;
}

DataType FromOnnx(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
      return DataType::kBool;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
      return DataType::kUint8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16:
      return DataType::kUint16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32:
      return DataType::kUint32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64:
      return DataType::kUint64;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
      return DataType::kInt8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16:
      return DataType::kInt16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
      return DataType::kInt32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
      return DataType::kInt64;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
      return DataType::kFp16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
      return DataType::kFp32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
      return DataType::kFp64;
    default:
      return DataType::kInvalid;
  }
}

ONNXTensorElementDataType ToOnnx(DataType type) {
  switch (type) {
    case DataType::kBool:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    case DataType::kUint8:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case DataType::kUint16:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
    case DataType::kUint32:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32;
    case DataType::kUint64:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64;
    case DataType::kInt8:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case DataType::kInt16:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
    case DataType::kInt32:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case DataType::kInt64:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case DataType::kFp16:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DataType::kFp32:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DataType::kFp64:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
    default:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
}

std::string_view OnnxTypeName(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING:
      return "string";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16:
      return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX64:
      return "complex64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX128:
      return "complex128";
    default:
      return "an element type this server does not handle";
  }
}

// Takes ownership of `status` (may be null = OK).
absl::Status FromOrtStatus(OrtStatus* status) {
  if (status == nullptr) return absl::OkStatus();
  const OrtApi& api = Ort::GetApi();
  std::string message = api.GetErrorMessage(status);
  api.ReleaseStatus(status);
  return absl::UnknownError(message);
}

GraphOptimizationLevel ToOrt(GraphOptimization level) {
  switch (level) {
    case GraphOptimization::kDisable:
      return ORT_DISABLE_ALL;
    case GraphOptimization::kBasic:
      return ORT_ENABLE_BASIC;
    case GraphOptimization::kExtended:
      return ORT_ENABLE_EXTENDED;
    case GraphOptimization::kAll:
      return ORT_ENABLE_ALL;
  }
  return ORT_ENABLE_ALL;
}

// Session options from the model config; throws Ort::Exception.
Ort::SessionOptions MakeSessionOptions(const ModelConfig& config) {
  Ort::SessionOptions options;
  options.SetGraphOptimizationLevel(ToOrt(config.graph_optimization));
  options.SetIntraOpNumThreads(config.intra_op_threads);
  options.SetInterOpNumThreads(config.inter_op_threads);
  options.SetExecutionMode(ORT_SEQUENTIAL);
  if (!config.cpu_arena) options.DisableCpuMemArena();
  for (const auto& [key, value] : config.session_config) {
    options.AddConfigEntry(key.c_str(), value.c_str());
  }
  return options;
}

// Registers a GPU provider with default options through the C API, so that a
// build without it answers with a status rather than an exception. The CPU
// provider is ORT's built-in fallback and needs no registration.
absl::Status AppendProvider(Ort::SessionOptions& options, ExecutionProvider provider) {
  const OrtApi& api = Ort::GetApi();
  switch (provider) {
    case ExecutionProvider::kCpu:
      return absl::OkStatus();
    case ExecutionProvider::kCuda: {
      OrtCUDAProviderOptionsV2* cuda = nullptr;
      RETURN_IF_ERROR(FromOrtStatus(api.CreateCUDAProviderOptions(&cuda)));
      absl::Status status =
          FromOrtStatus(api.SessionOptionsAppendExecutionProvider_CUDA_V2(options, cuda));
      api.ReleaseCUDAProviderOptions(cuda);
      return status;
    }
    case ExecutionProvider::kTensorRt: {
      OrtTensorRTProviderOptionsV2* tensorrt = nullptr;
      RETURN_IF_ERROR(FromOrtStatus(api.CreateTensorRTProviderOptions(&tensorrt)));
      absl::Status status =
          FromOrtStatus(api.SessionOptionsAppendExecutionProvider_TensorRT_V2(options, tensorrt));
      api.ReleaseTensorRTProviderOptions(tensorrt);
      return status;
    }
  }
  return absl::InvalidArgumentError("unknown execution provider");
}

// Errors that no provider can fix: the file is not a usable ONNX model.
bool IsModelError(OrtErrorCode code) {
  return code == ORT_INVALID_PROTOBUF || code == ORT_NO_MODEL || code == ORT_INVALID_GRAPH ||
         code == ORT_NO_SUCHFILE;
}

// Reads one input's or output's declared type and shape.
absl::StatusOr<TensorSpec> SpecFromTypeInfo(std::string name, const Ort::TypeInfo& info,
                                            std::string_view what, std::string_view context) {
  if (info.GetONNXType() != ONNX_TYPE_TENSOR) {
    return absl::InvalidArgumentError(
        fmt::format("{}: {} '{}' is not a tensor (sequence, map or optional); only tensor "
                    "inputs and outputs are supported",
                    context, what, name));
  }
  auto tensor_info = info.GetTensorTypeAndShapeInfo();
  ONNXTensorElementDataType onnx_type = tensor_info.GetElementType();
  DataType type = FromOnnx(onnx_type);
  if (type == DataType::kInvalid) {
    return absl::InvalidArgumentError(
        fmt::format("{}: {} '{}' has element type {} (ONNX type {}), which is not supported; "
                    "export the model with a numeric or bool type",
                    context, what, name, OnnxTypeName(onnx_type), static_cast<int>(onnx_type)));
  }
  TensorSpec spec;
  spec.name = std::move(name);
  spec.datatype = type;
  spec.shape = tensor_info.GetShape();
  for (int64_t& dim : spec.shape) {
    if (dim < 0) dim = -1;  // symbolic or unknown
  }
  return spec;
}

// Batching concatenates requests along the first dimension, so every input
// and output needs a dynamic one.
absl::Status CheckBatchDimension(const std::vector<TensorSpec>& specs, std::string_view what,
                                 int64_t max_batch_size, std::string_view context) {
  for (const TensorSpec& spec : specs) {
    if (spec.shape.empty() || spec.shape[0] != -1) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: max_batch_size is {} but {} '{}' has shape {} without a dynamic first (batch) "
          "dimension; set max_batch_size: 0 or export the model with a dynamic batch axis",
          context, max_batch_size, what, spec.name, ShapeString(spec.shape)));
    }
  }
  return absl::OkStatus();
}

// Merges the config's `inputs`/`outputs` entries into the model's specs.
absl::Status ApplyOverrides(const std::vector<TensorSpec>& overrides,
                            std::vector<TensorSpec>& specs, std::string_view key, bool batching,
                            std::string_view context) {
  for (const TensorSpec& override_spec : overrides) {
    auto it = std::find_if(specs.begin(), specs.end(),
                           [&](const TensorSpec& s) { return s.name == override_spec.name; });
    if (it == specs.end()) {
      std::vector<std::string_view> names;
      for (const TensorSpec& s : specs) names.push_back(s.name);
      return absl::InvalidArgumentError(
          fmt::format("{}: config key '{}': '{}' is not one of the model's {} ({})", context, key,
                      override_spec.name, key, fmt::join(names, ", ")));
    }
    TensorSpec& spec = *it;
    if (override_spec.datatype != spec.datatype) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: config key '{}': '{}' has datatype {} in the config but {} in the model", context,
          key, spec.name, DataTypeName(override_spec.datatype), DataTypeName(spec.datatype)));
    }
    // As in Triton, a batching model's config shape leaves out the batch dimension.
    const size_t offset = batching ? 1 : 0;
    bool compatible = spec.shape.size() == override_spec.shape.size() + offset;
    for (size_t d = 0; compatible && d < override_spec.shape.size(); ++d) {
      int64_t model_dim = spec.shape[d + offset];
      compatible = model_dim == -1 || model_dim == override_spec.shape[d];
    }
    if (!compatible) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: config key '{}': '{}' has shape {} in the config but {} in the model{}; each "
          "dimension must equal the model's or narrow a dynamic (-1) one",
          context, key, spec.name, ShapeString(override_spec.shape), ShapeString(spec.shape),
          batching ? " (the config shape leaves out the batch dimension, max_batch_size > 0)"
                   : ""));
    }
    for (size_t d = 0; d < override_spec.shape.size(); ++d) {
      spec.shape[d + offset] = override_spec.shape[d];
    }
  }
  return absl::OkStatus();
}

}  // namespace

struct Engine::Impl {
  Ort::Session session{nullptr};
  Ort::MemoryInfo cpu_memory{nullptr};
  // Point into Engine::inputs_/outputs_ names, which never change after Create.
  std::vector<const char*> input_names;
  std::vector<const char*> output_names;
  std::vector<ONNXTensorElementDataType> input_types;
};

Engine::Engine(EngineOptions options) : options_(std::move(options)) {}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  const std::string context =
      fmt::format("model '{}' version {}", options.model_name, options.version);
  const std::string path = options.model_path.string();
  std::error_code error;
  const auto file_status = std::filesystem::status(options.model_path, error);
  if (file_status.type() == std::filesystem::file_type::not_found) {
    return absl::NotFoundError(fmt::format("{}: model file {} does not exist", context, path));
  }
  if (error || !std::filesystem::is_regular_file(file_status)) {
    return absl::InvalidArgumentError(fmt::format("{}: {} is not a readable file{}", context, path,
                                                  error ? ": " + error.message() : ""));
  }
  ASSIGN_OR_RETURN(Ort::Env * env, SharedEnv());

  const ModelConfig& config = options.config;
  if (config.execution_providers.empty()) {
    return absl::FailedPreconditionError(
        fmt::format("{}: no execution provider listed in the config", context));
  }
  auto engine = std::unique_ptr<Engine>(new Engine(options));
  engine->impl_ = std::make_unique<Impl>();
  Impl& impl = *engine->impl_;

  for (ExecutionProvider provider : config.execution_providers) {
    std::string reason;
    {
      CaptureOrtErrors ort_errors;
      try {
        Ort::SessionOptions session_options = MakeSessionOptions(config);
        absl::Status registered = AppendProvider(session_options, provider);
        if (registered.ok()) {
          impl.session = Ort::Session(*env, options.model_path.c_str(), session_options);
          engine->provider_ = provider;
          break;
        }
        reason = std::string(registered.message());
      } catch (const Ort::Exception& e) {
        // On the CPU provider every failure is the model's: nothing else to try.
        if (IsModelError(e.GetOrtErrorCode()) || provider == ExecutionProvider::kCpu) {
          return absl::InvalidArgumentError(
              fmt::format("{}: {} is not a loadable ONNX model: {}", context, path, e.what()));
        }
        reason = e.what();
      }
      if (!ort_errors.text().empty()) reason = fmt::format("{} ({})", reason, ort_errors.text());
    }
    if (config.strict_providers) {
      return absl::FailedPreconditionError(
          fmt::format("{}: execution provider '{}' failed and strict_providers is set: {}", context,
                      ProviderName(provider), reason));
    }
    spdlog::warn("{}: execution provider '{}' unavailable, trying the next one: {}", context,
                 ProviderName(provider), reason);
    engine->fallbacks_.push_back(ProviderFallback{provider, std::move(reason)});
  }
  if (impl.session == nullptr) {
    std::vector<std::string> reasons;
    for (const ProviderFallback& fallback : engine->fallbacks_) {
      reasons.push_back(fmt::format("{}: {}", ProviderName(fallback.provider), fallback.reason));
    }
    return absl::FailedPreconditionError(
        fmt::format("{}: no listed execution provider works ({}); add cpu to "
                    "execution_providers to fall back to it",
                    context, fmt::join(reasons, "; ")));
  }

  try {
    Ort::AllocatorWithDefaultOptions allocator;
    const size_t input_count = impl.session.GetInputCount();
    for (size_t i = 0; i < input_count; ++i) {
      ASSIGN_OR_RETURN(TensorSpec spec,
                       SpecFromTypeInfo(impl.session.GetInputNameAllocated(i, allocator).get(),
                                        impl.session.GetInputTypeInfo(i), "input", context));
      engine->inputs_.push_back(std::move(spec));
    }
    const size_t output_count = impl.session.GetOutputCount();
    for (size_t i = 0; i < output_count; ++i) {
      ASSIGN_OR_RETURN(TensorSpec spec,
                       SpecFromTypeInfo(impl.session.GetOutputNameAllocated(i, allocator).get(),
                                        impl.session.GetOutputTypeInfo(i), "output", context));
      engine->outputs_.push_back(std::move(spec));
    }
    impl.cpu_memory = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
  } catch (const Ort::Exception& e) {
    return absl::InternalError(
        fmt::format("{}: cannot read the model's inputs and outputs: {}", context, e.what()));
  }

  const bool batching = config.max_batch_size > 0;
  if (batching) {
    RETURN_IF_ERROR(CheckBatchDimension(engine->inputs_, "input", config.max_batch_size, context));
    RETURN_IF_ERROR(
        CheckBatchDimension(engine->outputs_, "output", config.max_batch_size, context));
  }
  RETURN_IF_ERROR(ApplyOverrides(config.inputs, engine->inputs_, "inputs", batching, context));
  RETURN_IF_ERROR(ApplyOverrides(config.outputs, engine->outputs_, "outputs", batching, context));

  for (const TensorSpec& spec : engine->inputs_) {
    impl.input_names.push_back(spec.name.c_str());
    impl.input_types.push_back(ToOnnx(spec.datatype));
  }
  for (const TensorSpec& spec : engine->outputs_) impl.output_names.push_back(spec.name.c_str());

  if (config.warmup_iterations > 0) {
    // Zero-filled inputs, dynamic dimensions as 1.
    std::vector<std::vector<std::byte>> buffers;
    std::vector<InputTensor> warmup_inputs;
    buffers.reserve(engine->inputs_.size());
    for (const TensorSpec& spec : engine->inputs_) {
      InputTensor input;
      input.name = spec.name;
      input.datatype = spec.datatype;
      for (int64_t dim : spec.shape) input.shape.push_back(dim < 0 ? 1 : dim);
      buffers.emplace_back(ElementCount(input.shape) * DataTypeSize(spec.datatype));
      input.data = buffers.back();
      warmup_inputs.push_back(std::move(input));
    }
    for (int i = 0; i < config.warmup_iterations; ++i) {
      auto outputs = engine->Run(warmup_inputs);
      if (!outputs.ok()) {
        return absl::Status(
            outputs.status().code(),
            fmt::format("warm-up inference {} of {} failed (zero inputs, "
                        "dynamic dimensions as 1): {}",
                        i + 1, config.warmup_iterations, std::string(outputs.status().message())));
      }
    }
  }
  spdlog::debug("{}: loaded {} on {}{}", context, path, ProviderName(engine->provider_),
                engine->fallbacks_.empty() ? "" : " (after falling back)");
  return engine;
}

absl::StatusOr<std::vector<OutputTensor>> Engine::Run(std::span<const InputTensor> inputs,
                                                      std::span<const int> output_indices) const {
  // Ort::Session::Run is not const in the C++ wrapper, but concurrent Run
  // calls on one session are safe (ORT documents Run as thread-safe).
  Impl& impl = *impl_;
  if (inputs.size() != inputs_.size()) {
    return absl::InvalidArgumentError(
        fmt::format("model '{}' version {}: got {} inputs, the model takes {}", options_.model_name,
                    options_.version, inputs.size(), inputs_.size()));
  }
  // Owns the output values of this call; each OutputTensor's owner aliases
  // it, so one allocation covers every output.
  using OutputValues = absl::InlinedVector<Ort::Value, kInlineTensors>;
  try {
    absl::InlinedVector<Ort::Value, kInlineTensors> input_values;
    input_values.reserve(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      const InputTensor& input = inputs[i];
      const TensorSpec& spec = inputs_[i];
      bool shape_ok = input.shape.size() == spec.shape.size();
      for (size_t d = 0; shape_ok && d < spec.shape.size(); ++d) {
        shape_ok = input.shape[d] >= 0 && (spec.shape[d] == -1 || spec.shape[d] == input.shape[d]);
      }
      const int64_t elements = shape_ok ? ElementCount(input.shape) : -1;
      const size_t element_size = DataTypeSize(spec.datatype);
      if (input.datatype != spec.datatype || !shape_ok || elements < 0 ||
          static_cast<uint64_t>(elements) > std::numeric_limits<size_t>::max() / element_size ||
          input.data.size() != static_cast<size_t>(elements) * element_size) {
        return absl::InvalidArgumentError(fmt::format(
            "model '{}' version {}: input #{} '{}': got {} {} with {} bytes of data; the model "
            "takes {} {} ({} bytes per element, dynamic dimensions as -1)",
            options_.model_name, options_.version, i, spec.name, DataTypeName(input.datatype),
            ShapeString(input.shape), input.data.size(), DataTypeName(spec.datatype),
            ShapeString(spec.shape), element_size));
      }
      // ORT never writes to inputs; the cast only satisfies its C signature.
      // An empty tensor still needs a non-null pointer.
      static std::byte empty_tensor_storage[1];
      void* data =
          input.data.empty() ? empty_tensor_storage : const_cast<std::byte*>(input.data.data());
      input_values.push_back(Ort::Value::CreateTensor(impl.cpu_memory, data, input.data.size(),
                                                      input.shape.data(), input.shape.size(),
                                                      impl.input_types[i]));
    }

    absl::InlinedVector<const char*, kInlineTensors> selected_names;
    absl::InlinedVector<int, kInlineTensors> selected;
    if (output_indices.empty()) {
      for (size_t i = 0; i < outputs_.size(); ++i) selected.push_back(static_cast<int>(i));
    } else {
      for (int index : output_indices) {
        if (index < 0 || static_cast<size_t>(index) >= outputs_.size()) {
          return absl::InvalidArgumentError(
              fmt::format("model '{}' version {}: output index {} out of range; the model has {} "
                          "outputs",
                          options_.model_name, options_.version, index, outputs_.size()));
        }
        selected.push_back(index);
      }
    }
    for (int index : selected) selected_names.push_back(impl.output_names[index]);

    auto values = std::make_shared<OutputValues>();
    values->reserve(selected.size());
    for (size_t i = 0; i < selected.size(); ++i) values->emplace_back(nullptr);
    impl.session.Run(Ort::RunOptions{nullptr}, impl.input_names.data(), input_values.data(),
                     input_values.size(), selected_names.data(), values->data(), selected.size());

    std::vector<OutputTensor> outputs(selected.size());
    for (size_t i = 0; i < selected.size(); ++i) {
      const TensorSpec& spec = outputs_[selected[i]];
      Ort::Value& value = (*values)[i];
      auto info = value.GetTensorTypeAndShapeInfo();
      if (FromOnnx(info.GetElementType()) != spec.datatype) {
        return absl::InternalError(
            fmt::format("model '{}' version {}: output '{}' came back as ONNX type {}, declared {}",
                        options_.model_name, options_.version, spec.name,
                        static_cast<int>(info.GetElementType()), DataTypeName(spec.datatype)));
      }
      OutputTensor& out = outputs[i];
      out.name = spec.name;
      out.datatype = spec.datatype;
      out.shape = info.GetShape();
      const size_t bytes = info.GetElementCount() * DataTypeSize(spec.datatype);
      const auto* data = static_cast<const std::byte*>(value.GetTensorRawData());
      out.data = std::span<const std::byte>(data, bytes);
      out.owner = std::shared_ptr<const void>(values, data);
    }
    return outputs;
  } catch (const Ort::Exception& e) {
    return absl::InternalError(fmt::format("model '{}' version {}: inference failed: {}",
                                           options_.model_name, options_.version, e.what()));
  }
}

}  // namespace outpost::serve
