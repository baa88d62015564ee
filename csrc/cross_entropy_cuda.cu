// Cross-entropy of rows of logits on the GPU, forward and backward (formulas in cross_entropy_cpu.cpp).
//
// One block per row. Forward: thread t walks the columns t, t + blockDim, ... keeping an ONLINE
// maximum and sum (when a larger value m' arrives, the sum so far is rescaled by exp(m - m')), so the
// row is read from global memory once; the per-thread (max, sum) pairs are then merged by warp shuffles
// and one pair per warp through shared memory. Backward: the same walk writes
// (exp(x - lse) - [c == label]) * grad_loss. Everything is computed in float32; loss, lse and grad_loss
// are float32 whatever the logits' type. A label outside [0, n_cols) that is not ignore_index gives a
// NaN loss (the binding checks labels on the CPU; on the GPU reading them would cost a host sync).
#include <cmath>
#include <cstdint>

#include "cuda_common.cuh"
#include "kernels_cuda.h"

namespace minibert {
namespace {

constexpr int kThreads = 256;  // a multiple of 32: every warp is full for the shuffles
constexpr int kWarps = kThreads / 32;

// (m, s) merged with (m2, s2): the sums of exp(x - max) of two parts of a row, over their common maximum.
// A part that has seen nothing has m = -inf, s = 0; exp(-inf - m) = 0 keeps it from contributing (and
// two such parts stay (-inf, 0) instead of computing -inf - -inf = NaN).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float top = fmaxf(m, m2);
  if (top == -INFINITY) return;
  s = s * __expf(m - top) + s2 * __expf(m2 - top);
  m = top;
}

template <typename T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                                             float* __restrict__ loss, float* __restrict__ lse, int64_t n,
                                             int64_t ignore_index) {
  __shared__ float2 scratch[kWarps];
  const int64_t r = blockIdx.x;
  const T* x = logits + r * n;
  float m = -INFINITY, s = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += kThreads) {  // merge(m, s, v, 1) with one exp instead of two
    const float v = to_float(x[c]);
    if (v > m) {
      s = s * __expf(m - v) + 1.0f;
      m = v;
    } else if (v != -INFINITY) {  // a -inf logit adds exp(-inf) = 0 (and -inf - -inf would be NaN)
      s += __expf(v - m);
    }
  }
#pragma unroll
  for (int k = 16; k > 0; k >>= 1) {
    const float m2 = __shfl_xor_sync(kFullWarp, m, k), s2 = __shfl_xor_sync(kFullWarp, s, k);
    merge(m, s, m2, s2);
  }
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = make_float2(m, s);
  __syncthreads();
  if (threadIdx.x == 0) {
    float mt = -INFINITY, st = 0.0f;
    for (int w = 0; w < kWarps; ++w) merge(mt, st, scratch[w].x, scratch[w].y);
    // loss = log(sum) - (x[label] - max): small terms, where lse - x[label] would subtract two large ones.
    // An infinite maximum gives the limits of cross_entropy_cpu.cpp: lse = max, loss = max - x[label].
    const bool infinite = fabsf(mt) == INFINITY;
    const float log_sum = logf(st);
    const int64_t label = labels[r];
    lse[r] = infinite ? mt : mt + log_sum;
    if (label == ignore_index) loss[r] = 0.0f;
    else if (label < 0 || label >= n) loss[r] = NAN;
    else loss[r] = infinite ? mt - to_float(x[label]) : log_sum - (to_float(x[label]) - mt);
  }
}

template <typename T>
__global__ void cross_entropy_backward_kernel(const float* __restrict__ grad_loss, const T* __restrict__ logits,
                                              const int64_t* __restrict__ labels, const float* __restrict__ lse,
                                              T* __restrict__ d_logits, int64_t n, int64_t ignore_index) {
  const int64_t r = blockIdx.x;
  const int64_t label = labels[r];
  const bool ignored = label == ignore_index;
  const float g = ignored ? 0.0f : grad_loss[r], row_lse = lse[r];
  const T* x = logits + r * n;
  T* d = d_logits + r * n;
  for (int64_t c = threadIdx.x; c < n; c += kThreads)
    d[c] = from_float<T>(ignored ? 0.0f : (__expf(to_float(x[c]) - row_lse) - (c == label ? 1.0f : 0.0f)) * g);
}

}  // namespace

cudaError_t cross_entropy_forward_cuda(ScalarKind kind, const void* logits, const int64_t* labels, float* loss,
                                       float* lse, int64_t rows, int64_t n_cols, int64_t ignore_index,
                                       cudaStream_t stream) {
  if (rows <= 0 || rows > 0x7fffffff || n_cols <= 0) return cudaErrorInvalidValue;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_forward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), labels, loss, lse, n_cols, ignore_index);
  });
}

cudaError_t cross_entropy_backward_cuda(ScalarKind kind, const float* grad_loss, const void* logits,
                                        const int64_t* labels, const float* lse, void* d_logits, int64_t rows,
                                        int64_t n_cols, int64_t ignore_index, cudaStream_t stream) {
  if (rows <= 0 || rows > 0x7fffffff || n_cols <= 0) return cudaErrorInvalidValue;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_backward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        grad_loss, static_cast<const T*>(logits), labels, lse, static_cast<T*>(d_logits), n_cols, ignore_index);
  });
}

}  // namespace minibert
