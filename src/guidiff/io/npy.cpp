#include "guidiff/io/npy.hpp"

#include <cctype>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/atomic_file.hpp"

namespace guidiff {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

struct DtypeCode {
  torch::ScalarType type;
  const char* descr;       // the descr we write
  size_t item_size;
};

const DtypeCode kNpyDtypes[] = {
    {torch::kFloat32, "<f4", 4}, {torch::kFloat64, "<f8", 8}, {torch::kInt64, "<i8", 8},
    {torch::kInt32, "<i4", 4},   {torch::kUInt8, "|u1", 1},
};

std::optional<DtypeCode> dtype_from_descr(const std::string& descr) {
  // '=' means native order, which is little-endian on every platform guidiff targets;
  // single-byte types may carry any order mark.
  for (const DtypeCode& code : kNpyDtypes) {
    const std::string base = std::string(code.descr).substr(1);
    if (descr.size() != 3 || descr.substr(1) != base) continue;
    const char order = descr[0];
    if (order == '<' || order == '=' || (code.item_size == 1 && (order == '|' || order == '>'))) {
      return code;
    }
  }
  return std::nullopt;
}

std::optional<DtypeCode> dtype_from_tensor(torch::ScalarType type) {
  for (const DtypeCode& code : kNpyDtypes) {
    if (code.type == type) return code;
  }
  return std::nullopt;
}

// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False,
// 'shape': (3, 2), }. This parser accepts exactly the literals numpy writes there.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& source) : text_(text), source_(source) {}

  void parse(std::string& descr, bool& fortran_order, std::vector<int64_t>& shape) {
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = parse_string();
      expect(':');
      if (key == "descr") {
        skip_space();
        if (peek() != '\'' && peek() != '"') fail("structured dtypes are not supported");
        descr = parse_string();
        seen_descr = true;
      } else if (key == "fortran_order") {
        fortran_order = parse_bool();
        seen_order = true;
      } else if (key == "shape") {
        shape = parse_shape();
        seen_shape = true;
      } else {
        fail("unexpected key '" + printable_excerpt(key, 40) + "' in header");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      if (peek() != '}') fail("malformed header");
    }
    if (!seen_descr || !seen_order || !seen_shape) fail("header lacks descr, fortran_order or shape");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw FileError(source_ + " is not a valid .npy file: " + why);
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) fail(std::string("expected '") + c + "' in header");
    ++pos_;
  }
  std::string parse_string() {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string in header");
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string::npos) fail("unterminated string in header");
    std::string value = text_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return value;
  }
  bool parse_bool() {
    skip_space();
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("fortran_order must be True or False");
  }
  std::vector<int64_t> parse_shape() {
    std::vector<int64_t> shape;
    expect('(');
    while (true) {
      skip_space();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("shape must be a tuple of integers");
      int64_t value = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (value > (int64_t{1} << 50)) fail("shape too large");
        value = value * 10 + (text_[pos_++] - '0');
      }
      if (peek() == 'L') ++pos_;  // Python 2 long literals
      shape.push_back(value);
      skip_space();
      if (peek() == ',') ++pos_;
      else if (peek() != ')') fail("shape must be a tuple of integers");
    }
    ++pos_;
    return shape;
  }

  const std::string& text_;
  const std::string& source_;  // how error messages name the bytes, e.g. a quoted path
  size_t pos_ = 0;
};

