// Cross-entropy of rows of logits on the CPU, forward and backward, without log_softmax in memory.
//
// The masked-LM loss of BERT is the mean over predicted positions of -log softmax(logits)[label]. Done
// as torch ops (log_softmax, nll_loss and their backwards) the [rows, V] logits are followed by three more
// tensors of their size: the log-probabilities, a zero-filled gradient that nll_loss's backward scatters
// into, and the gradient of the logits. With V = 8000 and 512 rows each is 16 MB, far more than the
// caches, so each costs a trip to memory (and a freshly allocated one, page faults). Here, as llm.c's
// fused classifier does, a row of V logits (32 KB in float32) is read into the L1/L2 cache and finished
// there:
//
//   forward, per row r:   m = max_c x[c],  lse = m + log(sum_c exp(x[c] - m)),  loss = lse - x[label]
//   backward, per row r:  d[c] = (exp(x[c] - lse) - [c == label]) * grad_loss[r]
//
// (subtracting the maximum keeps every exp <= 1: no overflow whatever the logits). Only the per-row lse
// is saved for the backward, which recomputes softmax from the logits instead of storing it: one read
// of the logits is cheaper than a write plus a read of a saved tensor of the same size. A row whose label
// is ignore_index (BERT: -100, a position that is not predicted) has loss 0 and gradient 0.
//
// Precision with large logits: lse ~ 1e4 has a float32 ulp of 1e-3, so a float32 lse would put an error
// of 1e-3 into loss = lse - x[label] and into every exp(x - lse), where the answer is O(1). So the loss
// is formed as log(sum) - (x[label] - m), whose terms are small, and lse is kept in float64 (as the
// attention kernel keeps its lse); the backward splits it into a float hi + lo pair and computes
// exp((x - hi) - lo): x - hi is exact when x is near lse, so float32 loses nothing there.
//
// The row sums are `omp simd` reductions (see layernorm_cpu.cpp); exp in float32 is math_cpu.h's
// vectorisable exp_approx, in float64 libm's exp (float64 paths agree with the reference to 1e-10).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <cmath>
#include <limits>

#include "kernels_cpu.h"
#include "math_cpu.h"

namespace minibert {
namespace {

template <typename T>
MB_INLINE T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < n; ++c) m = x[c] > m ? x[c] : m;
  return m;
}

struct Forward {
  template <int VB, typename T>
  MB_INLINE static void run(const T* logits, const int64_t* labels, T* loss, double* lse, int64_t n,
                            int64_t ignore_index, int64_t row_begin, int64_t row_end) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      const T* x = logits + r * n;
      const T m = row_max(x, n);
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < n; ++c) sum += exp_approx(x[c] - m);
      // An infinite maximum made x - m NaN above; the limits instead, as float64 logsumexp gives them:
      // lse = m, loss = m - x[label]. A +inf logit takes all the mass: the loss is inf at any other label
      // (NaN at its own, inf - inf) and the backward gives 0 at every finite logit. All -inf: NaN.
      const T log_sum = std::log(sum);
      if (std::isinf(m)) {
        lse[r] = static_cast<double>(m);
        loss[r] = labels[r] == ignore_index ? T(0) : m - x[labels[r]];
        continue;
      }
      lse[r] = static_cast<double>(m) + static_cast<double>(log_sum);
      loss[r] = labels[r] == ignore_index ? T(0) : log_sum - (x[labels[r]] - m);
    }
  }
};

struct Backward {
  template <int VB, typename T>
  MB_INLINE static void run(const T* grad_loss, const T* logits, const int64_t* labels, const double* lse,
                            T* d_logits, int64_t n, int64_t ignore_index, int64_t row_begin, int64_t row_end) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      T* d = d_logits + r * n;
      if (labels[r] == ignore_index) {
#pragma omp simd
        for (int64_t c = 0; c < n; ++c) d[c] = T(0);
        continue;
      }
      const T* x = logits + r * n;
      // lse = +inf (a +inf logit): lo = 0, not inf - inf = NaN, so every finite logit gets exp(-inf) = 0.
      const T hi = static_cast<T>(lse[r]), g = grad_loss[r];
      const T lo = std::isfinite(lse[r]) ? static_cast<T>(lse[r] - static_cast<double>(hi)) : T(0);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) d[c] = exp_or_zero((x[c] - hi) - lo) * g;
      d[labels[r]] -= g;
    }
  }
};

}  // namespace

void cross_entropy_forward_cpu(const float* logits, const int64_t* labels, float* loss, double* lse, int64_t n_cols,
                               int64_t ignore_index, int64_t row_begin, int64_t row_end) {
  run_widest_vectors<Forward>(logits, labels, loss, lse, n_cols, ignore_index, row_begin, row_end);
}
void cross_entropy_forward_cpu(const double* logits, const int64_t* labels, double* loss, double* lse,
                               int64_t n_cols, int64_t ignore_index, int64_t row_begin, int64_t row_end) {
  run_widest_vectors<Forward>(logits, labels, loss, lse, n_cols, ignore_index, row_begin, row_end);
}
void cross_entropy_backward_cpu(const float* grad_loss, const float* logits, const int64_t* labels, const double* lse,
                                float* d_logits, int64_t n_cols, int64_t ignore_index, int64_t row_begin,
                                int64_t row_end) {
  run_widest_vectors<Backward>(grad_loss, logits, labels, lse, d_logits, n_cols, ignore_index, row_begin, row_end);
}
void cross_entropy_backward_cpu(const double* grad_loss, const double* logits, const int64_t* labels,
                                const double* lse, double* d_logits, int64_t n_cols, int64_t ignore_index,
                                int64_t row_begin, int64_t row_end) {
  run_widest_vectors<Backward>(grad_loss, logits, labels, lse, d_logits, n_cols, ignore_index, row_begin, row_end);
}

}  // namespace minibert
