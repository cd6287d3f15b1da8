#include "agent/fetcher.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "common/atomic_file.h"
#include "common/fault_injection.h"
#include "common/http_connection.h"

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;

constexpr size_t kSha256Bytes = crypto_hash_sha256_BYTES;
constexpr size_t kMaxErrorBody = 256;

void InitLibraries() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (sodium_init() < 0) spdlog::error("fetcher: sodium_init failed");
  });
}

std::string ToHex(const unsigned char* bytes, size_t n) {
  std::string hex(n * 2 + 1, '\0');
  sodium_bin2hex(hex.data(), hex.size(), bytes, n);
  hex.pop_back();
  return hex;
}

absl::StatusOr<uint64_t> StatvfsFreeSpace(const fs::path& dir) {
  struct statvfs st;
  if (::statvfs(dir.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, StrCat("statvfs ", dir.string()));
  }
  return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
}

absl::Status WriteErrno(int err, const fs::path& path) {
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(
        StrCat("cannot write ", path.string(), ": ", std::strerror(err),
               "; free space on that filesystem, the download resumes where it stopped"));
  }
  return absl::ErrnoToStatus(err, StrCat("cannot write ", path.string()));
}

// How one HTTP attempt ended.
struct AttemptOutcome {
  absl::Status status;     // OK: the transfer completed
  bool retryable = false;  // meaningful when !status.ok()
  std::chrono::milliseconds retry_after{0};
};

// One Fetch() call: the open, locked .part and the hash of its content.
class Download : public HttpResponseHandler {
 public:
  Download(std::string_view url, const fs::path& dest, uint64_t expected_size,
           const FetchOptions& options)
      : url_(url),
        dest_(dest),
        part_(fs::path(dest).concat(".part")),
        expected_size_(expected_size),
        options_(options) {}

  ~Download() {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::StatusOr<FetchResult> Run(const unsigned char* expected_hash);

 private:
  absl::Status OpenPart();
  absl::Status HashExistingPrefix();
  absl::Status StartOver(std::string_view why);
  absl::Status CheckFreeSpace();
  absl::Status SetUpConnection();
  AttemptOutcome Attempt();
  AttemptOutcome Classify(const absl::Status& transport);
  absl::Status RemovePart();
  absl::Status Finish();
  bool Cancelled() const { return options_.cancelled && options_.cancelled(); }
  void ReportProgress() {
    if (options_.progress) options_.progress({offset_, expected_size_});
  }
  // Sleeps `delay`, waking early to notice cancellation.
  bool SleepUnlessCancelled(std::chrono::milliseconds delay);

  // HttpResponseHandler: the head decides what the response means for the
  // .part (BeginBody); 200/206 bodies go to the .part, others are kept
  // (clipped) for the error message.
  absl::Status OnHead(int status, const HttpHeaderList& headers) override;
  absl::Status OnBody(std::string_view data) override;
  absl::Status BeginBody(const HttpHeaderList& headers);
  absl::Status TakeBody(std::string_view data);

  const std::string url_;
  const fs::path dest_;
  const fs::path part_;
  const uint64_t expected_size_;
  const FetchOptions& options_;

  int fd_ = -1;
  uint64_t offset_ = 0;  // bytes in the .part, all hashed into hash_
  crypto_hash_sha256_state hash_;
  FetchResult result_;

  ParsedUrl url_parsed_;
  std::unique_ptr<HttpConnection> connection_;
  std::vector<std::pair<std::string, std::string>> headers_;

  // Per attempt.
  long http_code_ = 0;
  std::string content_range_;
  std::string retry_after_;
  std::string error_body_;
  absl::Status body_error_;   // why OnHead/OnBody stopped the transfer
  bool remove_part_ = false;  // with body_error_: the .part is of another artifact
  uint64_t attempt_start_ = 0;
};

absl::Status Download::OpenPart() {
  fd_ = ::open(part_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) return absl::ErrnoToStatus(errno, StrCat("cannot open ", part_.string()));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(StrCat("another download of ", dest_.string(),
                                                  " is in progress (", part_.string(),
                                                  " is locked)"));
    }
    return absl::ErrnoToStatus(errno, StrCat("cannot lock ", part_.string()));
  }
  return absl::OkStatus();
}

