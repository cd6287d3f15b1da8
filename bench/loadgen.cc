// loadgen: a lean closed-loop HTTP/1.1 load generator for a KServe v2
// inference endpoint (outpost-serve, or any server speaking the protocol).
//
//   loadgen --port 8000 --model mobilenet_v2 --mode binary --concurrency 4 --duration 5
//
// Each of N threads owns one keep-alive TCP connection (TCP_NODELAY) and
// sends the same request, built once (headers + body), in a closed loop:
// send, read the response headers, read Content-Length bytes of body, check
// for 200. Nothing is allocated or formatted per request, so the generator
// takes as little CPU as possible from the server it shares the machine with.
//
// The input tensor is random floats (fixed seed). Its name and shape come
// from --input-name/--shape, or from GET /v2/models/<model> (dynamic
// dimensions become 1). Modes: "binary" (binary tensor data extension, both
// ways) and "json" (the tensor as a JSON "data" array, JSON output).
//
// Prints one JSON line: {"p50_ms","p95_ms","p99_ms","mean_ms",
// "throughput_rps","requests","errors","seconds"}, plus the request size.
// Exit code 0 on success, 1 when the server is unreachable or the first
// request fails (its response is printed), 2 for bad flags.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/bench_common.h"

namespace outpost::bench {
namespace {

constexpr std::string_view kUsage = R"(usage: loadgen --port N --model NAME [options]
  --host ADDR          server address (default 127.0.0.1)
  --port N             server port (required; the Host header's port with --unix)
  --unix PATH          connect to this Unix domain socket (outpost-serve
                       --http-unix-socket) instead of --host:--port
  --model NAME         model name (required)
  --version V          model version (default: the server's newest)
  --mode binary|json|shm  tensor encoding (default binary); shm = input in a POSIX
                       shared memory region (system shared memory extension)
  --concurrency N      connections = threads (default 1)
  --warmup S           seconds of unmeasured warm-up (default 1)
  --duration S         measured seconds (default 5)
  --requests N         measure exactly N requests instead of --duration
  --input-name NAME    skip the metadata request: input name ...
  --shape D,D,...      ... and its full shape (FP32 only)
  --output-name NAME   output to request (default: every output in the metadata)
)";

// One blocking keep-alive HTTP/1.1 connection. Responses must carry
// Content-Length (Beast's string_body always does); anything else is an error
// and the connection is reopened.
class Connection {
 public:
  // `unix_path` non-empty: connect to that Unix domain socket instead.
  Connection(std::string host, int port, std::string unix_path = "")
      : host_(std::move(host)), port_(port), unix_path_(std::move(unix_path)) {
    buffer_.resize(64 * 1024);
  }
  ~Connection() { Close(); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  absl::Status Open() {
    Close();
    if (!unix_path_.empty()) return OpenUnix();
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // A whole tensor request fits in the socket buffers, so one write()
    // hands it to the kernel and the server reads it while it is copied,
    // instead of the two sides taking turns in 16 KB steps.
    int buffer = 4 << 20;
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof(buffer));
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof(buffer));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    if (::inet_pton(AF_INET, host_.c_str(), &addr.sin_addr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--host '", host_, "' is not an IPv4 address"));
    }
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      absl::Status s =
          absl::UnavailableError(absl::StrCat("connect to ", host_, ":", port_, ": ",
                                              std::strerror(errno), " (is the server running?)"));
      Close();
      return s;
    }
    return absl::OkStatus();
  }

  absl::Status OpenUnix() {
    sockaddr_un addr{};
    if (unix_path_.size() >= sizeof(addr.sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat("--unix '", unix_path_, "' is too long"));
    }
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
    int buffer = 4 << 20;
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof(buffer));
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, unix_path_.data(), unix_path_.size());
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      absl::Status s = absl::UnavailableError(absl::StrCat(
          "connect to ", unix_path_, ": ", std::strerror(errno), " (is the server running?)"));
      Close();
      return s;
    }
    return absl::OkStatus();
  }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Sends `request` and reads one whole response. Returns the HTTP status
  // (0 on a transport error, after which the connection is closed). The
  // body stays readable through body() until the next call.
  int RoundTrip(std::string_view request) {
    if (fd_ < 0 && !Open().ok()) return 0;
    int status = Exchange(request);
    if (status == 0 || close_after_) Close();
    return status;
  }

  std::string_view body() const { return {buffer_.data() + body_offset_, body_size_}; }
  std::string_view header(std::string_view name) const {
    std::string_view headers(buffer_.data(), body_offset_);
    return FindHeader(headers, name);
  }

 private:
  static bool IEquals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      char x = a[i], y = b[i];
      if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
      if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
      if (x != y) return false;
    }
    return true;
  }

  static std::string_view FindHeader(std::string_view headers, std::string_view name) {
    size_t pos = headers.find("\r\n");
    while (pos != std::string_view::npos && pos + 2 < headers.size()) {
      size_t start = pos + 2;
      size_t end = headers.find("\r\n", start);
      if (end == std::string_view::npos) end = headers.size();
      std::string_view line = headers.substr(start, end - start);
      size_t colon = line.find(':');
      if (colon != std::string_view::npos && IEquals(line.substr(0, colon), name)) {
        std::string_view v = line.substr(colon + 1);
        while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
        while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
        return v;
      }
      pos = end;
    }
    return {};
  }

  int Exchange(std::string_view request) {
    const char* p = request.data();
    size_t left = request.size();
    while (left > 0) {
      ssize_t n = ::send(fd_, p, left, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return 0;
      p += n;
      left -= static_cast<size_t>(n);
    }
    // Headers: read until the blank line.
    size_t have = 0, header_end = std::string::npos;
    while (header_end == std::string::npos) {
      if (have == buffer_.size()) {
        if (buffer_.size() >= (size_t{1} << 20)) return 0;  // absurd header block
        buffer_.resize(buffer_.size() * 2);
      }
      ssize_t n = ::recv(fd_, buffer_.data() + have, buffer_.size() - have, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return 0;
      size_t scan_from = have >= 3 ? have - 3 : 0;
      have += static_cast<size_t>(n);
      std::string_view view(buffer_.data() + scan_from, have - scan_from);
      if (size_t e = view.find("\r\n\r\n"); e != std::string_view::npos) {
        header_end = scan_from + e + 4;
      }
    }
    std::string_view headers(buffer_.data(), header_end);
    // "HTTP/1.1 200 OK"
    int status = 0;
    if (headers.size() < 12 || !headers.starts_with("HTTP/1.")) return 0;
    std::from_chars(headers.data() + 9, headers.data() + 12, status);
    std::string_view length = FindHeader(headers, "content-length");
    size_t content_length = 0;
    if (length.empty() ||
        std::from_chars(length.data(), length.data() + length.size(), content_length).ec !=
            std::errc()) {
      return 0;
    }
    std::string_view connection = FindHeader(headers, "connection");
    close_after_ = IEquals(connection, "close");
    size_t total = header_end + content_length;
    if (buffer_.size() < total) buffer_.resize(total);
    while (have < total) {
      ssize_t n = ::recv(fd_, buffer_.data() + have, total - have, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return 0;
      have += static_cast<size_t>(n);
    }
    // A closed-loop client never pipelines, so bytes past the response mean
    // the framing is broken: drop the connection.
    if (have != total) return 0;
    body_offset_ = header_end;
    body_size_ = content_length;
    return status;
  }

  std::string host_;
  int port_;
  std::string unix_path_;
  int fd_ = -1;
  bool close_after_ = false;
  std::vector<char> buffer_;
  size_t body_offset_ = 0;
  size_t body_size_ = 0;
};

struct TensorInfo {
  std::string input_name;
  std::vector<int64_t> shape;
  std::vector<std::string> output_names;
};

absl::StatusOr<TensorInfo> FetchMetadata(Connection& conn, const std::string& host, int port,
                                         const std::string& path) {
  std::string request = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", host, ":", port,
                                     "\r\nContent-Length: 0\r\n\r\n");
  RETURN_IF_ERROR(conn.Open());
  int status = conn.RoundTrip(request);
  if (status != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET ", path, " answered ", status, ": ",
                     status ? std::string(conn.body()) : "(no response)"));
  }
  TensorInfo info;
  try {
    nlohmann::json meta = nlohmann::json::parse(conn.body());
    const auto& inputs = meta.at("inputs");
    if (inputs.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("model has ", inputs.size(),
                       " inputs; loadgen drives single-input models (pass --input-name/--shape)"));
    }
    if (inputs[0].at("datatype").get<std::string>() != "FP32") {
      return absl::InvalidArgumentError("loadgen only sends FP32 inputs");
    }
    info.input_name = inputs[0].at("name").get<std::string>();
    for (int64_t d : inputs[0].at("shape")) info.shape.push_back(d < 0 ? 1 : d);
    for (const auto& out : meta.at("outputs")) info.output_names.push_back(out.at("name"));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata from GET ", path, " is not KServe v2 model metadata: ", e.what()));
  }
  return info;
}

