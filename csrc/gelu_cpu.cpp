// GELU and bias + GELU on the CPU, forward and backward, erf and tanh forms.
//
//   erf form:  gelu(x) = x * Phi(x),  Phi the standard normal CDF,   gelu'(x) = Phi(x) + x * phi(x)
//   tanh form: gelu(x) = x * s,  s = sigmoid(2u) = (1 + tanh u) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3)
//              gelu'(x) = s + x * 2 s (1 - s) * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//
// GELU reads and writes each element once, so it should run at the speed of a memory copy. What keeps
// it from that is the arithmetic per element: libm's erf/tanh are scalar calls. math_cpu.h's float32
// normal_tail_approx / sigmoid2_sides are branch-free (one division, one exp, one polynomial), so the
// loops below compile to vector code; Phi and phi share their exp, so the backward costs no more than
// the forward. float64 calls libm's erfc / exp / tanh (the 1e-10 contract of docs/design.md).
//
// Fusing the bias saves a full write + read of x + bias, and the backward reduces the bias gradient
// while dx is still in registers instead of re-reading dx.
//
// Each entry point runs through run_widest_vectors (math_cpu.h): the same loops are compiled for
// AVX-512, AVX2+FMA and SSE2, and MINIBERT_CPU_VECTOR_BYTES=32 or 16 selects the narrower builds (the
// tests run all three).
// No trapping math in this file: the loops pick between two computed values (x < 0 ? tail : 1 - tail,
// the clamps of exp), and under GCC's default -ftrapping-math the optimiser turns those into branches
// around the float arithmetic (which might raise an FP exception it must not speculate), and branches
// stop the vectoriser on AVX2 and SSE2 (AVX-512 has masked instructions and vectorises anyway). Nothing
// here reads FP exception flags, so no result changes. Must precede the includes to reach math_cpu.h.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <algorithm>
#include <cmath>

#include "kernels_cpu.h"
#include "math_cpu.h"

