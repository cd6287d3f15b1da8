#include "common/fault_injection.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <charconv>
#include <mutex>
#include <string>

namespace outpost::fault {
namespace {

// Hit counter for one environment variable; restarts when its value changes.
struct Counter {
  std::mutex mu;
  std::string spec;  // value the count belongs to
  int hits = 0;
};

// Counts a hit when `name` is the point named by `env`'s value; returns the
// hit number once it reaches the spec's N, 0 otherwise (unset, another
// point, malformed, or fewer than N hits so far).
int Hit(const char* env, std::string_view name, Counter& counter) {
  const char* raw = ::getenv(env);
  std::string_view value = raw != nullptr ? raw : "";
  std::lock_guard<std::mutex> lock(counter.mu);
  // Any change, unsetting included, starts the count over.
  if (counter.spec != value) {
    counter.spec = value;
    counter.hits = 0;
  }
  std::string_view point;
  int nth = 0;
  if (value.empty() || !ParseFaultSpec(value, &point, &nth) || point != name) return 0;
  return ++counter.hits >= nth ? counter.hits : 0;
}

Counter& CrashCounter() {
  static Counter* counter = new Counter();
  return *counter;
}
Counter& WriteCounter() {
  static Counter* counter = new Counter();
  return *counter;
}

}  // namespace

bool ParseFaultSpec(std::string_view spec, std::string_view* point, int* nth) {
  size_t colon = spec.rfind(':');
  *nth = 1;
  *point = spec;
  if (colon == std::string_view::npos) return !spec.empty();
  *point = spec.substr(0, colon);
  std::string_view count = spec.substr(colon + 1);
  auto [ptr, ec] = std::from_chars(count.data(), count.data() + count.size(), *nth);
  return !point->empty() && ec == std::errc() && ptr == count.data() + count.size() && *nth > 0;
}

void CrashPoint(std::string_view name) {
  if (Hit("OUTPOST_CRASH_AT", name, CrashCounter()) == 0) return;
  // Like a power cut as far as the process is concerned: no destructors, no
  // atexit handlers, no stdio flush.
  ::kill(::getpid(), SIGKILL);
  ::_exit(137);  // not reached
}

absl::Status FailWritePoint(std::string_view name) {
  if (Hit("OUTPOST_FAIL_WRITE_AT", name, WriteCounter()) == 0) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      StrCat("injected write failure at ", name, ": No space left on device"));
}

}  // namespace outpost::fault
