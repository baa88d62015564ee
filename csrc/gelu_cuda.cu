// GELU and bias + GELU on the GPU, forward and backward (formulas in gelu_cpu.cpp). Element-wise
// grid-stride kernels; the bias gradient is reduced in the backward kernel: a block owns a strip of
// 32 columns, its 8 warps-rows walk down the rows summing dx, shared memory folds the 8 partial sums,
// and one float atomicAdd per column and block lands in dbias_acc.
#include <cstdint>

#include "cuda_common.cuh"
#include "kernels_cuda.h"

namespace minibert {
namespace {

constexpr float kSqrtHalf = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kTanhCubic = 0.044715f;

__device__ __forceinline__ float gelu_value(float x, bool use_tanh) {
  if (use_tanh) return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kTanhCubic * x * x * x)));
  return 0.5f * x * (1.0f + erff(x * kSqrtHalf));
}

__device__ __forceinline__ float gelu_grad(float x, bool use_tanh) {
  if (use_tanh) {
    const float x2 = x * x;
    const float t = tanhf(kSqrt2OverPi * (x + kTanhCubic * x2 * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kTanhCubic * x2);
  }
  return 0.5f * (1.0f + erff(x * kSqrtHalf)) + x * kInvSqrt2Pi * __expf(-0.5f * x * x);
}

template <typename T>
__global__ void gelu_forward_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                                    int64_t n, int64_t n_cols, bool use_tanh) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float xi = to_float(x[i]) + (bias ? to_float(bias[i % n_cols]) : 0.0f);
    y[i] = from_float<T>(gelu_value(xi, use_tanh));
  }
}

template <typename T>
__global__ void gelu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                                     int64_t n, bool use_tanh) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = from_float<T>(to_float(dy[i]) * gelu_grad(to_float(x[i]), use_tanh));
}

constexpr int kColsPerBlock = 32;
constexpr int kRowLanes = 8;

template <typename T>
__global__ void bias_gelu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                          const T* __restrict__ bias, T* __restrict__ dx,
                                          float* __restrict__ dbias_acc, int64_t rows, int64_t n_cols,
                                          bool use_tanh) {
  __shared__ float partial[kRowLanes][kColsPerBlock];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColsPerBlock + threadIdx.x;
  float sum = 0.0f;
  if (c < n_cols) {
    const float b = to_float(bias[c]);
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * kRowLanes + threadIdx.y; r < rows;
         r += static_cast<int64_t>(gridDim.y) * kRowLanes) {
      const int64_t i = r * n_cols + c;
      const float g = to_float(dy[i]) * gelu_grad(to_float(x[i]) + b, use_tanh);
      dx[i] = from_float<T>(g);
      sum += g;
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < n_cols) {
#pragma unroll
    for (int k = 1; k < kRowLanes; ++k) sum += partial[k][threadIdx.x];
    atomicAdd(&dbias_acc[c], sum);
  }
}

}  // namespace

cudaError_t gelu_forward_cuda(ScalarKind kind, const void* x, const void* bias, void* y, int64_t n,
                              int64_t n_cols, bool use_tanh, cudaStream_t stream) {
  if (n <= 0 || n_cols <= 0) return cudaErrorInvalidValue;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    gelu_forward_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(y), n, n_cols, use_tanh);
  });
}

cudaError_t gelu_backward_cuda(ScalarKind kind, const void* dy, const void* x, const void* bias, void* dx,
                               float* dbias_acc, int64_t rows, int64_t n_cols, bool use_tanh,
                               cudaStream_t stream) {
  if (rows <= 0 || n_cols <= 0) return cudaErrorInvalidValue;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    if (bias == nullptr) {
      gelu_backward_kernel<T><<<grid_for(rows * n_cols, 256), 256, 0, stream>>>(
          static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dx), rows * n_cols, use_tanh);
      return;
    }
    const int64_t row_blocks = (rows + kRowLanes - 1) / kRowLanes;
    const dim3 grid(static_cast<unsigned>((n_cols + kColsPerBlock - 1) / kColsPerBlock),
                    static_cast<unsigned>(row_blocks < 256 ? row_blocks : 256));
    bias_gelu_backward_kernel<T><<<grid, dim3(kColsPerBlock, kRowLanes), 0, stream>>>(
        static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(dx),
        dbias_acc, rows, n_cols, use_tanh);
  });
}

}  // namespace minibert
