// Small helpers the subcommands share: list flags, output paths.
#pragma once
#include <string>
#include <vector>

namespace guidiff::cli {

// "a,b,c" -> integers, each >= 1. Throws InputError naming the flag otherwise.
std::vector<int64_t> parse_positive_list(const std::string& flag, const std::string& text);

// "a,b" -> two numbers (inf and -inf allowed). Throws InputError naming the flag otherwise.
std::pair<double, double> parse_number_pair(const std::string& flag, const std::string& text);

// Fails early, before minutes of sampling, when an output file cannot be created:
// throws FileError naming the flag and path if its directory does not exist.
void check_output_path(const std::string& flag, const std::string& path);

}  // namespace guidiff::cli
