// Fused softmax attention on the GPU: the same tiled online-softmax algorithm as attention_cpu.cpp.
//
// Forward: a block of 4 warps owns 16 query rows of one (batch, head); each warp owns 4 of the rows.
// Key/value tiles of 32 keys are staged in shared memory (as float); lane j scores key j of the tile
// against a row, warp shuffles give the tile max and sum, and the output row (spread over the lanes,
// d = lane + 32 t) is rescaled and accumulated with the probabilities broadcast lane by lane.
// Backward (float32, head sizes the tensor cores do not take, or MINIBERT_CUDA_ATTENTION=simt; float16 and
// bfloat16 otherwise go to attention_cuda_tc_bwd.cu): a block owns 32 keys (8 per warp) and keeps their
// k, v, dk, dv in registers while it streams over all query rows staged in shared memory: P is
// recomputed from the saved log-sum-exp, dS = P (dP Z - D). dQ = scale dS K: the four warps add their
// parts of a row in shared memory, and each block adds its sum for the chunk of rows to dq_acc with one
// float atomic per element (not one per warp).
// All arithmetic is float32 whatever the storage type.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"
#include "dropout_hash.h"
#include "kernels_cuda.h"

namespace minibert {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kBlockRows = kWarps * kRowsPerWarp;  // query rows per forward block
constexpr int kTileKeys = 32;                      // keys per tile = lanes of a warp
constexpr int kDPerLane = kCudaMaxHeadDim / 32;    // output columns each lane owns
constexpr int kKeysPerWarp = kTileKeys / kWarps;   // backward: keys each warp owns

__device__ __forceinline__ bool key_valid(const uint8_t* key_mask, int64_t b, int64_t Sk, int64_t j) {
  return j < Sk && (key_mask == nullptr || key_mask[b * Sk + j] != 0);
}

__device__ __forceinline__ float dropout_factor(const DropoutArgs& dropout, uint64_t index) {
  if (!dropout.active) return 1.0f;
  return dropout_keep(dropout.base, index, dropout.threshold) ? static_cast<float>(dropout.inv_keep) : 0.0f;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         const uint8_t* __restrict__ key_mask, T* __restrict__ out, float* __restrict__ lse,
                         AttentionShape sh, float scale, DropoutArgs dropout, int64_t row_blocks) {
  extern __shared__ float smem[];
  const int64_t D = sh.head_dim, Sq = sh.seq_q, Sk = sh.seq_k;
  const int64_t ks_stride = D + 1;  // +1 float: lanes reading k_s[lane][d] hit different banks
  float* q_s = smem;                           // [kBlockRows][D], pre-scaled
  float* k_s = q_s + kBlockRows * D;           // [kTileKeys][D + 1]
  float* v_s = k_s + kTileKeys * ks_stride;    // [kTileKeys][D]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // One flat grid index: (batch * heads) x row blocks may exceed the 65535 limit of gridDim.y.
  const int64_t bh = blockIdx.x / row_blocks, b = bh / sh.heads, i0 = (blockIdx.x % row_blocks) * kBlockRows;

  for (int64_t e = threadIdx.x; e < kBlockRows * D; e += blockDim.x) {
    const int64_t i = i0 + e / D;
    q_s[e] = i < Sq ? scale * to_float(q[(bh * Sq + i0) * D + e]) : 0.0f;
  }
  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kDPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int t = 0; t < kDPerLane; ++t) o[r][t] = 0.0f;
  }

  for (int64_t j0 = 0; j0 < Sk; j0 += kTileKeys) {
    __syncthreads();  // the previous tile is no longer read
    for (int64_t e = threadIdx.x; e < kTileKeys * D; e += blockDim.x) {
      const int64_t j = e / D, d = e % D;
      const bool in = j0 + j < Sk;
      k_s[j * ks_stride + d] = in ? to_float(k[(bh * Sk + j0 + j) * D + d]) : 0.0f;
      v_s[j * D + d] = in ? to_float(v[(bh * Sk + j0 + j) * D + d]) : 0.0f;
    }
    const bool valid = key_valid(key_mask, b, Sk, j0 + lane);
    if (!__syncthreads_or(valid)) continue;  // a tile of padding only (block-uniform)

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      if (i0 + row >= Sq) continue;  // warp-uniform
      float s = 0.0f;
      for (int64_t d = 0; d < D; ++d) s += q_s[row * D + d] * k_s[lane * ks_stride + d];
      s = valid ? s : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(s));
      // m_new is -inf only while every score of the row is -inf (an inf in q or k): the row has no
      // usable key yet, so exp subtracts 0 instead (exp(-inf + inf) would be NaN) and p = 0, as in
      // attention_cpu.cpp.
      const float shift = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = __expf(m[r] - shift);  // 0 on the first useful tile (m = -inf)
      const float p = valid ? __expf(s - shift) : 0.0f;
      l[r] = l[r] * alpha + warp_sum(p);  // softmax normaliser: probabilities before dropout
      m[r] = m_new;
      const float pd = p * dropout_factor(dropout, static_cast<uint64_t>((bh * Sq + i0 + row) * Sk + j0 + lane));
