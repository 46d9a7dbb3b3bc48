// The c10d process group behind Communicator (see communicator.hpp).
//
// c10d's headers differ between libtorch 1.13 (Debian) and 2.x (pip): the backends derive
// from c10d::ProcessGroup in 1.13 and from c10d::Backend in 2.x; everything used here has the
// same name and signature in both. ProcessGroupGloo.hpp is compiled only with USE_C10D_GLOO
// and needs Gloo's headers (Debian: libgloo-dev; pip's libtorch ships them), which CMake
// detects (GUIDIFF_WITH_GLOO); ProcessGroupNCCL.hpp needs a CUDA build and nccl.h
// (GUIDIFF_WITH_NCCL).
#include "guidiff/distributed/communicator.hpp"

#include <torch/version.h>

#if GUIDIFF_WITH_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if GUIDIFF_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

#if TORCH_VERSION_MAJOR >= 2
using BackendBase = c10d::Backend;
#else
using BackendBase = c10d::ProcessGroup;
#endif

using Clock = std::chrono::steady_clock;

// A live rank's heartbeat advances every kHeartbeatInterval; a rank whose heartbeat stood
// still for kSilenceMeaningGone (three beats) is taken to be gone.
constexpr std::chrono::milliseconds kHeartbeatInterval{1000};
constexpr std::chrono::milliseconds kSilenceMeaningGone{3000};
constexpr std::chrono::milliseconds kPollInterval{50};

std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  const auto last = line.find_last_not_of(" \t\r");
  return last == std::string::npos ? "no details" : line.substr(0, last + 1);
}

std::string seconds_text(std::chrono::milliseconds duration) {
  std::ostringstream out;
  out << static_cast<double>(duration.count()) / 1000.0 << " s";
  return out.str();
}

// "rank 2", "ranks 1, 3".
std::string rank_list(const std::vector<int64_t>& ranks) {
  std::string text = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) text += (i ? ", " : "") + std::to_string(ranks[i]);
  return text;
}

std::vector<uint8_t> bytes_of(const std::string& text) { return {text.begin(), text.end()}; }
std::string text_of(const std::vector<uint8_t>& bytes) { return {bytes.begin(), bytes.end()}; }

std::string key(const char* kind, int64_t rank) { return std::string(kind) + "/" + std::to_string(rank); }

bool is_loopback(const std::string& address) {
  return address == "localhost" || address.rfind("127.", 0) == 0 || address == "::1";
}

}  // namespace

std::string rendezvous_prefix(int64_t restart_count) { return "guidiff/attempt_" + std::to_string(restart_count); }

std::string failure_key(int64_t rank) { return key("failed", rank); }

void PendingCollective::wait() {
  if (wait_) {
    auto wait = std::move(wait_);
    wait_ = nullptr;
    wait();
  }
}

struct Communicator::Connection {
  LaunchEnvironment environment;
  CommunicatorOptions options;
  std::string prefix;
  std::string store_address;
  c10::intrusive_ptr<c10d::TCPStore> tcp_store;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<BackendBase> group;
  std::string backend;
  torch::Device device = torch::kCPU;
  std::atomic<int64_t> collectives{0};  // started so far; published with the heartbeat
  std::atomic<bool> failed{false};      // a collective failed or this rank announced a failure

  std::thread heartbeat;
  std::mutex heartbeat_mutex;
  std::condition_variable heartbeat_stop;
  bool stopping = false;

  Connection(const LaunchEnvironment& environment_in, const CommunicatorOptions& options_in)
      : environment(environment_in), options(options_in) {
    prefix = rendezvous_prefix(environment.restart_count);
    store_address = environment.master_addr + ":" + std::to_string(environment.master_port);
  }

  ~Connection() { stop_heartbeat(); }

  int64_t rank() const { return environment.rank; }
  int64_t world() const { return environment.world_size; }

