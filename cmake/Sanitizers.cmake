# Sanitizer and fuzzing builds (docs/reliability.md). Included before any target is defined.
#
#   -DGUIDIFF_SANITIZE=address,undefined   instruments every guidiff target (library, CLI,
#                                          tests, fuzz targets); libtorch itself is not.
#   -DGUIDIFF_FUZZ=ON                       clang only: libFuzzer binaries under fuzz/ (the
#                                          library gets coverage instrumentation for them).
# The fuzz targets' corpus replay and seed-mutation driver are built in every test build.
set(GUIDIFF_SANITIZE "" CACHE STRING "Comma-separated sanitizers for all guidiff code, e.g. address,undefined")
option(GUIDIFF_FUZZ "Build the libFuzzer binaries (needs clang)" OFF)

if(GUIDIFF_SANITIZE)
  # Frame pointers and debug lines make the reports readable; every finding is fatal, so a
  # test or a fuzz run cannot carry on past undefined behaviour.
  add_compile_options(-fsanitize=${GUIDIFF_SANITIZE} -fno-sanitize-recover=all -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=${GUIDIFF_SANITIZE})
endif()

if(GUIDIFF_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "GUIDIFF_FUZZ needs clang (libFuzzer): configure with -DCMAKE_CXX_COMPILER=clang++")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