#pragma unroll
      for (int t = 0; t < kDPerLane; ++t) o[r][t] *= alpha;
      for (int j = 0; j < kTileKeys; ++j) {
        const float pj = __shfl_sync(kFullWarp, pd, j);
#pragma unroll
        for (int t = 0; t < kDPerLane; ++t) {
          const int64_t d = lane + 32 * t;
          if (d < D) o[r][t] += pj * v_s[j * D + d];
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = i0 + warp * kRowsPerWarp + r;
    if (i >= Sq) continue;
    const bool any_key = l[r] > 0.0f;
    const float inv_l = any_key ? 1.0f / l[r] : 0.0f;  // all-padding row: zeros, never 0/0
#pragma unroll
    for (int t = 0; t < kDPerLane; ++t) {
      const int64_t d = lane + 32 * t;
      if (d < D) out[(bh * Sq + i) * D + d] = from_float<T>(o[r][t] * inv_l);
    }
    if (lane == 0) lse[bh * Sq + i] = any_key ? m[r] + logf(l[r]) : -INFINITY;
  }
}

// row_d[i] = rowsum(dO_i * O_i) - grad_lse_i: one warp per row.
template <typename T>
__global__ void attention_row_d_kernel(const T* __restrict__ grad_out, const T* __restrict__ out,
                                       const float* __restrict__ grad_lse, float* __restrict__ row_d,
                                       int64_t rows, int64_t D) {
  const int lane = threadIdx.x % 32;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; i < rows; i += warps_total) {
    float acc = 0.0f;
    for (int64_t d = lane; d < D; d += 32) acc += to_float(grad_out[i * D + d]) * to_float(out[i * D + d]);
    acc = warp_sum(acc);
    if (lane == 0) row_d[i] = acc - (grad_lse ? grad_lse[i] : 0.0f);
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
attention_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ q, const T* __restrict__ k,
                          const T* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ row_d,
                          const uint8_t* __restrict__ key_mask, float* __restrict__ dq_acc, T* __restrict__ dk,
                          T* __restrict__ dv, AttentionShape sh, float scale, DropoutArgs dropout,
                          int64_t key_blocks) {
  extern __shared__ float smem[];
  const int64_t D = sh.head_dim, Sq = sh.seq_q, Sk = sh.seq_k;
  constexpr int kChunk = 32;                // query rows staged per step = lanes of a warp
  float* q_s = smem;                        // [kChunk][D], pre-scaled
  float* do_s = q_s + kChunk * D;           // [kChunk][D]
  float* dq_s = do_s + kChunk * D;          // [kChunk][D]: the block's dQ for the chunk's rows
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t bh = blockIdx.x / key_blocks, b = bh / sh.heads;
  const int64_t key0 = (blockIdx.x % key_blocks) * kTileKeys + warp * kKeysPerWarp;

  float kr[kKeysPerWarp][kDPerLane], vr[kKeysPerWarp][kDPerLane];
  float dkr[kKeysPerWarp][kDPerLane], dvr[kKeysPerWarp][kDPerLane];
  bool valid[kKeysPerWarp];
#pragma unroll
  for (int kk = 0; kk < kKeysPerWarp; ++kk) {
    const int64_t j = key0 + kk;
    valid[kk] = key_valid(key_mask, b, Sk, j);
#pragma unroll
    for (int t = 0; t < kDPerLane; ++t) {
      const int64_t d = lane + 32 * t;
      const bool in = j < Sk && d < D;
      kr[kk][t] = in ? to_float(k[(bh * Sk + j) * D + d]) : 0.0f;
      vr[kk][t] = in ? to_float(v[(bh * Sk + j) * D + d]) : 0.0f;
      dkr[kk][t] = 0.0f;
      dvr[kk][t] = 0.0f;
    }
  }

  for (int64_t e = threadIdx.x; e < kChunk * D; e += blockDim.x) dq_s[e] = 0.0f;
  for (int64_t i0 = 0; i0 < Sq; i0 += kChunk) {
    __syncthreads();  // the previous chunk's q_s, do_s and dq_s are no longer read
    for (int64_t e = threadIdx.x; e < kChunk * D; e += blockDim.x) {
      const bool in = i0 + e / D < Sq;
      q_s[e] = in ? scale * to_float(q[(bh * Sq + i0) * D + e]) : 0.0f;
      do_s[e] = in ? to_float(grad_out[(bh * Sq + i0) * D + e]) : 0.0f;
    }
    // Lane r of every warp holds row i0 + r's log-sum-exp and D (a shuffle hands them out below).
    const bool lane_row = i0 + lane < Sq;
    const float lse_lane = lane_row ? lse[bh * Sq + i0 + lane] : -INFINITY;  // -inf: no keys, or past S_q
    const float d_lane = lane_row ? row_d[bh * Sq + i0 + lane] : 0.0f;
    __syncthreads();

    for (int r = 0; r < kChunk; ++r) {
      const float lse_r = __shfl_sync(kFullWarp, lse_lane, r);
      const float d_r = __shfl_sync(kFullWarp, d_lane, r);
      if (lse_r == -INFINITY) continue;  // block-uniform: P = 0 for the whole row
      float qv[kDPerLane], dov[kDPerLane], dqv[kDPerLane];
#pragma unroll
      for (int t = 0; t < kDPerLane; ++t) {
        const int64_t d = lane + 32 * t;
        qv[t] = d < D ? q_s[r * D + d] : 0.0f;
        dov[t] = d < D ? do_s[r * D + d] : 0.0f;
        dqv[t] = 0.0f;
      }
      const uint64_t row_index = static_cast<uint64_t>((bh * Sq + i0 + r) * Sk);
#pragma unroll
      for (int kk = 0; kk < kKeysPerWarp; ++kk) {
        float s = 0.0f, dp = 0.0f;
#pragma unroll
        for (int t = 0; t < kDPerLane; ++t) {
          s += qv[t] * kr[kk][t];
          dp += dov[t] * vr[kk][t];
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        const float p = valid[kk] ? __expf(s - lse_r) : 0.0f;
        const float z = dropout_factor(dropout, row_index + key0 + kk);
        const float ds = valid[kk] ? p * (dp * z - d_r) : 0.0f;  // padding: 0, even if D is NaN
#pragma unroll
        for (int t = 0; t < kDPerLane; ++t) {
          dvr[kk][t] += p * z * dov[t];
          dkr[kk][t] += ds * qv[t];            // qv is scale * q: dK = scale dS^T Q
          dqv[t] += ds * scale * kr[kk][t];    // dQ = scale dS K
        }
      }
#pragma unroll
      for (int t = 0; t < kDPerLane; ++t) {
        const int64_t d = lane + 32 * t;
        if (d < D) atomicAdd(&dq_s[r * D + d], dqv[t]);  // shared memory: the 4 warps meet here
      }
    }
    __syncthreads();  // every warp's part of the chunk is in dq_s
    for (int64_t e = threadIdx.x; e < kChunk * D; e += blockDim.x) {
      const float part = dq_s[e];
      if (part != 0.0f && i0 + e / D < Sq) atomicAdd(&dq_acc[(bh * Sq + i0) * D + e], part);
      dq_s[e] = 0.0f;  // ready for the next chunk
    }
  }

#pragma unroll
  for (int kk = 0; kk < kKeysPerWarp; ++kk) {
    const int64_t j = key0 + kk;
    if (j >= Sk) continue;
#pragma unroll
    for (int t = 0; t < kDPerLane; ++t) {
      const int64_t d = lane + 32 * t;
      if (d < D) {
        dk[(bh * Sk + j) * D + d] = from_float<T>(dkr[kk][t]);
        dv[(bh * Sk + j) * D + d] = from_float<T>(dvr[kk][t]);
      }
    }
  }
}

}  // namespace

