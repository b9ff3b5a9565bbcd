// grpcload: an open-loop, fixed-rate gRPC load client (unary calls, raw bytes).
//
// Call i is scheduled at t0 + i / rate and sent then, whether or not earlier calls have
// answered, so a slow server cannot slow the load down and hide its own latency. One sender
// thread sleeps (absolute CLOCK_MONOTONIC deadlines, no spinning) until each call is due; one
// completion-queue thread reaps the answers. Calls go round-robin over N channels, each its own
// TCP connection (a SO_REUSEPORT server balances by connection).
//
// Requests come pre-serialized from a file (grpc::GenericStub: no generated code); per-call
// timings and status codes go to a flat binary file. Formats: README.md. Python driver:
// recsvc/bench/ratebench.py (fixed_rate_native).

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

constexpr char kRequestsMagic[8] = {'G', 'R', 'P', 'C', 'L', 'D', 'Q', '1'};
constexpr int64_t kNsPerSecond = 1000000000;
constexpr int64_t kStartDelayNs = 50000000;  // t0 is 50 ms after the channels are ready
constexpr int32_t kNotCompleted = -1;

const char kUsage[] =
    "usage: grpcload --target HOST:PORT --requests FILE --out FILE --rate CALLS_PER_S\n"
    "                --duration S [--warmup S] [--connections N] [--deadline S]\n"
    "                [--connect-timeout S] [--metadata KEY=VALUE]...\n"
    "Offers rate x (warmup + duration) unary calls, open loop; see README.md.\n";

// A bad command line or input file: reported as one line, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string target;
  std::string requests_path;
  std::string out_path;
  double rate = 0;
  double warmup_s = 0;
  double duration_s = 0;
  int connections = 4;
  double deadline_s = 1.0;
  double connect_timeout_s = 10.0;
  std::vector<std::pair<std::string, std::string>> metadata;
};

struct Request {
  uint32_t method;
  grpc::ByteBuffer payload;
};

struct RequestSet {
  std::vector<std::string> methods;  // full names, "/package.Service/Method"
  std::vector<Request> requests;
};

// One call in the results file (little-endian, 32 bytes; times in ns from t0).
struct Record {
  int64_t scheduled_ns;
  int64_t sent_ns;
  int64_t done_ns;  // -1: never completed
  int32_t status;   // grpc::StatusCode; -1: never completed
  int32_t method;   // index into the requests file's method table
};
static_assert(sizeof(Record) == 32, "the results file layout is documented as 32-byte records");

// One call in flight; its address is the completion-queue tag.
struct Call {
  size_t index = 0;
  grpc::ClientContext context;
  grpc::ByteBuffer response;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
};

int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * kNsPerSecond + ts.tv_nsec;
}

// Sleep until an absolute CLOCK_MONOTONIC time (returns at once when it has passed).
void sleep_until_ns(int64_t when_ns) {
  timespec ts;
  ts.tv_sec = static_cast<time_t>(when_ns / kNsPerSecond);
  ts.tv_nsec = static_cast<long>(when_ns % kNsPerSecond);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

double cpu_seconds_self() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  auto secs = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

double parse_double(const std::string& flag, const std::string& text, double min_value) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno != 0 || !std::isfinite(v) || v < min_value) {
    char msg[160];
    std::snprintf(msg, sizeof msg, " wants a number >= %g, got '", min_value);
    throw UsageError(flag + msg + text + "'");
  }
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_rate = false, have_duration = false;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) throw UsageError(flag + " needs a value");
    const std::string value = argv[i + 1];
    if (flag == "--target") {
      o.target = value;
    } else if (flag == "--requests") {
      o.requests_path = value;
    } else if (flag == "--out") {
      o.out_path = value;
    } else if (flag == "--rate") {
      o.rate = parse_double(flag, value, 0);
      have_rate = true;
    } else if (flag == "--duration") {
      o.duration_s = parse_double(flag, value, 0);
      have_duration = true;
    } else if (flag == "--warmup") {
      o.warmup_s = parse_double(flag, value, 0);
    } else if (flag == "--connections") {
      const double n = parse_double(flag, value, 1);
      if (n != std::floor(n) || n > 4096) throw UsageError("--connections wants a whole number 1..4096");
      o.connections = static_cast<int>(n);
    } else if (flag == "--deadline") {
      o.deadline_s = parse_double(flag, value, 0.001);
    } else if (flag == "--connect-timeout") {
      o.connect_timeout_s = parse_double(flag, value, 0);
    } else if (flag == "--metadata") {
      const auto eq = value.find('=');
      if (eq == std::string::npos || eq == 0) throw UsageError("--metadata wants KEY=VALUE, got '" + value + "'");
      o.metadata.emplace_back(value.substr(0, eq), value.substr(eq + 1));
    } else {
      throw UsageError("unknown option " + flag);
    }
  }
  if (o.target.empty() || o.requests_path.empty() || o.out_path.empty() || !have_rate || !have_duration) {
    throw UsageError("--target, --requests, --out, --rate and --duration are required");
  }
  if (o.rate <= 0 || o.duration_s <= 0) throw UsageError("--rate and --duration must be > 0");
  return o;
}

