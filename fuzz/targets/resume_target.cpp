// Fuzz target of the resume file: `guidiff train --resume` reads it, checks it against the
// run's model and options, restores weights, optimiser, RNG and log accumulators, and stops
// before the first step (the should_stop hook), so no input trains or writes a checkpoint.
#include <string_view>

#include "../fixtures.hpp"
#include "../fuzz_target.hpp"
#include "guidiff/training/checkpoint.hpp"

namespace guidiff::fuzz {

void fuzz_resume(std::string_view input) {
  const std::string dir = scratch_path("run");
  reset_scratch_dir(dir);
  write_scratch_file(run_files(dir).resume, input);
  TrainingOptions options = tiny_training_options(dir);
  options.resume = true;
  TrainingHooks hooks;
  hooks.should_stop = [] { return true; };
  Model model = tiny_model();
  train(model, tiny_dataset(), options, hooks);
}

}  // namespace guidiff::fuzz
