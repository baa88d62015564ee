// Residual + dropout + LayerNorm on the CPU, forward and backward: y = LayerNorm(residual + dropout(x)).
//
// This is how every post-LN BERT sub-block ends (twice per layer). Done as separate ops it is four
// passes over [rows, E] with three intermediate tensors written and read back: dropout(x), the sum, and
// LayerNorm's own reads. Here one row at a time is loaded, summed, normalised and written: a row of E
// floats (3 KB for E = 768) stays in the L1 cache, so each input is read from memory once and y is
// written once. The same holds in the backward, which recomputes the sum h from x and residual instead
// of saving it (two reads are cheaper than one write + one read of a saved tensor, and save memory).
//
// Per row, with n = E columns:
//   h = residual + dropout(x),  mean = sum(h) / n,  var = sum((h - mean)^2) / n  (two passes over the
//   row in L1, more accurate than sum(h^2) / n - mean^2),  rstd = 1 / sqrt(var + eps),
//   y = (h - mean) * rstd * weight + bias
// Backward, with xhat = (h - mean) * rstd and g = dy * weight:
//   dh = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dx = dropout(dh),  dresidual = dh,
//   dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy.
//
// The row sums are `omp simd` reductions: without them the compiler may not reorder a float sum, and
// a sum it cannot reorder stays scalar.
//
// Two file-wide compiler settings. no-trapping-math: see gelu_cpu.cpp (lets the dropout select vectorise).
// fp-contract=off: no fused multiply-adds. An FMA rounds a * b + c once, the separate ops twice, so with
// contraction the product dy * weight could be rounded one way inside sum(g) and another in the second
// pass; rstd (up to 1 / sqrt(eps) = 1e6) would magnify that difference. Without it, a 1-column row
// (xhat = 0) gets exactly dh = 0 as it should, and every pass sees the same g.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=off")
#endif
#include <cmath>

#include "dropout_hash.h"
#include "kernels_cpu.h"
#include "math_cpu.h"

namespace minibert {
namespace {

// dropout(v) for element `index`: v / (1 - p) if kept, else 0 (exactly minibert.ops.dropout's value).
template <typename T, bool kDrop>
MB_INLINE T dropped(T v, const DropoutArgs& d, T inv_keep, uint64_t index) {
  if (!kDrop) return v;
  const T scaled = v * inv_keep;
  return dropout_keep(d.base, index, d.threshold) ? scaled : T(0);
}

template <typename T, bool kResidual, bool kDrop>
MB_INLINE void forward_rows(const T* x, const T* residual, const T* weight, const T* bias, T* y, T* mean_out,
                            T* rstd_out, int64_t n, T eps, const DropoutArgs& d, int64_t row_begin,
                            int64_t row_end) {
  const T inv_keep = static_cast<T>(d.inv_keep);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* xr = x + r * n;
    const T* rr = kResidual ? residual + r * n : nullptr;
    T* yr = y + r * n;  // holds h until the last pass overwrites it with y
    const uint64_t first = static_cast<uint64_t>(r * n);
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < n; ++c) {
      T h = dropped<T, kDrop>(xr[c], d, inv_keep, first + c);
      if (kResidual) h += rr[c];
      yr[c] = h;
      sum += h;
    }
    const T mean = sum / T(n);
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < n; ++c) sq += (yr[c] - mean) * (yr[c] - mean);
    const T rstd = T(1) / std::sqrt(sq / T(n) + eps);
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) yr[c] = (yr[c] - mean) * rstd * weight[c] + bias[c];
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

template <typename T, bool kResidual, bool kDrop>
MB_INLINE void backward_rows(const T* grad, const T* x, const T* residual, const T* weight, const T* mean_in,
                             const T* rstd_in, T* d_sum, T* d_x, T* dweight, T* dbias, int64_t n,
                             const DropoutArgs& d, int64_t row_begin, int64_t row_end) {
  const T inv_keep = static_cast<T>(d.inv_keep);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* gr = grad + r * n;
    const T* xr = x + r * n;
    const T* rr = kResidual ? residual + r * n : nullptr;
    T* dsr = d_sum + r * n;  // holds xhat until the second pass overwrites it with dh
    T* dxr = kDrop ? d_x + r * n : nullptr;
    const uint64_t first = static_cast<uint64_t>(r * n);
    const T mean = mean_in[r], rstd = rstd_in[r];
    T sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int64_t c = 0; c < n; ++c) {
      T h = dropped<T, kDrop>(xr[c], d, inv_keep, first + c);
      if (kResidual) h += rr[c];
      const T xhat = (h - mean) * rstd;
      const T g = gr[c] * weight[c];
      dsr[c] = xhat;
      sum_g += g;
      sum_gx += g * xhat;
      dweight[c] += gr[c] * xhat;
      dbias[c] += gr[c];
    }
    const T mean_g = sum_g / T(n), mean_gx = sum_gx / T(n);
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      const T dh = rstd * (gr[c] * weight[c] - mean_g - dsr[c] * mean_gx);
      dsr[c] = dh;
      if (kDrop) dxr[c] = dropped<T, kDrop>(dh, d, inv_keep, first + c);  // else d_x would equal d_sum
    }
  }
}

