#include "serve/shared_memory.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "serve/infer_codec.h"

namespace outpost::serve {
namespace {

// A POSIX shared memory object owned by the test, like a client would make.
class ShmObject {
 public:
  explicit ShmObject(size_t size) : key_(StrCat("/outpost-test-", getpid(), "-", counter_++)) {
    int fd = shm_open(key_.c_str(), O_CREAT | O_RDWR | O_EXCL, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    data_ = static_cast<std::byte*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    size_ = size;
    close(fd);
  }
  ~ShmObject() {
    munmap(data_, size_);
    shm_unlink(key_.c_str());
  }
  const std::string& key() const { return key_; }
  std::byte* data() { return data_; }

 private:
  static inline int counter_ = 0;
  std::string key_;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

TEST(SharedMemoryTest, RegisterFindUnregister) {
  ShmObject object(8192);
  SharedMemoryRegistry registry;
  ASSERT_TRUE(registry.Register("in", object.key(), 4096 + 16, 64).ok());
  auto found = registry.Find("in");
  ASSERT_TRUE(found.ok());
  EXPECT_EQ((*found)->byte_size(), 64u);
  // The mapping starts at the registered (unaligned) offset.
  std::memcpy(object.data() + 4096 + 16, "hello", 5);
  auto slice = (*found)->Slice(0, 5);
  ASSERT_TRUE(slice.ok());
  EXPECT_EQ(std::memcmp(slice->data(), "hello", 5), 0);
  EXPECT_FALSE((*found)->Slice(60, 8).ok());

  EXPECT_TRUE(absl::IsAlreadyExists(registry.Register("in", object.key(), 0, 8)));
  EXPECT_TRUE(absl::IsNotFound(registry.Register("x", "/no-such-object-outpost", 0, 8)));
  EXPECT_TRUE(absl::IsInvalidArgument(registry.Register("x", "no-slash", 0, 8)));
  EXPECT_TRUE(absl::IsInvalidArgument(registry.Register("x", "/a/b", 0, 8)));
  EXPECT_TRUE(absl::IsInvalidArgument(registry.Register("x", object.key(), 8190, 8)));
  EXPECT_TRUE(absl::IsInvalidArgument(registry.Register("x", object.key(), 0, 0)));
  EXPECT_EQ(registry.List().size(), 1u);

  ASSERT_TRUE(registry.Unregister("in").ok());
  EXPECT_TRUE(absl::IsNotFound(registry.Unregister("in")));
  // A holder keeps the region mapped after it is unregistered.
  slice = (*found)->Slice(0, 5);
  EXPECT_EQ(std::memcmp(slice->data(), "hello", 5), 0);
}

TEST(SharedMemoryTest, InferRequestReadsInputsAndWritesOutputsInPlace) {
  ShmObject object(4096);
  SharedMemoryRegistry registry;
  ASSERT_TRUE(registry.Register("io", object.key(), 0, 4096).ok());
  float x[4] = {1, 2, 3, 4};
  std::memcpy(object.data() + 128, x, sizeof(x));

  std::string body = R"({"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":
      {"shared_memory_region":"io","shared_memory_offset":128,"shared_memory_byte_size":16}}],
      "outputs":[{"name":"y","parameters":{"shared_memory_region":"io",
      "shared_memory_offset":1024,"shared_memory_byte_size":16}}]})";
  DecodedInferRequest decoded;
  ASSERT_TRUE(DecodeInferRequest(body, std::nullopt, &decoded, &registry).ok());
  ASSERT_EQ(decoded.request.inputs.size(), 1u);
  // No copy: the input is a view of the shared pages, so a write by the
  // client shows through it.
  float seen;
  x[0] = 9;
  std::memcpy(object.data() + 128, x, 4);
  std::memcpy(&seen, decoded.request.inputs[0].data.data(), 4);
  EXPECT_EQ(seen, 9.f);

  auto y = std::make_shared<std::vector<float>>(std::vector<float>{2, 3, 4, 5});
  std::vector<OutputTensor> outputs = {
      {"y", DataType::kFp32, {1, 4}, std::as_bytes(std::span(*y)), y}};
  EncodedInferResponse encoded;
  ASSERT_TRUE(EncodeInferResponse(decoded, "m", "1", outputs, &encoded).ok());
  EXPECT_FALSE(encoded.header_length.has_value());
  auto response = nlohmann::json::parse(encoded.body);
  EXPECT_EQ(response["outputs"][0]["parameters"]["shared_memory_region"], "io");
  EXPECT_FALSE(response["outputs"][0].contains("data"));
  float written[4];
  std::memcpy(written, object.data() + 1024, sizeof(written));
  EXPECT_EQ(written[3], 5.f);

  // Refusals: no extension, unknown region, wrong size, slice past the end.
  DecodedInferRequest refused;
  EXPECT_NE(MessageOf(DecodeInferRequest(body, std::nullopt, &refused)).find("loopback"),
            std::string_view::npos);
  std::string unknown = R"({"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":
      {"shared_memory_region":"nope","shared_memory_byte_size":16}}]})";
  DecodedInferRequest r2;
  EXPECT_NE(MessageOf(DecodeInferRequest(unknown, std::nullopt, &r2, &registry)).find("nope"),
            std::string_view::npos);
  std::string wrong = R"({"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":
      {"shared_memory_region":"io","shared_memory_byte_size":12}}]})";
  DecodedInferRequest r3;
  EXPECT_NE(
      MessageOf(DecodeInferRequest(wrong, std::nullopt, &r3, &registry)).find("does not match"),
      std::string_view::npos);
  std::string past = R"({"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":
      {"shared_memory_region":"io","shared_memory_offset":4090,"shared_memory_byte_size":16}}]})";
  DecodedInferRequest r4;
  EXPECT_NE(MessageOf(DecodeInferRequest(past, std::nullopt, &r4, &registry)).find("past its end"),
            std::string_view::npos);
}

}  // namespace
}  // namespace outpost::serve
