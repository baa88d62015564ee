// GELU and bias + GELU on the CPU, forward and backward, erf and tanh forms.
//
//   erf form:  gelu(x) = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2,   gelu'(x) = Phi(x) + x * phi(x)
//   tanh form: gelu(x) = x (1 + t) / 2,  t = tanh(u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//              gelu'(x) = (1 + t) / 2 + x (1 - t^2) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//
// Fusing the bias saves a full write + read of x + bias (GELU is memory bound), and the backward
// reduces the bias gradient while dx is still in registers instead of re-reading dx.
#include <algorithm>
#include <cmath>

#include "kernels_cpu.h"
#include "math_cpu.h"

namespace minibert {
namespace {

constexpr double kSqrtHalf = 0.70710678118654752440;       // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;     // 1 / sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;    // sqrt(2 / pi)
constexpr double kTanhCubic = 0.044715;                    // Hendrycks & Gimpel's cubic coefficient

template <typename T>
MB_INLINE T gelu_value(T x, bool use_tanh) {
  if (use_tanh) {
    const T t = tanh_approx(T(kSqrt2OverPi) * (x + T(kTanhCubic) * x * x * x));
    return T(0.5) * x * (T(1) + t);
  }
  return T(0.5) * x * (T(1) + erf_approx(x * T(kSqrtHalf)));
}

template <typename T>
MB_INLINE T gelu_grad(T x, bool use_tanh) {
  if (use_tanh) {
    const T x2 = x * x;
    const T t = tanh_approx(T(kSqrt2OverPi) * (x + T(kTanhCubic) * x2 * x));
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(kSqrt2OverPi) * (T(1) + T(3 * kTanhCubic) * x2);
  }
  const T cdf = T(0.5) * (T(1) + erf_approx(x * T(kSqrtHalf)));
  const T pdf = T(kInvSqrt2Pi) * exp_approx(T(-0.5) * x * x);
  return cdf + x * pdf;
}

// The loops are written per row so the column loop has no division and no branch on the form:
// `use_tanh` is hoisted out by duplicating the loop (it is a compile-time constant inside each copy).
template <typename T, bool kTanh>
MB_INLINE void forward_range(const T* x, const T* bias, T* y, int64_t n_cols, int64_t begin, int64_t end) {
  if (bias == nullptr) {
    for (int64_t i = begin; i < end; ++i) y[i] = gelu_value(x[i], kTanh);
    return;
  }
  int64_t i = begin;
  while (i < end) {
    const int64_t col0 = i % n_cols;
    const int64_t stop = std::min(end, i + (n_cols - col0));
    const T* b = bias + col0 - i;  // b[i] is the bias of element i within this row
    for (int64_t e = i; e < stop; ++e) y[e] = gelu_value(x[e] + b[e], kTanh);
    i = stop;
  }
}

template <typename T, bool kTanh>
MB_INLINE void backward_rows(const T* dy, const T* x, const T* bias, T* dx, T* dbias, int64_t n_cols,
                             int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* dyr = dy + r * n_cols;
    const T* xr = x + r * n_cols;
    T* dxr = dx + r * n_cols;
    if (bias == nullptr) {
      for (int64_t c = 0; c < n_cols; ++c) dxr[c] = dyr[c] * gelu_grad(xr[c], kTanh);
    } else if (dbias == nullptr) {
      for (int64_t c = 0; c < n_cols; ++c) dxr[c] = dyr[c] * gelu_grad(xr[c] + bias[c], kTanh);
    } else {
      for (int64_t c = 0; c < n_cols; ++c) {
        const T g = dyr[c] * gelu_grad(xr[c] + bias[c], kTanh);
        dxr[c] = g;
        dbias[c] += g;
      }
    }
  }
}

template <typename T>
MB_INLINE void forward_dispatch(const T* x, const T* bias, T* y, int64_t n_cols, bool use_tanh, int64_t begin,
                                int64_t end) {
  if (use_tanh)
    forward_range<T, true>(x, bias, y, n_cols, begin, end);
  else
    forward_range<T, false>(x, bias, y, n_cols, begin, end);
}

template <typename T>
MB_INLINE void backward_dispatch(const T* dy, const T* x, const T* bias, T* dx, T* dbias, int64_t n_cols,
                                 bool use_tanh, int64_t row_begin, int64_t row_end) {
  if (use_tanh)
    backward_rows<T, true>(dy, x, bias, dx, dbias, n_cols, row_begin, row_end);
  else
    backward_rows<T, false>(dy, x, bias, dx, dbias, n_cols, row_begin, row_end);
}

}  // namespace

MB_CPU_CLONES void gelu_forward_cpu(const float* x, const float* bias, float* y, int64_t n_cols, bool use_tanh,
                                    int64_t begin, int64_t end) {
  forward_dispatch(x, bias, y, n_cols, use_tanh, begin, end);
}
MB_CPU_CLONES void gelu_forward_cpu(const double* x, const double* bias, double* y, int64_t n_cols,
                                    bool use_tanh, int64_t begin, int64_t end) {
  forward_dispatch(x, bias, y, n_cols, use_tanh, begin, end);
}
MB_CPU_CLONES void gelu_backward_cpu(const float* dy, const float* x, const float* bias, float* dx,
                                     float* dbias_partial, int64_t n_cols, bool use_tanh, int64_t row_begin,
                                     int64_t row_end) {
  backward_dispatch(dy, x, bias, dx, dbias_partial, n_cols, use_tanh, row_begin, row_end);
}
MB_CPU_CLONES void gelu_backward_cpu(const double* dy, const double* x, const double* bias, double* dx,
                                     double* dbias_partial, int64_t n_cols, bool use_tanh, int64_t row_begin,
                                     int64_t row_end) {
  backward_dispatch(dy, x, bias, dx, dbias_partial, n_cols, use_tanh, row_begin, row_end);
}

}  // namespace minibert
