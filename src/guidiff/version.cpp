#include "guidiff/version.hpp"

namespace guidiff {

const char* library_version() { return GUIDIFF_VERSION; }

}  // namespace guidiff
