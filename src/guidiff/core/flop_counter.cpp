#include "guidiff/core/flop_counter.hpp"

#include <ATen/record_function.h>
#include <torch/version.h>

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace guidiff {
namespace {

std::atomic<int64_t> counted_flops{0};
std::atomic<bool> counter_alive{false};

std::vector<int64_t> int_list(const c10::IValue& value) {
  if (value.isIntList()) return value.toIntVector();
  std::vector<int64_t> numbers;  // libtorch 2.x passes SymInt[] arguments as generic lists
  for (const auto& element : value.toListRef()) {
#if TORCH_VERSION_MAJOR >= 2
    if (element.isSymInt()) {
      numbers.push_back(element.toSymInt().expect_int());
      continue;
    }
#endif
    numbers.push_back(element.toInt());
  }
  return numbers;
}

int64_t product(const std::vector<int64_t>& numbers, size_t from = 0) {
  int64_t result = 1;
  for (size_t i = from; i < numbers.size(); ++i) result *= numbers[i];
  return result;
}

// FLOPs of one convolution pass: 2 * (every output element) * (inputs per output element).
// For a transposed convolution the roles of input and output swap.
int64_t convolution_flops(const std::vector<int64_t>& input, const std::vector<int64_t>& weight,
                          const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                          const std::vector<int64_t>& dilation, bool transposed,
                          const std::vector<int64_t>* known_output) {
  const int64_t kernel = product(weight, 2);
  if (transposed) {  // weight [C_in, C_out / groups, k...]: each input element feeds C_out/g * k outputs
    return 2 * product(input) * weight[1] * kernel;
  }
  int64_t output_positions = 1;
  if (known_output) {
    output_positions = product(*known_output, 2);
  } else {
    for (size_t d = 2; d < input.size(); ++d) {
      const size_t i = d - 2;
      const int64_t s = stride.size() > i ? stride[i] : stride.at(0);
      const int64_t p = padding.size() > i ? padding[i] : padding.at(0);
      const int64_t dl = dilation.size() > i ? dilation[i] : dilation.at(0);
      output_positions *= (input[d] + 2 * p - dl * (weight[d] - 1) - 1) / s + 1;
    }
  }
  // weight[1] is C_in / groups: the inputs each output element sees, grouped or not.
  return 2 * input[0] * weight[0] * output_positions * weight[1] * kernel;
}

std::unique_ptr<at::ObserverContext> count_operation(const at::RecordFunction& function) {
  const char* name = function.name();
  const auto inputs = function.inputs();
  const auto sizes = [&](size_t i) { return inputs[i].toTensor().sizes().vec(); };
  int64_t flops = 0;
  if (std::strcmp(name, "aten::convolution") == 0 && inputs.size() >= 9) {
    // (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    flops = convolution_flops(sizes(0), sizes(1), int_list(inputs[3]), int_list(inputs[4]), int_list(inputs[5]),
                              inputs[6].toBool(), nullptr);
  } else if (std::strcmp(name, "aten::convolution_backward") == 0 && inputs.size() >= 11) {
    // (grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
    //  output_padding, groups, output_mask): each of the input and weight gradients costs one forward.
    const auto grad_output = sizes(0);
    const int64_t forward = convolution_flops(sizes(1), sizes(2), int_list(inputs[4]), int_list(inputs[5]),
                                              int_list(inputs[6]), inputs[7].toBool(), &grad_output);
    const auto mask = inputs[10].toBoolList();
    flops = forward * ((mask.get(0) ? 1 : 0) + (mask.get(1) ? 1 : 0));
  } else if (std::strcmp(name, "aten::mm") == 0 && inputs.size() >= 2) {
    const auto a = sizes(0), b = sizes(1);
    flops = 2 * a[0] * a[1] * b[1];
  } else if (std::strcmp(name, "aten::addmm") == 0 && inputs.size() >= 3) {
    const auto a = sizes(1), b = sizes(2);
    flops = 2 * a[0] * a[1] * b[1];
  } else if (std::strcmp(name, "aten::bmm") == 0 && inputs.size() >= 2) {
    const auto a = sizes(0), b = sizes(1);
    flops = 2 * a[0] * a[1] * a[2] * b[2];
  } else if (std::strcmp(name, "aten::baddbmm") == 0 && inputs.size() >= 3) {
    const auto a = sizes(1), b = sizes(2);
    flops = 2 * a[0] * a[1] * a[2] * b[2];
  }
  if (flops > 0) counted_flops.fetch_add(flops, std::memory_order_relaxed);
  return nullptr;
}

}  // namespace

FlopCounter::FlopCounter() {
  if (counter_alive.exchange(true)) throw std::logic_error("FlopCounter: another counter is alive");
  start_ = counted_flops.load();
  handle_ = at::addGlobalCallback(at::RecordFunctionCallback(count_operation).needsInputs(true));
}

FlopCounter::~FlopCounter() {
  at::removeCallback(handle_);
  counter_alive.store(false);
}

int64_t FlopCounter::flops() const { return counted_flops.load() - start_; }

}  // namespace guidiff
