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
// exp_in_range takes x in [-87, 88], where 2^n is a normal float; exp_approx clamps x to that range first.
MB_INLINE float exp_in_range(float x) {
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
MB_INLINE float exp_approx(float x) { return exp_in_range(x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x)); }
inline double exp_approx(double x) { return std::exp(x); }

// exp(x), but exactly 0 where exp_approx would clamp (x < -87, exp(x) < 1.6e-38): the GELU tails use it
// so that a far-out value is 0 (as in float64 it is at most a denormal) instead of 1e-38 times something.
// (Both sides are computed, then one is picked: a conditional expression with the arithmetic inside
// it is "control flow" the vectoriser refuses, as it may not evaluate float math the source skips.)
MB_INLINE float exp_or_zero(float x) {
  const float e = exp_approx(x);
  return x < -87.0f ? 0.0f : e;
}
inline double exp_or_zero(double x) { return std::exp(x); }

// The Gaussian's exp(-x^2 / 2), which the GELU needs for every element: 2^y with y = -x^2 log2(e) / 2 <= 0
// and 0 below y = -126 (exp(-x^2 / 2) < 1.2e-38 there, at most a denormal in float64). Cheaper than
// exp_approx, because y <= 0 needs no upper clamp and 2^y needs no ln 2 split: y = n + f with n the nearest
// integer and |f| <= 1/2, 2^n built in the exponent bits, and 2^f = 1 + f q(f) with q of degree 4, fitted
// for this file to the smallest relative error on [-1/2, 1/2] (9.2e-8; csrc/fits/gelu_float32.py). The
// leading 1 is exact, so 2^f is exact at f = 0, where the GELU's values are largest. The rounding of y
// itself adds |y| ulp-sized error: up to 8e-6 relative at y = -126, where exp(-x^2 / 2) is 1e-38.
MB_INLINE float exp2_nonpositive_or_zero(float y) {
  const bool tiny = y < -126.0f;
  const float yc = tiny ? -126.0f : y;
  // Round to nearest without a libm call: adding 1.5 * 2^23 pushes the fraction bits out, and the sum's low
  // mantissa bits are the integer n itself (in two's complement), ready for the exponent field.
  const float shifted = yc + 12582912.0f;
  const float f = yc - (shifted - 12582912.0f);
  float q = 1.32646982e-03f;
  q = q * f + 9.67150927e-03f;
  q = q * f + 5.55073395e-02f;
  q = q * f + 2.40222424e-01f;
  q = q * f + 6.93147004e-01f;
  const float two_f = q * f + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits - 0x4B400000 + 127) << 23;  // 0x4B400000: the bits of 1.5 * 2^23, i.e. n = 0
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  const float e = two_f * two_n;
  return tiny ? 0.0f : e;
}

