// Tests of the guidance rules against the Gaussian-mixture oracle, where every answer is
// exact: classifier guidance at s = 1 turns the unconditional eps into the class-conditional
// one (the tilted mixture's score), classifier-free guidance is eq. 6 in one forward, the
// interval masks per sample, and s = 0 / w = 0 leave the model's output bit for bit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/guidance/guidance.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/noise_level.hpp"

using namespace guidiff;

namespace {

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

// Records every forward (batch size and labels) and forwards to the wrapped denoiser.
class CountingDenoiser : public Denoiser {
 public:
  explicit CountingDenoiser(std::shared_ptr<Denoiser> inner) : inner_(std::move(inner)) {}
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) override {
    batch_sizes.push_back(x_t.size(0));
    labels.push_back(y.defined() ? y.clone() : y);
    return inner_->predict(x_t, time, y);
  }
  TimeKind time_kind() const override { return inner_->time_kind(); }
  int64_t num_classes() const override { return inner_->num_classes(); }
  std::vector<int64_t> batch_sizes;
  std::vector<torch::Tensor> labels;

 private:
  std::shared_ptr<Denoiser> inner_;
};

class CountingClassifier : public Classifier {
 public:
  explicit CountingClassifier(std::shared_ptr<Classifier> inner) : inner_(std::move(inner)) {}
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) override {
    ++calls;
    return inner_->logits(x_t, time);
  }
  TimeKind time_kind() const override { return inner_->time_kind(); }
  int64_t num_classes() const override { return inner_->num_classes(); }
  int calls = 0;

 private:
  std::shared_ptr<Classifier> inner_;
};

// A classifier whose logits do not carry a graph back to x_t.
class DetachedClassifier : public Classifier {
 public:
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor&) override {
    return torch::zeros({x_t.size(0), 4});
  }
  TimeKind time_kind() const override { return TimeKind::discrete_timestep; }
  int64_t num_classes() const override { return 4; }
};

struct Oracle {
  GaussianMixture mixture = GaussianMixture::demo(2);
  DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 1000);
  NoiseLevelMap levels = NoiseLevelMap::discrete(schedule);
  std::shared_ptr<Denoiser> unconditional = std::make_shared<MixtureDenoiser>(mixture, levels, false);
  std::shared_ptr<Denoiser> conditional = std::make_shared<MixtureDenoiser>(mixture, levels, true);
  std::shared_ptr<Classifier> classifier = std::make_shared<MixtureClassifier>(mixture, levels);

  torch::Tensor abar(const torch::Tensor& t) const { return schedule.alphas_cumprod.index_select(0, t); }
  // The exact eps of p_t(x | y) (y == C: of p_t(x)), float64 [N, 2].
  torch::Tensor exact_eps(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) const {
    const auto a = abar(t);
    return -(1.0 - a).sqrt().unsqueeze(1) * mixture.score(x.to(torch::kFloat64), a, y);
  }
};

// Points spread over the noisy data at several noise levels.
struct Batch {
  torch::Tensor x = torch::tensor({0.3f, 0.2f, -0.9f, 0.1f, 0.5f, -0.5f, -0.2f, -0.6f, 1.2f, 1.1f, 0.0f, 0.0f})
                        .view({6, 2});
  torch::Tensor t = torch::tensor({20, 150, 400, 500, 800, 999}, torch::kInt64);
  torch::Tensor y = torch::tensor({0, 1, 2, 3, 1, 0}, torch::kInt64);
};

// Guided float32 outputs against the float64 oracle. The oracle's maths is float64 in both;
// what separates them is float32: the eps rounding (u = 2^-24 of |eps| < 10) and the
// classifier's logits, rounded to float32 and put through a float32 log_softmax, which moves
// each class probability p by ~p (|log p| + 3) u <= 4u. Times |d logit / dx| < ~150 (t = 20,
// variance ~0.006) over 4 classes, the gradient is off by < ~1.5e-4 absolute (and far less
// relative to its ~100 size), eps by sigma (~0.05) times that per unit of scale: ~1e-5. A
// tolerance of 1e-4 absolute + 1e-4 relative leaves a few times that; a wrong rule is O(1) off.
bool close(const torch::Tensor& a, const torch::Tensor& b, double tolerance) {
  return torch::allclose(a.to(torch::kFloat64), b.to(torch::kFloat64), tolerance, tolerance);
}

}  // namespace