uint32_t read_little_endian(const unsigned char* bytes, int count) {
  uint32_t value = 0;
  for (int i = count - 1; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

std::string shape_literal(torch::IntArrayRef sizes) {
  std::string out = "(";
  for (size_t i = 0; i < sizes.size(); ++i) {
    out += std::to_string(sizes[i]);
    if (sizes.size() == 1 || i + 1 < sizes.size()) out += sizes.size() == 1 ? "," : ", ";
  }
  return out + ")";
}

}  // namespace

torch::Tensor decode_npy(std::string_view bytes, const std::string& source) {
  const auto* raw = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < kMagicSize + 4 || std::memcmp(bytes.data(), kMagic, kMagicSize) != 0) {
    throw FileError(source + " is not a .npy file (bad magic)");
  }
  const int major = raw[6];
  if (major < 1 || major > 3) {
    throw FileError(source + ": unsupported .npy format version " + std::to_string(major));
  }
  const int length_bytes = major == 1 ? 2 : 4;
  const size_t preamble = kMagicSize + 2 + length_bytes;
  if (bytes.size() < preamble) throw FileError(source + " is truncated (in the header)");
  const size_t header_length = read_little_endian(raw + kMagicSize + 2, length_bytes);
  if (bytes.size() < preamble + header_length) {
    throw FileError(source + " is truncated (in the header)");
  }
  const std::string header(bytes.substr(preamble, header_length));

  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  HeaderParser(header, source).parse(descr, fortran_order, shape);
  const std::optional<DtypeCode> code = dtype_from_descr(descr);
  if (!code) {
    throw FileError(source + ": unsupported dtype '" + printable_excerpt(descr, 40) +
                    "' (supported: little-endian float32, float64, int64, int32, uint8)");
  }
  if (fortran_order) {
    throw FileError(source + ": Fortran-ordered arrays are not supported (save with C order)");
  }

  int64_t count = 1;
  for (int64_t dim : shape) {
    if (dim != 0 && count > static_cast<int64_t>(bytes.size()) / dim) {
      throw FileError(source + " is truncated: its header's shape needs more data than the file holds");
    }
    count *= dim;
  }
  const size_t data_bytes = static_cast<size_t>(count) * code->item_size;
  const size_t available = bytes.size() - preamble - header_length;
  if (available < data_bytes) {
    throw FileError(source + " is truncated: its header promises " + std::to_string(data_bytes) +
                    " bytes of data, the file holds " + std::to_string(available));
  }
  torch::Tensor tensor = torch::empty(shape, torch::TensorOptions().dtype(code->type));
  if (data_bytes > 0) std::memcpy(tensor.data_ptr(), bytes.data() + preamble + header_length, data_bytes);
  return tensor;
}

torch::Tensor read_npy(const std::string& path) {
  return decode_npy(read_file_bytes(path), "'" + path + "'");
}

namespace {

// A tensor's .npy file as its header (magic, version, dict, padding) and its data.
struct NpyParts {
  std::string header;
  torch::Tensor data;  // contiguous, on the CPU
  size_t data_bytes = 0;
};

NpyParts npy_parts(const torch::Tensor& tensor, const std::string& name_for_errors) {
  if (!tensor.defined()) throw InputError("cannot write an undefined tensor to '" + name_for_errors + "'");
  const std::optional<DtypeCode> code = dtype_from_tensor(tensor.scalar_type());
  if (!code) {
    throw InputError("cannot write dtype " + std::string(c10::toString(tensor.scalar_type())) + " to '" +
                     name_for_errors + "' (supported: float32, float64, int64, int32, uint8)");
  }
  NpyParts parts;
  parts.data = tensor.detach().to(torch::kCPU).contiguous();
  parts.data_bytes = static_cast<size_t>(parts.data.numel()) * code->item_size;

  std::string dict = std::string("{'descr': '") + code->descr +
                     "', 'fortran_order': False, 'shape': " + shape_literal(parts.data.sizes()) +
                     ", }";
  // Pad with spaces and a final newline so the data starts on a 64-byte boundary
  // (numpy.lib.format.ARRAY_ALIGN).
  const auto padded_length = [&](size_t preamble) {
    const size_t unpadded = preamble + dict.size() + 1;
    return dict.size() + 1 + (64 - unpadded % 64) % 64;
  };
  int major = 1;
  size_t header_length = padded_length(kMagicSize + 4);
  if (header_length > 0xFFFF) {
    major = 2;
    header_length = padded_length(kMagicSize + 6);
  }
  dict.append(header_length - dict.size() - 1, ' ');
  dict.push_back('\n');

  parts.header.assign(kMagic, kMagicSize);
  parts.header.push_back(static_cast<char>(major));
  parts.header.push_back('\0');
  const int length_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < length_bytes; ++i)
    parts.header.push_back(static_cast<char>((header_length >> (8 * i)) & 0xFF));
  parts.header += dict;
  return parts;
}

}  // namespace

std::string encode_npy(const torch::Tensor& tensor, const std::string& name_for_errors) {
  const NpyParts parts = npy_parts(tensor, name_for_errors);
  std::string out;
  out.reserve(parts.header.size() + parts.data_bytes);
  out += parts.header;
  if (parts.data_bytes > 0)
    out.append(static_cast<const char*>(parts.data.data_ptr()), parts.data_bytes);
  return out;
}

void write_npy(const std::string& path, const torch::Tensor& tensor) {
  // Streamed from the tensor's memory: a file of samples is not held twice.
  const NpyParts parts = npy_parts(tensor, path);
  write_files_atomically({StreamedFile{path, [&parts](const AppendBytes& append) {
                                         append(parts.header.data(), parts.header.size());
                                         if (parts.data_bytes > 0)
                                           append(parts.data.data_ptr(), parts.data_bytes);
                                       }}});
}

}  // namespace guidiff
