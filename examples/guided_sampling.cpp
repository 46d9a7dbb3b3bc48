// Loads guidiff's Fashion-MNIST models and samples one image of each class twice: with
// classifier guidance (the noise-aware classifier steering the UNet's unconditional half)
// and with classifier-free guidance (the UNet's conditional and unconditional halves).
//
//   guided_sampling MODELS_DIR OUT_DIR      (MODELS_DIR: guidiff's models/fashion-mnist)
//
// Writes OUT_DIR/classifier_guidance.png and OUT_DIR/classifier_free.png, and prints how
// far apart the two batches are.
#include <guidiff/guidiff.hpp>

#include <cstdio>
#include <memory>
#include <string>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MODELS_DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string models = argv[1];
  const std::string out = argv[2];
  try {
    guidiff::configure_threads(0);  // all cores (GUIDIFF_THREADS overrides)
    std::printf("guidiff %s (headers %s)\n", guidiff::library_version(), GUIDIFF_VERSION);

    const guidiff::Model unet = guidiff::load_model(models + "/cfg_unet");
    const guidiff::Model classifier = guidiff::load_model(models + "/classifier");

    guidiff::GenerationConfig config;
    config.sampler = guidiff::SamplerKind::ddim;
    config.steps = 25;
    config.clip_x0 = true;
    config.sample_shape = {1, 28, 28};
    config.num_samples = unet.denoiser->num_classes();  // one per class
    config.seed = 1;
    const torch::Tensor classes = torch::arange(config.num_samples, torch::kLong);

    // Classifier guidance, Dhariwal & Nichol Algorithm 2: the unconditional model's eps is
    // shifted by the classifier's gradient, scale s = 3.
    guidiff::GenerationConfig guided = config;
    guided.classifier_scale = 3.0;
    const auto unconditional = std::make_shared<guidiff::NullClassDenoiser>(unet.denoiser);
    const auto with_classifier =
        guidiff::generate(unconditional, classifier.classifier, guided, classes, torch::Tensor());
    guidiff::write_png_grid(out + "/classifier_guidance.png", with_classifier.samples, {10});

    // Classifier-free guidance, Ho & Salimans eq. 6, w = 3.
    guidiff::GenerationConfig cfg = config;
    cfg.cfg_scale = 3.0;
    const auto classifier_free = guidiff::generate(unet.denoiser, nullptr, cfg, classes, torch::Tensor());
    guidiff::write_png_grid(out + "/classifier_free.png", classifier_free.samples, {10});

    const double distance = (with_classifier.samples - classifier_free.samples).abs().mean().item<double>();
    std::printf("wrote %s/classifier_guidance.png and %s/classifier_free.png (%lld images each, mean |difference| %.3f)\n",
                out.c_str(), out.c_str(), static_cast<long long>(config.num_samples), distance);
    return 0;
  } catch (const guidiff::Error& error) {
    std::fprintf(stderr, "guided_sampling: %s\n", error.what());
    return 1;
  }
}
