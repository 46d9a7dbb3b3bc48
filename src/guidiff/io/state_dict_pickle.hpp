// The pickle inside a `.pt` file written by torch.save(model.state_dict()) (protocol 2), made
// safe and digestible for libtorch's own unpickler (torch::jit::Unpickler).
//
// Why a pass of our own before libtorch's: a `.pt` file is untrusted input, and libtorch 1.13's
// unpickler trusts its input (a corrupt file can make it allocate without bound, hang, or read
// past its stack); and it turns collections.OrderedDict(), which every state_dict() is, into
// None, so a state dict cannot be loaded by it at all. This pass simulates the pickle machine
// over typed placeholders, accepts only what torch.save writes for a dict of tensors, and
// rewrites three constructs into ones libtorch handles with the same meaning:
//   OrderedDict() (GLOBAL collections.OrderedDict, (), REDUCE) -> EMPTY_DICT;
//   BUILD (setting the state dict's `_metadata` attribute)       -> TUPLE2 (object, state),
//                                                                   allowed only at the top;
//   LONG1 of fewer than 8 bytes                                  -> LONG1 of 8 bytes.
// Everything else passes byte for byte.
#pragma once
#include <string>

namespace guidiff {

struct NormalisedStateDictPickle {
  std::string bytes;  // the pickle libtorch's unpickler is given
  // The result is the tuple (state dict, attributes) because the top-level object had a
  // BUILD (an OrderedDict's `_metadata`); otherwise the state dict itself.
  bool top_level_is_built_tuple = false;
};

// Checks `pickle` (the data.pkl record) and rewrites it as described above. Throws FileError
// "<name_for_errors>: ..." naming the byte offset and what is wrong for anything outside the
// accepted subset: other protocols or opcodes, unknown globals (only OrderedDict,
// torch._utils._rebuild_tensor_v2 and torch.<Type>Storage are known), malformed or truncated
// arguments, stack or mark misuse, storage references other than
// ("storage", <Type>Storage, key, "cpu" | "cuda[:N]", numel), tensor views outside their
// storage, nesting deeper than a state dict needs, or a top-level object that is not a dict.
NormalisedStateDictPickle normalise_state_dict_pickle(const std::string& pickle,
                                                      const std::string& name_for_errors);

}  // namespace guidiff
