#include <gtest/gtest.h>
#include <torch/torch.h>

#include "guidiff/core/allocator.hpp"
#include "guidiff/core/threads.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  guidiff::configure_allocator();  // as the CLI does: freed tensors stay in the heap
  guidiff::configure_threads(0);  // all cores (GUIDIFF_THREADS overrides), as the CLI does
  return RUN_ALL_TESTS();
}
