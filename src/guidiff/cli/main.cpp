// guidiff: the command-line entry point (the command line itself is run_cli.cpp).
#include "guidiff/cli/run_cli.hpp"

int main(int argc, char** argv) { return guidiff::cli::run_cli(argc, argv); }
