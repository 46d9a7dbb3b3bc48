// The CLI's own description of its flags, and the number checks every numeric flag shares.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

namespace guidiff::cli {

// Gives every INT, UINT and FLOAT option of `app` and its subcommands (at any depth) one
// check run before CLI11 converts the text: decimal digits only, without a leading zero
// (CLI11 alone reads "010" as octal 8 and "0x10" as 16), no overflow (alone it clamps
// 99999999999999999999 to the type's maximum and reads -1 as 2^64 - 1 for an unsigned flag;
// INT values must fit an int), and finite numbers (no nan/inf).
// Call once every subcommand and option exists.
void check_numeric_options(CLI::App& app);

// One JSON object per line for every option of every subcommand:
//   {"command": "train diffusion", "option": "--steps", "positional": false, "type": "INT", "flag": false,
//    "required": false}
// ("type" is CLI11's: INT, UINT, FLOAT, TEXT, ...; flags have "flag": true; a positional
// argument has its name as "option" and "positional": true). The bad-flag
// tests and scripts build their matrix from it (`guidiff --list-options`, a hidden flag).
std::string option_list(const CLI::App& app);

}  // namespace guidiff::cli
