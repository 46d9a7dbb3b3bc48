// Numbers and shapes as error messages print them (see text.hpp).
#include "guidiff/core/text.hpp"

#include <sstream>

namespace guidiff {

std::string printable_excerpt(const std::string& text, size_t max_bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < text.size() && i < max_bytes; ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte >= 0x20 && byte < 0x7f) {
      out += static_cast<char>(byte);
    } else {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 15];
    }
  }
  if (text.size() > max_bytes) out += "...";
  return out;
}

std::string json_error_text(const std::exception& error) {
  std::string text = error.what();
  static const std::string kTag = "[json.exception.";
  if (text.compare(0, kTag.size(), kTag) == 0) {
    const auto end = text.find("] ");
    if (end != std::string::npos) text.erase(0, end + 2);
  }
  return printable_excerpt(text, 160);
}

std::string number_string(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

std::string shape_string(torch::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

std::string shape_string(const torch::Tensor& tensor) {
  return tensor.defined() ? shape_string(tensor.sizes()) : std::string("none");
}

}  // namespace guidiff
