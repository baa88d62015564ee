// Branch-free float math the compiler can vectorise (std::exp / std::erf in a loop stay scalar
// without -ffast-math). float32 versions are accurate to a few ulp, far inside the 1e-5 budget of
// docs/design.md (tolerances); the float64 overloads call libm, because float64 paths must agree to 1e-10.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

// CI compiles with plain -O3 (SSE2 only). Entry points marked MB_CPU_CLONES are compiled three times,
// for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and the baseline, and the loader picks the best one
// for the CPU at run time. Their helpers are MB_INLINE so they are compiled into every clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MB_X86_GCC 1
#define MB_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define MB_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define MB_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#else
#define MB_X86_GCC 0
#define MB_CPU_CLONES
#define MB_TARGET_AVX512
#define MB_TARGET_AVX2
#endif
#define MB_INLINE inline __attribute__((always_inline))

namespace minibert {

// Kernels written with explicit vectors (GCC's vector_size extension) must also pick their vector
// width per instruction set: target_clones compiles one source three times with ONE width, and GCC
// lowers 64-byte vectors on AVX2 through the stack (6x slower than 32-byte ones). Such a kernel is a
// struct with an MB_INLINE `template <int VB> static void run(...)`; run_widest_vectors<Kernel>(...)
// calls run<64> built for AVX-512, run<32> for AVX2+FMA, or run<16> (SSE2 / other CPUs). The environment
// variable MINIBERT_CPU_VECTOR_BYTES=32 or 16 caps the width, so tests can run the narrower builds on a
// wider CPU (other values are ignored).
inline int widest_vector_bytes() {
  static const int bytes = [] {
    int widest = 16;
#if MB_X86_GCC
    widest = __builtin_cpu_supports("x86-64-v4") ? 64 : __builtin_cpu_supports("x86-64-v3") ? 32 : 16;
#endif
    const char* cap = std::getenv("MINIBERT_CPU_VECTOR_BYTES");
    const int c = cap ? std::atoi(cap) : 0;
    return c == 16 || c == 32 ? std::min(widest, c) : widest;
  }();
  return bytes;
}

template <typename Kernel, typename... Args>
MB_TARGET_AVX512 void run_avx512(Args... args) { Kernel::template run<64>(args...); }
template <typename Kernel, typename... Args>
MB_TARGET_AVX2 void run_avx2(Args... args) { Kernel::template run<32>(args...); }

template <typename Kernel, typename... Args>
void run_widest_vectors(Args... args) {
#if MB_X86_GCC
  const int bytes = widest_vector_bytes();
  if (bytes == 64) return run_avx512<Kernel>(args...);
  if (bytes == 32) return run_avx2<Kernel>(args...);
#endif
  Kernel::template run<16>(args...);
}

// exp(x) for float: x = n*ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial
// (truncation error r^7/7! < 1.2e-7 relative), 2^n built directly in the exponent bits.
MB_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // keep 2^n a normal float
  const float t = x * 1.44269504088896341f;
  // Round to nearest without a libm call: adding 1.5*2^23 pushes the fraction bits out.
  const float n = (t + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;  // ln2 split hi + lo
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}
inline double exp_approx(double x) { return std::exp(x); }

// erf(x) for float: Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7, odd-symmetric.
MB_INLINE float erf_approx(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float y = 1.0f - poly * t * exp_approx(-ax * ax);
  return x < 0.0f ? -y : y;
}
inline double erf_approx(double x) { return std::erf(x); }

// tanh(x) = 1 - 2 / (exp(2x) + 1): exact at the limits (exp overflow gives 1, underflow -1).
MB_INLINE float tanh_approx(float x) { return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f); }
inline double tanh_approx(double x) { return std::tanh(x); }

}  // namespace minibert
