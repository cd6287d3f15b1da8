#include "serve/scheduler.h"

#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace outpost::serve {
namespace {

using Clock = std::chrono::steady_clock;

// Output indices of one request, in the order asked for; empty = all outputs
// in model order.
using OutputIndices = absl::InlinedVector<int, 4>;
// For each model input, the index of the request input that carries it.
using InputPositions = absl::InlinedVector<int, 8>;

struct Pending {
  InferRequest request;  // inputs already in model order
  InferCallback done;
  OutputIndices outputs;
  int64_t batch = 1;  // first dimension; 1 when the model does not batch
};

// Debian's abseil has its own absl::string_view, which StrCat needs.
absl::string_view Arg(std::string_view s) { return absl::string_view(s.data(), s.size()); }
template <typename T>
const T& Arg(const T& x) {
  return x;
}
template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(Arg(args)...);
}
template <typename... Args>
absl::Status Invalid(const Args&... args) {
  return absl::InvalidArgumentError(Cat(args...));
}

int64_t Nanos(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

// "model 'resnet' version 3" from "resnet:3".
std::string DisplayName(std::string_view name) {
  const size_t colon = name.rfind(':');
  if (colon == std::string_view::npos) return Cat("model '", name, "'");
  return Cat("model '", name.substr(0, colon), "' version ", name.substr(colon + 1));
}

std::string Names(const std::vector<TensorSpec>& specs) {
  std::string out;
  for (const TensorSpec& spec : specs) absl::StrAppend(&out, out.empty() ? "" : ", ", spec.name);
  return out;
}

// The checks of ValidateRequest; on success also says where each model input
// sits in the request, the requested output indices and the batch size.
absl::Status CheckRequest(const Engine& engine, int64_t max_batch_size, const InferRequest& request,
                          InputPositions* positions, OutputIndices* outputs, int64_t* batch) {
  const std::vector<TensorSpec>& specs = engine.inputs();
  positions->assign(specs.size(), -1);
  for (size_t r = 0; r < request.inputs.size(); ++r) {
    const std::string& name = request.inputs[r].name;
    size_t m = 0;
    while (m < specs.size() && specs[m].name != name) ++m;
    if (m == specs.size()) {
      return Invalid("unknown input '", name, "'; the model's inputs are: ", Names(specs));
    }
    if ((*positions)[m] >= 0) return Invalid("input '", name, "' given more than once");
    (*positions)[m] = static_cast<int>(r);
  }
  for (size_t m = 0; m < specs.size(); ++m) {
    if ((*positions)[m] < 0) {
      return Invalid("missing input '", specs[m].name, "'; the model's inputs are: ", Names(specs));
    }
  }

  *batch = 1;
  for (size_t m = 0; m < specs.size(); ++m) {
    const TensorSpec& spec = specs[m];
    const InputTensor& input = request.inputs[(*positions)[m]];
    if (input.datatype == DataType::kBytes) {
      return Invalid("input '", spec.name, "': datatype BYTES is not supported; the model expects ",
                     DataTypeName(spec.datatype));
    }
    if (input.datatype != spec.datatype) {
      return Invalid("input '", spec.name, "': expected datatype ", DataTypeName(spec.datatype),
                     ", got ", DataTypeName(input.datatype));
    }
    bool shape_ok = input.shape.size() == spec.shape.size();
    for (size_t d = 0; shape_ok && d < spec.shape.size(); ++d) {
      shape_ok = input.shape[d] >= 0 && (spec.shape[d] < 0 || spec.shape[d] == input.shape[d]);
    }
    if (!shape_ok) {
      return Invalid("input '", spec.name, "': expected shape ", ShapeString(spec.shape), ", got ",
                     ShapeString(input.shape));
    }
    if (max_batch_size > 0) {
      if (input.shape.empty()) {
        return Invalid("input '", spec.name, "': no batch dimension, but max_batch_size is ",
                       max_batch_size);
      }
      const int64_t b = input.shape[0];
      if (b < 1 || b > max_batch_size) {
        return Invalid("input '", spec.name, "': batch size (first dimension) ", b,
                       " is outside 1..", max_batch_size, " (max_batch_size)");
      }
      if (m == 0) {
        *batch = b;
      } else if (b != *batch) {
        return Invalid("input '", spec.name, "': batch size ", b, ", but input '", specs[0].name,
                       "' has batch size ", *batch, "; all inputs need the same first dimension");
      }
    }
    const int64_t count = ElementCount(input.shape);
    const size_t element_size = DataTypeSize(spec.datatype);
    if (count < 0 || element_size == 0 ||
        static_cast<uint64_t>(count) > std::numeric_limits<size_t>::max() / element_size) {
      return Invalid("input '", spec.name, "': shape ", ShapeString(input.shape), " is too large");
    }
    const size_t expected = static_cast<size_t>(count) * element_size;
    if (input.data.size() != expected) {
      return Invalid("input '", spec.name, "': ", input.data.size(), " bytes for shape ",
                     ShapeString(input.shape), " ", DataTypeName(spec.datatype), ", expected ",
                     expected);
    }
  }

  const std::vector<TensorSpec>& out_specs = engine.outputs();
  outputs->clear();
  for (const std::string& name : request.requested_outputs) {
    size_t k = 0;
    while (k < out_specs.size() && out_specs[k].name != name) ++k;
    if (k == out_specs.size()) {
      return Invalid("unknown output '", name, "'; the model's outputs are: ", Names(out_specs));
    }
    if (std::find(outputs->begin(), outputs->end(), static_cast<int>(k)) != outputs->end()) {
      return Invalid("output '", name, "' requested more than once");
    }
    outputs->push_back(static_cast<int>(k));
  }
  return absl::OkStatus();
}

// Applies the permutation new[i] = old[positions[i]] in place (moves only).
void ToModelOrder(std::vector<InputTensor>& inputs, const InputPositions& positions) {
  for (size_t i = 0; i < positions.size(); ++i) {
    size_t j = positions[i];
    while (j < i) j = positions[j];
    if (j != i) std::swap(inputs[i], inputs[j]);
  }
}

// Requests with different non-batch dimensions (dynamic ones) cannot share a
// concatenated tensor.
bool SameItemShape(const Pending& a, const Pending& b) {
  for (size_t m = 0; m < a.request.inputs.size(); ++m) {
    const std::vector<int64_t>& x = a.request.inputs[m].shape;
    const std::vector<int64_t>& y = b.request.inputs[m].shape;
    if (!std::equal(x.begin() + 1, x.end(), y.begin() + 1, y.end())) return false;
  }
  return true;
}

// State shared by Submit, the instance threads and Drain. Held by shared_ptr
// so that an instance thread that a callback detached (by destroying the
// scheduler) can still take the lock to see that there is nothing left.
struct Queue {
  // Immutable after construction.
  std::string display_name;
  int64_t max_batch_size = 0;
  bool batching = false;
  Clock::duration max_delay{};
  std::vector<int64_t> preferred_batch_sizes;
  size_t capacity = 0;  // max_queue_size
  int instances = 1;    // instance_count
  bool inline_execution = false;

  absl::Mutex mu;
  absl::CondVar work_cv;    // idle threads: a request to take, or stopping
  absl::CondVar gather_cv;  // the gathering thread: a request arrived, or stopping
  absl::CondVar joined_cv;  // Drain callers: the threads are joined
  absl::CondVar inline_cv;  // Drain callers: the inline run's compute ended
  // Ring buffer that grows (up to capacity) but never shrinks: no
  // allocation per request once it has reached the high-water mark.
  std::vector<Pending> ring ABSL_GUARDED_BY(mu);
  size_t head ABSL_GUARDED_BY(mu) = 0;
  size_t size ABSL_GUARDED_BY(mu) = 0;
  // One thread at a time forms a batch; the others wait, so that requests
  // arriving meanwhile join that batch instead of starting small ones.
  bool gathering ABSL_GUARDED_BY(mu) = false;
  // Batches computing now, instance threads and inline runs together; at
  // most `instances`. Instance threads decrement it before their callbacks.
  int running ABSL_GUARDED_BY(mu) = 0;
  bool inline_running ABSL_GUARDED_BY(mu) = false;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  // Set by Abandon: queued requests are answered with it instead of run.
  absl::Status abandoned ABSL_GUARDED_BY(mu);
  bool threads_claimed ABSL_GUARDED_BY(mu) = false;
  bool joined ABSL_GUARDED_BY(mu) = false;

  Pending& At(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return ring[(head + i) % ring.size()]; }
  void Pop() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    head = (head + 1) % ring.size();
    --size;
  }
  // Room for one more request; false when the queue is at capacity.
  bool MakeRoom() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (size < ring.size()) return true;
    if (size >= capacity) return false;
    std::vector<Pending> bigger(std::min(capacity, std::max<size_t>(16, 2 * ring.size())));
    for (size_t i = 0; i < size; ++i) bigger[i] = std::move(At(i));
    ring = std::move(bigger);
    head = 0;
    return true;
  }
  bool IsPreferred(int64_t total) const {
    return std::find(preferred_batch_sizes.begin(), preferred_batch_sizes.end(), total) !=
           preferred_batch_sizes.end();
  }
  // Whether a request of first dimension `batch` may run on the submitting
  // thread now: idle (nothing queued or being gathered, an instance free,
  // no other inline run) and batching could not add to it.
  bool CanRunInline(int64_t batch) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!inline_execution || size > 0 || gathering || running >= instances || inline_running) {
      return false;
    }
    return !batching || max_delay <= Clock::duration::zero() || batch == max_batch_size ||
           IsPreferred(batch);
  }
};

