// guidiff_fuzz_seeds OUT_DIR: writes the seed corpora the fuzz targets start from, one
// directory per target, with guidiff's own writers (valid files the readers accept) plus the
// test fixtures of tests/data. Image seeds with formats guidiff does not write (palette,
// 16-bit, interlaced PNG, JPEG) come from fuzz/make_image_seeds.py. The committed corpora
// under fuzz/corpus/ were made by this program; rerun it after a format change.
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "fixtures.hpp"
#include "fuzz_target.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/io/safetensors.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/training/checkpoint.hpp"

namespace {

namespace fs = std::filesystem;
using guidiff::fuzz::tiny_model;

fs::path g_out;

void seed(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = g_out / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

void copy_fixtures(const std::string& target, const std::string& extension) {
  for (const auto& entry : fs::directory_iterator(fs::path(GUIDIFF_SOURCE_DIR) / "tests" / "data")) {
    if (entry.path().extension() == extension) seed(target, entry.path().filename().string(), guidiff::read_file_bytes(entry.path().string()));
  }
}

std::string gzip(const std::string& bytes) {
  const std::string path = guidiff::fuzz::scratch_path("seed.gz");
  gzFile file = gzopen(path.c_str(), "wb9");
  gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(file);
  return guidiff::read_file_bytes(path);
}

std::string idx_file(const std::vector<uint32_t>& dims, int fill) {
  std::string out = {0, 0, 8, static_cast<char>(dims.size())};
  size_t count = 1;
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((d >> shift) & 0xff));
    count *= d;
  }
  for (size_t i = 0; i < count; ++i) out.push_back(static_cast<char>((i * 37 + static_cast<size_t>(fill)) % fill));
  return out;
}

// The idx target's input: uint16 length of the images file, images, labels.
std::string idx_pair(const std::string& images, const std::string& labels) {
  std::string out = {static_cast<char>(images.size() & 0xff), static_cast<char>(images.size() >> 8)};
  return out + images + labels;
}

std::string cifar_records(int count, int label_bytes) {
  std::string out;
  for (int r = 0; r < count; ++r) {
    for (int b = 0; b < label_bytes; ++b) out.push_back(static_cast<char>((r + b) % 10));
    for (int p = 0; p < 3 * 32 * 32; ++p) out.push_back(static_cast<char>((p * 7 + r) & 0xff));
  }
  return out;
}

std::string png(int channels, int height, int width) {
  const std::string path = guidiff::fuzz::scratch_path("seed.png");
  guidiff::ImageGridOptions single;
  single.nrow = 1;
  single.padding = 0;
  guidiff::write_png_grid(path, torch::rand({1, channels, height, width}) * 2 - 1, single);
  return guidiff::read_file_bytes(path);
}

std::string json_text(const nlohmann::json& value) { return value.dump(1) + "\n"; }

nlohmann::json mixture_json(const guidiff::GaussianMixture& mixture) {
  nlohmann::json out;
  out["num_classes"] = mixture.num_classes;
  const auto w = mixture.weights.to(torch::kFloat64).contiguous();
  out["weights"] = std::vector<double>(w.data_ptr<double>(), w.data_ptr<double>() + w.numel());
  const auto m = mixture.means.to(torch::kFloat64).contiguous();
  const auto s = mixture.covariances.to(torch::kFloat64).contiguous();
  const int64_t k = m.size(0), d = m.size(1);
  out["means"] = nlohmann::json::array();
  out["covariances"] = nlohmann::json::array();
  for (int64_t i = 0; i < k; ++i) {
    out["means"].push_back(std::vector<double>(m[i].data_ptr<double>(), m[i].data_ptr<double>() + d));
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t a = 0; a < d; ++a) rows.push_back(std::vector<double>(s[i][a].data_ptr<double>(), s[i][a].data_ptr<double>() + d));
    out["covariances"].push_back(rows);
  }
  const auto c = mixture.component_class.to(torch::kInt64).contiguous();
  out["classes"] = std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  return out;
}

void npy_seeds() {
  copy_fixtures("npy", ".npy");
  seed("npy", "float32_2x3.npy", guidiff::encode_npy(torch::arange(6, torch::kFloat32).reshape({2, 3})));
  seed("npy", "int64_4.npy", guidiff::encode_npy(torch::arange(4, torch::kInt64)));
  seed("npy", "uint8_empty.npy", guidiff::encode_npy(torch::empty({0, 3}, torch::kUInt8)));
  seed("npy", "float64_scalar.npy", guidiff::encode_npy(torch::tensor(1.5, torch::kFloat64)));
}

void npz_seeds() {
  copy_fixtures("npz", ".npz");
  const std::string two = guidiff::fuzz::scratch_path("two.npz");
  guidiff::write_npz(two, {{"a", torch::arange(3, torch::kFloat32)}, {"b", torch::arange(2, torch::kInt64)}});
  seed("npz", "two_arrays.npz", guidiff::read_file_bytes(two));
  const std::string batch = guidiff::fuzz::scratch_path("batch.npz");
  guidiff::write_sample_batch_npz(batch, torch::randint(0, 256, {2, 4, 4, 1}, torch::kUInt8),
                                  torch::tensor({3, 7}, torch::kInt64));
  seed("npz", "sample_batch.npz", guidiff::read_file_bytes(batch));
}