absl::Status Download::HashExistingPrefix() {
  crypto_hash_sha256_init(&hash_);
  offset_ = 0;
  struct stat st;
  if (::fstat(fd_, &st) != 0) return absl::ErrnoToStatus(errno, StrCat("stat ", part_.string()));
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > expected_size_) return StartOver("it is larger than the artifact");
  std::vector<unsigned char> buf(256 * 1024);
  while (offset_ < size) {
    ssize_t n = ::pread(fd_, buf.data(), std::min<uint64_t>(buf.size(), size - offset_),
                        static_cast<off_t>(offset_));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, StrCat("cannot read ", part_.string()));
    if (n == 0) break;
    crypto_hash_sha256_update(&hash_, buf.data(), static_cast<size_t>(n));
    offset_ += static_cast<uint64_t>(n);
  }
  result_.resumed_from = offset_;
  if (offset_ > 0) {
    spdlog::info("fetch {}: resuming from {} of {} bytes in {}", url_, offset_, expected_size_,
                 part_.string());
  }
  return absl::OkStatus();
}

absl::Status Download::StartOver(std::string_view why) {
  spdlog::warn("fetch {}: discarding {} bytes of {}: {}", url_, offset_, part_.string(), why);
  if (::ftruncate(fd_, 0) != 0) {
    return absl::ErrnoToStatus(errno, StrCat("cannot truncate ", part_.string()));
  }
  crypto_hash_sha256_init(&hash_);
  offset_ = 0;
  result_.resumed_from = 0;
  ReportProgress();
  return absl::OkStatus();
}

absl::Status Download::RemovePart() {
  if (::unlink(part_.c_str()) != 0 && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, StrCat("cannot remove ", part_.string()));
  }
  return absl::OkStatus();
}

absl::Status Download::CheckFreeSpace() {
  uint64_t remaining = expected_size_ - offset_;
  fs::path dir = part_.parent_path().empty() ? fs::path(".") : part_.parent_path();
  auto free_space = options_.free_space_fn ? options_.free_space_fn(dir) : StatvfsFreeSpace(dir);
  if (!free_space.ok()) return free_space.status();
  if (*free_space < remaining + options_.reserve_bytes) {
    return absl::ResourceExhaustedError(StrCat(
        "not enough disk space to download ", url_, ": ", remaining, " more bytes",
        options_.reserve_bytes > 0 ? StrCat(" plus a reserve of ", options_.reserve_bytes) : "",
        " needed in ", dir.string(), " but only ", *free_space,
        " are free; free space (old releases, logs) and retry, the download resumes"));
  }
  return absl::OkStatus();
}

absl::Status Download::SetUpConnection() {
  ASSIGN_OR_RETURN(url_parsed_, ParseHttpUrl(url_));
  connection_ = HttpConnection::Create({.ca_file = options_.ca_file,
                                        .pinned_public_key = options_.pinned_public_key,
                                        .connect_timeout = options_.connect_timeout});
  headers_.emplace_back("User-Agent", "outpost-agent/" OUTPOST_VERSION);
  // Identity encoding only: Range offsets count the stored bytes.
  headers_.emplace_back("Accept-Encoding", "identity");
  if (!options_.bearer_token.empty()) {
    headers_.emplace_back("Authorization", StrCat("Bearer ", options_.bearer_token));
  }
  return absl::OkStatus();
}

std::string_view FindHeader(const HttpHeaderList& headers, std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return {};
}

absl::Status Download::OnHead(int status, const HttpHeaderList& headers) {
  http_code_ = status;
  content_range_ = FindHeader(headers, "content-range");
  retry_after_ = FindHeader(headers, "retry-after");
  body_error_ = BeginBody(headers);
  return body_error_;
}

// Parses "bytes FIRST-LAST/TOTAL" (TOTAL may be "*": *total = nullopt).
bool ParseContentRange(std::string_view v, uint64_t* first, std::optional<uint64_t>* total) {
  if (!v.starts_with("bytes ")) return false;
  v.remove_prefix(6);
  size_t dash = v.find('-');
  size_t slash = v.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash) {
    return false;
  }
  auto [p, ec] = std::from_chars(v.data(), v.data() + dash, *first);
  if (ec != std::errc() || p != v.data() + dash) return false;
  std::string_view t = v.substr(slash + 1);
  if (t == "*") {
    total->reset();
    return true;
  }
  uint64_t value = 0;
  auto [q, ec2] = std::from_chars(t.data(), t.data() + t.size(), value);
  if (ec2 != std::errc() || q != t.data() + t.size()) return false;
  *total = value;
  return true;
}