TEST(ClassifierGuidance, ScaleOneGivesTheExactClassConditionalEps) {
  Oracle oracle;
  Batch batch;
  ClassifierGuidedDenoiser guided(oracle.unconditional, oracle.classifier, oracle.levels, 1.0);
  const auto eps = guided.predict(batch.x, batch.t, batch.y).eps;
  ASSERT_EQ(eps.scalar_type(), torch::kFloat32);
  ASSERT_EQ(eps.sizes(), batch.x.sizes());
  // eps - sqrt(1 - abar) grad log p(y | x) = -sqrt(1 - abar) grad log p(x | y).
  EXPECT_TRUE(close(eps, oracle.exact_eps(batch.x, batch.t, batch.y), 1e-4))
      << eps << oracle.exact_eps(batch.x, batch.t, batch.y);

  // Scale s: the tilted density p(x) p(y | x)^s, eps_u + s (eps_c - eps_u).
  ClassifierGuidedDenoiser strong(oracle.unconditional, oracle.classifier, oracle.levels, 3.0);
  const auto eps_u = oracle.exact_eps(batch.x, batch.t, {});
  const auto eps_c = oracle.exact_eps(batch.x, batch.t, batch.y);
  EXPECT_TRUE(close(strong.predict(batch.x, batch.t, batch.y).eps, eps_u + 3.0 * (eps_c - eps_u), 1e-4));
}

TEST(ClassifierGuidance, WorksUnderNoGradAndWithLogSnrTime) {
  Oracle oracle;
  Batch batch;
  torch::NoGradGuard no_grad;
  const auto lambda = torch::tensor({-4.0f, -1.0f, 0.0f, 1.5f, 3.0f, 6.0f});
  const auto abar = torch::sigmoid(lambda.to(torch::kFloat64));
  auto levels = NoiseLevelMap::log_snr();
  auto base = std::make_shared<MixtureDenoiser>(oracle.mixture, levels, false);
  auto classifier = std::make_shared<MixtureClassifier>(oracle.mixture, levels);
  ClassifierGuidedDenoiser guided(base, classifier, levels, 1.0);
  const auto eps = guided.predict(batch.x, lambda, batch.y).eps;
  const auto exact = -(1.0 - abar).sqrt().unsqueeze(1) * oracle.mixture.score(batch.x.to(torch::kFloat64), abar, batch.y);
  EXPECT_TRUE(close(eps, exact, 1e-4)) << eps << exact;
  EXPECT_FALSE(eps.requires_grad());
}

TEST(ClassifierGuidance, GradientIsTheExactPosteriorGradientWhateverTheGradMode) {
  Oracle oracle;
  Batch batch;
  const auto abar = oracle.abar(batch.t);
  const auto x64 = batch.x.to(torch::kFloat64);
  const auto exact = oracle.mixture.score(x64, abar, batch.y) - oracle.mixture.score(x64, abar);
  const auto x_before = batch.x.clone();
  {
    torch::NoGradGuard no_grad;
    const auto gradient = class_log_prob_gradient(*oracle.classifier, batch.x, batch.t, batch.y);
    EXPECT_TRUE(close(gradient, exact, 1e-4));
    EXPECT_FALSE(gradient.requires_grad());
  }
  {
    c10::InferenceMode inference;  // as the samplers run: x_t, time and y are inference tensors
    const auto x_inference = batch.x.clone(), t_inference = batch.t.clone(), y_inference = batch.y.clone();
    ASSERT_TRUE(y_inference.is_inference());
    const auto gradient = class_log_prob_gradient(*oracle.classifier, x_inference, t_inference, y_inference);
    EXPECT_TRUE(close(gradient, exact, 1e-4));
  }
  EXPECT_TRUE(torch::equal(batch.x, x_before));
  EXPECT_FALSE(batch.x.requires_grad());
}

