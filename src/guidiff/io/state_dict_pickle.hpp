// The pickle inside a `.pt` file written by torch.save(model.state_dict()) (protocol 2), made
// safe and digestible for libtorch's own unpickler (torch::jit::Unpickler).
//
// Why a pass of our own before libtorch's: a `.pt` file is untrusted input, and libtorch 1.13's
// unpickler trusts its input (a corrupt file can make it allocate without bound, hang, or read
// past its stack); and it turns collections.OrderedDict(), which every state_dict() is, into
// None, so a state dict cannot be loaded by it at all. This pass simulates the pickle machine
// over typed placeholders, accepts only what torch.save writes for a dict of tensors, and
// rewrites five constructs into ones libtorch handles with the same meaning:
//   OrderedDict() (GLOBAL collections.OrderedDict, (), REDUCE) -> EMPTY_DICT;
//   BUILD (setting the state dict's `_metadata` attribute)       -> TUPLE2 (object, state),
//                                                                   allowed only at the top;
//   LONG1 of fewer than 8 bytes                                  -> LONG1 of 8 bytes;
//   SETITEM and APPEND                                           -> MARK ... SETITEMS / APPENDS.
// Everything else passes byte for byte.
//
// torch.save's legacy format (torch < 1.6, and pytorch-fid's Inception weights) writes
// several pickles one after another, followed by raw storage data; besides the state dict
// they hold plain values (a dict of settings, a list of storage keys), which the same pass
// checks in PickleContent::plain_values, where globals, calls and persistent ids are refused.
#pragma once
#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"

namespace guidiff {

enum class PickleContent {
  state_dict,    // a dict of tensors (the top-level object must be a dict)
  plain_values,  // ints, floats, bools, None, strings, tuples, lists and dicts only
};

struct PickleSource {
  std::string name_for_errors;      // errors read "<name_for_errors>: <label> byte <N>: ..."
  std::string label = "data.pkl";
  size_t first_byte = 0;            // N counts from here (the pickle's offset in its file)
  PickleContent content = PickleContent::state_dict;
  bool more_follows = false;        // bytes after STOP belong to what follows, not an error
};

// The bytes ended before the pickle's STOP: a caller that gave a prefix of a longer file can
// give more and try again.
class PickleTruncated : public FileError {
 public:
  using FileError::FileError;
};

// The longest pickle accepted: a state dict's, even for billions of parameters, is far shorter.
constexpr size_t kMaxStateDictPickleBytes = size_t{64} << 20;

// A storage the pickle refers to (a persistent id), once per key, in order of first use.
struct StorageReference {
  std::string key;
  c10::ScalarType dtype = c10::kFloat;
  int64_t numel = 0;
};

struct NormalisedStateDictPickle {
  std::string bytes;  // the pickle libtorch's unpickler is given
  // The result is the tuple (state dict, attributes) because the top-level object had a
  // BUILD (an OrderedDict's `_metadata`); otherwise the state dict itself.
  bool top_level_is_built_tuple = false;
  size_t consumed = 0;  // bytes of the input up to and including STOP
  std::vector<StorageReference> storages;
};

// Checks `pickle` (the data.pkl record) and rewrites it as described above. Throws FileError
// "<name_for_errors>: ..." naming the byte offset and what is wrong for anything outside the
// accepted subset: other protocols or opcodes, unknown globals (only OrderedDict,
// torch._utils._rebuild_tensor_v2 and torch.<Type>Storage are known), malformed or truncated
// arguments, stack or mark misuse, storage references other than
// ("storage", <Type>Storage, key, "cpu" | "cuda[:N]", numel), tensor views outside their
// storage, nesting deeper than a state dict needs, or a top-level object that is not a dict.
// PickleTruncated is thrown when `pickle` ends before STOP.
NormalisedStateDictPickle normalise_state_dict_pickle(const std::string& pickle, const PickleSource& source);
NormalisedStateDictPickle normalise_state_dict_pickle(const std::string& pickle,
                                                      const std::string& name_for_errors);

}  // namespace guidiff
