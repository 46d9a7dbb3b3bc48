// Numbers and shapes as error messages print them.
#pragma once
#include <torch/torch.h>

#include <exception>
#include <string>

namespace guidiff {

// A double as an ostream writes it by default (6 significant digits: "0.5", "1e-05", "inf").
std::string number_string(double value);
// Tensor sizes as libtorch prints them: "[2, 3, 28, 28]".
std::string shape_string(torch::IntArrayRef sizes);
// A tensor's sizes as above, or "none" for an undefined tensor.
std::string shape_string(const torch::Tensor& tensor);
// Text from an untrusted file (a header key, a decoder's or parser's message quoting the
// input) made safe for a one-line error: bytes outside printable ASCII as \xNN, and at most
// `max_bytes` of the input, then "...".
std::string printable_excerpt(const std::string& text, size_t max_bytes = 200);
// A JSON library error as a one-line error's reason: nlohmann's "[json.exception.parse_error.101] "
// tag dropped (it names the library, not the problem), and the rest, which can quote most of a
// corrupt input, through printable_excerpt.
std::string json_error_text(const std::exception& error);

}  // namespace guidiff