// ---------------------------------------------------------------------------------------------- Phi(x)
// The standard normal CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2, which the exact GELU x * Phi(x) needs.
//
// Why not erf directly: for x < 0, 1 + erf(x / sqrt 2) subtracts two numbers close to 1. A float32
// erf that is accurate to one ulp of 1 (6e-8) leaves almost nothing of Phi(-5) = 2.9e-7, and nothing at
// all below x = -5.9 (torch's float32 GELU returns -0.0 there). Instead we compute the small tail
//
//     Phi(-|x|) = erfc(a) / 2,   a = |x| / sqrt 2,
//
// to a small RELATIVE error, and get the other side as Phi(|x|) = 1 - Phi(-|x|) (at most 0.5 is
// subtracted from 1 there, so nothing cancels). erfc itself is written as
//
//     erfc(a) = exp(-a^2) * t * P(t),   t = 1 / (1 + a / 2),
//
// because erfc(a) * exp(a^2) is smooth and slowly varying (1 at a = 0, about 1 / (a sqrt pi) for large
// a), and the substitution t maps a in [0, inf) onto t in (0, 1], where a degree-6 polynomial P fits it.
// The coefficients below were fitted for this file (csrc/fits/gelu_float32.py, which explains how) to what
// the GELU needs: the tail's ABSOLUTE error at most 6e-8 (the backward's Phi(x) = 1 - tail near x = 0, where
// tail = 1/2, must be good to a few ulp of 1/2) and its RELATIVE error at most 3e-6 (the far tails, where
// x Phi(x) itself is tiny). Degree 8 would be 20 times more accurate than this needs; every degree saved
// is one multiply-add less per element, and GELU's speed is its arithmetic. Evaluated in float32 the
// result is within 9e-6 relative (at the far tail: the rounding of x^2 in the exponent, see above) and
// 1.9e-7 absolute (near x = 0, where the tail is 1/2: float32's own rounding of t and of Horner's steps).
// The same exp(-a^2) = exp(-x^2 / 2) is the Gaussian density's, so the GELU backward gets
// phi(x) = exp(-x^2 / 2) / sqrt(2 pi) for free.
//
// Returns the tail Phi(-|x|) (Phi(x) itself is the tail for x < 0, 1 - tail for x >= 0; GELU uses the
// tail directly: x Phi(x) = x - x * tail for x >= 0 rounds once, where x * (1 - tail) rounds twice) and
// sets `gauss` = exp(-x^2 / 2). For |x| > 13.2 (x^2 / 2 > 87.3) gauss and the tail are 0: the true values
// are below 1.2e-38 there. +-inf give tail 0 and gauss 0 (as float64 does); NaN propagates.
MB_INLINE float normal_tail_approx(float x, float& gauss) {
  // t = 1 / (1 + a / 2) with a = |x| / sqrt 2
  const float t = 1.0f / (1.0f + 0.35355339059327376220f * std::fabs(x));
  // P(t) / 2, highest power first: each coefficient times 0.5f (exact, and folded by the compiler), so
  // the tail erfc(a) / 2 = t (P(t) / 2) exp(-a^2) needs no multiply by 1/2 of its own.
  constexpr float h = 0.5f;
  float p = h * 9.01904702e-02f;
  p = p * t - h * 3.62504959e-01f;
  p = p * t + h * 3.95368338e-01f;
  p = p * t + h * 3.50460671e-02f;
  p = p * t + h * 2.81972766e-01f;
  p = p * t + h * 2.77604938e-01f;
  p = p * t + h * 2.82322496e-01f;
  gauss = exp2_nonpositive_or_zero(x * x * -0.72134752044448170368f);  // -log2(e) / 2
  return t * p * gauss;
}
// float64 has erfc in libm, accurate to an ulp.
inline double normal_tail_approx(double x, double& gauss) {
  gauss = std::exp(-0.5 * x * x);
  return 0.5 * std::erfc(std::fabs(x) * 0.70710678118654752440);
}

// sigmoid(2u) = (1 + tanh(u)) / 2 = 1 / (1 + exp(-2u)), which the tanh-form GELU x (1 + tanh u) / 2
// needs, and 1 - sigmoid(2u) (the backward's (1 - tanh^2) / 4 is sigmoid * (1 - sigmoid)), both without a
// subtraction, so nothing cancels for negative u. Both come from e = exp(-2|u|), which lies in [0, 1]:
// sigmoid2_sides returns r = 1 / (1 + e) = sigmoid(2|u|), in [1/2, 1], and sets `small` = e * r =
// sigmoid(-2|u|) = 1 - r, in [0, 1/2]; u's sign says which side is sigmoid(2u). So the exponent is never
// positive, e can neither overflow nor need a clamp, and the cheap 2^y of the Gaussian above serves
// (y = -2|u| log2(e)). Far tails: where 2|u| > 87.3, e is 0, so r is exactly 1 and `small` 0 (the true
// value is below 1.2e-38 there).
MB_INLINE float sigmoid2_sides(float u, float& small) {
  const float e = exp2_nonpositive_or_zero(std::fabs(u) * -2.88539008177792681472f);  // -2 log2(e)
  const float r = 1.0f / (1.0f + e);
  small = e * r;
  return r;
}
inline double sigmoid2_sides(double u, double& small) {
  small = 1.0 / (1.0 + std::exp(2.0 * std::fabs(u)));  // two exps: each side without cancellation
  return 1.0 / (1.0 + std::exp(-2.0 * std::fabs(u)));
}
// sigmoid(2u) itself, with `one_minus` = 1 - sigmoid(2u).
template <typename T>
MB_INLINE T sigmoid2_approx(T u, T& one_minus) {
  T small;
  const T r = sigmoid2_sides(u, small);
  one_minus = u < T(0) ? r : small;
  return u < T(0) ? small : r;
}

}  // namespace minibert