// The loop of one instance thread, with its reusable batch buffers.
class Worker {
 public:
  Worker(const Engine& engine, const SchedulerOptions& options, std::atomic<int64_t>& depth,
         std::shared_ptr<Queue> queue)
      : engine_(engine), options_(options), depth_(depth), queue_(std::move(queue)) {
    batch_.reserve(std::clamp<int64_t>(queue_->max_batch_size, 1, 64));
    if (queue_->batching) {
      for (const TensorSpec& spec : engine_.inputs()) {
        batch_inputs_.push_back(InputTensor{spec.name, spec.datatype, spec.shape, {}});
      }
      scratch_.resize(batch_inputs_.size());
    }
  }

  // Takes the next batch, runs it and answers its requests. Returns false
  // once the scheduler is stopping and the queue is empty; until a batch is
  // taken it touches nothing but the queue (the scheduler may be gone).
  bool Step() {
    absl::Status abandoned;
    if (!TakeBatch(&abandoned)) return false;
    if (abandoned.ok()) {
      RunBatch();
    } else {
      AbandonBatch(abandoned);
    }
    return true;
  }

 private:
  // `abandoned`: the queue's Abandon status when the batch was taken.
  bool TakeBatch(absl::Status* abandoned) {
    Queue& q = *queue_;
    absl::MutexLock lock(&q.mu);
    // An inline run may hold the last free instance.
    while (q.size == 0 || q.gathering || q.running >= q.instances) {
      if (q.size == 0 && q.stopping) return false;
      q.work_cv.Wait(&q.mu);
    }
    const size_t count = q.batching && q.abandoned.ok() ? Gather(q) : 1;
    *abandoned = q.abandoned;  // after Gather, which Abandon cuts short
    for (size_t i = 0; i < count; ++i) {
      batch_.push_back(std::move(q.At(0)));
      q.Pop();
    }
    depth_.fetch_sub(static_cast<int64_t>(count), std::memory_order_relaxed);
    ++q.running;
    if (q.batching) {
      // Idle threads waited while this one gathered.
      if (q.stopping) {
        q.work_cv.SignalAll();
      } else if (q.size > 0) {
        q.work_cv.Signal();
      }
    }
    return true;
  }

