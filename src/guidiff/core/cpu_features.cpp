#include "guidiff/core/cpu_features.hpp"

#include <ATen/Version.h>
#include <dlfcn.h>

#include <sstream>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace guidiff {
namespace {

#if defined(__x86_64__) || defined(__i386__)
CpuFeatures read_cpu_features() {
  CpuFeatures features;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return features;
  const bool osxsave = (ecx >> 27) & 1u;
  features.fma = (ecx >> 12) & 1u;
  if (!osxsave) return features;
  unsigned xcr0_low = 0, xcr0_high = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
  const bool os_saves_avx = (xcr0_low & 0x6u) == 0x6u;           // XMM and YMM state
  const bool os_saves_avx512 = (xcr0_low & 0xE6u) == 0xE6u;      // + opmask, ZMM halves
  const bool os_saves_amx = (xcr0_low & 0x60000u) == 0x60000u;   // XTILECFG, XTILEDATA
  if (!os_saves_avx) return features;
  features.fma = features.fma && os_saves_avx;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
    features.avx2 = (ebx >> 5) & 1u;
    if (os_saves_avx512) {
      features.avx512f = (ebx >> 16) & 1u;
      features.avx512dq = (ebx >> 17) & 1u;
      features.avx512bw = (ebx >> 30) & 1u;
      features.avx512vl = (ebx >> 31) & 1u;
    }
    features.amx_bf16 = os_saves_amx && ((edx >> 22) & 1u);
  }
  if (os_saves_avx512 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) {
    features.avx512_bf16 = (eax >> 5) & 1u;
  }
  return features;
}
#else
CpuFeatures read_cpu_features() { return {}; }
#endif

}  // namespace

std::string CpuFeatures::summary() const {
  const std::vector<std::pair<const char*, bool>> named = {
      {"avx2", avx2},         {"fma", fma},           {"avx512f", avx512f},         {"avx512bw", avx512bw},
      {"avx512vl", avx512vl}, {"avx512dq", avx512dq}, {"avx512_bf16", avx512_bf16}, {"amx_bf16", amx_bf16}};
  std::string text;
  for (const auto& [name, present] : named) {
    if (!present) continue;
    if (!text.empty()) text += ' ';
    text += name;
  }
  // Without AVX2, guidiff's own kernels take their baseline x86-64 (SSE) clones (cpu_lanes.hpp).
  return text.empty() ? "no avx2, fma or avx512 (baseline x86-64)" : text;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = read_cpu_features();
  return features;
}

std::string aten_cpu_capability() {
  // libtorch does not export its dispatch level; its build summary states it.
  std::istringstream config(at::show_config());
  const std::string key = "CPU capability usage:";
  for (std::string line; std::getline(config, line);) {
    const auto at = line.find(key);
    if (at == std::string::npos) continue;
    auto value = line.substr(at + key.size());
    value.erase(0, value.find_first_not_of(' '));
    return value;
  }
  return "unknown";
}

std::string onednn_cpu_isa() {
  // dnnl_cpu_isa_t values of oneDNN 2.x (Debian's libdnnl2); other values print as hex.
  using EffectiveIsa = int (*)();
  const auto query = reinterpret_cast<EffectiveIsa>(dlsym(RTLD_DEFAULT, "dnnl_get_effective_cpu_isa"));
  if (query == nullptr) return "unknown";
  const int isa = query();
  const std::vector<std::pair<int, const char*>> names = {
      {0x1, "sse41"},           {0x3, "avx"},
      {0x7, "avx2"},            {0x407, "avx2_vnni"},
      {0x27, "avx512_core"},    {0x67, "avx512_core_vnni"},
      {0xe7, "avx512_core_bf16"}, {0x3e7, "avx512_core_amx"},
      {0xf, "avx512_mic"},      {0x1f, "avx512_mic_4ops"}};
  for (const auto& [value, name] : names) {
    if (value == isa) return name;
  }
  std::ostringstream hex;
  hex << "0x" << std::hex << isa;
  return hex.str();
}

}  // namespace guidiff
