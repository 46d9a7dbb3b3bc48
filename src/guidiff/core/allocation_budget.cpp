#include "guidiff/core/allocation_budget.hpp"

#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstring>
#include <string>

namespace guidiff {
namespace {

// libtorch's CPU allocator behind a counter. It is installed for a budget's lifetime only, but
// never destroyed: a storage keeps the allocator that made it and resizes through it later,
// when this one simply passes requests on.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  void start(int64_t budget) {
    if (c10::GetCPUAllocator() != this) inner_ = c10::GetCPUAllocator();
    budget_ = budget;
    allocated_ = 0;
    owner_ = std::this_thread::get_id();
    active_ = true;  // last: another thread reads owner_ only while active_
    // The highest priority: SetCPUAllocator ignores a lower one than the current allocator's.
    c10::SetCPUAllocator(this, kPriority);
  }
  void stop() {
    active_ = false;
    c10::SetCPUAllocator(inner_.load(), kPriority);
  }
  int64_t allocated() const { return allocated_; }

  // libtorch 1.13 declares allocate const; libtorch 2 made it non-const and added copy_data.
  // Both forms are defined (without `override`) so that either version's virtuals are met.
  c10::DataPtr allocate(size_t bytes) const { return counted(bytes); }
  c10::DataPtr allocate(size_t bytes) { return counted(bytes); }
  void copy_data(void* destination, const void* source, std::size_t bytes) const {
    std::memcpy(destination, source, bytes);
  }
  c10::DeleterFnPtr raw_deleter() const override { return inner_.load()->raw_deleter(); }

 private:
  static constexpr uint8_t kPriority = 255;

  c10::DataPtr counted(size_t bytes) const {
    if (active_ && std::this_thread::get_id() == owner_.load()) {
      const auto request = static_cast<int64_t>(bytes);
      if (allocated_ + request > budget_)
        throw AllocationBudgetExceeded(allocated_, request, budget_);
      allocated_ += request;
    }
    return inner_.load()->allocate(bytes);
  }

  // Atomic: storages made under an earlier budget allocate through this one from any thread.
  std::atomic<c10::Allocator*> inner_{nullptr};
  int64_t budget_ = 0;
  mutable int64_t allocated_ = 0;  // by the owner alone
  std::atomic<std::thread::id> owner_;
  std::atomic<bool> active_{false};
};

CountingCpuAllocator& counting_allocator() {
  static auto* allocator = new CountingCpuAllocator();  // never destroyed (see the class)
  return *allocator;
}

std::mutex& budget_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace

AllocationBudgetExceeded::AllocationBudgetExceeded(int64_t allocated, int64_t requested,
                                                   int64_t budget)
    : std::runtime_error("a CPU allocation of " + std::to_string(requested) + " bytes after " +
                         std::to_string(allocated) + " would pass the budget of " +
                         std::to_string(budget) + " bytes"),
      allocated(allocated),
      requested(requested),
      budget(budget) {}

CpuAllocationBudget::CpuAllocationBudget(int64_t budget) : lock_(budget_mutex()) {
  counting_allocator().start(budget);
}

CpuAllocationBudget::~CpuAllocationBudget() { counting_allocator().stop(); }

int64_t CpuAllocationBudget::allocated() const { return counting_allocator().allocated(); }

}  // namespace guidiff
