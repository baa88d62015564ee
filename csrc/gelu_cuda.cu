// GELU and bias + GELU on the GPU, forward and backward (formulas in gelu_cpu.cpp).
//
// GELU reads and writes each element once, so it should run at the speed of a memory copy; the design is
// about moving bytes with as few instructions as possible:
// * 16-byte vectors. Each thread loads and stores 16 bytes at a time (4 floats or 8 halves/bfloat16s,
//   one ld/st.global.v4 instead of 4 or 8 scalar ones), computes in float32 and rounds once on the store.
//   The launcher takes this path when every pointer is 16-byte aligned (and, with a bias, the row length
//   is a multiple of the vector); otherwise the same kernel runs with vectors of one element.
// * No division per element. With a bias, each thread tracks the column of its vector: the grid-stride
//   loop advances it by (stride mod columns) with one compare-and-subtract, so the only 64-bit modulo is
//   done once per thread. The bias vector is then one 16-byte (cached) load.
// * A grid that fills the GPU once: the SM count (queried once per device and cached) times the blocks an
//   SM holds; threads stride over the rest. A small tensor gets only the blocks it needs.
// * The bias backward reduces dx over rows while it is in registers: a block owns a strip of 32 lanes x
//   one vector of columns (512 bytes of a bfloat16 row, fully coalesced), its 8 warps walk down the rows,
//   shared memory folds the 8 partial sums, and one float atomicAdd per column and block lands in
//   dbias_acc.
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

constexpr int kThreads = 256;
// A full SM on sm_80 / sm_90 (2048 resident threads); __launch_bounds__ holds the element-wise kernels
// to the 32 registers per thread that allows.
constexpr int kBlocksPerSm = 2048 / kThreads;

enum class Mode { kForward, kBiasForward, kBackward };

// The element-wise kernels: y = gelu(x [+ bias]) or dx = dy * gelu'(x), on vectors of V elements.
// n_vec = n / V vectors are the bulk; the n % V elements after them (only without a bias) are the tail.
template <typename T, int V, Mode kMode>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    gelu_elementwise_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ bias,
                            T* __restrict__ out, int64_t n, int64_t n_cols, int64_t col_step, bool use_tanh) {
  const int64_t n_vec = n / V;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  // The column (in vectors) of this thread's vector, advanced without a division in the loop: col_step
  // = stride mod col_vecs comes from the launcher, and the one modulo here is 32-bit (start < 2^31).
  const int64_t col_vecs = kMode == Mode::kBiasForward ? n_cols / V : 1;
  int64_t col = 0;
  if (kMode == Mode::kBiasForward)
    col = start < col_vecs ? start : static_cast<uint32_t>(start) % static_cast<uint32_t>(col_vecs);
  for (int64_t i = start; i < n_vec; i += stride) {
    float v[V];
    load_vec<T, V>(x + i * V, v);
    if (kMode == Mode::kBiasForward) {
      float b[V];
      load_vec<T, V>(bias + col * V, b);
#pragma unroll
      for (int e = 0; e < V; ++e) v[e] += b[e];
      col += col_step;
      if (col >= col_vecs) col -= col_vecs;
    }
    if (kMode == Mode::kBackward) {
      float g[V];
      load_vec<T, V>(dy + i * V, g);
#pragma unroll
      for (int e = 0; e < V; ++e) v[e] = g[e] * gelu_grad(v[e], use_tanh);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) v[e] = gelu_value(v[e], use_tanh);
    }
    store_vec<T, V>(out + i * V, v);
  }
  if (V > 1 && kMode != Mode::kBiasForward) {  // the tail (with a bias, n_cols % V == 0: none)
    const int64_t i = n_vec * V + start;
    if (i < n) {
      const float xi = to_float(x[i]);
      out[i] = from_float<T>(kMode == Mode::kBackward ? to_float(dy[i]) * gelu_grad(xi, use_tanh)
                                                      : gelu_value(xi, use_tanh));
    }
  }
}

constexpr int kRowWarps = 8;  // warps (rows in flight) per block of the bias backward
constexpr int kBiasBackwardBlocksPerSm = 4;  // held to 64 registers by __launch_bounds__: 32 warps per SM

// dx = dy * gelu'(x + bias) on [rows, n_cols], and the column sums of dx into dbias_acc. Block (32, 8):
// lane t owns the V columns strip + t V .. strip + t V + V - 1, warp w the rows w, w + 8 gridDim.y, ...
template <typename T, int V>
__global__ void __launch_bounds__(32 * kRowWarps, kBiasBackwardBlocksPerSm)
    bias_gelu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ bias,
                              T* __restrict__ dx, float* __restrict__ dbias_acc, int64_t rows, int64_t n_cols,
                              bool use_tanh) {
  constexpr int kStrip = 32 * V;  // columns per block
  __shared__ float partial[kRowWarps][kStrip];
  const int64_t strip = static_cast<int64_t>(blockIdx.x) * kStrip;
  const int64_t c = strip + threadIdx.x * V;  // n_cols % V == 0: the vector is wholly in or out
  float sum[V];
#pragma unroll
  for (int e = 0; e < V; ++e) sum[e] = 0.0f;
  if (c < n_cols) {
    float b[V];
    load_vec<T, V>(bias + c, b);
    const int64_t row_step = static_cast<int64_t>(gridDim.y) * kRowWarps;
    const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRowWarps + threadIdx.y;
    int64_t i = r0 * n_cols + c;
    const int64_t i_step = row_step * n_cols;
    for (int64_t r = r0; r < rows; r += row_step, i += i_step) {
      float g[V], v[V];
      load_vec<T, V>(dy + i, g);
      load_vec<T, V>(x + i, v);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        g[e] *= gelu_grad(v[e] + b[e], use_tanh);
        sum[e] += g[e];
      }
      store_vec<T, V>(dx + i, g);
    }
  }