cudaError_t attention_forward_cuda(ScalarKind kind, const void* q, const void* k, const void* v,
                                   const uint8_t* key_mask, void* out, float* lse, const AttentionShape& shape,
                                   float scale, const DropoutArgs& dropout, cudaStream_t stream) {
  if (shape.head_dim < 1 || shape.head_dim > kCudaMaxHeadDim) return cudaErrorInvalidValue;
  const char* choice = std::getenv("MINIBERT_CUDA_ATTENTION");
  const bool simt_asked = choice != nullptr && std::strcmp(choice, "simt") == 0;
  // The tensor-core kernel indexes one (batch, head) with 32-bit integers.
  const bool fits_32bit = (shape.seq_q > shape.seq_k ? shape.seq_q : shape.seq_k) * shape.head_dim <= 0x7fffffff;
  if (!simt_asked && fits_32bit && attention_forward_tc_supported(kind, shape.head_dim)) {
    return attention_forward_tc_cuda(kind, q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
  }
  const int64_t row_blocks = (shape.seq_q + kBlockRows - 1) / kBlockRows;
  if (row_blocks * shape.batch * shape.heads > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(row_blocks * shape.batch * shape.heads);
  const size_t smem = sizeof(float) * (kBlockRows * shape.head_dim + kTileKeys * (shape.head_dim + 1) +
                                       kTileKeys * shape.head_dim);
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    attention_forward_kernel<T><<<grid, kWarps * 32, smem, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), key_mask,
        static_cast<T*>(out), lse, shape, scale, dropout, row_blocks);
  });
}

