// The table of fuzz targets. Adding a reader is one line here plus its function (declared
// beside the others) and a seed directory fuzz/corpus/<name>/.
#include <string_view>

#include "fuzz_target.hpp"

namespace guidiff::fuzz {

void fuzz_npy(std::string_view input);               // targets/io_targets.cpp
void fuzz_npz(std::string_view input);
void fuzz_safetensors(std::string_view input);
void fuzz_pt(std::string_view input);
void fuzz_idx(std::string_view input);               // targets/data_targets.cpp
void fuzz_cifar(std::string_view input);
void fuzz_image_folder(std::string_view input);
void fuzz_mixture_config(std::string_view input);    // targets/config_targets.cpp
void fuzz_model_config(std::string_view input);
void fuzz_training_options(std::string_view input);
void fuzz_resume(std::string_view input);            // targets/resume_target.cpp

const std::vector<Target>& all_targets() {
  static const std::vector<Target> targets = {
      {"npy", fuzz_npy, "decode_npy, and encode_npy of what it decodes (io/npy)"},
      {"npz", fuzz_npz, "read_npz (stored, deflate, ZIP64), write_npz round trip, read_sample_batch_npz (io/npz)"},
      {"safetensors", fuzz_safetensors, "decode_safetensors, encode round trip, load_model_state (io/safetensors)"},
      {"pt", fuzz_pt, "torch.save state dicts: PtFile and load_pt_state_dict, cuda:0 storages on the CPU (io/pt_file)"},
      {"idx", fuzz_idx, "read_idx_ubyte and load_idx_dataset, raw or gzip (data/idx)"},
      {"cifar", fuzz_cifar, "CIFAR-10 and CIFAR-100 (fine, coarse) binary records (data/cifar)"},
      {"image_folder", fuzz_image_folder, "PNG/JPEG decoding, load_image_folder and load_image_files (data/image_folder)"},
      {"mixture_config", fuzz_mixture_config, "GaussianMixture::from_json_file and mixture_dataset (models, data)"},
      {"model_config", fuzz_model_config, "model config JSON: load_model, build_model for every kind (models/model_files)"},
      {"training_options", fuzz_training_options, "TrainingOptions::from_json and validate (training)"},
      {"resume", fuzz_resume, "the resume file: train(--resume) up to the first step (training/checkpoint)"},
  };
  return targets;
}

}  // namespace guidiff::fuzz
