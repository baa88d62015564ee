// Residual + dropout + LayerNorm on the GPU, forward and backward (formulas in layernorm_cpu.cpp).
//
// Rows of up to 1024 columns (BERT's 768 and 1024): one warp per row, the row held in registers.
// Lane l owns the vectors l, l + 32, l + 64, ... of the row (a vector is 16 bytes, 4 floats or 8
// halves/bfloat16s, when every pointer is 16-byte aligned and the row length a multiple of it; else one
// element), so each load instruction of the warp reads 512 contiguous bytes. The number of vectors per
// lane is a template argument (the launcher picks the smallest that covers the row), so the loops unroll
// and h = residual + dropout(x) lives in float32 registers: the forward reads x and residual once, sums,
// takes mean and the centred variance from the registers (two warp shuffles reductions, no shared memory,
// no __syncthreads), and writes y, mean and rstd. The backward recomputes h, keeps xhat and g = dy * weight
// in registers between its two warp reductions, and remembers the dropout mask as one bit per element, so
// each element's hash is computed once. A lane always owns the same columns, so its share of dweight and
// dbias stays in registers across all the rows its warp walks (grid-stride, about one wave of blocks);
// at the end the warps of a block fold them in shared memory and add them to the float32 accumulators
// with one atomicAdd per column and block.
//
// Wider rows (up to kCudaMaxLayerNormCols) run the block-per-row kernels below them: the row's h is
// kept in shared memory as float32, thread t owns the columns t, t + blockDim, ...; the row sums are warp
// shuffles, then one float per warp through shared memory; the backward keeps per-block column partials
// of dweight and dbias in shared memory.
#include <cstdint>
#include <type_traits>

#include "cuda_common.cuh"
#include "dropout_hash.h"
#include "kernels_cuda.h"