absl::Status Download::BeginBody(const HttpHeaderList& headers) {
  if (http_code_ != 200 && http_code_ != 206) return absl::OkStatus();  // error body
  std::optional<uint64_t> total;
  if (http_code_ == 200) {
    if (offset_ > 0) RETURN_IF_ERROR(StartOver("the server ignored the Range request (HTTP 200)"));
    std::string_view length = FindHeader(headers, "content-length");
    uint64_t value = 0;
    auto [p, ec] = std::from_chars(length.data(), length.data() + length.size(), value);
    if (!length.empty() && ec == std::errc() && p == length.data() + length.size()) total = value;
  } else {
    uint64_t first = 0;
    if (!ParseContentRange(content_range_, &first, &total) || first != offset_) {
      // Not the bytes asked for: take the whole artifact on the next attempt.
      RETURN_IF_ERROR(StartOver(StrCat("the server answered Range bytes=", offset_,
                                       "- with Content-Range \"", content_range_, "\"")));
      return absl::UnavailableError(
          StrCat("unexpected Content-Range \"", content_range_, "\" for bytes=", first, "-"));
    }
  }
  if (total.has_value() && *total != expected_size_) {
    remove_part_ = true;
    std::string what = StrCat(url_, " is ", *total, " bytes but the release expects ",
                              expected_size_, "; the hub serves another artifact");
    return *total > expected_size_ ? absl::ResourceExhaustedError(what) : absl::DataLossError(what);
  }
  return absl::OkStatus();
}

absl::Status Download::TakeBody(std::string_view bytes) {
  const char* data = bytes.data();
  const size_t n = bytes.size();
  if (offset_ + n > expected_size_) {
    remove_part_ = true;
    body_error_ = absl::ResourceExhaustedError(
        StrCat(url_, " sent more than the expected ", expected_size_,
               " bytes; refusing the rest (the hub serves another artifact)"));
    return body_error_;
  }
  body_error_ = OUTPOST_FAIL_WRITE_AT("fetch.part_write");
  if (!body_error_.ok()) return body_error_;
  size_t written = 0;
  while (written < n) {
    ssize_t w = ::pwrite(fd_, data + written, n - written, static_cast<off_t>(offset_ + written));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      body_error_ = WriteErrno(errno, part_);
      // Whatever reached the file stays unhashed; cut it off so file and hash agree.
      if (::ftruncate(fd_, static_cast<off_t>(offset_)) != 0) {
        spdlog::warn("fetch {}: cannot truncate {}: {}", url_, part_.string(),
                     std::strerror(errno));
      }
      return body_error_;
    }
    written += static_cast<size_t>(w);
  }
  crypto_hash_sha256_update(&hash_, reinterpret_cast<const unsigned char*>(data), n);
  offset_ += n;
  result_.bytes_received += n;
  ReportProgress();
  OUTPOST_CRASH_AT("fetch.part_written");
  return absl::OkStatus();
}

absl::Status Download::OnBody(std::string_view data) {
  if (http_code_ != 200 && http_code_ != 206) {
    size_t keep =
        std::min(data.size(), kMaxErrorBody - std::min(kMaxErrorBody, error_body_.size()));
    error_body_.append(data.substr(0, keep));
    return absl::OkStatus();
  }
  return TakeBody(data);
}

AttemptOutcome Download::Attempt() {
  http_code_ = 0;
  content_range_.clear();
  retry_after_.clear();
  error_body_.clear();
  body_error_ = absl::OkStatus();
  remove_part_ = false;
  attempt_start_ = offset_;
  bool ranged = offset_ > 0;
  if (ranged) headers_.emplace_back("Range", StrCat("bytes=", offset_, "-"));
  HttpExchange exchange{
      .url = &url_parsed_,
      .headers = &headers_,
      .low_speed_bytes_per_second = static_cast<uint64_t>(options_.low_speed_bytes_per_second),
      .low_speed_time = options_.low_speed_time,
      .cancelled = options_.cancelled ? &options_.cancelled : nullptr,
  };
  ++result_.attempts;
  absl::Status transport = connection_->Exchange(exchange, *this);
  if (ranged) headers_.pop_back();
  return Classify(transport);
}

