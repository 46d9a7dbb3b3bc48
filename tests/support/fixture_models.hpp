// C++ twins of the TorchScript fixtures in tests/data (written by
// tests/fixtures/make_fixtures.py): the same closed forms, computed independently, so tests
// can check that the adapters and the CLI feed the modules exactly what they should.
#pragma once
#include <torch/torch.h>

#include <string>

#include "guidiff/models/denoiser.hpp"

namespace guidiff::testing {

// tests/data/<name>
std::string fixture_path(const std::string& name);

// linear_conditional.pt: eps = 0.1 x + 0.01 y + 1e-4 t (3 classes, y = 3 is the null class).
class LinearConditionalTwin : public Denoiser {
 public:
  explicit LinearConditionalTwin(TimeKind kind) : kind_(kind) {}
  DenoiserOutput predict(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) override;
  TimeKind time_kind() const override { return kind_; }
  int64_t num_classes() const override { return 3; }

 private:
  TimeKind kind_;
};

// linear_unconditional.pt: eps = 0.2 x + 1e-4 t.
class LinearUnconditionalTwin : public Denoiser {
 public:
  explicit LinearUnconditionalTwin(TimeKind kind) : kind_(kind) {}
  DenoiserOutput predict(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) override;
  TimeKind time_kind() const override { return kind_; }
  int64_t num_classes() const override { return 0; }

 private:
  TimeKind kind_;
};

// linear_classifier.pt: logits = flatten(x) @ W + 1e-4 t, W[i, k] = 0.1 sin(i + 3k), 16 x 3.
class LinearClassifierTwin : public Classifier {
 public:
  explicit LinearClassifierTwin(TimeKind kind) : kind_(kind) {}
  torch::Tensor logits(const torch::Tensor& x, const torch::Tensor& t) override;
  TimeKind time_kind() const override { return kind_; }
  int64_t num_classes() const override { return 3; }

 private:
  TimeKind kind_;
};

}  // namespace guidiff::testing