namespace minibert {
namespace {

// ---- rows of up to kWarpRowMax columns: one warp per row, the row in registers ---------------------------

// Blocks of 4 warps: small grains, so that a few thousand rows still spread evenly over the SMs.
constexpr int kWarpRowThreads = 128;
constexpr int kWarpRowWarps = kWarpRowThreads / 32;
constexpr int kMaxPerLane = 32;  // floats of the row per lane (and bits of the dropout mask word)
constexpr int64_t kWarpRowMax = 32 * kMaxPerLane;

// The backward's blocks per SM, which __launch_bounds__ makes the compiler fit in the registers without
// spilling (xhat, g, dweight and dbias: 4 floats per element of the lane): up to 16 elements per lane
// 4 blocks (16 warps, at most 128 registers), up to 24 (768 columns) 3 blocks, up to 32 2 blocks. The
// grid is exactly that many blocks per SM, one full wave, each block walking its share of the rows.
constexpr int backward_blocks_per_sm(int per_lane) { return per_lane <= 16 ? 4 : (per_lane <= 24 ? 3 : 2); }

// h = residual + dropout(x) for the V elements at flat index i (residual may be null), as the CPU kernel
// and NumPy draw the mask: element i is kept by the hash at counter i. Returns the decisions as bits (bit
// e: element i + e kept), which the backward keeps so that it hashes each element once.
template <typename T, int V>
__device__ __forceinline__ uint32_t load_sum(const T* __restrict__ x, const T* __restrict__ residual, int64_t i,
                                             const DropoutArgs& d, float inv_keep, float (&h)[V]) {
  load_vec<T, V>(x + i, h);
  uint32_t kept_bits = 0;
  if (d.active) {
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const bool kept = dropout_keep(d.base, static_cast<uint64_t>(i + e), d.threshold);
      kept_bits |= static_cast<uint32_t>(kept) << e;
      h[e] = kept ? h[e] * inv_keep : 0.0f;
    }
  }
  if (residual != nullptr) {
    float res[V];
    load_vec<T, V>(residual + i, res);
#pragma unroll
    for (int e = 0; e < V; ++e) h[e] += res[e];
  }
  return kept_bits;
}

template <typename T, int V, int kVecs>
__global__ void __launch_bounds__(kWarpRowThreads)
    layernorm_forward_warp_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                  const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ y,
                                  float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t rows,
                                  int n, float eps, DropoutArgs d) {
  static_assert(V * kVecs <= kMaxPerLane, "too many elements per lane");
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpRowWarps + (threadIdx.x >> 5);
  if (r >= rows) return;  // the whole warp leaves together: the shuffles below see full warps
  const int64_t first = r * n;
  const float inv_keep = static_cast<float>(d.inv_keep);
  float h[kVecs][V];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int c = (k * 32 + lane) * V;
    if (c < n) {  // n % V == 0: a vector is wholly inside the row or wholly outside
      load_sum<T, V>(x, residual, first + c, d, inv_keep, h[k]);
#pragma unroll
      for (int e = 0; e < V; ++e) sum += h[k][e];
    }
  }
  const float mean = warp_sum(sum) / static_cast<float>(n);
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < kVecs; ++k)
    if ((k * 32 + lane) * V < n) {
#pragma unroll
      for (int e = 0; e < V; ++e) sq += (h[k][e] - mean) * (h[k][e] - mean);
    }
  const float rstd = rsqrtf(warp_sum(sq) / static_cast<float>(n) + eps);
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int c = (k * 32 + lane) * V;
    if (c < n) {
      float w[V], b[V];
      load_vec<T, V>(weight + c, w);
      load_vec<T, V>(bias + c, b);
#pragma unroll
      for (int e = 0; e < V; ++e) h[k][e] = (h[k][e] - mean) * rstd * w[e] + b[e];
      store_vec<T, V>(y + first + c, h[k]);
    }
  }
  if (lane == 0) {
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

template <typename T, int V, int kVecs>
__global__ void __launch_bounds__(kWarpRowThreads, backward_blocks_per_sm(V * kVecs))
    layernorm_backward_warp_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                   const T* __restrict__ residual, const T* __restrict__ weight,
                                   const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                                   T* __restrict__ d_sum, T* __restrict__ d_x, float* __restrict__ dweight_acc,
                                   float* __restrict__ dbias_acc, int64_t rows, int n, DropoutArgs d) {
  static_assert(V * kVecs <= kMaxPerLane, "too many elements per lane (and bits of the mask)");
  extern __shared__ float acc[];  // dweight [n], dbias [n]: the block's column sums
  const int lane = threadIdx.x & 31;
  for (int c = threadIdx.x; c < 2 * n; c += kWarpRowThreads) acc[c] = 0.0f;
  __syncthreads();
  const float inv_keep = static_cast<float>(d.inv_keep);
  float dw[kVecs][V], db[kVecs][V];
#pragma unroll
  for (int k = 0; k < kVecs; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) dw[k][e] = db[k][e] = 0.0f;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * kWarpRowWarps;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpRowWarps + (threadIdx.x >> 5); r < rows;
       r += row_step) {  // the same rows for the whole warp
    const int64_t first = r * n;
    const float mean = mean_in[r], rstd = rstd_in[r];
    float xhat[kVecs][V], g[kVecs][V];
    uint32_t keep = 0;  // bit k V + e: element e of vector k survived dropout
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c = (k * 32 + lane) * V;
      if (c < n) {
        float dy[V], w[V];
        load_vec<T, V>(grad + first + c, dy);
        load_vec<T, V>(weight + c, w);
        keep |= load_sum<T, V>(x, residual, first + c, d, inv_keep, xhat[k]) << (k * V);  // h, then xhat
#pragma unroll
        for (int e = 0; e < V; ++e) {
          xhat[k][e] = (xhat[k][e] - mean) * rstd;
          g[k][e] = dy[e] * w[e];
          sum_g += g[k][e];
          sum_gx += g[k][e] * xhat[k][e];
          dw[k][e] += dy[e] * xhat[k][e];
          db[k][e] += dy[e];
        }
      }
    }
    const float mean_g = warp_sum(sum_g) / static_cast<float>(n);
    const float mean_gx = warp_sum(sum_gx) / static_cast<float>(n);
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c = (k * 32 + lane) * V;
      if (c < n) {
        float dh[V];
#pragma unroll
        for (int e = 0; e < V; ++e) dh[e] = rstd * (g[k][e] - mean_g - xhat[k][e] * mean_gx);
        store_vec<T, V>(d_sum + first + c, dh);
        if (d.active) {  // without dropout d_x would equal d_sum: not written
#pragma unroll
          for (int e = 0; e < V; ++e) dh[e] = (keep >> (k * V + e)) & 1u ? dh[e] * inv_keep : 0.0f;
          store_vec<T, V>(d_x + first + c, dh);
        }
      }
    }
  }
  // Fold the warps' column partials in shared memory, then one atomicAdd per column and block.
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int c = (k * 32 + lane) * V;
    if (c < n) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        atomicAdd(&acc[c + e], dw[k][e]);
        atomicAdd(&acc[n + c + e], db[k][e]);
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < n; c += kWarpRowThreads) {
    atomicAdd(&dweight_acc[c], acc[c]);
    atomicAdd(&dbias_acc[c], acc[n + c]);
  }
}

// Calls f(std::integral_constant<int, K>{}) for the first K of the list with K >= need (false: none).
template <int... Ks>
struct VecCounts {};
template <typename F>
bool pick_vec_count(VecCounts<>, int64_t, F&&) {
  return false;
}
template <int K, int... Ks, typename F>
bool pick_vec_count(VecCounts<K, Ks...>, int64_t need, F&& f) {
  if (need <= K) {
    f(std::integral_constant<int, K>{});
    return true;
  }
  return pick_vec_count(VecCounts<Ks...>{}, need, f);
}

