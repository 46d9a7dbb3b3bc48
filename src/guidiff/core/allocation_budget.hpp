// A ceiling on what one thread allocates for CPU tensors, checked before the memory is used.
#pragma once
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace guidiff {

// Thrown by the CPU tensor allocation that would take a CpuAllocationBudget's thread past its
// budget. Nothing of that allocation has been requested from the system yet.
class AllocationBudgetExceeded : public std::runtime_error {
 public:
  AllocationBudgetExceeded(int64_t allocated, int64_t requested, int64_t budget);
  int64_t allocated;  // bytes counted before the refused request
  int64_t requested;  // the refused request
  int64_t budget;
};

// While alive, the CPU tensors this thread allocates are counted (every allocation, freed or
// not, so temporaries count too), and the one that would pass `budget` bytes throws
// AllocationBudgetExceeded. Other threads allocate as before. Made for building a network from
// a config: Linux grants an allocation larger than the free memory and kills the process only
// when the initialisation touches the pages, which a check before the request prevents. One
// budget at a time in the process (a second waits for the first to end).
class CpuAllocationBudget {
 public:
  explicit CpuAllocationBudget(int64_t budget);
  ~CpuAllocationBudget();
  CpuAllocationBudget(const CpuAllocationBudget&) = delete;
  CpuAllocationBudget& operator=(const CpuAllocationBudget&) = delete;
  // Bytes counted so far.
  int64_t allocated() const;

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace guidiff
