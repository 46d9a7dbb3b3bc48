# Runtime options for the sanitized build (build-san), sourced by scripts/sanitize.sh and
# scripts/fuzz.sh; docs/reliability.md says why each is set. A value already in the environment
# wins.
# detect_leaks=0: libtorch is not instrumented, and its process-lifetime allocations (thread
#   pools, operator registries, the allocator's caches) are reported as leaks at exit.
# allocator_may_return_null=1: an allocation too large to make returns null, which libtorch turns
#   into c10::Error and the readers into a one-line error, as in a normal build; by default ASan
#   aborts instead.
# abort_on_error=1, halt_on_error=1: the first finding stops the process (libFuzzer saves the input).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