TEST(ClassifierGuidance, ScaleZeroReturnsTheBaseOutputBitForBit) {
  Oracle oracle;
  Batch batch;
  auto counting = std::make_shared<CountingClassifier>(oracle.classifier);
  ClassifierGuidedDenoiser guided(oracle.unconditional, counting, oracle.levels, 0.0);
  const auto eps = guided.predict(batch.x, batch.t, batch.y).eps;
  EXPECT_TRUE(torch::equal(eps, oracle.unconditional->predict(batch.x, batch.t, batch.y).eps));
  EXPECT_EQ(counting->calls, 0);
}

TEST(ClassifierGuidance, IntervalGuidesOnlyTheSamplesInside) {
  Oracle oracle;
  Batch batch;  // t = 20, 150, 400, 500, 800, 999
  ClassifierGuidedDenoiser everywhere(oracle.unconditional, oracle.classifier, oracle.levels, 2.0);
  ClassifierGuidedDenoiser masked(oracle.unconditional, oracle.classifier, oracle.levels, 2.0,
                                  GuidanceInterval{150, 500});
  const auto guided = everywhere.predict(batch.x, batch.t, batch.y).eps;
  const auto base = oracle.unconditional->predict(batch.x, batch.t, batch.y).eps;
  const auto eps = masked.predict(batch.x, batch.t, batch.y).eps;
  for (int64_t n = 0; n < 6; ++n) {
    const int64_t t = batch.t[n].item<int64_t>();
    const bool inside = t >= 150 && t <= 500;
    // The same batch through the same operations, then a per-row select: bitwise.
    EXPECT_TRUE(torch::equal(eps[n], inside ? guided[n] : base[n])) << "t=" << t;
  }
  // No sample inside: no classifier call, the base output.
  auto counting = std::make_shared<CountingClassifier>(oracle.classifier);
  ClassifierGuidedDenoiser none(oracle.unconditional, counting, oracle.levels, 2.0, GuidanceInterval{600, 700});
  EXPECT_TRUE(torch::equal(none.predict(batch.x, batch.t, batch.y).eps, base));
  EXPECT_EQ(counting->calls, 0);
}

TEST(ClassifierGuidance, RejectsWhatItCannotGuide) {
  Oracle oracle;
  Batch batch;
  ClassifierGuidedDenoiser guided(oracle.unconditional, oracle.classifier, oracle.levels, 1.0);
  EXPECT_THROW(guided.predict(batch.x, batch.t, {}), InputError);
  EXPECT_THROW(guided.predict(batch.x, batch.t, torch::full({6}, 4, torch::kInt64)), InputError);  // null class
  EXPECT_THROW(guided.predict(batch.x, batch.t, torch::full({6}, -1, torch::kInt64)), InputError);
  auto log_snr_classifier = std::make_shared<MixtureClassifier>(oracle.mixture, NoiseLevelMap::log_snr());
  EXPECT_THROW(ClassifierGuidedDenoiser(oracle.unconditional, log_snr_classifier, oracle.levels, 1.0), ModelError);
  EXPECT_THROW(ClassifierGuidedDenoiser(oracle.unconditional, oracle.classifier, NoiseLevelMap::log_snr(), 1.0),
               ModelError);
  EXPECT_THROW(ClassifierGuidedDenoiser(nullptr, oracle.classifier, oracle.levels, 1.0), ModelError);
  EXPECT_THROW(ClassifierGuidedDenoiser(oracle.unconditional, nullptr, oracle.levels, 1.0), ModelError);
  EXPECT_THROW(ClassifierGuidedDenoiser(oracle.unconditional, oracle.classifier, oracle.levels, NAN), InputError);
  ClassifierGuidedDenoiser detached(oracle.unconditional, std::make_shared<DetachedClassifier>(), oracle.levels, 1.0);
  EXPECT_THROW(detached.predict(batch.x, batch.t, batch.y), ModelError);
}