  // Picks how many requests from the front of the queue form the next batch:
  // as many as fit in max_batch_size, run at once when that is full, when the
  // next request does not fit, when a preferred batch size is reached, or
  // when the first request has waited max_queue_delay_us.
  size_t Gather(Queue& q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(q.mu) {
    q.gathering = true;
    const Clock::time_point deadline = q.At(0).request.arrival + q.max_delay;
    size_t count = 0;
    size_t preferred_count = 0;
    int64_t total = 0;
    bool full = false;
    while (true) {
      // Only this thread pops, so the scan resumes where it stopped.
      while (!full && count < q.size) {
        const Pending& next = q.At(count);
        if (total + next.batch > q.max_batch_size || (count > 0 && !SameItemShape(q.At(0), next))) {
          full = true;
          break;
        }
        total += next.batch;
        ++count;
        if (total == q.max_batch_size) full = true;
        if (q.IsPreferred(total)) preferred_count = count;
      }
      if (full || q.stopping || !q.abandoned.ok() || preferred_count == count) break;
      const Clock::time_point now = Clock::now();
      if (now >= deadline) break;
      // As Triton does: a preferred size already passed runs now rather than
      // waiting for a larger batch that is not preferred.
      if (preferred_count > 0) {
        count = preferred_count;
        break;
      }
      q.gather_cv.WaitWithTimeout(&q.mu, absl::FromChrono(deadline - now));
    }
    q.gathering = false;
    return count;
  }

  void RunBatch() {
    int64_t total = 0;
    for (const Pending& p : batch_) total += p.batch;
    const bool single = batch_.size() == 1;
    // A batch whose requests ask for different outputs fetches all of them.
    bool same_outputs = true;
    for (const Pending& p : batch_) same_outputs = same_outputs && p.outputs == batch_[0].outputs;
    const OutputIndices& run_outputs = same_outputs ? batch_[0].outputs : kAllOutputs;

    const Clock::time_point start = Clock::now();
    absl::StatusOr<std::vector<OutputTensor>> result;
    if (single) {
      // A batch of one runs on the request's own buffers.
      result = engine_.Run(batch_[0].request.inputs,
                           std::span<const int>(run_outputs.data(), run_outputs.size()));
    } else {
      Concatenate(total);
      result =
          engine_.Run(batch_inputs_, std::span<const int>(run_outputs.data(), run_outputs.size()));
    }
    const int64_t compute_ns = Nanos(Clock::now() - start);
    const size_t expected_outputs =
        run_outputs.empty() ? engine_.outputs().size() : run_outputs.size();
    if (result.ok() && !single && result->size() != expected_outputs) {
      result = absl::InternalError(Cat(queue_->display_name, ": the engine returned ",
                                       result->size(), " outputs, expected ", expected_outputs));
    }
    if (result.ok() && !single) {
      for (const OutputTensor& out : *result) {
        if (out.shape.empty() || out.shape[0] != total || out.data.size() % total != 0) {
          result = absl::InternalError(Cat(
              queue_->display_name, ": output '", out.name, "' has shape ", ShapeString(out.shape),
              ", which cannot be split into a batch of ", total, " along the first dimension"));
          break;
        }
      }
    }
    // Before the callbacks: the last one may destroy the scheduler.
    if (options_.on_batch) options_.on_batch(static_cast<int>(total), compute_ns, result.ok());
    if (options_.on_outputs && result.ok()) options_.on_outputs(*result);
    {
      // Before the callbacks too: a client answered by them may send its
      // next request at once, and should find the instance free.
      absl::MutexLock lock(&queue_->mu);
      --queue_->running;
    }

    if (!result.ok()) {
      for (Pending& p : batch_) std::move(p.done)(result.status());
    } else if (single) {
      InferResponse response{std::move(*result), Stats(batch_[0], start, compute_ns, total)};
      std::move(batch_[0].done)(std::move(response));
    } else {
      Split(*result, start, compute_ns, total, same_outputs);
    }
    batch_.clear();
  }

  // Answers the batch's requests with `reason`, without running them.
  void AbandonBatch(const absl::Status& reason) {
    {
      absl::MutexLock lock(&queue_->mu);
      --queue_->running;
    }
    // Each callback may destroy the scheduler: nothing of `this` after the last.
    std::vector<Pending> batch = std::move(batch_);
    batch_.clear();
    for (Pending& p : batch) std::move(p.done)(reason);
  }

  static InferStats Stats(const Pending& p, Clock::time_point start, int64_t compute_ns,
                          int64_t total) {
    return InferStats{Nanos(start - p.request.arrival), compute_ns, static_cast<int>(total)};
  }

  // Copies each input of the batch's requests back to back into scratch_.
  void Concatenate(int64_t total) {
    for (size_t m = 0; m < batch_inputs_.size(); ++m) {
      size_t bytes = 0;
      for (const Pending& p : batch_) bytes += p.request.inputs[m].data.size();
      std::vector<std::byte>& buffer = scratch_[m];
      if (buffer.size() < bytes) buffer.resize(bytes);
      size_t offset = 0;
      for (const Pending& p : batch_) {
        const std::span<const std::byte> data = p.request.inputs[m].data;
        if (!data.empty()) std::memcpy(buffer.data() + offset, data.data(), data.size());
        offset += data.size();
      }
      const std::vector<int64_t>& shape = batch_[0].request.inputs[m].shape;
      InputTensor& input = batch_inputs_[m];
      input.shape.assign(shape.begin(), shape.end());
      input.shape[0] = total;
      input.data = std::span<const std::byte>(buffer.data(), bytes);
    }
  }

  // Gives each request its rows of every output: sub-spans sharing the
  // batch's buffers through `owner`, nothing copied.
  void Split(const std::vector<OutputTensor>& outputs, Clock::time_point start, int64_t compute_ns,
             int64_t total, bool same_outputs) {
    int64_t offset = 0;
    for (Pending& p : batch_) {
      InferResponse response;
      response.stats = Stats(p, start, compute_ns, total);
      // Not engine_.outputs(): an earlier callback may have destroyed the
      // scheduler and the engine with it.
      const size_t n = p.outputs.empty() ? outputs.size() : p.outputs.size();
      response.outputs.reserve(n);
      for (size_t j = 0; j < n; ++j) {
        const size_t k = same_outputs || p.outputs.empty() ? j : p.outputs[j];
        const OutputTensor& out = outputs[k];
        const size_t row_bytes = out.data.size() / total;
        OutputTensor& mine = response.outputs.emplace_back();
        mine.name = out.name;
        mine.datatype = out.datatype;
        mine.shape = out.shape;
        mine.shape[0] = p.batch;
        mine.data = out.data.subspan(offset * row_bytes, p.batch * row_bytes);
        mine.owner = out.owner;
      }
      offset += p.batch;
      std::move(p.done)(std::move(response));
    }
  }

  static inline const OutputIndices kAllOutputs;

  const Engine& engine_;
  const SchedulerOptions& options_;
  std::atomic<int64_t>& depth_;
  std::shared_ptr<Queue> queue_;
  std::vector<Pending> batch_;
  // The concatenated inputs of a batch, in model order; their spans point
  // into scratch_, which only grows, so steady state allocates nothing.
  std::vector<InputTensor> batch_inputs_;
  std::vector<std::vector<std::byte>> scratch_;
};

}  // namespace