  c10::intrusive_ptr<c10d::TCPStore> open_store(bool server) const {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(environment.master_port);
    store_options.isServer = server;
    store_options.numWorkers = static_cast<std::size_t>(environment.world_size);
    store_options.waitWorkers = false;  // arrivals are checked below, naming the absent
    store_options.timeout = options.timeout;
    store_options.multiTenant = true;
    return c10::make_intrusive<c10d::TCPStore>(environment.master_addr, store_options);
  }

  void connect_store() {
    const bool server = !environment.launcher_hosts_store && rank() == 0;
    try {
      tcp_store = open_store(server);
    } catch (const std::exception& error) {
      if (server) {
        throw DistributedError("cannot open the rendezvous store on " + store_address + " (MASTER_ADDR:MASTER_PORT; port in use?): " +
                               first_line(error.what()));
      }
      throw DistributedError("cannot reach the rendezvous store at " + store_address + " within " +
                             seconds_text(options.timeout) + " (" +
                             (environment.launcher_hosts_store ? std::string("hosted by the launcher") : "hosted by rank 0") +
                             ", which never came up): " + first_line(error.what()));
    }
    store = c10::make_intrusive<c10d::PrefixStore>(prefix, tcp_store);
  }

  // Every rank sets arrived/<rank>; then all wait, up to the timeout, for everyone's key.
  void wait_for_arrivals() {
    store->set(key("arrived", rank()), bytes_of("1"));
    const auto deadline = Clock::now() + options.timeout;
    while (true) {
      std::vector<int64_t> missing;
      for (int64_t r = 0; r < world(); ++r) {
        if (!store->check({key("arrived", r)})) missing.push_back(r);
      }
      if (missing.empty()) return;
      if (Clock::now() >= deadline) {
        throw DistributedError(rank_list(missing) + " of " + std::to_string(world()) + " never arrived at the rendezvous at " +
                               store_address + " within " + seconds_text(options.timeout) + " (--dist-timeout)");
      }
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  // Beats through a connection of its own, so it never waits behind the main thread.
  void start_heartbeat() {
    c10::intrusive_ptr<c10d::Store> beat_store =
        c10::make_intrusive<c10d::PrefixStore>(prefix, open_store(/*server=*/false));
    heartbeat = std::thread([this, beat_store] {
      int64_t beats = 0;
      while (true) {
        try {
          beat_store->set(key("heartbeat", rank()),
                          bytes_of(std::to_string(++beats) + " " + std::to_string(collectives.load())));
        } catch (const std::exception&) {
          return;  // the store is gone; the main thread finds out at its next collective
        }
        std::unique_lock<std::mutex> lock(heartbeat_mutex);
        if (heartbeat_stop.wait_for(lock, kHeartbeatInterval, [this] { return stopping; })) return;
      }
    });
  }

  // Stops the heartbeat; waits for its thread unless told not to (after a failure, when a
  // store that no longer answers could hold it up to the timeout).
  void stop_heartbeat(bool wait = true) {
    {
      std::lock_guard<std::mutex> lock(heartbeat_mutex);
      stopping = true;
    }
    heartbeat_stop.notify_all();
    if (!heartbeat.joinable()) return;
    if (wait) {
      heartbeat.join();
    } else {
      heartbeat.detach();
    }
  }

  void open_group() {
    try {
      if (options.device.is_cuda()) {
#if GUIDIFF_WITH_NCCL
        auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
        nccl_options->timeout = options.timeout;
        group = c10::make_intrusive<c10d::ProcessGroupNCCL>(
            c10::make_intrusive<c10d::PrefixStore>("nccl", store), static_cast<int>(rank()), static_cast<int>(world()),
            nccl_options);
        backend = "nccl";
        device = options.device;
        return;
#endif
      }
#if GUIDIFF_WITH_GLOO
      auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
      if (const char* interfaces = std::getenv("GLOO_SOCKET_IFNAME"); interfaces != nullptr && *interfaces != '\0') {
        std::stringstream names(interfaces);
        for (std::string name; std::getline(names, name, ',');) {
          gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
        }
      } else if (is_loopback(environment.master_addr)) {
        // Every rank is on this machine: the loopback interface always works.
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      group = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store),
                                                          static_cast<int>(rank()), static_cast<int>(world()),
                                                          gloo_options);
      backend = "gloo";
      device = torch::kCPU;
#else
      throw DistributedError(
          "this guidiff was built without Gloo, so several processes need GPUs (--device cuda) "
          "here; for CPUs build against Debian's libtorch-dev with libgloo-dev (pip's libtorch "
          "ships no Gloo headers)");
#endif
    } catch (const DistributedError&) {
      throw;
    } catch (const std::exception& error) {
      failed = true;
      throw DistributedError(diagnose("opening the process group", error.what()));
    }
  }

  struct Beat {
    int64_t beats = 0;
    int64_t collectives = 0;
  };

  std::vector<std::optional<Beat>> read_heartbeats() const {
    std::vector<std::optional<Beat>> result(static_cast<size_t>(world()));
    for (int64_t r = 0; r < world(); ++r) {
      if (r == rank() || !store->check({key("heartbeat", r)})) continue;
      std::istringstream fields(text_of(store->get(key("heartbeat", r))));
      Beat beat;
      if (fields >> beat.beats >> beat.collectives) result[static_cast<size_t>(r)] = beat;
    }
    return result;
  }

  // Which rank made `what` fail, from the store: one that announced its error, one whose
  // heartbeat stopped, or one that is behind in the sequence of collectives.
  std::string diagnose(const std::string& what, const std::string& cause) const {
    const std::string failure = what + " failed (" + first_line(cause) + ")";
    try {
      const auto announced = [&]() -> std::string {
        for (int64_t r = 0; r < world(); ++r) {
          if (r != rank() && store->check({failure_key(r)})) {
            return "rank " + std::to_string(r) + " failed: " + text_of(store->get(failure_key(r))) + "; " + failure;
          }
        }
        return "";
      };
      if (std::string message = announced(); !message.empty()) return message;
      const auto before = read_heartbeats();
      std::this_thread::sleep_for(kSilenceMeaningGone);
      if (std::string message = announced(); !message.empty()) return message;
      const auto after = read_heartbeats();
      std::vector<int64_t> gone, behind;
      const int64_t mine = collectives.load();
      for (int64_t r = 0; r < world(); ++r) {
        if (r == rank()) continue;
        const auto& first = before[static_cast<size_t>(r)];
        const auto& second = after[static_cast<size_t>(r)];
        if (!second || (first && first->beats == second->beats)) {
          gone.push_back(r);
        } else if (second->collectives < mine) {
          behind.push_back(r);
        }
      }
      if (!gone.empty()) {
        return rank_list(gone) + (gone.size() == 1 ? " is" : " are") + " gone (no heartbeat for " +
               seconds_text(kSilenceMeaningGone) + "); " + failure;
      }
      if (!behind.empty()) {
        return rank_list(behind) + " stopped taking part (still running, but behind this rank's collective " +
               std::to_string(mine) + "); " + failure;
      }
      return failure;
    } catch (const std::exception&) {
      if (environment.launcher_hosts_store) {
        return "the launcher's rendezvous store at " + store_address + " is gone (was the launcher stopped?); " + failure;
      }
      return "rank 0 is gone (the rendezvous store it hosted at " + store_address + " no longer answers); " + failure;
    }
  }

  [[noreturn]] void fail(const std::string& what, const std::exception& error) {
    failed = true;
    throw DistributedError(diagnose(what, error.what()));
  }

  // Runs a collective to completion, translating its failure.
  template <typename Start>
  void run(const std::string& what, Start&& start) {
    ++collectives;
    try {
      start()->wait();
    } catch (const std::exception& error) {
      fail(what, error);
    }
  }
};

Communicator::Communicator() = default;

Communicator& single_process_communicator() {
  static Communicator alone;
  return alone;
}

Communicator::Communicator(const LaunchEnvironment& environment, const CommunicatorOptions& options)
    : rank_(environment.rank), world_size_(environment.world_size), local_rank_(environment.local_rank) {
  if (!environment.distributed()) return;
  auto connection = std::make_unique<Connection>(environment, options);
  connection->connect_store();
  connection->wait_for_arrivals();
  connection->start_heartbeat();
  connection->open_group();
  connection_ = std::move(connection);
}

Communicator::~Communicator() {
  if (!connection_) return;
  if (!connection_->failed) {
    try {
      barrier("the final barrier");
    } catch (const std::exception&) {
      // Nothing to do: the run's work is done, and the others report their own failure.
    }
  }
  if (connection_->failed) {
    // A process group whose peers failed may still hold collectives that only end at the
    // timeout, and the heartbeat may be waiting on a store that no longer answers; waiting
    // for either would delay the exit. The process is about to end: let them go.
    connection_->stop_heartbeat(/*wait=*/false);
    (void)connection_.release();
    return;
  }
  connection_->stop_heartbeat();
}

std::string Communicator::backend() const { return connection_ ? connection_->backend : "none"; }

torch::Device Communicator::device() const { return connection_ ? connection_->device : torch::Device(torch::kCPU); }

std::string Communicator::describe() const {
  return distributed() ? "rank " + std::to_string(rank_) + " of " + std::to_string(world_size_) : "";
}

void Communicator::all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what) {
  if (!connection_) return;
  for (auto& tensor : tensors) {
    torch::Tensor buffer = tensor.to(connection_->device).contiguous();
    std::vector<at::Tensor> list{buffer};
    connection_->run(what, [&] { return connection_->group->allreduce(list); });
    if (!buffer.is_same(tensor)) tensor.copy_(buffer);
  }
}