// Runs f(std::integral_constant<int, V>{}, std::integral_constant<int, kVecs>{}) for rows of n columns
// when a warp can hold them: 16-byte vectors when `aligned` and n % V == 0, single elements otherwise.
// The lists of vectors per lane fit BERT's rows exactly (768 floats: 6 float4 per lane; 768 bfloat16:
// 3 vectors of 8; 1024: 8 and 4).
template <typename T, typename F>
bool with_warp_layout(int64_t n, bool aligned, F&& f) {
  constexpr int V = 16 / sizeof(T);
  if (n > kWarpRowMax) return false;
  if (aligned && n % V == 0) {
    auto g = [&](auto vecs) { f(std::integral_constant<int, V>{}, vecs); };
    const int64_t need = (n + 32 * V - 1) / (32 * V);
    if constexpr (V == 4) return pick_vec_count(VecCounts<1, 2, 3, 4, 6, 8>{}, need, g);
    else return pick_vec_count(VecCounts<1, 2, 3, 4>{}, need, g);
  }
  auto g = [&](auto vecs) { f(std::integral_constant<int, 1>{}, vecs); };
  return pick_vec_count(VecCounts<2, 8, 32>{}, (n + 31) / 32, g);
}

// ---- wider rows: one block per row, the row in shared memory ----------------------------------------------

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
__global__ void layernorm_forward_block_kernel(const T* __restrict__ x, const T* __restrict__ residual,
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
__global__ void layernorm_backward_block_kernel(const T* __restrict__ grad, const T* __restrict__ x,
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
  const bool aligned = is_aligned16(x) && (residual == nullptr || is_aligned16(residual)) &&
                       is_aligned16(weight) && is_aligned16(bias) && is_aligned16(y);
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    const bool warp_rows = with_warp_layout<T>(n_cols, aligned, [&](auto width, auto vecs) {
      constexpr int V = decltype(width)::value, kVecs = decltype(vecs)::value;
      const int64_t blocks = (rows + kWarpRowWarps - 1) / kWarpRowWarps;
      layernorm_forward_warp_kernel<T, V, kVecs><<<static_cast<unsigned>(blocks), kWarpRowThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(weight),
          static_cast<const T*>(bias), static_cast<T*>(y), mean, rstd, rows, static_cast<int>(n_cols), eps,
          dropout);
    });
    if (warp_rows) return;
    const size_t shared = static_cast<size_t>(n_cols) * sizeof(float);
    layernorm_forward_block_kernel<T><<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(weight),
        static_cast<const T*>(bias), static_cast<T*>(y), mean, rstd, n_cols, eps, dropout);
  });
}

cudaError_t layernorm_backward_cuda(ScalarKind kind, const void* grad, const void* x, const void* residual,
                                    const void* weight, const float* mean, const float* rstd, void* d_sum,
                                    void* d_x, float* dweight_acc, float* dbias_acc, int64_t rows, int64_t n_cols,
                                    const DropoutArgs& dropout, cudaStream_t stream) {
  if (rows <= 0 || n_cols <= 0 || n_cols > kCudaMaxLayerNormCols) return cudaErrorInvalidValue;
  const bool aligned = is_aligned16(grad) && is_aligned16(x) && (residual == nullptr || is_aligned16(residual)) &&
                       is_aligned16(weight) && is_aligned16(d_sum) && (!dropout.active || is_aligned16(d_x));
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    const bool warp_rows = with_warp_layout<T>(n_cols, aligned, [&](auto width, auto vecs) {
      constexpr int V = decltype(width)::value, kVecs = decltype(vecs)::value;
      // About one wave of blocks, each walking many rows, so that few column partials are added.
      const int64_t need = (rows + kWarpRowWarps - 1) / kWarpRowWarps;
      const int64_t wave = static_cast<int64_t>(device_sm_count()) * backward_blocks_per_sm(V * kVecs);
      const unsigned blocks = static_cast<unsigned>(need < wave ? need : wave);
      const size_t shared = 2 * static_cast<size_t>(n_cols) * sizeof(float);
      layernorm_backward_warp_kernel<T, V, kVecs><<<blocks, kWarpRowThreads, shared, stream>>>(
          static_cast<const T*>(grad), static_cast<const T*>(x), static_cast<const T*>(residual),
          static_cast<const T*>(weight), mean, rstd, static_cast<T*>(d_sum), static_cast<T*>(d_x), dweight_acc,
          dbias_acc, rows, static_cast<int>(n_cols), dropout);
    });
    if (warp_rows) return;
    // Enough blocks to fill the GPU, few enough that each adds its column partials for many rows.
    const unsigned blocks = static_cast<unsigned>(rows < 1024 ? rows : 1024);
    const size_t shared = 3 * static_cast<size_t>(n_cols) * sizeof(float);
    layernorm_backward_block_kernel<T><<<blocks, kThreads, shared, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(x), static_cast<const T*>(residual),
        static_cast<const T*>(weight), mean, rstd, static_cast<T*>(d_sum), static_cast<T*>(d_x), dweight_acc,
        dbias_acc, rows, n_cols, dropout);
  });
}

}  // namespace minibert
