// Standard process metrics (the names Prometheus client libraries use), read
// from /proc at scrape time so nothing runs between scrapes:
// process_resident_memory_bytes, process_virtual_memory_bytes,
// process_cpu_seconds_total, process_start_time_seconds, process_open_fds,
// process_threads.
#pragma once

#include <prometheus/collectable.h>

#include <cstdint>
#include <memory>

namespace outpost {

struct ProcessStats {
  int64_t rss_bytes = 0;
  int64_t virtual_bytes = 0;
  double cpu_seconds = 0;
  double start_time_seconds = 0;  // Unix time
  int64_t threads = 0;
  int64_t open_fds = 0;
};

// Reads /proc/self. Fields that cannot be read stay 0.
ProcessStats ReadProcessStats();

std::shared_ptr<prometheus::Collectable> MakeProcessCollector();

}  // namespace outpost
