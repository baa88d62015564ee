// Residual + dropout + LayerNorm on the GPU, forward and backward (formulas in layernorm_cpu.cpp).
//
// One block per row (the backward's blocks walk several rows each). The row's h = residual + dropout(x)
// is kept in shared memory as float32, so half and bfloat16 inputs are summed and normalised in float32
// and each input element is read from global memory once. Thread t owns the columns t, t + blockDim,
// t + 2 blockDim, ...; the row sums are warp shuffles, then one float per warp through shared memory.
// The backward also owns per-block column partials of dweight and dbias in shared memory (a column is
// always updated by the same thread, so no atomics there), and adds them to the float32 accumulators
// with one atomicAdd per column and block at the end.
#include <cstdint>

#include "cuda_common.cuh"
#include "dropout_hash.h"
#include "kernels_cuda.h"

namespace minibert {
namespace {

constexpr int kThreads = 256;  // a multiple of 32: every warp is full for the shuffles
constexpr int kWarps = kThreads / 32;

// The sums of a and b over the block, returned to every thread. Every thread adds the warp partials
// in the same order, so the result is the same in every thread (and deterministic from run to run).
__device__ __forceinline__ float2 block_sum2(float a, float b, float2* scratch) {
  a = warp_sum(a);
  b = warp_sum(b);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = make_float2(a, b);
  __syncthreads();
  float2 total = make_float2(0.0f, 0.0f);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    total.x += scratch[w].x;
    total.y += scratch[w].y;
  }
  __syncthreads();  // the scratch may be reused by the next call
  return total;
}

// h = residual + dropout(x) of element (row r, column c), in float32.
template <typename T>
__device__ __forceinline__ float sum_input(const T* __restrict__ x, const T* __restrict__ residual, int64_t i,
                                           const DropoutArgs& d, float inv_keep) {
  float v = to_float(x[i]);
  if (d.active) v = dropout_keep(d.base, static_cast<uint64_t>(i), d.threshold) ? v * inv_keep : 0.0f;
  if (residual != nullptr) v += to_float(residual[i]);
  return v;
}

template <typename T>
__global__ void layernorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                         const T* __restrict__ weight, const T* __restrict__ bias,
                                         T* __restrict__ y, float* __restrict__ mean_out,
                                         float* __restrict__ rstd_out, int64_t n, float eps, DropoutArgs d) {
  extern __shared__ float h[];  // [n]
  __shared__ float2 scratch[kWarps];
  const int64_t r = blockIdx.x;
  const int64_t first = r * n;
  const float inv_keep = static_cast<float>(d.inv_keep);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += kThreads) {
    h[c] = sum_input(x, residual, first + c, d, inv_keep);
    sum += h[c];
  }
  const float mean = block_sum2(sum, 0.0f, scratch).x / static_cast<float>(n);
  float sq = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += kThreads) sq += (h[c] - mean) * (h[c] - mean);
  const float rstd = rsqrtf(block_sum2(sq, 0.0f, scratch).x / static_cast<float>(n) + eps);
  for (int64_t c = threadIdx.x; c < n; c += kThreads)
    y[first + c] = from_float<T>((h[c] - mean) * rstd * to_float(weight[c]) + to_float(bias[c]));
  if (threadIdx.x == 0) {
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

template <typename T>
__global__ void layernorm_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                          const T* __restrict__ residual, const T* __restrict__ weight,
                                          const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                                          T* __restrict__ d_sum, T* __restrict__ d_x,
                                          float* __restrict__ dweight_acc, float* __restrict__ dbias_acc,
                                          int64_t rows, int64_t n, DropoutArgs d) {
  extern __shared__ float shared[];  // xhat [n], dweight partial [n], dbias partial [n]
  float* xhat = shared;
  float* dw = shared + n;
  float* db = shared + 2 * n;
  __shared__ float2 scratch[kWarps];
  const float inv_keep = static_cast<float>(d.inv_keep);
  for (int64_t c = threadIdx.x; c < n; c += kThreads) dw[c] = db[c] = 0.0f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t first = r * n;
    const float mean = mean_in[r], rstd = rstd_in[r];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int64_t c = threadIdx.x; c < n; c += kThreads) {
      const float xh = (sum_input(x, residual, first + c, d, inv_keep) - mean) * rstd;
      const float dy = to_float(grad[first + c]);
      const float g = dy * to_float(weight[c]);
      xhat[c] = xh;
      sum_g += g;
      sum_gx += g * xh;
      dw[c] += dy * xh;
      db[c] += dy;
    }
    const float2 sums = block_sum2(sum_g, sum_gx, scratch);
    const float mean_g = sums.x / static_cast<float>(n), mean_gx = sums.y / static_cast<float>(n);
    for (int64_t c = threadIdx.x; c < n; c += kThreads) {
      const int64_t i = first + c;
      const float dh = rstd * (to_float(grad[i]) * to_float(weight[c]) - mean_g - xhat[c] * mean_gx);
      d_sum[i] = from_float<T>(dh);
      if (d.active)  // without dropout d_x would equal d_sum: not written
        d_x[i] = from_float<T>(dropout_keep(d.base, static_cast<uint64_t>(i), d.threshold) ? dh * inv_keep : 0.0f);
    }
  }
  for (int64_t c = threadIdx.x; c < n; c += kThreads) {
    atomicAdd(&dweight_acc[c], dw[c]);
    atomicAdd(&dbias_acc[c], db[c]);
  }
}

}  // namespace

cudaError_t layernorm_forward_cuda(ScalarKind kind, const void* x, const void* residual, const void* weight,
                                   const void* bias, void* y, float* mean, float* rstd, int64_t rows,
                                   int64_t n_cols, float eps, const DropoutArgs& dropout, cudaStream_t stream) {
  if (rows <= 0 || rows > 0x7fffffff || n_cols <= 0 || n_cols > kCudaMaxLayerNormCols) return cudaErrorInvalidValue;
  const size_t shared = static_cast<size_t>(n_cols) * sizeof(float);
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    layernorm_forward_kernel<T><<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(weight),
        static_cast<const T*>(bias), static_cast<T*>(y), mean, rstd, n_cols, eps, dropout);
  });
}

cudaError_t layernorm_backward_cuda(ScalarKind kind, const void* grad, const void* x, const void* residual,
                                    const void* weight, const float* mean, const float* rstd, void* d_sum,
                                    void* d_x, float* dweight_acc, float* dbias_acc, int64_t rows, int64_t n_cols,
                                    const DropoutArgs& dropout, cudaStream_t stream) {
  if (rows <= 0 || n_cols <= 0 || n_cols > kCudaMaxLayerNormCols) return cudaErrorInvalidValue;
  // Enough blocks to fill the GPU, few enough that each adds its column partials for many rows.
  const unsigned blocks = static_cast<unsigned>(rows < 1024 ? rows : 1024);
  const size_t shared = 3 * static_cast<size_t>(n_cols) * sizeof(float);
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    layernorm_backward_kernel<T><<<blocks, kThreads, shared, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(x), static_cast<const T*>(residual),
        static_cast<const T*>(weight), mean, rstd, static_cast<T*>(d_sum), static_cast<T*>(d_x), dweight_acc,
        dbias_acc, rows, n_cols, dropout);
  });
}

}  // namespace minibert
