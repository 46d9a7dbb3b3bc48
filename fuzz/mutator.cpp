#include "mutator.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace guidiff::fuzz {
namespace {

// Integers at the edges of 8/16/32/64-bit ranges and of typical size checks.
constexpr uint64_t kInteresting[] = {0,          1,          2,          7,          8,          0x7f,
                                     0x80,       0xff,       0x100,      0x7fff,     0x8000,     0xffff,
                                     0x10000,    0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ull,
                                     1ull << 40, 1ull << 50, 0x7fffffffffffffffull, 0x8000000000000000ull,
                                     ~0ull,      ~0ull - 1};
// Textual replacements for JSON and Python-literal headers.
const char* const kTokens[] = {"0",    "-1",   "1e308", "-1e308", "1e-320", "nan",   "NaN",   "Infinity",
                               "null", "true", "false", "[]",    "{}",     "\"\"",  "[[]]", "99999999999999999999",
                               "4294967296", "-9223372036854775808", "18446744073709551615", "0.5", "\"\\u0000\"",
                               "\"\\ud800\"", ",", ":", "(", ")", "'", "\"", "{\"a\":", "[0,"};

bool is_number_char(char c) { return (c >= '0' && c <= '9') || c == '-' || c == '.' || c == 'e' || c == 'E' || c == '+'; }

}  // namespace

uint64_t Mutator::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

size_t Mutator::below(size_t bound) { return static_cast<size_t>(next() % bound); }

std::string Mutator::mutate(const std::string& input, const std::vector<std::string>& corpus) {
  std::string data = input;
  const size_t edits = 1 + below(4);
  for (size_t i = 0; i < edits; ++i) edit_once(data, corpus);
  return data;
}

void Mutator::edit_once(std::string& data, const std::vector<std::string>& corpus) {
  if (data.empty()) {
    data.push_back(static_cast<char>(next()));
    return;
  }
  const size_t at = below(data.size());
  switch (below(11)) {
    case 0:  // flip one bit
      data[at] = static_cast<char>(data[at] ^ (1 << below(8)));
      break;
    case 1:  // random byte
      data[at] = static_cast<char>(next());
      break;
    case 2: {  // a boundary integer, 1/2/4/8 bytes, either byte order
      const size_t width = size_t{1} << below(4);
      const uint64_t value = kInteresting[below(std::size(kInteresting))];
      const bool big_endian = below(2) == 0;
      for (size_t b = 0; b < width && at + b < data.size(); ++b) {
        const size_t shift = 8 * (big_endian ? width - 1 - b : b);
        data[at + b] = static_cast<char>(shift < 64 ? (value >> shift) & 0xff : 0);
      }
      break;
    }
    case 3:  // erase a range
      data.erase(at, 1 + below(std::min<size_t>(data.size() - at, 64)));
      break;
    case 4:  // truncate
      data.resize(at);
      break;
    case 5: {  // duplicate a range
      const size_t length = 1 + below(std::min<size_t>(data.size() - at, 256));
      data.insert(below(data.size() + 1), data.substr(at, length));
      break;
    }
    case 6: {  // insert random bytes
      std::string bytes(1 + below(16), '\0');
      for (char& c : bytes) c = static_cast<char>(next());
      data.insert(at, bytes);
      break;
    }
    case 7: {  // splice: this input's head, another's tail
      if (corpus.empty()) break;
      const std::string& other = corpus[below(corpus.size())];
      if (other.empty()) break;
      data = data.substr(0, at) + other.substr(below(other.size()));
      break;
    }
    case 8: {  // replace a number (or any byte) with a token
      size_t begin = at, end = at;
      while (begin > 0 && is_number_char(data[begin - 1])) --begin;
      while (end < data.size() && is_number_char(data[end])) ++end;
      if (end == begin) end = begin + 1;
      data.replace(begin, end - begin, kTokens[below(std::size(kTokens))]);
      break;
    }
    case 9:  // a byte set to an interesting value
      data[at] = static_cast<char>(kInteresting[below(9)]);
      break;
    default: {  // copy a range over another place
      const size_t length = 1 + below(std::min<size_t>(data.size() - at, 32));
      const std::string piece = data.substr(at, length);
      const size_t to = below(data.size());
      data.replace(to, std::min(length, data.size() - to), piece);
      break;
    }
  }
}

std::vector<std::string> list_inputs(const std::vector<std::string>& paths) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  for (const auto& path : paths) {
    if (fs::is_directory(path)) {
      for (const auto& entry : fs::recursive_directory_iterator(path)) {
        if (entry.is_regular_file()) files.push_back(entry.path().string());
      }
    } else if (fs::is_regular_file(path)) {
      files.push_back(path);
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string read_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

}  // namespace guidiff::fuzz