PendingCollective Communicator::all_reduce_sum_async(torch::Tensor& tensor, const std::string& what) {
  if (!connection_) return {};
  if (tensor.device() != connection_->device || !tensor.is_contiguous()) {
    throw InputError(what + ": an asynchronous all-reduce needs a contiguous tensor on " + connection_->device.str());
  }
  Connection* connection = connection_.get();
  ++connection->collectives;
  std::vector<at::Tensor> list{tensor};
  try {
    auto work = connection->group->allreduce(list);
    return PendingCollective([connection, work, what]() {
      try {
        work->wait();
      } catch (const std::exception& error) {
        connection->fail(what, error);
      }
    });
  } catch (const std::exception& error) {
    connection->fail(what, error);
  }
}

torch::Tensor Communicator::all_gather_rows(const torch::Tensor& rows, const std::string& what) {
  if (!connection_) return rows;
  if (rows.defined() && rows.dim() < 1) throw InputError(what + ": all_gather_rows needs a tensor of rows");
  // Gloo gathers equal sizes: first every rank's header [rows, dtype, dims, size 1, ...] (rows
  // -1: undefined, "no rows, shape as the others"), then the rows padded to the longest.
  constexpr int64_t kMaxDims = 8;
  std::vector<int64_t> fields(3 + kMaxDims, -1);
  if (rows.defined()) {
    if (rows.dim() > kMaxDims) throw InputError(what + ": all_gather_rows takes at most 8 dimensions");
    fields[0] = rows.size(0);
    fields[1] = static_cast<int64_t>(rows.scalar_type());
    fields[2] = rows.dim();
    for (int64_t d = 1; d < rows.dim(); ++d) fields[static_cast<size_t>(2 + d)] = rows.size(d);
  }
  const torch::Tensor header = torch::tensor(fields, torch::kInt64);
  std::vector<torch::Tensor> headers;
  {
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int64_t r = 0; r < world_size_; ++r) outputs[0].push_back(torch::empty_like(header).to(connection_->device));
    std::vector<at::Tensor> inputs{header.to(connection_->device)};
    connection_->run(what, [&] { return connection_->group->allgather(outputs, inputs); });
    for (const auto& h : outputs[0]) headers.push_back(h.to(torch::kCPU));
  }
  std::optional<torch::Tensor> layout;  // the header of a rank that has a tensor
  std::vector<int64_t> sizes;
  int64_t longest = 0;
  for (int64_t r = 0; r < world_size_; ++r) {
    const torch::Tensor& h = headers[static_cast<size_t>(r)];
    const int64_t n = h[0].item<int64_t>();
    sizes.push_back(std::max<int64_t>(n, 0));
    longest = std::max(longest, sizes.back());
    if (n < 0) continue;
    if (layout && !torch::equal(layout->slice(0, 1), h.slice(0, 1))) {
      throw InputError(what + ": rank " + std::to_string(r) + "'s rows differ in dtype or shape from the others'");
    }
    if (!layout) layout = h;
  }
  if (!layout) return rows;  // no rank has a tensor
  const auto dtype = static_cast<c10::ScalarType>((*layout)[1].item<int64_t>());
  std::vector<int64_t> shape{longest};
  for (int64_t d = 1; d < (*layout)[2].item<int64_t>(); ++d) shape.push_back((*layout)[2 + d].item<int64_t>());
  // Booleans travel as bytes.
  const bool boolean = dtype == torch::kBool;
  const auto wire_dtype = boolean ? torch::kUInt8 : dtype;
  const torch::Device home = rows.defined() ? rows.device() : torch::Device(torch::kCPU);
  torch::Tensor padded = torch::zeros(shape, torch::TensorOptions().dtype(wire_dtype).device(connection_->device));
  if (rows.defined() && rows.size(0) > 0) padded.narrow(0, 0, rows.size(0)).copy_(rows.to(wire_dtype));
  std::vector<torch::Tensor> parts;
  if (longest > 0) {
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int64_t r = 0; r < world_size_; ++r) outputs[0].push_back(torch::empty_like(padded));
    std::vector<at::Tensor> inputs{padded};
    connection_->run(what, [&] { return connection_->group->allgather(outputs, inputs); });
    for (int64_t r = 0; r < world_size_; ++r) {
      parts.push_back(outputs[0][static_cast<size_t>(r)].narrow(0, 0, sizes[static_cast<size_t>(r)]));
    }
  } else {
    parts.push_back(padded);
  }
  torch::Tensor gathered = torch::cat(parts, 0).to(home);
  return boolean ? gathered.to(torch::kBool) : gathered;
}