#pragma unroll
  for (int e = 0; e < V; ++e) partial[threadIdx.y][threadIdx.x * V + e] = sum[e];
  __syncthreads();
  for (int j = threadIdx.y * 32 + threadIdx.x; j < kStrip; j += 32 * kRowWarps) {
    if (strip + j >= n_cols) break;
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kRowWarps; ++w) total += partial[w][j];
    atomicAdd(&dbias_acc[strip + j], total);
  }
}

// Blocks for `work` items of `per_block` each: what the work needs, at most one full wave of the GPU.
unsigned grid_blocks(int64_t work, int64_t per_block, int64_t blocks_per_sm) {
  const int64_t need = (work + per_block - 1) / per_block;
  const int64_t wave = static_cast<int64_t>(device_sm_count()) * blocks_per_sm;
  return static_cast<unsigned>(need < 1 ? 1 : (need < wave ? need : wave));
}

template <typename T, int V, Mode kMode>
void launch_elementwise(const T* dy, const T* x, const T* bias, T* out, int64_t n, int64_t n_cols, bool use_tanh,
                        cudaStream_t stream) {
  const unsigned blocks = grid_blocks(n / V, kThreads, kBlocksPerSm);
  const int64_t col_step = (static_cast<int64_t>(blocks) * kThreads) % (n_cols / V > 0 ? n_cols / V : 1);
  gelu_elementwise_kernel<T, V, kMode><<<blocks, kThreads, 0, stream>>>(dy, x, bias, out, n, n_cols, col_step,
                                                                       use_tanh);
}

}  // namespace

cudaError_t gelu_forward_cuda(ScalarKind kind, const void* x, const void* bias, void* y, int64_t n,
                              int64_t n_cols, bool use_tanh, cudaStream_t stream) {
  if (n <= 0 || n_cols <= 0) return cudaErrorInvalidValue;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    const T* xt = static_cast<const T*>(x);
    const T* bt = static_cast<const T*>(bias);
    T* yt = static_cast<T*>(y);
    const bool vec = is_aligned16(x) && is_aligned16(y);
    if (bt == nullptr) {
      if (vec) launch_elementwise<T, V, Mode::kForward>(nullptr, xt, nullptr, yt, n, n_cols, use_tanh, stream);
      else launch_elementwise<T, 1, Mode::kForward>(nullptr, xt, nullptr, yt, n, n_cols, use_tanh, stream);
    } else if (vec && is_aligned16(bias) && n_cols % V == 0) {
      launch_elementwise<T, V, Mode::kBiasForward>(nullptr, xt, bt, yt, n, n_cols, use_tanh, stream);
    } else {
      launch_elementwise<T, 1, Mode::kBiasForward>(nullptr, xt, bt, yt, n, n_cols, use_tanh, stream);
    }
  });
}

cudaError_t gelu_backward_cuda(ScalarKind kind, const void* dy, const void* x, const void* bias, void* dx,
                               float* dbias_acc, int64_t rows, int64_t n_cols, bool use_tanh,
                               cudaStream_t stream) {
  if (rows <= 0 || n_cols <= 0) return cudaErrorInvalidValue;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    const T* dyt = static_cast<const T*>(dy);
    const T* xt = static_cast<const T*>(x);
    const T* bt = static_cast<const T*>(bias);
    T* dxt = static_cast<T*>(dx);
    const bool vec = is_aligned16(dy) && is_aligned16(x) && is_aligned16(dx);
    if (bt == nullptr) {
      const int64_t n = rows * n_cols;
      if (vec) launch_elementwise<T, V, Mode::kBackward>(dyt, xt, nullptr, dxt, n, n_cols, use_tanh, stream);
      else launch_elementwise<T, 1, Mode::kBackward>(dyt, xt, nullptr, dxt, n, n_cols, use_tanh, stream);
      return;
    }
    // Column strips across grid.x; grid.y splits the rows so that the grid is about one wave.
    auto launch = [&](auto width) {
      constexpr int W = decltype(width)::value;
      const int64_t strips = (n_cols + 32 * W - 1) / (32 * W);
      const int64_t row_blocks = (rows + kRowWarps - 1) / kRowWarps;
      int64_t wave = static_cast<int64_t>(device_sm_count()) * kBiasBackwardBlocksPerSm / strips;
      wave = wave < 1 ? 1 : (wave > 65535 ? 65535 : wave);
      const dim3 grid(static_cast<unsigned>(strips), static_cast<unsigned>(row_blocks < wave ? row_blocks : wave));
      bias_gelu_backward_kernel<T, W><<<grid, dim3(32, kRowWarps), 0, stream>>>(dyt, xt, bt, dxt, dbias_acc, rows,
                                                                                 n_cols, use_tanh);
    };
    if (vec && is_aligned16(bias) && n_cols % V == 0) launch(std::integral_constant<int, V>{});
    else launch(std::integral_constant<int, 1>{});
  });
}

}  // namespace minibert