// Builds the whole request once: request line, headers, body.
// With `shm_region` set, the input is named by its shared memory region
// (system shared memory extension) and only the JSON header is sent.
std::string BuildRequest(const std::string& host, int port, const std::string& path,
                         const TensorInfo& info, bool binary, const std::vector<float>& data,
                         const std::string& shm_region = "") {
  nlohmann::json shape = info.shape;
  std::string header =
      absl::StrCat(R"({"inputs":[{"name":)", nlohmann::json(info.input_name).dump(), R"(,"shape":)",
                   shape.dump(), R"(,"datatype":"FP32",)");
  size_t bytes = data.size() * sizeof(float);
  if (!shm_region.empty()) {
    absl::StrAppend(&header, R"("parameters":{"shared_memory_region":")", shm_region,
                    R"(","shared_memory_byte_size":)", bytes, "}}]");
  } else if (binary) {
    absl::StrAppend(&header, R"("parameters":{"binary_data_size":)", bytes, "}}]");
  } else {
    header += R"("data":[)";
    char num[32];
    for (size_t i = 0; i < data.size(); ++i) {
      if (i) header += ',';
      auto [end, ec] = std::to_chars(num, num + sizeof(num), data[i]);
      header.append(num, end);
    }
    header += "]}]";
  }
  header += R"(,"outputs":[)";
  for (size_t i = 0; i < info.output_names.size(); ++i) {
    if (i) header += ',';
    absl::StrAppend(&header, R"({"name":)", nlohmann::json(info.output_names[i]).dump(),
                    R"(,"parameters":{"binary_data":)", binary ? "true" : "false", "}}");
  }
  header += "]}";

  const bool binary_input = binary && shm_region.empty();
  size_t body_size = header.size() + (binary_input ? bytes : 0);
  std::string request =
      absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: ", host, ":", port,
                   "\r\nContent-Type: ", binary ? "application/octet-stream" : "application/json",
                   "\r\nContent-Length: ", body_size, "\r\n");
  if (binary_input) {
    absl::StrAppend(&request, "Inference-Header-Content-Length: ", header.size(), "\r\n");
  }
  request += "\r\n";
  request.reserve(request.size() + body_size);
  request += header;
  if (binary_input) request.append(reinterpret_cast<const char*>(data.data()), bytes);
  return request;
}