AttemptOutcome Download::Classify(const absl::Status& transport) {
  AttemptOutcome out;
  if (!body_error_.ok()) {
    out.status = body_error_;
    out.retryable = body_error_.code() == absl::StatusCode::kUnavailable;
    return out;
  }
  switch (transport.code()) {
    case absl::StatusCode::kOk:
      break;
    case absl::StatusCode::kCancelled:
      out.status = absl::CancelledError(StrCat("download of ", url_, " cancelled at ", offset_,
                                               " of ", expected_size_, " bytes"));
      return out;
    case absl::StatusCode::kInvalidArgument:
      out.status =
          absl::InvalidArgumentError(StrCat("cannot fetch ", url_, ": ", MessageOf(transport)));
      return out;
    case absl::StatusCode::kFailedPrecondition:
      out.status =
          absl::FailedPreconditionError(StrCat("cannot fetch ", url_, ": ", MessageOf(transport)));
      return out;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      out.status = absl::UnavailableError(StrCat("fetch ", url_, " failed at ", offset_, " of ",
                                                 expected_size_, " bytes: ", MessageOf(transport)));
      out.retryable = true;
      return out;
    default:  // a local error
      return {transport, false, {}};
  }
  std::string body_note = error_body_.empty() ? "" : StrCat(": ", error_body_);
  if (http_code_ == 200 || http_code_ == 206) {
    if (offset_ == expected_size_) return out;
    out.status = absl::UnavailableError(
        StrCat("transfer of ", url_, " ended at ", offset_, " of ", expected_size_, " bytes"));
    out.retryable = true;
    return out;
  }
  std::string what = StrCat("GET ", url_, ": HTTP ", http_code_, body_note);
  if (http_code_ == 404 || http_code_ == 410) {
    out.status = absl::NotFoundError(what);
  } else if (http_code_ == 401) {
    out.status = absl::UnauthenticatedError(StrCat(what, " (device credential rejected)"));
  } else if (http_code_ == 403) {
    out.status = absl::PermissionDeniedError(what);
  } else if (http_code_ == 416 && offset_ > 0) {
    // The .part is at or past the end of what the server has.
    absl::Status restart = StartOver("the server refused its Range (HTTP 416)");
    out.status = restart.ok() ? absl::UnavailableError(what) : restart;
    out.retryable = restart.ok();
  } else if (http_code_ == 408 || http_code_ == 429 || http_code_ >= 500) {
    out.status = absl::UnavailableError(what);
    out.retryable = true;
    int seconds = 0;
    auto [p, ec] =
        std::from_chars(retry_after_.data(), retry_after_.data() + retry_after_.size(), seconds);
    if (ec == std::errc() && seconds > 0) out.retry_after = std::chrono::seconds(seconds);
  } else {
    out.status = absl::FailedPreconditionError(what);
  }
  return out;
}

bool Download::SleepUnlessCancelled(std::chrono::milliseconds delay) {
  auto deadline = std::chrono::steady_clock::now() + delay;
  while (true) {
    if (Cancelled()) return false;
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return true;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
        deadline - now, std::chrono::milliseconds(50)));
  }
}