struct Scheduler::Impl {
  std::shared_ptr<Queue> queue;
  std::vector<std::thread> threads;         // touched only by Create and the Drain that claims them
  std::vector<std::thread::id> thread_ids;  // immutable once Create returns
};

absl::Status ValidateRequest(const Engine& engine, int64_t max_batch_size,
                             const InferRequest& request) {
  InputPositions positions;
  OutputIndices outputs;
  int64_t batch = 0;
  return CheckRequest(engine, max_batch_size, request, &positions, &outputs, &batch);
}

Scheduler::Scheduler(const Engine& engine, SchedulerOptions options)
    : engine_(engine), options_(std::move(options)), impl_(std::make_unique<Impl>()) {
  auto queue = std::make_shared<Queue>();
  queue->display_name = DisplayName(options_.name);
  queue->max_batch_size = options_.max_batch_size;
  queue->batching = options_.max_batch_size > 0 && options_.dynamic_batching.has_value();
  if (queue->batching) {
    queue->max_delay = std::chrono::microseconds(options_.dynamic_batching->max_queue_delay_us);
    queue->preferred_batch_sizes = options_.dynamic_batching->preferred_batch_sizes;
  }
  queue->capacity = static_cast<size_t>(options_.max_queue_size);
  queue->instances = options_.instance_count;
  queue->inline_execution = options_.inline_execution;
  impl_->queue = std::move(queue);
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const Engine& engine,
                                                             SchedulerOptions options) {
  const std::string who = Cat("scheduler for ", DisplayName(options.name));
  if (options.max_queue_size < 1) {
    return Invalid(who, ": max_queue_size must be >= 1, got ", options.max_queue_size);
  }
  if (options.instance_count < 1) {
    return Invalid(who, ": instance_count must be >= 1, got ", options.instance_count);
  }
  if (options.max_batch_size < 0) {
    return Invalid(who, ": max_batch_size must be >= 0, got ", options.max_batch_size);
  }
  if (options.max_batch_size > 0) {
    for (const TensorSpec& spec : engine.inputs()) {
      if (spec.shape.empty() || spec.shape[0] != -1) {
        return Invalid(who, ": max_batch_size ", options.max_batch_size,
                       " needs a dynamic first dimension on every input, but input '", spec.name,
                       "' has shape ", ShapeString(spec.shape), "; set max_batch_size: 0");
      }
    }
    if (options.dynamic_batching) {
      if (options.dynamic_batching->max_queue_delay_us < 0) {
        return Invalid(who, ": max_queue_delay_us must be >= 0, got ",
                       options.dynamic_batching->max_queue_delay_us);
      }
      for (int64_t size : options.dynamic_batching->preferred_batch_sizes) {
        if (size < 1 || size > options.max_batch_size) {
          return Invalid(who, ": preferred batch size ", size, " is outside 1..",
                         options.max_batch_size, " (max_batch_size)");
        }
      }
    }
  }

  std::unique_ptr<Scheduler> scheduler(new Scheduler(engine, std::move(options)));
  Impl& impl = *scheduler->impl_;
  // Linux limits thread names to 15 characters.
  const std::string thread_name = Cat("infer-", scheduler->options_.name).substr(0, 15);
  try {
    for (int i = 0; i < scheduler->options_.instance_count; ++i) {
      Scheduler* self = scheduler.get();
      impl.threads.emplace_back([self, queue = impl.queue, thread_name] {
        pthread_setname_np(pthread_self(), thread_name.c_str());
        Worker worker(self->engine_, self->options_, self->queue_depth_, queue);
        while (worker.Step()) {
        }
      });
      impl.thread_ids.push_back(impl.threads.back().get_id());
    }
  } catch (const std::system_error& e) {
    // The destructor drains and joins the threads already started.
    return absl::ResourceExhaustedError(
        Cat(who, ": cannot start instance thread ", impl.threads.size() + 1, " of ",
            scheduler->options_.instance_count, ": ", e.what(),
            "; lower instance_count or raise the process thread limit"));
  }
  return scheduler;
}