TEST(ClassifierFreeGuidance, IsEquationSixInOneBatchedForward) {
  Oracle oracle;
  Batch batch;
  auto counting = std::make_shared<CountingDenoiser>(oracle.conditional);
  const double w = 2.5;
  ClassifierFreeGuidance cfg(counting, w);
  const auto eps = cfg.predict(batch.x, batch.t, batch.y).eps;
  ASSERT_EQ(counting->batch_sizes, (std::vector<int64_t>{12}));
  EXPECT_TRUE(torch::equal(counting->labels[0], torch::cat({batch.y, torch::full({6}, 4, torch::kInt64)})));
  // Two separate forwards, combined by eq. 6. Each row is computed in float64 and rounded to
  // float32, so the batch split cannot move eps (a float64 reordering, ~1e-16, would have to
  // straddle a float32 rounding boundary); the combination is the same float32 expression.
  const auto eps_c = oracle.conditional->predict(batch.x, batch.t, batch.y).eps;
  const auto eps_u = oracle.conditional->predict(batch.x, batch.t, torch::full({6}, 4, torch::kInt64)).eps;
  EXPECT_TRUE(torch::allclose(eps, (1.0 + w) * eps_c - w * eps_u, 1e-6, 1e-6));
  // And against the oracle's exact conditional and marginal eps: float32 rounding of eps_c
  // and eps_u (|eps| < 10, ~6e-7), times 1 + w and w: ~4e-6 against close()'s 1e-4.
  const auto exact_c = oracle.exact_eps(batch.x, batch.t, batch.y);
  const auto exact_u = oracle.exact_eps(batch.x, batch.t, {});
  EXPECT_TRUE(close(eps, (1.0 + w) * exact_c - w * exact_u, 1e-4));
}

TEST(ClassifierFreeGuidance, WeightZeroIsTheConditionalForwardBitForBit) {
  Oracle oracle;
  Batch batch;
  auto counting = std::make_shared<CountingDenoiser>(oracle.conditional);
  ClassifierFreeGuidance cfg(counting, 0.0);
  const auto eps = cfg.predict(batch.x, batch.t, batch.y).eps;
  EXPECT_TRUE(torch::equal(eps, oracle.conditional->predict(batch.x, batch.t, batch.y).eps));
  EXPECT_EQ(counting->batch_sizes, (std::vector<int64_t>{6}));
}

TEST(ClassifierFreeGuidance, IntervalGuidesOnlyTheSamplesInside) {
  Oracle oracle;
  Batch batch;  // t = 20, 150, 400, 500, 800, 999
  ClassifierFreeGuidance everywhere(oracle.conditional, 1.5);
  ClassifierFreeGuidance masked(oracle.conditional, 1.5, GuidanceInterval{300, 850});
  const auto guided = everywhere.predict(batch.x, batch.t, batch.y).eps;
  const auto conditional = oracle.conditional->predict(batch.x, batch.t, batch.y).eps;
  const auto eps = masked.predict(batch.x, batch.t, batch.y).eps;
  for (int64_t n = 0; n < 6; ++n) {
    const int64_t t = batch.t[n].item<int64_t>();
    const bool inside = t >= 300 && t <= 850;
    // The same batch through the same operations, then a per-row select: bitwise.
    EXPECT_TRUE(torch::equal(eps[n], inside ? guided[n] : conditional[n])) << "t=" << t;
  }
  auto counting = std::make_shared<CountingDenoiser>(oracle.conditional);
  ClassifierFreeGuidance none(counting, 1.5, GuidanceInterval{-5, 10});
  EXPECT_TRUE(torch::equal(none.predict(batch.x, batch.t, batch.y).eps, conditional));
  EXPECT_EQ(counting->batch_sizes, (std::vector<int64_t>{6}));
}

