// libFuzzer target for the KServe v2 gRPC request decoder (untrusted input):
// the bytes are parsed as a ModelInferRequest (protobuf's parser, as gRPC
// does), then decoded; whatever decodes is encoded back as a response so the
// encoder runs on the same tensors.
#include <cstddef>
#include <cstdint>

#include "serve/grpc_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  inference::ModelInferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  outpost::serve::GrpcDecodedRequest decoded;
  if (!outpost::serve::DecodeGrpcInferRequest(request, &decoded).ok()) return 0;
  std::vector<outpost::serve::OutputTensor> outputs;
  for (const auto& input : decoded.request.inputs) {
    outputs.push_back({input.name, input.datatype, input.shape, input.data, nullptr});
  }
  inference::ModelInferResponse response;
  outpost::serve::EncodeGrpcInferResponse(request, "fuzz", "1", outputs, &response);
  return 0;
}
