// libguidiff's public API in one include: load models, wrap them in guidance, sample, and
// write images. docs/library.md describes each part; the headers named here are the ones
// whose declarations follow the version rules of guidiff/version.hpp. Every other installed
// header is reachable, but may change in any release.
#pragma once

#include "guidiff/core/autocast.hpp"      // AutocastScope (bf16 with float32 accumulation)
#include "guidiff/core/bf16_kernels.hpp"  // what bf16 costs and computes on this CPU
#include "guidiff/core/cpu_features.hpp"  // CPU vector features, libtorch/oneDNN kernel levels
#include "guidiff/core/errors.hpp"        // Error, InputError, FileError, ModelError, NumericError
#include "guidiff/core/global_generators.hpp"  // seed_global_generators (the run device's only)
#include "guidiff/core/threads.hpp"       // configure_threads
#include "guidiff/distributed/communicator.hpp"  // data-parallel runs over c10d (Gloo, NCCL)
#include "guidiff/guidance/guidance.hpp"  // classifier guidance (Alg. 1, 2), classifier-free guidance
#include "guidiff/io/image.hpp"           // PNG grids and images
#include "guidiff/io/npz.hpp"             // sample batches as .npz
#include "guidiff/io/pt_file.hpp"         // torch.save state dicts (.pt), read without Python
#include "guidiff/models/attention.hpp"                // the UNets' blocked softmax attention
#include "guidiff/models/bf16_models.hpp"              // Bf16Denoiser, Bf16Classifier
#include "guidiff/models/denoiser.hpp"                 // the Denoiser and Classifier interfaces
#include "guidiff/models/guided_diffusion_models.hpp"  // openai/guided-diffusion's released models
#include "guidiff/models/model_files.hpp"              // load_model, save_model
#include "guidiff/models/null_class_denoiser.hpp"      // a conditional model's unconditional half
#include "guidiff/models/winograd_conv.hpp"  // Winograd 3x3 convolutions, configure_convolutions
#include "guidiff/sampling/generate.hpp"     // generate(): validated, batched, seeded sampling
#include "guidiff/sampling/samplers.hpp"     // the samplers as free functions
#include "guidiff/sampling/upsample.hpp"  // super-resolution models conditioned on a low-res image
#include "guidiff/version.hpp"
