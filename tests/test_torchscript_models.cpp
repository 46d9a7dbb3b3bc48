// TorchScript adapters: signature detection, exact outputs against the C++ twins of the
// fixtures, and one-line errors naming the file for every misfit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "guidiff/core/errors.hpp"
#include "guidiff/models/torchscript_models.hpp"
#include "support/fixture_models.hpp"

using namespace guidiff;
using guidiff::testing::fixture_path;

namespace {

TorchScriptOptions with_classes(int64_t classes, TimeKind kind = TimeKind::discrete_timestep) {
  TorchScriptOptions options;
  options.num_classes = classes;
  options.time_kind = kind;
  return options;
}

template <typename E, typename F>
std::string error_of(F&& call) {
  try {
    call();
  } catch (const E& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

TEST(TorchScriptDenoiser, ConditionalModelMatchesItsClosedForm) {
  TorchScriptDenoiser model(fixture_path("linear_conditional.pt"), with_classes(3));
  EXPECT_EQ(model.num_classes(), 3);
  EXPECT_EQ(model.time_kind(), TimeKind::discrete_timestep);
  EXPECT_FALSE(model.learns_variance());
  const auto x = torch::randn({4, 1, 4, 4});
  const auto t = torch::tensor({0, 10, 500, 999}, torch::kLong);
  const auto y = torch::tensor({0, 1, 2, 3}, torch::kLong);  // 3: null class
  const DenoiserOutput out = model.predict(x, t, y);
  guidiff::testing::LinearConditionalTwin twin(TimeKind::discrete_timestep);
  // The twin runs the module's elementwise float32 operations one for one: equal (the
  // tolerances, and allclose's defaults below, are a few ulps of |eps| < 1).
  EXPECT_TRUE(torch::allclose(out.eps, twin.predict(x, t, y).eps, 1e-6, 1e-7));
  EXPECT_FALSE(out.variance_output.defined());
  // An unconditional request (y undefined) gets the null class.
  EXPECT_TRUE(torch::allclose(model.predict(x, t, {}).eps, twin.predict(x, t, torch::full({4}, 3L)).eps));
}

TEST(TorchScriptDenoiser, UnconditionalModelWithLogSnrTime) {
  TorchScriptDenoiser model(fixture_path("linear_unconditional.pt"), with_classes(0, TimeKind::log_snr));
  EXPECT_EQ(model.num_classes(), 0);
  EXPECT_EQ(model.time_kind(), TimeKind::log_snr);
  const auto x = torch::randn({3, 2});
  const auto lambda = torch::tensor({-5.5, 0.25, 12.0}, torch::kFloat64);  // given as float64: passed as float32
  guidiff::testing::LinearUnconditionalTwin twin(TimeKind::log_snr);
  EXPECT_TRUE(torch::allclose(model.predict(x, lambda, {}).eps, twin.predict(x, lambda.to(torch::kFloat32), {}).eps));
}

TEST(TorchScriptDenoiser, LearnSigmaSplitsTheChannels) {
  TorchScriptOptions options;
  options.learn_sigma = true;
  TorchScriptDenoiser model(fixture_path("learn_sigma.pt"), options);
  EXPECT_TRUE(model.learns_variance());
  const auto x = 2 * torch::randn({2, 3, 2, 2});
  const DenoiserOutput out = model.predict(x, torch::tensor({1, 2}), {});
  EXPECT_TRUE(torch::allclose(out.eps, 0.1 * x));
  EXPECT_TRUE(torch::equal(out.variance_output, x.clamp(-1, 1)));
  // Without learn_sigma the doubled channels are a shape error.
  TorchScriptDenoiser plain(fixture_path("learn_sigma.pt"), TorchScriptOptions{});
  const std::string message = error_of<ModelError>([&] { plain.predict(x, torch::tensor({1, 2}), {}); });
  EXPECT_NE(message.find("learn_sigma.pt"), std::string::npos) << message;
  EXPECT_NE(message.find("[2, 6, 2, 2]"), std::string::npos) << message;
}

TEST(TorchScriptDenoiser, MissingFileIsAFileErrorNamingIt) {
  const std::string path = fixture_path("no_such_model.pt");
  const std::string message = error_of<FileError>([&] { TorchScriptDenoiser(path, {}); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
}

TEST(TorchScriptDenoiser, NonArchiveIsAFileErrorOnOneLine) {
  const std::string path = ::testing::TempDir() + "guidiff_not_a_model.pt";
  std::ofstream(path) << "definitely not a zip archive";
  const std::string message = error_of<FileError>([&] { TorchScriptDenoiser(path, {}); });
  std::remove(path.c_str());
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("TorchScript"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(TorchScriptDenoiser, WrongSignatureIsAModelError) {
  const std::string message =
      error_of<ModelError>([&] { TorchScriptDenoiser(fixture_path("wrong_signature.pt"), with_classes(3)); });
  EXPECT_NE(message.find("wrong_signature.pt"), std::string::npos) << message;
  EXPECT_NE(message.find("4 arguments"), std::string::npos) << message;
}

TEST(TorchScriptDenoiser, ConditionalModelNeedsTheClassCount) {
  const std::string message = error_of<ModelError>([&] { TorchScriptDenoiser(fixture_path("linear_conditional.pt"), {}); });
  EXPECT_NE(message.find("--num-classes"), std::string::npos) << message;
}

TEST(TorchScriptDenoiser, WrongOutputShapeIsAModelErrorWithBothShapes) {
  TorchScriptDenoiser model(fixture_path("wrong_output_shape.pt"), {});
  const std::string message = error_of<ModelError>([&] { model.predict(torch::zeros({2, 1, 4, 4}), torch::tensor({0, 1}), {}); });
  EXPECT_NE(message.find("wrong_output_shape.pt"), std::string::npos) << message;
  EXPECT_NE(message.find("[2, 1]"), std::string::npos) << message;
  EXPECT_NE(message.find("[2, 1, 4, 4]"), std::string::npos) << message;
}

TEST(TorchScriptClassifier, LogitsMatchTheClosedFormAndAreDifferentiable) {
  TorchScriptClassifier classifier(fixture_path("linear_classifier.pt"), with_classes(3));
  const auto x = torch::randn({5, 1, 4, 4}).requires_grad_(true);
  const auto t = torch::tensor({0, 1, 2, 3, 999}, torch::kLong);
  const auto logits = classifier.logits(x, t);
  guidiff::testing::LinearClassifierTwin twin(TimeKind::discrete_timestep);
  // float32 x [5, 16] @ W: the module's stored weights 0.1 sin(i + 3k) may be an ulp off the
  // twin's (another sinf), and the GEMM order may differ: a few u of sum |w x| ~ 1, ~3e-7.
  EXPECT_TRUE(torch::allclose(logits, twin.logits(x, t), 1e-5, 1e-6));
  // d(sum of class-1 logits)/dx = W[:, 1] reshaped, for every sample.
  logits.select(1, 1).sum().backward();
  const auto i = torch::arange(16, torch::kFloat32);
  const auto expected = (0.1 * torch::sin(i + 3.0)).reshape({1, 1, 4, 4}).expand({5, 1, 4, 4});
  // The backward of the product picks W[:, 1] exactly; it and this sinf differ by <= an ulp
  // of |w| <= 0.1 (7.5e-9).
  EXPECT_TRUE(torch::allclose(x.grad(), expected, 1e-6, 1e-7));
}

TEST(TorchScriptClassifier, ClassCountMismatchIsAModelError) {
  TorchScriptClassifier classifier(fixture_path("linear_classifier.pt"), with_classes(10));
  const std::string message = error_of<ModelError>([&] { classifier.logits(torch::zeros({2, 16}), torch::tensor({0, 1})); });
  EXPECT_NE(message.find("linear_classifier.pt"), std::string::npos) << message;
  EXPECT_NE(message.find("[2, 3]"), std::string::npos) << message;
}

TEST(TorchScriptClassifier, ForwardFailureIsAOneLineModelError) {
  TorchScriptClassifier classifier(fixture_path("linear_classifier.pt"), with_classes(3));
  // 5 features cannot multiply the 16 x 3 weight: c10::Error inside the module.
  const std::string message = error_of<ModelError>([&] { classifier.logits(torch::zeros({2, 5}), torch::tensor({0, 1})); });
  EXPECT_NE(message.find("linear_classifier.pt"), std::string::npos) << message;
  EXPECT_NE(message.find("cannot be multiplied"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(TorchScriptClassifier, NeedsTwoArgumentsAndAClassCount) {
  EXPECT_THROW(TorchScriptClassifier(fixture_path("linear_conditional.pt"), with_classes(3)), ModelError);
  EXPECT_THROW(TorchScriptClassifier(fixture_path("linear_classifier.pt"), with_classes(0)), ModelError);
}

}  // namespace
