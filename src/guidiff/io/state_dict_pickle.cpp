// Checking and normalising a state dict's pickle (see state_dict_pickle.hpp). The opcode
// meanings are those of Python's pickle module (Lib/pickletools.py documents each one);
// torch.save adds persistent ids ("storage", <Type>Storage, key, location, numel) and
// torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]).
#include "guidiff/io/state_dict_pickle.hpp"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"

namespace guidiff {
namespace {

// Opcodes torch.save's protocol-2 pickles of a state dict use; everything else is refused.
enum Opcode : uint8_t {
  kProto = 0x80,
  kStop = '.',
  kMark = '(',
  kTuple = 't',
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kEmptyTuple = ')',
  kEmptyDict = '}',
  kEmptyList = ']',
  kAppend = 'a',
  kAppends = 'e',
  kSetItem = 's',
  kSetItems = 'u',
  kBinUnicode = 'X',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kLong1 = 0x8a,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kNone = 'N',
  kBinFloat = 'G',
  kGlobal = 'c',
  kReduce = 'R',
  kBuild = 'b',
  kBinPersId = 'Q',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kBinGet = 'h',
  kLongBinGet = 'j',
};

// A state dict nests at most: dict -> tensor args tuple -> storage tuple; its _metadata is a
// dict of dicts. Deep nesting only serves to exhaust the C stack when values are destroyed.
constexpr int kMaxDepth = 16;
constexpr int kMaxDims = 16;
constexpr uint32_t kMaxStringBytes = 1u << 20;
constexpr size_t kMaxGlobalNameBytes = 256;

enum class Kind {
  integer,
  boolean,
  none,
  floating,
  string,
  tuple,
  dict,
  list,
  tensor,
  storage,
  storage_type,          // GLOBAL torch.<Type>Storage
  rebuild_tensor,        // GLOBAL torch._utils._rebuild_tensor_v2
  ordered_dict_class,    // GLOBAL collections.OrderedDict (not passed on)
  ordered_dict_no_args,  // the () following it (not passed on)
  built,                 // (object, state) of a BUILD, passed on as a 2-tuple
};

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::integer: return "an integer";
    case Kind::boolean: return "a bool";
    case Kind::none: return "None";
    case Kind::floating: return "a float";
    case Kind::string: return "a string";
    case Kind::tuple: return "a tuple";
    case Kind::dict: return "a dict";
    case Kind::list: return "a list";
    case Kind::tensor: return "a tensor";
    case Kind::storage: return "a storage";
    case Kind::storage_type: return "a storage type";
    case Kind::rebuild_tensor: return "_rebuild_tensor_v2";
    case Kind::ordered_dict_class: return "collections.OrderedDict";
    case Kind::ordered_dict_no_args: return "OrderedDict's empty arguments";
    case Kind::built: return "a BUILD result";
  }
  return "a value";
}

struct Value;
using ValuePtr = std::shared_ptr<Value>;

// A placeholder for what the pickle machine would hold: its kind, the few contents the checks
// need, and whether libtorch's unpickler holds it too (`passed_on`).
struct Value {
  Kind kind = Kind::none;
  bool passed_on = true;
  int64_t integer = 0;                      // integer, boolean
  std::string text;                         // string; storage key
  c10::ScalarType dtype = c10::kFloat;      // storage_type, storage
  int64_t numel = 0;                        // storage
  std::vector<ValuePtr> items;              // tuple, built
  int depth = 1;                            // nesting of containers
  size_t out_start = 0;                     // where its opcodes begin in the output

  static ValuePtr of(Kind kind, bool passed_on = true) {
    auto value = std::make_shared<Value>();
    value->kind = kind;
    value->passed_on = passed_on;
    return value;
  }
};

// torch.<Name>Storage classes and their element types.
struct StorageTypeName {
  const char* name;
  c10::ScalarType type;
};
constexpr StorageTypeName kStorageTypes[] = {
    {"FloatStorage", c10::kFloat},   {"HalfStorage", c10::kHalf}, {"BFloat16Storage", c10::kBFloat16},
    {"DoubleStorage", c10::kDouble}, {"LongStorage", c10::kLong}, {"IntStorage", c10::kInt},
    {"ShortStorage", c10::kShort},   {"CharStorage", c10::kChar}, {"ByteStorage", c10::kByte},
    {"BoolStorage", c10::kBool},
};