cudaError_t attention_row_d_cuda(ScalarKind kind, const void* grad_out, const void* out, const float* grad_lse,
                                 float* row_d, const AttentionShape& shape, cudaStream_t stream) {
  const int64_t rows = shape.batch * shape.heads * shape.seq_q;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    attention_row_d_kernel<T><<<grid_for(rows * 32, 256), 256, 0, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(out), grad_lse, row_d, rows, shape.head_dim);
  });
}

cudaError_t attention_backward_cuda(ScalarKind kind, const void* grad_out, const void* q, const void* k,
                                    const void* v, const void* out, const float* lse, const float* grad_lse,
                                    const uint8_t* key_mask, float* dq_acc, void* dk, void* dv, float* row_d,
                                    const AttentionShape& shape, float scale, const DropoutArgs& dropout,
                                    cudaStream_t stream) {
  if (shape.head_dim < 1 || shape.head_dim > kCudaMaxHeadDim) return cudaErrorInvalidValue;
  // The same choice as the forward: tensor cores (attention_cuda_tc_bwd.cu) for float16/bfloat16 with a
  // head size they take, unless MINIBERT_CUDA_ATTENTION=simt asks for this file's kernel.
  const char* choice = std::getenv("MINIBERT_CUDA_ATTENTION");
  const bool simt_asked = choice != nullptr && std::strcmp(choice, "simt") == 0;
  const bool fits_32bit = (shape.seq_q > shape.seq_k ? shape.seq_q : shape.seq_k) * shape.head_dim <= 0x7fffffff;
  if (!simt_asked && fits_32bit && attention_backward_tc_supported(kind, shape.head_dim)) {
    return attention_backward_tc_cuda(kind, grad_out, q, k, v, out, lse, grad_lse, key_mask, dq_acc, dk, dv, row_d,
                                      shape, scale, dropout, stream);
  }
  const int64_t key_blocks = (shape.seq_k + kTileKeys - 1) / kTileKeys;
  if (key_blocks * shape.batch * shape.heads > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(key_blocks * shape.batch * shape.heads);
  const size_t smem = sizeof(float) * (3 * 32 * shape.head_dim);  // 48 KiB at D = 128: no opt-in needed
  const cudaError_t err = attention_row_d_cuda(kind, grad_out, out, grad_lse, row_d, shape, stream);
  if (err != cudaSuccess) return err;
  return dispatch_kind(kind, [&](auto tag) {
    using T = decltype(tag);
    attention_backward_kernel<T><<<grid, kWarps * 32, smem, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(q), static_cast<const T*>(k),
        static_cast<const T*>(v), lse, row_d, key_mask, dq_acc, static_cast<T*>(dk), static_cast<T*>(dv), shape,
        scale, dropout, key_blocks);
  });
}

}  // namespace minibert
