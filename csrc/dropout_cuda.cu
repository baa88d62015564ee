// Hash dropout on the GPU: y = x * keep / (1 - p), keep from dropout_hash.h (bit-identical to NumPy/C++).
#include <cstdint>

#include "cuda_common.cuh"
#include "dropout_hash.h"
#include "kernels_cuda.h"

namespace minibert {
namespace {

template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, DropoutArgs dropout) {
  const float inv_keep = static_cast<float>(dropout.inv_keep);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const bool keep = dropout_keep(dropout.base, static_cast<uint64_t>(i), dropout.threshold);
    y[i] = from_float<T>(keep ? to_float(x[i]) * inv_keep : 0.0f);
  }
}

}  // namespace

cudaError_t dropout_cuda(ScalarKind kind, const void* x, void* y, int64_t n, const DropoutArgs& dropout,
                         cudaStream_t stream) {
  if (n <= 0) return cudaErrorInvalidValue;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    dropout_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), n,
                                                             dropout);
  });
}

}  // namespace minibert