class PickleMachine {
  struct Mark {
    size_t stack_size;  // where the MARK sits on the stack
    size_t out_offset;  // and in the output
  };

 public:
  PickleMachine(const std::string& pickle, PickleSource source) : data_(pickle), source_(std::move(source)) {}

  NormalisedStateDictPickle run() {
    if (data_.size() > kMaxStateDictPickleBytes && !source_.more_follows) {
      fail_at(0, source_.label + " has " + std::to_string(data_.size()) +
                     " bytes, far more than a state dict's pickle needs");
    }
    result_.bytes.reserve(std::min(data_.size(), size_t{1} << 20) + 64);
    while (true) {
      if (pos_ >= data_.size()) truncated(source_.label + " is truncated (no STOP opcode)");
      if (pos_ > kMaxStateDictPickleBytes) {
        fail_at(pos_, source_.label + " runs past " + std::to_string(kMaxStateDictPickleBytes) +
                          " bytes without a STOP, far more than a state dict's pickle needs");
      }
      op_start_ = pos_;
      out_before_ = result_.bytes.size();
      const uint8_t op = read_u8();
      if (op_start_ == 0 && op != kProto) {
        fail("data.pkl does not start with PROTO 2 (not a pickle, or an old protocol)");
      }
      if (step(op)) break;
    }
    if (pos_ != data_.size() && !source_.more_follows) {
      fail(source_.label + " has " + std::to_string(data_.size() - pos_) + " bytes after STOP");
    }
    result_.consumed = pos_;
    return result_;
  }

 private:
  // `what` can quote the pickle's strings (a storage key, a location): printable and short.
  std::string where(size_t offset) const {
    return source_.name_for_errors + ": " + source_.label + " byte " + std::to_string(source_.first_byte + offset) + ": ";
  }
  [[noreturn]] void fail_at(size_t offset, const std::string& what) const {
    throw FileError(where(offset) + printable_excerpt(what, 240));
  }
  [[noreturn]] void fail(const std::string& what) const { fail_at(op_start_, what); }
  [[noreturn]] void truncated(const std::string& what) const {
    throw PickleTruncated(where(op_start_) + what);
  }