Scheduler::~Scheduler() { Drain(); }

absl::Status Scheduler::Submit(InferRequest&& request, InferCallback done, SubmitMode mode) {
  InputPositions positions;
  OutputIndices outputs;
  int64_t batch = 1;
  RETURN_IF_ERROR(
      CheckRequest(engine_, options_.max_batch_size, request, &positions, &outputs, &batch));
  ToModelOrder(request.inputs, positions);

  Queue& q = *impl_->queue;
  {
    absl::MutexLock lock(&q.mu);
    if (q.stopping) return absl::UnavailableError(Cat(q.display_name, " is unloading"));
    if (!q.abandoned.ok()) return q.abandoned;
    if (mode == SubmitMode::kMayRunInline && q.CanRunInline(batch)) {
      ++q.running;
      q.inline_running = true;
    } else {
      if (!q.MakeRoom()) {
        return absl::UnavailableError(
            Cat(q.display_name, ": queue full (", q.capacity, " requests); retry later"));
      }
      Pending& slot = q.ring[(q.head + q.size) % q.ring.size()];
      slot.request = std::move(request);
      slot.done = std::move(done);
      slot.outputs = std::move(outputs);
      slot.batch = batch;
      ++q.size;
      queue_depth_.fetch_add(1, std::memory_order_relaxed);
      // One wake-up per request. absl's CondVar moves the woken thread
      // straight onto the mutex, so signalling under the lock costs no extra
      // switch.
      if (q.gathering) {
        q.gather_cv.Signal();
      } else {
        q.work_cv.Signal();
      }
      return absl::OkStatus();
    }
  }
  RunInline(request, std::span<const int>(outputs.data(), outputs.size()), batch, std::move(done));
  return absl::OkStatus();
}