// Kernels for run_widest_vectors (math_cpu.h): the loops above are plain C++ that the compiler
// vectorises for the instruction set of each build, so VB itself is not used. The residual and dropout
// switches become template arguments here, so no loop tests them per element.
struct Forward {
  template <int VB, typename T>
  MB_INLINE static void run(const T* x, const T* residual, const T* weight, const T* bias, T* y, T* mean,
                            T* rstd, int64_t n, double eps, const DropoutArgs& d, int64_t r0, int64_t r1) {
    const T e = static_cast<T>(eps);
    if (residual != nullptr && d.active)
      forward_rows<T, true, true>(x, residual, weight, bias, y, mean, rstd, n, e, d, r0, r1);
    else if (residual != nullptr)
      forward_rows<T, true, false>(x, residual, weight, bias, y, mean, rstd, n, e, d, r0, r1);
    else if (d.active)
      forward_rows<T, false, true>(x, residual, weight, bias, y, mean, rstd, n, e, d, r0, r1);
    else
      forward_rows<T, false, false>(x, residual, weight, bias, y, mean, rstd, n, e, d, r0, r1);
  }
};

struct Backward {
  template <int VB, typename T>
  MB_INLINE static void run(const T* grad, const T* x, const T* residual, const T* weight, const T* mean,
                            const T* rstd, T* d_sum, T* d_x, T* dw, T* db, int64_t n, const DropoutArgs& d,
                            int64_t r0, int64_t r1) {
    if (residual != nullptr && d.active)
      backward_rows<T, true, true>(grad, x, residual, weight, mean, rstd, d_sum, d_x, dw, db, n, d, r0, r1);
    else if (residual != nullptr)
      backward_rows<T, true, false>(grad, x, residual, weight, mean, rstd, d_sum, d_x, dw, db, n, d, r0, r1);
    else if (d.active)
      backward_rows<T, false, true>(grad, x, residual, weight, mean, rstd, d_sum, d_x, dw, db, n, d, r0, r1);
    else
      backward_rows<T, false, false>(grad, x, residual, weight, mean, rstd, d_sum, d_x, dw, db, n, d, r0, r1);
  }
};

}  // namespace

void layernorm_forward_cpu(const float* x, const float* residual, const float* weight, const float* bias, float* y,
                           float* mean, float* rstd, int64_t n_cols, double eps, const DropoutArgs& dropout,
                           int64_t row_begin, int64_t row_end) {
  run_widest_vectors<Forward>(x, residual, weight, bias, y, mean, rstd, n_cols, eps, dropout, row_begin, row_end);
}
void layernorm_forward_cpu(const double* x, const double* residual, const double* weight, const double* bias,
                           double* y, double* mean, double* rstd, int64_t n_cols, double eps,
                           const DropoutArgs& dropout, int64_t row_begin, int64_t row_end) {
  run_widest_vectors<Forward>(x, residual, weight, bias, y, mean, rstd, n_cols, eps, dropout, row_begin, row_end);
}
void layernorm_backward_cpu(const float* grad, const float* x, const float* residual, const float* weight,
                            const float* mean, const float* rstd, float* d_sum, float* d_x, float* dweight_partial,
                            float* dbias_partial, int64_t n_cols, const DropoutArgs& dropout, int64_t row_begin,
                            int64_t row_end) {
  run_widest_vectors<Backward>(grad, x, residual, weight, mean, rstd, d_sum, d_x, dweight_partial, dbias_partial,
                               n_cols, dropout, row_begin, row_end);
}
void layernorm_backward_cpu(const double* grad, const double* x, const double* residual, const double* weight,
                            const double* mean, const double* rstd, double* d_sum, double* d_x,
                            double* dweight_partial, double* dbias_partial, int64_t n_cols,
                            const DropoutArgs& dropout, int64_t row_begin, int64_t row_end) {
  run_widest_vectors<Backward>(grad, x, residual, weight, mean, rstd, d_sum, d_x, dweight_partial, dbias_partial,
                               n_cols, dropout, row_begin, row_end);
}

}  // namespace minibert
