// Sets the attention's block size (src/guidiff/models/attention.hpp) for one test and restores
// it when the test ends.
#pragma once
#include <cstdint>

#include "guidiff/models/attention.hpp"

namespace guidiff::testing {

class AttentionBlockBytes {
 public:
  explicit AttentionBlockBytes(int64_t bytes) { set_attention_block_bytes(bytes); }
  ~AttentionBlockBytes() { set_attention_block_bytes(previous_); }
  AttentionBlockBytes(const AttentionBlockBytes&) = delete;
  AttentionBlockBytes& operator=(const AttentionBlockBytes&) = delete;

 private:
  int64_t previous_ = attention_block_bytes();
};

}  // namespace guidiff::testing