namespace minibert {
namespace {

constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1 / sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kTanhCubic = 0.044715;                  // Hendrycks & Gimpel's cubic coefficient

// x * P, given P's two forms: P itself when P < 1/2 (x < 0: accurate to its relative error), else the
// complement q = 1 - P (x >= 0). Written as relu(x) - |x| * tail, with tail = P for x < 0 and q for
// x >= 0: for x < 0 that is -(|x| P) = x P exactly, for x >= 0 it is x - x q, which rounds once (the
// compiler fuses it into one multiply-add), where x (1 - q) would round twice. Four vector operations and
// no branch. |x| is capped at 1e30 (the tail is 0 long before): x = +-inf then gives inf and 0, the
// limits of x Phi(x), not inf * 0 = NaN. NaN stays NaN (its tail is NaN).
template <typename T>
MB_INLINE T times_probability(T x, T p, T q) {
  const T tail = x < T(0) ? p : q;
  const T ax = std::fabs(x);
  const T capped = ax < T(1e30) ? ax : T(1e30);
  const T relu = x < T(0) ? T(0) : x;
  return relu - capped * tail;
}

template <typename T, bool kTanh>
MB_INLINE T gelu_value(T x) {
  if (kTanh) {
    // u has x's sign, so the side of sigmoid(2u) that times_probability wants (sigmoid(2u) for x < 0, its
    // complement for x >= 0) is always the small one, sigmoid(-2|u|): no selects on u's sign.
    T small;
    sigmoid2_sides(T(kSqrt2OverPi) * (x + T(kTanhCubic) * x * x * x), small);
    return times_probability(x, small, small);
  }
  T gauss;
  const T tail = normal_tail_approx(x, gauss);  // Phi(x) for x < 0, 1 - Phi(x) for x >= 0
  return times_probability(x, tail, tail);
}

template <typename T, bool kTanh>
MB_INLINE T gelu_grad(T x) {
  const T x2 = x * x;
  if (kTanh) {
    T one_minus;
    const T s = sigmoid2_approx(T(kSqrt2OverPi) * (x + T(kTanhCubic) * x2 * x), one_minus);
    return s + x * (T(2) * s * one_minus) * (T(kSqrt2OverPi) * (T(1) + T(3 * kTanhCubic) * x2));
  }
  T gauss;
  const T tail = normal_tail_approx(x, gauss);
  const T upper = T(1) - tail;
  const T cdf = x < T(0) ? tail : upper;
  return cdf + x * (T(kInvSqrt2Pi) * gauss);
}

// The loops are written per row so the column loop has no division and no branch: the form is a template
// argument, and with bias the row is split at n_cols so b[e] needs no modulo.
template <typename T, bool kTanh>
MB_INLINE void forward_range(const T* x, const T* bias, T* y, int64_t n_cols, int64_t begin, int64_t end) {
  if (bias == nullptr) {
    for (int64_t i = begin; i < end; ++i) y[i] = gelu_value<T, kTanh>(x[i]);
    return;
  }
  int64_t i = begin;
  while (i < end) {
    const int64_t col0 = i % n_cols;
    const int64_t stop = std::min(end, i + (n_cols - col0));
    const T* b = bias + col0 - i;  // b[i] is the bias of element i within this row
    for (int64_t e = i; e < stop; ++e) y[e] = gelu_value<T, kTanh>(x[e] + b[e]);
    i = stop;
  }
}

template <typename T, bool kTanh>
MB_INLINE void backward_rows(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ bias,
                             T* __restrict__ dx, T* __restrict__ dbias, int64_t n_cols, int64_t row_begin,
                             int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* dyr = dy + r * n_cols;
    const T* xr = x + r * n_cols;
    T* dxr = dx + r * n_cols;
    if (bias == nullptr) {
      for (int64_t c = 0; c < n_cols; ++c) dxr[c] = dyr[c] * gelu_grad<T, kTanh>(xr[c]);
    } else if (dbias == nullptr) {
      for (int64_t c = 0; c < n_cols; ++c) dxr[c] = dyr[c] * gelu_grad<T, kTanh>(xr[c] + bias[c]);
    } else {
      for (int64_t c = 0; c < n_cols; ++c) {
        const T g = dyr[c] * gelu_grad<T, kTanh>(xr[c] + bias[c]);
        dxr[c] = g;
        dbias[c] += g;
      }
    }
  }
}

// Kernels for run_widest_vectors: the vector width is the instruction set the loops are compiled for
// (the loops are plain C++ that the compiler vectorises), so VB itself is not used.
struct Forward {
  template <int VB, typename T>
  MB_INLINE static void run(const T* x, const T* bias, T* y, int64_t n_cols, bool use_tanh, int64_t begin,
                            int64_t end) {
    if (use_tanh)
      forward_range<T, true>(x, bias, y, n_cols, begin, end);
    else
      forward_range<T, false>(x, bias, y, n_cols, begin, end);
  }
};

struct Backward {
  template <int VB, typename T>
  MB_INLINE static void run(const T* dy, const T* x, const T* bias, T* dx, T* dbias, int64_t n_cols,
                            bool use_tanh, int64_t row_begin, int64_t row_end) {
    if (use_tanh)
      backward_rows<T, true>(dy, x, bias, dx, dbias, n_cols, row_begin, row_end);
    else
      backward_rows<T, false>(dy, x, bias, dx, dbias, n_cols, row_begin, row_end);
  }
};

}  // namespace

void gelu_forward_cpu(const float* x, const float* bias, float* y, int64_t n_cols, bool use_tanh, int64_t begin,
                      int64_t end) {
  run_widest_vectors<Forward>(x, bias, y, n_cols, use_tanh, begin, end);
}
void gelu_forward_cpu(const double* x, const double* bias, double* y, int64_t n_cols, bool use_tanh,
                      int64_t begin, int64_t end) {
  run_widest_vectors<Forward>(x, bias, y, n_cols, use_tanh, begin, end);
}
void gelu_backward_cpu(const float* dy, const float* x, const float* bias, float* dx, float* dbias_partial,
                       int64_t n_cols, bool use_tanh, int64_t row_begin, int64_t row_end) {
  run_widest_vectors<Backward>(dy, x, bias, dx, dbias_partial, n_cols, use_tanh, row_begin, row_end);
}
void gelu_backward_cpu(const double* dy, const double* x, const double* bias, double* dx, double* dbias_partial,
                       int64_t n_cols, bool use_tanh, int64_t row_begin, int64_t row_end) {
  run_widest_vectors<Backward>(dy, x, bias, dx, dbias_partial, n_cols, use_tanh, row_begin, row_end);
}

}  // namespace minibert
