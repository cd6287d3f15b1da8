// KServe v2 inference request decoding and response encoding for HTTP:
// JSON tensors and the binary tensor data extension.
//
// Decoding borrows: binary input tensors point straight into the request
// body (no copy), so the body must outlive the decoded request; JSON tensor
// data is converted once into buffers owned by the decoded request.
// Untrusted input: every length, count and nesting depth is checked, and
// every failure is an InvalidArgument whose message says what to fix.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "serve/scheduler.h"
#include "serve/shared_memory.h"
#include "serve/tensor.h"

namespace outpost::serve {

struct RequestedOutput {
  std::string name;
  bool binary = false;
  // Set when the client asked for the output in a shared memory region.
  std::shared_ptr<const SharedMemoryRegion> shm;
  size_t shm_offset = 0;
  size_t shm_size = 0;
};

struct DecodedInferRequest {
  std::string id;
  InferRequest request;  // InputTensor::data points into the body or `buffers`
  // Outputs named in the request; empty = every model output, returned
  // binary when `binary_default`.
  std::vector<RequestedOutput> outputs;
  bool binary_default = false;
  std::vector<std::unique_ptr<std::byte[]>> buffers;
  // Shared memory regions inputs point into, kept mapped for the request.
  std::vector<std::shared_ptr<const SharedMemoryRegion>> regions;
};

// `body` is the whole HTTP body; `header_length` the value of the
// Inference-Header-Content-Length header when present (the JSON header is
// then body[0, header_length) and the binary tensors follow).
// Inputs and outputs may name shared memory regions ("shared_memory_region",
// "shared_memory_byte_size", "shared_memory_offset" parameters) registered in
// `shm`; with `shm` null such requests are refused.
absl::Status DecodeInferRequest(std::string_view body, std::optional<size_t> header_length,
                                DecodedInferRequest* out,
                                const SharedMemoryRegistry* shm = nullptr);

struct EncodedInferResponse {
  std::string body;
  // Length of the JSON part when binary outputs follow it, for the
  // Inference-Header-Content-Length header; nullopt when all JSON.
  std::optional<size_t> header_length;
};

// Encodes outputs (as returned by the scheduler for `request`) into a KServe
// v2 response body, copying outputs requested in shared memory into their
// regions. Non-finite floats are written as JSON null. InvalidArgument when an
// output does not fit the shared memory slice the client gave for it.
absl::Status EncodeInferResponse(const DecodedInferRequest& request, std::string_view model_name,
                                 std::string_view model_version,
                                 const std::vector<OutputTensor>& outputs,
                                 EncodedInferResponse* out);

// Writes `s` as a JSON string literal (with quotes) to `out`.
void AppendJsonString(std::string_view s, std::string* out);

}  // namespace outpost::serve