void safetensors_seeds() {
  copy_fixtures("safetensors", ".safetensors");
  const guidiff::Model model = tiny_model();
  seed("safetensors", "tiny_model.safetensors",
       guidiff::encode_safetensors(guidiff::model_state(*model.module), {{"format", "pt"}}));
  seed("safetensors", "dtypes.safetensors",
       guidiff::encode_safetensors({{"f16", torch::ones({2}, torch::kFloat16)},
                                    {"bf16", torch::ones({1, 2}, torch::kBFloat16)},
                                    {"f64", torch::ones({1}, torch::kFloat64)},
                                    {"i8", torch::ones({3}, torch::kInt8)},
                                    {"i16", torch::ones({1}, torch::kInt16)},
                                    {"i32", torch::ones({1}, torch::kInt32)},
                                    {"u8", torch::ones({2}, torch::kUInt8)},
                                    {"bool", torch::ones({2}, torch::kBool)},
                                    {"empty", torch::empty({0, 4}, torch::kFloat32)}},
                                   {{"note", "every dtype"}}));
}

void idx_seeds() {
  const std::string images = idx_file({3, 2, 2}, 256), labels = idx_file({3}, 10);
  seed("idx", "raw_pair", idx_pair(images, labels));
  seed("idx", "gzip_pair", idx_pair(gzip(images), gzip(labels)));
  seed("idx", "gzip_images_raw_labels", idx_pair(gzip(images), labels));
  seed("idx", "count_mismatch", idx_pair(images, idx_file({2}, 10)));
}

void cifar_seeds() {
  seed("cifar", "cifar10_two_records.bin", cifar_records(2, 1));
  seed("cifar", "cifar100_one_record.bin", cifar_records(1, 2));
}

void image_seeds() {
  // Options byte (see fuzz_image_folder) + the file.
  seed("image_folder", "grey_4x4_class_folders", std::string(1, '\x01') + png(1, 4, 4));
  seed("image_folder", "rgb_5x3_resized", std::string(1, '\x02') + png(3, 5, 3));
  seed("image_folder", "rgb_4x4_flat", std::string(1, '\x08') + png(3, 4, 4));
}

void config_seeds() {
  const nlohmann::json models[] = {
      {{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8}, {"channel_mult", {1, 2}},
       {"num_res_blocks", 1}, {"attention_resolutions", {4}}, {"norm_groups", 4}, {"num_classes", 3}},
      {{"kind", "unet"}, {"image_size", 8}, {"model_channels", 8}, {"channel_mult", {1}}, {"num_res_blocks", 1},
       {"attention_resolutions", nlohmann::json::array()}, {"norm_groups", 2}, {"learn_sigma", true},
       {"time_input", "log_snr"}, {"use_scale_shift_norm", true}, {"resblock_updown", true}, {"num_head_channels", 4}},
      {{"kind", "encoder_unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8}, {"channel_mult", {1, 2}},
       {"num_res_blocks", 1}, {"attention_resolutions", {4}}, {"norm_groups", 4}, {"num_classes", 3}, {"pool", "adaptive"}},
      {{"kind", "mlp_denoiser"}, {"data_dim", 2}, {"hidden_channels", 16}, {"num_blocks", 2}, {"num_classes", 4}},
      {{"kind", "mlp_classifier"}, {"data_dim", 3}, {"hidden_channels", 16}, {"num_classes", 4}, {"time_input", "log_snr"},
       {"lambda_min", -10.0}, {"lambda_max", 10.0}},
      {{"kind", "cnn_classifier"}, {"image_size", 8}, {"in_channels", 1}, {"channels", {4, 8}}, {"norm_groups", 2},
       {"num_classes", 3}, {"dropout", 0.1}},
  };
  int i = 0;
  for (const auto& config : models) seed("model_config", "config_" + std::to_string(i++) + ".json", json_text(config));
  for (const char* recipe : {"cfg_unet.json", "classifier.json", "evaluator.json"}) {
    seed("model_config", std::string("recipe_") + recipe,
         guidiff::read_file_bytes(std::string(GUIDIFF_SOURCE_DIR) + "/recipes/" + recipe));
  }

  guidiff::TrainingOptions options;
  seed("training_options", "defaults.json", json_text(options.to_json()));
  options.task = guidiff::TrainingTask::classifier;
  options.max_t = 500;
  options.warmup_steps = 10;
  seed("training_options", "classifier.json", json_text(options.to_json()));
  options = guidiff::TrainingOptions();
  options.objective = guidiff::parse_objective("cfg-continuous");
  options.p_uncond = 0.2;
  options.bf16 = true;
  options.seed = 12345678901234ull;
  seed("training_options", "cfg_continuous.json", json_text(options.to_json()));

  seed("mixture_config", "demo_2d.json", json_text(mixture_json(guidiff::GaussianMixture::demo(2))));
  seed("mixture_config", "demo_3d.json", json_text(mixture_json(guidiff::GaussianMixture::demo(3))));
}

void resume_seeds() {
  // A real run of the fixture model: its resume file after step 1 (the target continues it,
  // stopping before the step) and after step 2 (nothing left to do).
  for (int steps : {1, 2}) {
    const std::string dir = guidiff::fuzz::scratch_path("run" + std::to_string(steps));
    guidiff::fuzz::reset_scratch_dir(dir);
    guidiff::TrainingOptions options = guidiff::fuzz::tiny_training_options(dir);
    options.steps = steps;
    guidiff::Model model = tiny_model();
    guidiff::train(model, guidiff::fuzz::tiny_dataset(), options);
    seed("resume", "after_step_" + std::to_string(steps) + ".safetensors",
         guidiff::read_file_bytes(guidiff::run_files(dir).resume));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: guidiff_fuzz_seeds OUT_DIR (e.g. fuzz/corpus)\n");
    return 2;
  }
  g_out = argv[1];
  torch::manual_seed(0);
  npy_seeds();
  npz_seeds();
  safetensors_seeds();
  idx_seeds();
  cifar_seeds();
  image_seeds();
  config_seeds();
  resume_seeds();
  std::printf("seeds written under %s\n", g_out.c_str());
  return 0;
}
