// KServe v2 gRPC inference request decoding and response encoding
// (proto/grpc_service.proto): the gRPC counterpart of infer_codec.h, feeding
// the same scheduler path.
//
// Decoding borrows: an input sent in raw_input_contents, or in the typed
// field whose element type is the tensor's (fp32_contents for FP32,
// int64_contents for INT64, ...), is used where protobuf parsed it, without a
// copy, so the request message must outlive the decoded request. Only
// narrower integer types (INT8/INT16 from int_contents, UINT8/UINT16 from
// uint_contents) and raw bytes that are not aligned to their element size
// are copied, into buffers owned by the decoded request.
// Untrusted input: every size and count is checked, and every failure is an
// InvalidArgument whose message says what to fix.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "grpc_service.pb.h"
#include "serve/scheduler.h"
#include "serve/tensor.h"

namespace outpost::serve {

struct GrpcDecodedRequest {
  InferRequest request;  // InputTensor::data points into the message or `buffers`
  std::vector<std::unique_ptr<std::byte[]>> buffers;
};

// Either every input's elements come in raw_input_contents (one entry per
// input, in order) or every input has `contents` in the field of its
// datatype. Outputs named in `in.outputs` become requested_outputs.
// Shared memory and classification parameters are refused (HTTP only).
absl::Status DecodeGrpcInferRequest(const inference::ModelInferRequest& in,
                                    GrpcDecodedRequest* out);

// Writes `outputs` (as the scheduler returned them for `request`) into `out`:
// id, model name and version, one InferOutputTensor per output and its bytes
// in raw_output_contents (as Triton does; typed contents are never filled).
void EncodeGrpcInferResponse(const inference::ModelInferRequest& request,
                             std::string_view model_name, std::string_view model_version,
                             const std::vector<OutputTensor>& outputs,
                             inference::ModelInferResponse* out);

// A model_version field: "" = 0 (the newest loaded), else a positive
// integer; InvalidArgument otherwise.
absl::StatusOr<int64_t> ParseModelVersion(std::string_view text);

}  // namespace outpost::serve