// A POSIX shared memory object holding the input, registered with the server
// for the run; removed again on destruction.
class ShmInput {
 public:
  ~ShmInput() {
    if (!key_.empty()) shm_unlink(key_.c_str());
  }
  absl::Status Create(const std::vector<float>& data) {
    key_ = absl::StrCat("/outpost-loadgen-", getpid());
    region_ = absl::StrCat("loadgen-", getpid());
    size_t bytes = data.size() * sizeof(float);
    int fd = shm_open(key_.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (fd < 0) return absl::InternalError(absl::StrCat("shm_open: ", std::strerror(errno)));
    bool ok = ftruncate(fd, static_cast<off_t>(bytes)) == 0;
    void* p = ok ? mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd);
    if (p == MAP_FAILED) return absl::InternalError(absl::StrCat("shm: ", std::strerror(errno)));
    std::memcpy(p, data.data(), bytes);
    munmap(p, bytes);
    return absl::OkStatus();
  }
  std::string RegisterRequest(const std::string& host, int port, size_t bytes) const {
    std::string body = absl::StrCat(R"({"key":")", key_, R"(","byte_size":)", bytes, "}");
    return absl::StrCat("POST /v2/systemsharedmemory/region/", region_,
                        "/register HTTP/1.1\r\nHost: ", host, ":", port,
                        "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
                        "\r\n\r\n", body);
  }
  const std::string& region() const { return region_; }

 private:
  std::string key_;
  std::string region_;
};

