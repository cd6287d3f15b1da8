// Sinks: where a pipeline's results go, one JSON object per frame.
//
//   jsonl    appends lines to a file; rotates (path -> path.1 -> ... ->
//            path.N, the oldest removed) before a line would push the file
//            past max_bytes
//   stdout   one line per result on standard output
//   webhook  POSTs each result (application/json); retries connection
//            errors, timeouts, 429 and 5xx with doubling backoff; a 4xx
//            other than 429 is not retried
//   queue    a durable SQLite queue (WAL, synchronous=FULL: a result is on
//            disk when Write returns) that a later component ships
//            upstream; past max_rows the oldest rows are dropped and
//            counted
//
// Thread safety: a Sink is used by one thread (the pipeline's post thread).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "serve/pipeline/pipeline_config.h"

namespace outpost::serve::pipeline {

class Sink {
 public:
  virtual ~Sink() = default;
  // Writes one result (a JSON object without a trailing newline). Errors
  // name the sink's target: Unavailable (webhook unreachable after its
  // retries), ResourceExhausted (disk full), others from errno / SQLite /
  // the HTTP status.
  virtual absl::Status Write(std::string_view json) = 0;
  // Rows dropped by a bounded sink to stay within its bound.
  virtual int64_t dropped() const { return 0; }
  // "jsonl:/var/log/x.jsonl", "webhook:http://...", for logs and metrics.
  virtual const std::string& name() const = 0;
};

// Opens the sink: creates the jsonl file's folder and file, opens (and
// creates the table of) the queue database. Errors name the path/URL.
absl::StatusOr<std::unique_ptr<Sink>> OpenSink(const SinkConfig& config, std::string_view pipeline);

}  // namespace outpost::serve::pipeline