// Bounds-checked little-endian reads over the requests file.
class Reader {
 public:
  Reader(const std::string& data, const std::string& path) : data_(data), path_(path) {}
  bool at_end() const { return pos_ == data_.size(); }
  uint64_t uint(size_t width) {
    need(width);
    uint64_t v = 0;
    for (size_t b = 0; b < width; ++b) v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + b])) << (8 * b);
    pos_ += width;
    return v;
  }
  std::string bytes(size_t n) {
    need(n);
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }

 private:
  void need(size_t n) const {
    if (data_.size() - pos_ < n) {
      throw UsageError(path_ + ": truncated at byte " + std::to_string(pos_) + " (not a complete requests file)");
    }
  }
  const std::string& data_;
  const std::string& path_;
  size_t pos_ = 0;
};

// The requests file: magic "GRPCLDQ1", uint32 method count, per method (uint16 length, UTF-8
// name), then records to the end: (uint8 method index, uint32 length, serialized request).
RequestSet read_requests(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read requests file " + path + ": " + std::strerror(errno));
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < sizeof(kRequestsMagic) || std::memcmp(data.data(), kRequestsMagic, sizeof(kRequestsMagic)) != 0) {
    throw UsageError(path + ": not a grpcload requests file (bad magic)");
  }
  Reader r(data, path);
  r.bytes(sizeof(kRequestsMagic));
  RequestSet set;
  const uint64_t n_methods = r.uint(4);
  if (n_methods == 0 || n_methods > 256) throw UsageError(path + ": method count must be 1..256");
  for (uint64_t m = 0; m < n_methods; ++m) {
    set.methods.push_back(r.bytes(r.uint(2)));
    if (set.methods.back().empty() || set.methods.back()[0] != '/') {
      throw UsageError(path + ": method names must look like /package.Service/Method");
    }
  }
  while (!r.at_end()) {
    const auto method = static_cast<uint32_t>(r.uint(1));
    if (method >= set.methods.size()) throw UsageError(path + ": record names method " + std::to_string(method));
    const std::string payload = r.bytes(r.uint(4));
    grpc::Slice slice(payload.data(), payload.size());
    set.requests.push_back({method, grpc::ByteBuffer(&slice, 1)});
  }
  if (set.requests.empty()) throw UsageError(path + ": no requests");
  return set;
}

std::vector<std::shared_ptr<grpc::Channel>> open_channels(const Options& o) {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < o.connections; ++c) {
    grpc::ChannelArguments args;
    // Distinct args and a private subchannel pool: every channel opens its own TCP connection.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("grpc.channel_id", c);
    channels.push_back(grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args));
  }
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::microseconds(static_cast<int64_t>(o.connect_timeout_s * 1e6));
  int ready = 0;
  for (auto& ch : channels) ready += ch->WaitForConnected(deadline) ? 1 : 0;
  if (ready < o.connections) {
    std::fprintf(stderr, "grpcload: warning: %d of %d connections to %s not ready after %.1fs; calls on them will fail\n",
                 o.connections - ready, o.connections, o.target.c_str(), o.connect_timeout_s);
  }
  return channels;
}

// Reap `total` completions: stamp each call's end time and status, free it.
void reap(grpc::CompletionQueue* cq, std::vector<Record>* records, int64_t t0, size_t total) {
  void* tag = nullptr;
  bool ok = false;
  for (size_t done = 0; done < total && cq->Next(&tag, &ok); ++done) {
    std::unique_ptr<Call> call(static_cast<Call*>(tag));
    Record& rec = (*records)[call->index];
    rec.done_ns = monotonic_ns() - t0;
    rec.status = static_cast<int32_t>(call->status.error_code());
  }
}

