// Numbers and shapes as error messages print them (see text.hpp).
#include "guidiff/core/text.hpp"

#include <sstream>

namespace guidiff {

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
