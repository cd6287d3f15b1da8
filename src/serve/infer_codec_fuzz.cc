// libFuzzer target for the KServe v2 HTTP request decoder (untrusted input).
// The first two bytes choose the Inference-Header-Content-Length (or none);
// the rest is the body. Whatever decodes is encoded back as a response so
// the encoder runs on the same tensors.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "serve/infer_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint16_t selector = static_cast<uint16_t>(data[0] | (data[1] << 8));
  std::string_view body(reinterpret_cast<const char*>(data + 2), size - 2);
  std::optional<size_t> header_length;
  if (selector != 0xffff) header_length = selector;

  outpost::serve::DecodedInferRequest decoded;
  if (!outpost::serve::DecodeInferRequest(body, header_length, &decoded).ok()) return 0;

  std::vector<outpost::serve::OutputTensor> outputs;
  for (const auto& input : decoded.request.inputs) {
    outputs.push_back({input.name, input.datatype, input.shape, input.data, nullptr});
  }
  outpost::serve::EncodedInferResponse encoded;
  (void)outpost::serve::EncodeInferResponse(decoded, "fuzz", "1", outputs, &encoded);
  return 0;
}