absl::StatusOr<FetchResult> Download::Run(const unsigned char* expected_hash) {
  RETURN_IF_ERROR(SetUpConnection());
  RETURN_IF_ERROR(OpenPart());
  RETURN_IF_ERROR(HashExistingPrefix());
  ReportProgress();
  std::mt19937_64 rng(std::random_device{}());
  int retries = 0;
  bool restarted_after_mismatch = false;
  while (true) {
    if (offset_ < expected_size_) {
      RETURN_IF_ERROR(CheckFreeSpace());
      AttemptOutcome outcome = Attempt();
      if (!outcome.status.ok()) {
        if (remove_part_) RETURN_IF_ERROR(RemovePart());
        if (!outcome.retryable) return outcome.status;
        if (retries >= options_.max_retries) {
          return absl::UnavailableError(StrCat(MessageOf(outcome.status), " (gave up after ",
                                               result_.attempts, " attempts; ", offset_,
                                               " bytes kept in ", part_.string(), ")"));
        }
        int64_t cap = std::min<int64_t>(options_.backoff_max.count(), options_.backoff_base.count()
                                                                          << std::min(retries, 30));
        std::chrono::milliseconds delay(
            std::uniform_int_distribution<int64_t>(0, std::max<int64_t>(cap, 0))(rng));
        delay = std::min(std::max(delay, outcome.retry_after), options_.backoff_max);
        ++retries;
        spdlog::warn("{}; retry {}/{} in {} ms", MessageOf(outcome.status), retries,
                     options_.max_retries, delay.count());
        if (!SleepUnlessCancelled(delay)) {
          return absl::CancelledError(StrCat("download of ", url_, " cancelled at ", offset_,
                                             " of ", expected_size_, " bytes"));
        }
        continue;
      }
    }
    unsigned char actual[kSha256Bytes];
    crypto_hash_sha256_final(&hash_, actual);
    if (sodium_memcmp(actual, expected_hash, kSha256Bytes) == 0) break;
    if (result_.resumed_from > 0 && !restarted_after_mismatch) {
      // The kept prefix may be what was damaged (a power cut can leave a
      // zero-filled tail); one full download decides.
      restarted_after_mismatch = true;
      RETURN_IF_ERROR(
          StartOver(StrCat("the resumed download hashed to ", ToHex(actual, kSha256Bytes))));
      continue;
    }
    RETURN_IF_ERROR(RemovePart());
    return absl::DataLossError(StrCat(
        url_, " downloaded ", expected_size_, " bytes with SHA-256 ", ToHex(actual, kSha256Bytes),
        ", expected ", ToHex(expected_hash, kSha256Bytes), "; removed ", part_.string()));
  }
  RETURN_IF_ERROR(Finish());
  return result_;
}

absl::Status Download::Finish() {
  if (::fsync(fd_) != 0) return absl::ErrnoToStatus(errno, StrCat("fsync ", part_.string()));
  OUTPOST_CRASH_AT("fetch.before_rename");
  if (::rename(part_.c_str(), dest_.c_str()) != 0) {
    return absl::ErrnoToStatus(errno,
                               StrCat("cannot rename ", part_.string(), " to ", dest_.string()));
  }
  fs::path dir = dest_.parent_path().empty() ? fs::path(".") : dest_.parent_path();
  RETURN_IF_ERROR(FsyncDirectory(dir));
  OUTPOST_CRASH_AT("fetch.after_rename");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FetchResult> Fetch(std::string_view url, const fs::path& dest,
                                  std::string_view expected_sha256_hex, uint64_t expected_size,
                                  const FetchOptions& options) {
  InitLibraries();
  if (url.empty()) return absl::InvalidArgumentError("fetch: empty url");
  unsigned char expected[kSha256Bytes];
  size_t bin_len = 0;
  const char* end = nullptr;
  if (expected_sha256_hex.size() != 2 * kSha256Bytes ||
      sodium_hex2bin(expected, sizeof(expected), expected_sha256_hex.data(),
                     expected_sha256_hex.size(), nullptr, &bin_len, &end) != 0 ||
      bin_len != kSha256Bytes) {
    return absl::InvalidArgumentError(StrCat("fetch ", url, ": expected SHA-256 \"",
                                             expected_sha256_hex,
                                             "\" is not 64 hexadecimal characters"));
  }
  Download download(url, dest, expected_size, options);
  return download.Run(expected);
}

absl::StatusOr<std::string> Sha256File(const fs::path& path) {
  InitLibraries();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, StrCat("cannot open ", path.string()));
  crypto_hash_sha256_state state;
  crypto_hash_sha256_init(&state);
  std::vector<unsigned char> buf(256 * 1024);
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, StrCat("cannot read ", path.string()));
    }
    if (n == 0) break;
    crypto_hash_sha256_update(&state, buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  unsigned char digest[kSha256Bytes];
  crypto_hash_sha256_final(&state, digest);
  return ToHex(digest, kSha256Bytes);
}

}  // namespace outpost::agent