void Scheduler::RunInline(InferRequest& request, std::span<const int> outputs, int64_t batch,
                          InferCallback done) {
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::vector<OutputTensor>> result = engine_.Run(request.inputs, outputs);
  const int64_t compute_ns = Nanos(Clock::now() - start);
  if (options_.on_batch) options_.on_batch(static_cast<int>(batch), compute_ns, result.ok());
  if (options_.on_outputs && result.ok()) options_.on_outputs(*result);
  const InferStats stats{Nanos(start - request.arrival), compute_ns, static_cast<int>(batch)};
  {
    Queue& q = *impl_->queue;
    absl::MutexLock lock(&q.mu);
    --q.running;
    q.inline_running = false;
    // An instance thread may have waited for the instance this run held.
    if (q.size > 0 && !q.gathering) q.work_cv.Signal();
    q.inline_cv.SignalAll();
  }
  // From here on a Drain may return and the scheduler be destroyed.
  if (!result.ok()) {
    std::move(done)(result.status());
  } else {
    std::move(done)(InferResponse{std::move(*result), stats});
  }
}

void Scheduler::Abandon(absl::Status reason) {
  if (reason.ok()) reason = absl::UnavailableError("abandoned");
  Queue& q = *impl_->queue;
  absl::MutexLock lock(&q.mu);
  if (!q.abandoned.ok()) return;
  q.abandoned = std::move(reason);
  q.work_cv.SignalAll();
  q.gather_cv.SignalAll();
}

