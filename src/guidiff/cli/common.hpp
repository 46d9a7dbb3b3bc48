// Small helpers the subcommands share: list flags, output paths, JSON files.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace CLI {
class Option;
}

namespace guidiff::cli {

// True when the user gave the flag (on the command line), whatever its value.
bool given(const CLI::Option* option);

// "a,b,c" -> integers, each >= 1. Throws InputError naming the flag otherwise.
std::vector<int64_t> parse_positive_list(const std::string& flag, const std::string& text);

// "a,b" -> two numbers (inf and -inf allowed). Throws InputError naming the flag otherwise.
std::pair<double, double> parse_number_pair(const std::string& flag, const std::string& text);

// Fails early, before minutes of sampling, when an output file cannot be created:
// throws FileError naming the flag and path if its directory does not exist.
void check_output_path(const std::string& flag, const std::string& path);

// One file written by two outputs would hold only the last of them, and an output over an
// input destroys it: both are refused before any work. Each entry pairs a description (the
// flag, "the manifest beside --npz") with a path; empty paths are skipped. Throws InputError
// naming both.
using NamedPaths = std::vector<std::pair<std::string, std::string>>;
void check_distinct_outputs(const NamedPaths& outputs, const NamedPaths& inputs = {});

// The JSON document in the file that `flag` names. A missing, unreadable or malformed file
// is a one-line FileError naming the flag and the file.
nlohmann::json read_json_file(const std::string& flag, const std::string& path);

// --bf16 on a CPU without bf16 arithmetic: says once per process, on stderr, that it will
// likely be slower than float32 and why (bf16_slowdown_reason); silent elsewhere.
void warn_if_bf16_is_emulated(const torch::Device& device);

}  // namespace guidiff::cli
