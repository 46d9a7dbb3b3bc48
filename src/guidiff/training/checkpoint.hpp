// The files of a training run and its checkpoints. A run directory holds
//   model.safetensors + model.json   the EMA weights: what sampling uses (load_model(dir))
//   raw.safetensors + raw.json       the raw (optimised) weights
//   resume.safetensors               everything a resumed run needs (below)
//   log.jsonl                        one JSON object per log interval
//   samples/step_<N>.png             preview grids (or scatter plots for 2-D data)
// The resume file is self-contained: tensors "model.<name>", "ema.<name>",
// "optimizer.<param>.{exp_avg,exp_avg_sq,step}" and "rng.cpu" (the global CPU generator, which
// network dropout draws from; in a data-parallel run rank 0's, with rank r's as "rng.cpu.<r>"),
// and metadata "guidiff_resume" = JSON {format, step, next_position {epoch, offset}, options,
// model_config, dataset {name, size}, interval, world_size (absent: 1)}.
// Every file is written atomically, so a crash leaves the previous checkpoint whole; a failed
// write (disk full) changes none of a checkpoint's files.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "guidiff/data/random_order.hpp"
#include "guidiff/io/safetensors.hpp"
#include "guidiff/models/model_files.hpp"

namespace guidiff {

struct RunFiles {
  std::string ema_prefix;   // <dir>/model
  std::string raw_prefix;   // <dir>/raw
  std::string resume;       // <dir>/resume.safetensors
  std::string log;          // <dir>/log.jsonl
  std::string samples_dir;  // <dir>/samples
};
RunFiles run_files(const std::string& out_dir);

// Before a run starts: a fresh run must not overwrite one (InputError pointing to --resume
// when out_dir holds a resume file) and a resumed run needs one (FileError naming it).
void check_run_directory(const std::string& out_dir, bool resume);

// The non-tensor part of a resume file.
struct ResumeState {
  int64_t step = 0;              // optimiser steps done
  LoaderPosition next_position;  // where the data of step `step` starts
  nlohmann::json options;        // the TrainingOptions (trainer.hpp) as JSON
  nlohmann::json model_config;   // Model::config
  nlohmann::json dataset;        // {"name": ..., "size": ...}
  nlohmann::json interval;       // log accumulators since the last log line
  torch::Tensor cpu_rng_state;   // uint8: the global CPU generator's state (rank 0's)
  int64_t world_size = 1;        // processes of the run that wrote it
  std::vector<torch::Tensor> other_rank_rng_states;  // ranks 1, 2, ...: their generators' states
};

// AdamW's per-parameter state as "optimizer.<param name>.{exp_avg,exp_avg_sq,step}" (step as
// int64 [1]); parameters the optimiser has not stepped yet have none. The optimiser must have
// been built over module.parameters().
NamedTensors adamw_state(const torch::nn::Module& module, torch::optim::AdamW& optimizer);

// Replaces the optimiser's state by the "optimizer.*" tensors of `contents`. Throws FileError
// naming `file` and the key when a name matches no parameter, a tensor is missing for a stepped
// parameter, or a shape or dtype differs.
void load_adamw_state(const torch::nn::Module& module, torch::optim::AdamW& optimizer,
                      const SafetensorsContents& contents, const std::string& file);

// A resume file for write_files_atomically (written from the tensors themselves, which must not
// change until it is written), and writing it alone (atomically).
StreamedFile resume_file_to_write(const std::string& path, const Model& model, const Model& ema,
                                  torch::optim::AdamW& optimizer, const ResumeState& state);
void save_resume_file(const std::string& path, const Model& model, const Model& ema,
                      torch::optim::AdamW& optimizer, const ResumeState& state);

// Reads a resume file into model, ema and optimizer (built from the same config, the
// optimiser over model.module->parameters()) and returns its state. Nothing is changed unless
// the whole file checks out. Throws FileError naming the file and the key at fault: unreadable
// or truncated file, missing or malformed metadata, a model config other than model.config,
// a tensor missing, unexpected, or of the wrong shape or dtype.
ResumeState load_resume_file(const std::string& path, Model& model, Model& ema, torch::optim::AdamW& optimizer);

// A full checkpoint: EMA and raw weights (save_model), then the resume file, written as one
// group (write_files_atomically): a failed write changes none of them. Throws NumericError
// (writing nothing) when a weight is not finite, FileError when a file cannot be written.
void save_checkpoint(const RunFiles& files, const Model& model, const Model& ema,
                     torch::optim::AdamW& optimizer, const ResumeState& state);

// The global CPU generator's state (uint8) and its restoration.
torch::Tensor cpu_rng_state();
void set_cpu_rng_state(const torch::Tensor& state);

}  // namespace guidiff