void Scheduler::Drain() {
  Queue& q = *impl_->queue;
  bool claim = false;
  {
    absl::MutexLock lock(&q.mu);
    q.stopping = true;
    claim = !q.threads_claimed;
    q.threads_claimed = true;
    q.work_cv.SignalAll();
    q.gather_cv.SignalAll();
  }
  const std::thread::id self = std::this_thread::get_id();
  const bool on_instance = std::find(impl_->thread_ids.begin(), impl_->thread_ids.end(), self) !=
                           impl_->thread_ids.end();
  if (on_instance) {
    // Called from a callback: this thread cannot finish the queue from its
    // own loop before Drain returns (the scheduler may be destroyed right
    // after), so it works through the rest here.
    Worker worker(engine_, options_, queue_depth_, impl_->queue);
    while (worker.Step()) {
    }
  }
  if (claim) {
    for (std::thread& thread : impl_->threads) {
      if (thread.get_id() == self) {
        thread.detach();  // returns into its loop, finds the queue empty and exits
      } else if (thread.joinable()) {
        thread.join();
      }
    }
    absl::MutexLock lock(&q.mu);
    q.joined = true;
    q.joined_cv.SignalAll();
  } else if (!on_instance) {
    absl::MutexLock lock(&q.mu);
    while (!q.joined) q.joined_cv.Wait(&q.mu);
  }
  absl::MutexLock lock(&q.mu);
  while (q.inline_running) q.inline_cv.Wait(&q.mu);
}

}  // namespace outpost::serve