TEST(ClassifierFreeGuidance, RejectsUnconditionalModelsAndMissingLabels) {
  Oracle oracle;
  Batch batch;
  EXPECT_THROW(ClassifierFreeGuidance(oracle.unconditional, 1.0), ModelError);
  EXPECT_THROW(ClassifierFreeGuidance(nullptr, 1.0), ModelError);
  EXPECT_THROW(ClassifierFreeGuidance(oracle.conditional, INFINITY), InputError);
  ClassifierFreeGuidance cfg(oracle.conditional, 1.0);
  EXPECT_THROW(cfg.predict(batch.x, batch.t, {}), InputError);
  EXPECT_THROW(cfg.predict(batch.x, batch.t, torch::zeros({3}, torch::kInt64)), InputError);
  EXPECT_EQ(cfg.num_classes(), 4);
  EXPECT_EQ(cfg.time_kind(), TimeKind::discrete_timestep);
}

TEST(ClassifierFreeGuidance, CombinesWithClassifierGuidance) {
  // CFG wrapped in classifier guidance at s = 1: eps_cfg - sigma grad log p(y | x).
  Oracle oracle;
  Batch batch;
  auto cfg = std::make_shared<ClassifierFreeGuidance>(oracle.conditional, 1.0);
  ClassifierGuidedDenoiser both(cfg, oracle.classifier, oracle.levels, 1.0);
  const auto exact_c = oracle.exact_eps(batch.x, batch.t, batch.y);
  const auto exact_u = oracle.exact_eps(batch.x, batch.t, {});
  // grad log p(y|x) = (eps_u - eps_c) / sigma, so the classifier adds eps_c - eps_u once more.
  EXPECT_TRUE(close(both.predict(batch.x, batch.t, batch.y).eps, exact_c + 2.0 * (exact_c - exact_u), 1e-4));
}

TEST(ClassifierMeanShift, IsScaleTimesVarianceTimesGradient) {
  Oracle oracle;
  Batch batch;
  const auto abar = oracle.abar(batch.t);
  const auto x64 = batch.x.to(torch::kFloat64);
  const auto gradient = oracle.mixture.score(x64, abar, batch.y) - oracle.mixture.score(x64, abar);
  const auto variance = torch::tensor({0.01f, 0.02f, 0.05f, 0.1f, 0.2f, 0.3f}).view({6, 1});
  ClassifierMeanShift shift(oracle.classifier, 1.7);
  const auto value = shift.shift(batch.x, batch.t, batch.y, variance);
  ASSERT_EQ(value.sizes(), batch.x.sizes());
  ASSERT_EQ(value.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(close(value, 1.7 * variance.to(torch::kFloat64) * gradient, 1e-4));
  EXPECT_TRUE(torch::equal(shift.scale().over(batch.x), torch::full({6, 1}, 1.7, kF64)));

  ClassifierMeanShift masked(oracle.classifier, 1.7, GuidanceInterval{100, 450});
  const auto partial = masked.shift(batch.x, batch.t, batch.y, variance);
  for (int64_t n = 0; n < 6; ++n) {
    const int64_t t = batch.t[n].item<int64_t>();
    if (t >= 100 && t <= 450) {
      EXPECT_TRUE(torch::equal(partial[n], value[n]));
    } else {
      EXPECT_TRUE(torch::equal(partial[n], torch::zeros({2})));
    }
  }
  auto counting = std::make_shared<CountingClassifier>(oracle.classifier);
  ClassifierMeanShift off(counting, 0.0);
  EXPECT_TRUE(torch::equal(off.shift(batch.x, batch.t, batch.y, variance), torch::zeros({6, 2})));
  EXPECT_EQ(counting->calls, 0);
  EXPECT_THROW(shift.shift(batch.x, batch.t, torch::full({6}, 4, torch::kInt64), variance), InputError);
}

TEST(GuidanceInterval, ContainsIsInclusiveAndDefaultIsEverything) {
  EXPECT_TRUE(GuidanceInterval{}.is_everything());
  EXPECT_FALSE((GuidanceInterval{0, INFINITY}.is_everything()));
  const GuidanceInterval interval{2.0, 5.0};
  const auto inside = interval.contains(torch::tensor({1, 2, 3, 5, 6}, torch::kInt64));
  EXPECT_TRUE(torch::equal(inside, torch::tensor({false, true, true, true, false})));
  EXPECT_TRUE(GuidanceInterval{}.contains(torch::tensor({-1e30, 0.0, 1e30})).all().item<bool>());
}