struct Window {
  double cpu_s = 0;  // this process's CPU over the measured calls' schedule
  double max_lag_ms = 0;
};

// Send every call at its scheduled time; returns the measured window's CPU and the worst lag.
Window send_all(const Options& o, const RequestSet& set, std::vector<grpc::GenericStub>& stubs,
                grpc::CompletionQueue* cq, std::vector<Record>* records, int64_t t0, size_t warm_n) {
  const size_t total = records->size();
  const double ns_per_call = kNsPerSecond / o.rate;
  const auto deadline_span = gpr_time_from_nanos(static_cast<int64_t>(o.deadline_s * kNsPerSecond), GPR_TIMESPAN);
  Window w;
  double cpu_start = cpu_seconds_self();
  for (size_t i = 0; i < total; ++i) {
    const auto scheduled = static_cast<int64_t>(std::llround(static_cast<double>(i) * ns_per_call));
    sleep_until_ns(t0 + scheduled);
    if (i == warm_n) cpu_start = cpu_seconds_self();
    const Request& req = set.requests[i % set.requests.size()];
    auto* call = new Call;
    call->index = i;
    call->context.set_deadline(gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), deadline_span));
    for (const auto& [key, value] : o.metadata) call->context.AddMetadata(key, value);
    Record& rec = (*records)[i];
    rec.scheduled_ns = scheduled;
    rec.sent_ns = monotonic_ns() - t0;
    rec.method = static_cast<int32_t>(req.method);
    w.max_lag_ms = std::max(w.max_lag_ms, (rec.sent_ns - scheduled) / 1e6);
    call->reader = stubs[i % stubs.size()].PrepareUnaryCall(&call->context, set.methods[req.method], req.payload, cq);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
  }
  // The window ends when the next call would have been due (where the Python client measures too).
  sleep_until_ns(t0 + static_cast<int64_t>(std::llround(static_cast<double>(total) * ns_per_call)));
  w.cpu_s = cpu_seconds_self() - cpu_start;
  return w;
}

void write_results(const std::string& path, const std::vector<Record>& records) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  const size_t n = std::fwrite(records.data(), sizeof(Record), records.size(), f);
  if (std::fclose(f) != 0 || n != records.size()) throw std::runtime_error("short write to " + path);
}

int run(const Options& o) {
  const RequestSet set = read_requests(o.requests_path);
  const auto total = static_cast<size_t>(o.rate * (o.warmup_s + o.duration_s));
  // nearbyint rounds half to even, like Python's round(): the driver counts warm-up calls the same way.
  const auto warm_n = static_cast<size_t>(std::nearbyint(o.rate * o.warmup_s));
  if (total == 0) throw UsageError("rate x (warmup + duration) is less than one call");
  auto channels = open_channels(o);
  std::vector<grpc::GenericStub> stubs;
  for (auto& ch : channels) stubs.emplace_back(ch);
  grpc::CompletionQueue cq;
  std::vector<Record> records(total, Record{0, 0, -1, kNotCompleted, 0});

  const int64_t t0 = monotonic_ns() + kStartDelayNs;
  std::printf("start %.9f\n", static_cast<double>(t0) / kNsPerSecond);  // CLOCK_MONOTONIC seconds
  std::fflush(stdout);
  std::thread reaper(reap, &cq, &records, t0, total);
  const Window w = send_all(o, set, stubs, &cq, &records, t0, warm_n);
  reaper.join();  // every call has a deadline, so every call completes
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  write_results(o.out_path, records);
  size_t n_ok = 0;
  for (const Record& r : records) n_ok += r.status == 0 ? 1 : 0;
  std::printf("done calls=%zu ok=%zu warmup_calls=%zu cpu_window_s=%.6f cpu_total_s=%.6f max_lag_ms=%.3f\n", total,
              n_ok, warm_n, w.cpu_s, cpu_seconds_self(), w.max_lag_ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Debian's abseil tracks lock order on every Mutex operation (deadlock detection, a debug aid
  // that records stack traces): about a tenth of this client's CPU per call. Off.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "grpcload: error: %s\n%s", e.what(), argc <= 1 ? kUsage : "");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "grpcload: error: %s\n", e.what());
    return 1;
  }
}