void Communicator::broadcast_from_main(std::vector<torch::Tensor>& tensors, const std::string& what) {
  if (!connection_) return;
  for (auto& tensor : tensors) {
    torch::Tensor buffer = tensor.to(connection_->device).contiguous();
    std::vector<at::Tensor> list{buffer};
    c10d::BroadcastOptions options;
    options.rootRank = 0;
    connection_->run(what, [&] { return connection_->group->broadcast(list, options); });
    if (!buffer.is_same(tensor)) tensor.copy_(buffer);
  }
}

bool Communicator::any(bool flag, const std::string& what) {
  if (!connection_) return flag;
  std::vector<torch::Tensor> count{torch::tensor({flag ? 1.0f : 0.0f})};
  all_reduce_sum(count, what);
  return count[0].item<float>() > 0.0f;
}

void Communicator::barrier(const std::string& what) {
  if (!connection_) return;
  // An all-reduce of one number: the same on every backend, and it cannot finish on any rank
  // before every rank has started it.
  std::vector<torch::Tensor> token{torch::zeros({1})};
  all_reduce_sum(token, what);
}

void Communicator::announce_failure(const std::string& message) noexcept {
  if (!connection_) return;
  connection_->failed = true;
  try {
    connection_->store->set(failure_key(rank_), bytes_of(first_line(message)));
  } catch (...) {
    // Best effort: the others will see this rank's heartbeat stop instead.
  }
}

bool backend_built(const std::string& backend) {
#if GUIDIFF_WITH_GLOO
  if (backend == "gloo") return true;
#endif
#if GUIDIFF_WITH_NCCL
  if (backend == "nccl") return true;
#endif
  return false;
}

}  // namespace guidiff