  // ---- reading arguments ----
  void need(size_t bytes) {
    if (data_.size() - pos_ < bytes) truncated("truncated opcode argument");
  }
  uint8_t read_u8() {
    need(1);
    return static_cast<uint8_t>(data_[pos_++]);
  }
  uint64_t read_little_endian(size_t bytes) {
    need(bytes);
    uint64_t value = 0;
    for (size_t i = 0; i < bytes; ++i) value |= uint64_t{static_cast<uint8_t>(data_[pos_ + i])} << (8 * i);
    pos_ += bytes;
    return value;
  }
  std::string read_line() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string::npos && data_.size() - pos_ <= kMaxGlobalNameBytes) truncated("truncated GLOBAL name");
    if (end == std::string::npos || end - pos_ > kMaxGlobalNameBytes) fail("malformed GLOBAL name");
    std::string line = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    for (const char c : line) {
      if (c < 0x21 || c > 0x7e) fail("malformed GLOBAL name");
    }
    return line;
  }

  // ---- the stack ----
  void need_stack(size_t count) {
    if (stack_.size() < count) fail("the pickle stack holds fewer values than the opcode takes");
  }
  ValuePtr pop() {
    need_stack(1);
    ValuePtr value = std::move(stack_.back());
    stack_.pop_back();
    return value;
  }
  Mark pop_mark() {
    if (marks_.empty()) fail("an opcode that needs a MARK found none");
    const Mark mark = marks_.back();
    marks_.pop_back();
    if (mark.stack_size > stack_.size()) fail("a MARK lies above the stack");
    return mark;
  }
  // Pushes a value whose opcodes start at `out_start` in the output (by default: this opcode).
  void push(ValuePtr value, std::optional<size_t> out_start = std::nullopt) {
    value->out_start = out_start.value_or(out_before_);
    stack_.push_back(std::move(value));
  }
  // A value that may go into a container or a call: passed on to libtorch as it is.
  void require_plain(const ValuePtr& value, const char* where) const {
    const bool plain = value->passed_on && value->kind != Kind::built && value->kind != Kind::rebuild_tensor;
    if (!plain) fail(std::string(kind_name(value->kind)) + " cannot be used as " + where);
  }
  void require_depth(int depth) const {
    if (depth > kMaxDepth) fail("values nest deeper than a state dict's (" + std::to_string(kMaxDepth) + " levels)");
  }

  void push_tuple(std::vector<ValuePtr> items, size_t out_start) {
    auto tuple = Value::of(Kind::tuple);
    for (const auto& item : items) {
      require_plain(item, "a tuple element");
      tuple->depth = std::max(tuple->depth, item->depth + 1);
    }
    require_depth(tuple->depth);
    tuple->items = std::move(items);
    push(std::move(tuple), out_start);
  }

  void set_item(Value& dict, const ValuePtr& key, const ValuePtr& value) {
    if (key->kind != Kind::string && key->kind != Kind::integer) {
      fail(std::string("dict key is ") + kind_name(key->kind) + ", not a string");
    }
    require_plain(key, "a dict key");
    if (value->kind == Kind::built) {
      // An OrderedDict with its _metadata: a whole state dict inside another dict.
      fail(
          "a state dict nested in a dict (a training checkpoint such as {'state_dict': ...}?); "
          "save the state dict itself, torch.save(model.state_dict(), path)");
    }
    require_plain(value, "a dict value");
    dict.depth = std::max(dict.depth, value->depth + 1);
    require_depth(dict.depth);
  }

  Value& dict_at(size_t index) {
    Value& dict = *stack_[index];
    if (dict.kind != Kind::dict || !dict.passed_on) fail(std::string("SETITEM(S) into ") + kind_name(dict.kind));
    return dict;
  }

  Value& list_at(size_t index) {
    Value& list = *stack_[index];
    if (list.kind != Kind::list) fail(std::string("APPEND(S) into ") + kind_name(list.kind));
    return list;
  }

  void append(Value& list, const ValuePtr& item) {
    require_plain(item, "a list item");
    list.depth = std::max(list.depth, item->depth + 1);
    require_depth(list.depth);
  }

  // Plain values (a legacy file's settings and storage keys) never hold code or storages.
  void require_state_dict_content(const char* what) const {
    if (source_.content != PickleContent::state_dict) fail(std::string(what) + " where only plain values belong");
  }

  // ---- torch.save's constructs ----
  ValuePtr global(const std::string& module, const std::string& name) {
    require_state_dict_content(("global '" + module + "." + name + "'").c_str());
    if (module == "collections" && name == "OrderedDict") return Value::of(Kind::ordered_dict_class, false);
    if (module == "torch._utils" && name == "_rebuild_tensor_v2") return Value::of(Kind::rebuild_tensor);
    if (module == "torch") {
      for (const auto& entry : kStorageTypes) {
        if (name == entry.name) {
          auto value = Value::of(Kind::storage_type);
          value->dtype = entry.type;
          return value;
        }
      }
    }
    fail("global '" + module + "." + name +
         "' is not part of a state dict of tensors (known: collections.OrderedDict, "
         "torch._utils._rebuild_tensor_v2, torch.<Type>Storage)");
  }

  static bool is_location(const std::string& text) {
    if (text == "cpu" || text == "cuda") return true;
    if (text.rfind("cuda:", 0) != 0 || text.size() == 5 || text.size() > 9) return false;
    for (size_t i = 5; i < text.size(); ++i) {
      if (text[i] < '0' || text[i] > '9') return false;
    }
    return true;
  }

  static bool is_storage_key(const std::string& text) {
    if (text.empty() || text.size() > 64) return false;
    for (const char c : text) {
      const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
      if (!ok) return false;
    }
    return true;
  }

  // BINPERSID of ("storage", <Type>Storage, key, location, numel); the legacy format adds a
  // sixth item, view metadata, which is None unless the storage is a slice of another (a
  // construct of torch < 0.4 that state dicts do not use, refused).
  ValuePtr storage(const ValuePtr& id) {
    const auto& items = id->items;
    if (id->kind == Kind::tuple && items.size() == 6 && items[5]->kind != Kind::none) {
      fail("a persistent id names a view of another storage (torch < 0.4), which guidiff does not read");
    }
    const bool shaped = id->kind == Kind::tuple && (items.size() == 5 || items.size() == 6) && items[0]->kind == Kind::string &&
                        items[0]->text == "storage" && items[1]->kind == Kind::storage_type &&
                        items[2]->kind == Kind::string && items[3]->kind == Kind::string &&
                        items[4]->kind == Kind::integer;
    if (!shaped) fail("a persistent id is not (\"storage\", <Type>Storage, key, location, numel)");
    if (!is_storage_key(items[2]->text)) fail("storage key '" + items[2]->text + "' is not a record name");
    if (!is_location(items[3]->text)) {
      fail("storage location '" + items[3]->text + "' is not cpu, cuda or cuda:<index>");
    }
    const int64_t numel = items[4]->integer;
    const int64_t element = static_cast<int64_t>(c10::elementSize(items[1]->dtype));
    if (numel < 0 || numel > (int64_t{1} << 50) / element) {
      fail("storage '" + items[2]->text + "' claims " + std::to_string(numel) + " elements");
    }
    auto value = Value::of(Kind::storage);
    value->dtype = items[1]->dtype;
    value->numel = numel;
    value->text = items[2]->text;
    remember_storage(*value);
    return value;
  }

  // Every reference to one key must describe the same storage (libtorch would keep the first).
  void remember_storage(const Value& storage) {
    const auto [known, added] = storage_index_.emplace(storage.text, result_.storages.size());
    if (added) {
      result_.storages.push_back({storage.text, storage.dtype, storage.numel});
      return;
    }
    const StorageReference& first = result_.storages[known->second];
    if (first.dtype != storage.dtype || first.numel != storage.numel) {
      fail("storage '" + storage.text + "' is described twice, with different types or sizes");
    }
  }

  std::vector<int64_t> int_tuple(const ValuePtr& value, const char* what) const {
    if (value->kind != Kind::tuple || value->items.size() > static_cast<size_t>(kMaxDims)) {
      fail(std::string("tensor ") + what + " is not a tuple of at most " + std::to_string(kMaxDims) + " integers");
    }
    std::vector<int64_t> result;
    for (const auto& item : value->items) {
      if (item->kind != Kind::integer || item->integer < 0) {
        fail(std::string("tensor ") + what + " holds something other than a non-negative integer");
      }
      result.push_back(item->integer);
    }
    return result;
  }

  // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]), checked
  // so that the view lies inside its storage (libtorch does not check).
  ValuePtr tensor(const ValuePtr& args) {
    const auto& items = args->items;
    if (args->kind != Kind::tuple || (items.size() != 6 && items.size() != 7)) {
      fail("_rebuild_tensor_v2 is not given (storage, offset, size, stride, requires_grad, hooks)");
    }
    if (items[0]->kind != Kind::storage) fail("_rebuild_tensor_v2's first argument is not a storage");
    if (items[1]->kind != Kind::integer || items[1]->integer < 0) fail("tensor storage offset is not an integer >= 0");
    const auto sizes = int_tuple(items[2], "size");
    const auto strides = int_tuple(items[3], "stride");
    if (sizes.size() != strides.size()) fail("tensor size and stride have different lengths");
    if (items[4]->kind != Kind::boolean) fail("tensor requires_grad is not a bool");
    for (size_t i = 5; i < items.size(); ++i) {
      if (items[i]->kind != Kind::dict && items[i]->kind != Kind::none) fail("tensor hooks/metadata are not a dict");
    }
    const int64_t offset = items[1]->integer;
    const int64_t storage_numel = items[0]->numel;
    constexpr int64_t kLimit = int64_t{1} << 60;
    int64_t numel = 1;
    int64_t last = offset;  // the largest element index the view touches
    for (size_t d = 0; d < sizes.size(); ++d) {
      if (sizes[d] == 0) numel = 0;
      if (numel != 0 && sizes[d] > kLimit / numel) fail("tensor size overflows");
      numel *= sizes[d];
      if (sizes[d] > 0 && strides[d] > 0) {
        if (sizes[d] - 1 > (kLimit - last) / strides[d]) fail("tensor view overflows");
        last += (sizes[d] - 1) * strides[d];
      }
    }
    if (offset > storage_numel || (numel > 0 && last >= storage_numel)) {
      fail("tensor view (offset " + std::to_string(offset) + ", last element " + std::to_string(last) +
           ") lies outside its storage '" + items[0]->text + "' of " + std::to_string(storage_numel) + " elements");
    }
    return Value::of(Kind::tensor);
  }

  void emit_verbatim() { result_.bytes.append(data_, op_start_, pos_ - op_start_); }
  void emit_byte(uint8_t byte) { result_.bytes.push_back(static_cast<char>(byte)); }

  // libtorch 1.13 reads only the batch forms (SETITEMS, APPENDS) of SETITEM and APPEND: a MARK
  // goes in before the first value's opcodes, and the batch opcode after the last's.
  void emit_as_batch(const Value& first, uint8_t batch_opcode) {
    result_.bytes.insert(result_.bytes.begin() + static_cast<std::ptrdiff_t>(first.out_start), static_cast<char>(kMark));
    emit_byte(batch_opcode);
  }

  // The `count` values an opcode takes, none of them above an open MARK.
  void need_unmarked_stack(size_t count, const char* opcode) {
    need_stack(count);
    if (!marks_.empty() && marks_.back().stack_size > stack_.size() - count) {
      fail(std::string(opcode) + " inside an open MARK");
    }
  }

  void memo_put(size_t id) {
    need_stack(1);
    if (id > memo_.size()) fail("memo index " + std::to_string(id) + " skips ahead (pickle writes them in order)");
    if (id == memo_.size()) {
      memo_.push_back(stack_.back());
    } else {
      memo_[id] = stack_.back();
    }
    if (stack_.back()->passed_on) emit_verbatim();
  }

  void memo_get(size_t id) {
    if (id >= memo_.size()) fail("memo index " + std::to_string(id) + " was never stored");
    const ValuePtr& value = memo_[id];
    // Dicts and lists are mutable: one referenced twice could grow behind the depth checks.
    if (value->kind == Kind::dict || value->kind == Kind::list) {
      fail(std::string(kind_name(value->kind)) + " is referenced twice (not written by torch.save)");
    }
    auto copy = std::make_shared<Value>(*value);  // the same value, found at this opcode
    push(std::move(copy));
    if (value->passed_on) emit_verbatim();
  }

  void reduce() {
    require_state_dict_content("a call (REDUCE)");
    need_stack(2);
    const ValuePtr args = pop();
    const ValuePtr callable = pop();
    if (callable->kind == Kind::ordered_dict_class && args->kind == Kind::ordered_dict_no_args) {
      push(Value::of(Kind::dict));
      emit_byte(kEmptyDict);
      return;
    }
    if (callable->kind == Kind::rebuild_tensor && callable->passed_on && args->passed_on) {
      push(tensor(args), callable->out_start);
      emit_verbatim();
      return;
    }
    fail(std::string("REDUCE calls ") + kind_name(callable->kind) + " with " + kind_name(args->kind) +
         " (only OrderedDict() and _rebuild_tensor_v2(...) are supported)");
  }

  void build() {
    require_state_dict_content("an attribute assignment (BUILD)");
    need_stack(2);
    const ValuePtr state = pop();
    const ValuePtr object = pop();
    if (object->kind != Kind::dict) fail(std::string("BUILD on ") + kind_name(object->kind) + " (only a dict's attributes)");
    require_plain(object, "a BUILD object");
    require_plain(state, "a BUILD state");
    auto built = Value::of(Kind::built);
    built->depth = std::max(object->depth, state->depth) + 1;
    require_depth(built->depth);
    built->items = {object, state};
    push(std::move(built), object->out_start);
    emit_byte(kTuple2);
  }

  void stop() {
    if (!marks_.empty()) fail("STOP with an open MARK");
    if (stack_.size() != 1) fail("STOP with " + std::to_string(stack_.size()) + " values on the stack, not 1");
    const ValuePtr& top = stack_.back();
    if (source_.content == PickleContent::plain_values) {
      require_plain(top, "the pickled object");
    } else if (top->kind == Kind::built) {
      result_.top_level_is_built_tuple = true;
    } else if (top->kind != Kind::dict) {
      fail(std::string("the pickled object is ") + kind_name(top->kind) + ", not a dict of tensors");
    }
    emit_verbatim();
  }

  // One opcode; returns true at STOP.
  bool step(uint8_t op) {
    switch (op) {
      case kProto: {
        const uint8_t protocol = read_u8();
        if (op_start_ != 0) fail("PROTO in the middle of the pickle");
        if (protocol != 2) {
          fail("pickle protocol " + std::to_string(protocol) + "; torch.save writes protocol 2 (re-save without pickle_protocol)");
        }
        emit_verbatim();
        return false;
      }
      case kStop:
        stop();
        return true;
      case kMark:
        if (marks_.size() >= static_cast<size_t>(kMaxDepth) * 4) fail("too many open MARKs");
        marks_.push_back({stack_.size(), out_before_});
        emit_verbatim();
        return false;
      case kTuple: {
        const Mark mark = pop_mark();
        std::vector<ValuePtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark.stack_size), stack_.end());
        stack_.resize(mark.stack_size);
        push_tuple(std::move(items), mark.out_offset);
        emit_verbatim();
        return false;
      }
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        const size_t count = op - kTuple1 + 1;
        need_stack(count);
        std::vector<ValuePtr> items(stack_.end() - static_cast<std::ptrdiff_t>(count), stack_.end());
        stack_.resize(stack_.size() - count);
        const size_t out_start = items.front()->out_start;
        push_tuple(std::move(items), out_start);
        emit_verbatim();
        return false;
      }
      case kEmptyTuple:
        if (!stack_.empty() && stack_.back()->kind == Kind::ordered_dict_class) {
          push(Value::of(Kind::ordered_dict_no_args, false));
        } else {
          push(Value::of(Kind::tuple));
          emit_verbatim();
        }
        return false;
      case kEmptyDict:
        push(Value::of(Kind::dict));
        emit_verbatim();
        return false;
      case kEmptyList:
        if (source_.content == PickleContent::state_dict) fail("opcode 0x5d (a list) is not one torch.save writes for a state dict");
        push(Value::of(Kind::list));
        emit_verbatim();
        return false;
      case kAppend: {
        need_unmarked_stack(2, "APPEND");
        const ValuePtr item = pop();
        append(list_at(stack_.size() - 1), item);
        emit_as_batch(*item, kAppends);
        return false;
      }
      case kAppends: {
        const size_t mark = pop_mark().stack_size;
        if (mark == 0) fail("APPENDS without a list below its MARK");
        Value& list = list_at(mark - 1);
        for (size_t i = mark; i < stack_.size(); ++i) append(list, stack_[i]);
        stack_.resize(mark);
        emit_verbatim();
        return false;
      }
      case kSetItem: {
        need_unmarked_stack(3, "SETITEM");
        const ValuePtr value = pop();
        const ValuePtr key = pop();
        set_item(dict_at(stack_.size() - 1), key, value);
        emit_as_batch(*key, kSetItems);
        return false;
      }
      case kSetItems: {
        const size_t mark = pop_mark().stack_size;
        if (mark == 0) fail("SETITEMS without a dict below its MARK");
        if ((stack_.size() - mark) % 2 != 0) fail("SETITEMS with an odd number of keys and values");
        Value& dict = dict_at(mark - 1);
        for (size_t i = mark; i < stack_.size(); i += 2) set_item(dict, stack_[i], stack_[i + 1]);
        stack_.resize(mark);
        emit_verbatim();
        return false;
      }
      case kBinUnicode: {
        const auto length = static_cast<uint32_t>(read_little_endian(4));
        if (length > kMaxStringBytes) fail("a string of " + std::to_string(length) + " bytes");
        need(length);
        auto value = Value::of(Kind::string);
        value->text = data_.substr(pos_, length);
        pos_ += length;
        push(std::move(value));
        emit_verbatim();
        return false;
      }
      case kBinInt:
      case kBinInt1:
      case kBinInt2: {
        auto value = Value::of(Kind::integer);
        if (op == kBinInt) {
          value->integer = static_cast<int32_t>(static_cast<uint32_t>(read_little_endian(4)));
        } else {
          value->integer = static_cast<int64_t>(read_little_endian(op == kBinInt1 ? 1 : 2));
        }
        push(std::move(value));
        emit_verbatim();
        return false;
      }
      case kLong1: {
        const uint8_t bytes = read_u8();
        if (bytes > 8) fail("an integer wider than 64 bits");
        uint64_t bits = read_little_endian(bytes);
        if (bytes > 0 && bytes < 8 && (bits >> (8 * bytes - 1)) & 1) bits |= ~uint64_t{0} << (8 * bytes);  // sign
        auto value = Value::of(Kind::integer);
        value->integer = static_cast<int64_t>(bits);
        push(std::move(value));
        // libtorch reads only 8-byte LONG1s.
        emit_byte(kLong1);
        emit_byte(8);
        for (int i = 0; i < 8; ++i) emit_byte(static_cast<uint8_t>(bits >> (8 * i)));
        return false;
      }
      case kNewTrue:
      case kNewFalse: {
        auto value = Value::of(Kind::boolean);
        value->integer = op == kNewTrue ? 1 : 0;
        push(std::move(value));
        emit_verbatim();
        return false;
      }
      case kNone:
        push(Value::of(Kind::none));
        emit_verbatim();
        return false;
      case kBinFloat:
        need(8);
        pos_ += 8;
        push(Value::of(Kind::floating));
        emit_verbatim();
        return false;
      case kGlobal: {
        const std::string module = read_line();
        const std::string name = read_line();
        ValuePtr value = global(module, name);
        const bool passed_on = value->passed_on;
        push(std::move(value));
        if (passed_on) emit_verbatim();
        return false;
      }
      case kReduce:
        reduce();
        return false;
      case kBuild:
        build();
        return false;
      case kBinPersId: {
        require_state_dict_content("a persistent id (BINPERSID)");
        const ValuePtr id = pop();
        require_plain(id, "a persistent id");
        push(storage(id), id->out_start);
        emit_verbatim();
        return false;
      }
      case kBinPut:
        memo_put(read_u8());
        return false;
      case kLongBinPut:
        memo_put(static_cast<size_t>(read_little_endian(4)));
        return false;
      case kBinGet:
        memo_get(read_u8());
        return false;
      case kLongBinGet:
        memo_get(static_cast<size_t>(read_little_endian(4)));
        return false;
      default: {
        char text[64];
        std::snprintf(text, sizeof text, "opcode 0x%02x", op);
        fail(std::string(text) + " is not one torch.save writes for a state dict");
      }
    }
  }

  const std::string& data_;
  PickleSource source_;
  size_t pos_ = 0;
  size_t op_start_ = 0;
  size_t out_before_ = 0;  // output size when this opcode began
  std::vector<ValuePtr> stack_;
  std::vector<Mark> marks_;
  std::vector<ValuePtr> memo_;
  std::unordered_map<std::string, size_t> storage_index_;  // key -> its entry in result_.storages
  NormalisedStateDictPickle result_;
};

}  // namespace

NormalisedStateDictPickle normalise_state_dict_pickle(const std::string& pickle, const PickleSource& source) {
  return PickleMachine(pickle, source).run();
}

NormalisedStateDictPickle normalise_state_dict_pickle(const std::string& pickle,
                                                      const std::string& name_for_errors) {
  PickleSource source;
  source.name_for_errors = name_for_errors;
  return normalise_state_dict_pickle(pickle, source);
}

}  // namespace guidiff
