#include "fixtures.hpp"

#include "guidiff/data/mixture_dataset.hpp"
#include "guidiff/models/gaussian_mixture.hpp"

namespace guidiff::fuzz {

nlohmann::json tiny_model_config() {
  return {{"kind", "mlp_denoiser"}, {"data_dim", 2}, {"hidden_channels", 8}, {"num_blocks", 1}, {"time_channels", 8}};
}

Model tiny_model() {
  torch::manual_seed(0);
  return build_model(tiny_model_config());
}

const Dataset& tiny_dataset() {
  static const Dataset data = mixture_dataset(GaussianMixture::demo(2), 16, 0, "fuzz-mixture");
  return data;
}

TrainingOptions tiny_training_options(const std::string& out_dir) {
  TrainingOptions options;
  options.out_dir = out_dir;
  options.steps = 2;
  options.batch_size = 4;
  options.timesteps = 50;
  options.lr = 1e-3;
  options.ema_rate = 0.9;
  options.log_every = 1;
  options.save_every = 1;
  return options;
}

}  // namespace guidiff::fuzz
