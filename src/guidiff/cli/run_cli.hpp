// guidiff's whole command line as a function, so that a test can run it in a forked copy
// of itself (tests/test_bad_flags.cpp) without paying libtorch's start-up per case.
#pragma once

namespace guidiff::cli {

// Runs `guidiff argv[1] ...` and returns its exit status: 0, or 2 after one line
// "guidiff: error: ..." on stderr. main() is this and nothing else.
int run_cli(int argc, char** argv);

}  // namespace guidiff::cli