int Main(int argc, char** argv) {
  auto flags_or =
      Flags::Parse(argc, argv,
                   {"help", "host", "port", "unix", "model", "version", "mode", "concurrency",
                    "warmup", "duration", "requests", "input-name", "shape", "output-name"});
  if (!flags_or.ok()) {
    std::fprintf(stderr, "loadgen: %s\n%s", flags_or.status().message().data(), kUsage.data());
    return 2;
  }
  const Flags& flags = *flags_or;
  if (flags.Has("help")) {
    std::fputs(kUsage.data(), stdout);
    return 0;
  }
  auto port = flags.GetInt("port", 0);
  auto concurrency = flags.GetInt("concurrency", 1);
  auto warmup = flags.GetDouble("warmup", 1);
  auto duration = flags.GetDouble("duration", 5);
  auto requests = flags.GetInt("requests", 0);
  for (const absl::Status& s : {port.status(), concurrency.status(), warmup.status(),
                                duration.status(), requests.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "loadgen: %s\n", s.message().data());
      return 2;
    }
  }
  std::string mode = flags.Get("mode", "binary");
  std::string model = flags.Get("model");
  if (*port <= 0 || *port > 65535 || model.empty() || *concurrency < 1 ||
      (mode != "binary" && mode != "json" && mode != "shm")) {
    std::fprintf(stderr,
                 "loadgen: need --port, --model, --concurrency >= 1, --mode binary|json|shm\n%s",
                 kUsage.data());
    return 2;
  }
  const std::string host = flags.Get("host", "127.0.0.1");
  std::string base = absl::StrCat("/v2/models/", model);
  if (flags.Has("version")) absl::StrAppend(&base, "/versions/", flags.Get("version"));

  TensorInfo info;
  const std::string unix_path = flags.Get("unix");
  Connection probe(host, *port, unix_path);
  if (flags.Has("input-name") && flags.Has("shape")) {
    info.input_name = flags.Get("input-name");
    const std::string shape = flags.Get("shape");
    for (size_t start = 0; start <= shape.size();) {
      size_t comma = std::min(shape.find(',', start), shape.size());
      std::string_view d(shape.data() + start, comma - start);
      start = comma + 1;
      int64_t v = 0;
      if (std::from_chars(d.data(), d.data() + d.size(), v).ec != std::errc() || v <= 0) {
        std::fprintf(stderr, "loadgen: --shape: bad dimension '%.*s'\n", static_cast<int>(d.size()),
                     d.data());
        return 2;
      }
      info.shape.push_back(v);
    }
  } else {
    auto meta = FetchMetadata(probe, host, static_cast<int>(*port), base);
    if (!meta.ok()) {
      std::fprintf(stderr, "loadgen: %s\n", meta.status().ToString().c_str());
      return 1;
    }
    info = *std::move(meta);
  }
  if (flags.Has("output-name")) info.output_names = {flags.Get("output-name")};
  if (info.output_names.empty()) info.output_names = {"output"};

  size_t count = 1;
  for (int64_t d : info.shape) count *= static_cast<size_t>(d);
  std::vector<float> data(count);
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : data) v = dist(rng);
  ShmInput shm;
  if (mode == "shm") {
    absl::Status created = shm.Create(data);
    int registered = created.ok() ? probe.RoundTrip(shm.RegisterRequest(
                                        host, static_cast<int>(*port), data.size() * sizeof(float)))
                                  : 0;
    if (registered != 200) {
      std::fprintf(stderr, "loadgen: shared memory registration failed: %s %.*s\n",
                   created.ToString().c_str(), static_cast<int>(probe.body().size()),
                   probe.body().data());
      return 1;
    }
  }
  const std::string request = BuildRequest(host, static_cast<int>(*port), base + "/infer", info,
                                           mode != "json", data, mode == "shm" ? shm.region() : "");

  // One request up front: a server that answers errors quickly must not be
  // mistaken for a fast server.
  int status = probe.RoundTrip(request);
  if (status != 200) {
    std::fprintf(stderr, "loadgen: first request answered %d: %.*s\n", status,
                 static_cast<int>(status ? std::min<size_t>(probe.body().size(), 2000) : 0),
                 probe.body().data());
    return 1;
  }
  if (mode != "json" && probe.header("inference-header-content-length").empty()) {
    std::fprintf(stderr,
                 "loadgen: warning: binary output requested but the response has no "
                 "Inference-Header-Content-Length\n");
  }
  probe.Close();

  std::vector<std::unique_ptr<Connection>> conns;
  for (int i = 0; i < *concurrency; ++i) {
    conns.push_back(std::make_unique<Connection>(host, static_cast<int>(*port), unix_path));
    if (absl::Status s = conns.back()->Open(); !s.ok()) {
      std::fprintf(stderr, "loadgen: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  LoopOptions loop{.concurrency = static_cast<int>(*concurrency),
                   .warmup_seconds = *warmup,
                   .duration_seconds = *duration,
                   .requests = *requests};
  Summary summary = RunClosedLoop(loop, [&](int w) { return conns[w]->RoundTrip(request) == 200; });
  std::string json = SummaryJson(summary);
  json.pop_back();
  std::printf("%s,\"mode\":\"%s\",\"concurrency\":%d,\"request_bytes\":%zu}\n", json.c_str(),
              mode.c_str(), static_cast<int>(*concurrency), request.size());
  return 0;
}

}  // namespace
}  // namespace outpost::bench

int main(int argc, char** argv) { return outpost::bench::Main(argc, argv); }
