// Fused softmax attention forward on tensor cores (float16 / bfloat16, head_dim a multiple of 16).
//
// The same tiled online softmax as attention_cuda.cu and attention_cpu.cpp, with the two matrix
// products done by warp-level matrix-multiply-accumulate (nvcuda::wmma, 16x16x16 tiles, float32
// accumulators) instead of one FMA per lane. That is where the time goes: per query row and key the
// kernel does 2 D multiply-adds in the two products but only a handful of softmax operations, so the
// products decide the speed, and tensor cores do them many times faster than the SIMT units.
//
// A block of 4 warps owns 64 query rows of one (batch, head); each warp owns 16 rows. For every tile of
// 64 keys:
//   1. the block stages K and V (storage type) in shared memory;
//   2. each warp computes its scores S = Q K^T [16, 64] with wmma and stores them (float) to its own
//      scratch;
//   3. the warp runs the online softmax row by row on the scratch (lane j owns keys j and j + 32): new
//      running max m, rescale factor alpha = exp(m_old - m_new), probabilities p = exp(s - m_new),
//      running sum l (before dropout, as the CPU kernel); the dropped-out probabilities are written in
//      the storage type as the A operand of the next product, and the warp's output rows are rescaled
//      by alpha;
//   4. O += P V with wmma, reading and writing the float output accumulator the warp keeps in shared
//      memory. (wmma does not say which accumulator element belongs to which row, so the per-row
//      rescale in step 3 has to happen in shared memory rather than in the fragment.)
// P is rounded to the storage type before the second product, as FlashAttention does; everything else
// is float32. The backward pass is the SIMT kernel of attention_cuda.cu, which only needs the saved
// log-sum-exp, so both forward kernels share it.
#include <mma.h>

#include <cstdint>
#include <mutex>
#include <set>

#include "cuda_common.cuh"
#include "dropout_hash.h"
#include "kernels_cuda.h"

namespace minibert {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kTcWarps = 4;
constexpr int kTcWarpRows = 16;                        // query rows per warp = the wmma tile height
constexpr int kTcBlockRows = kTcWarps * kTcWarpRows;  // 64 query rows per block
constexpr int kTcTileKeys = 64;                        // keys per tile: 4 wmma tiles, 2 per lane in softmax
constexpr int kWm = 16;                                // wmma tile edge (m = n = k = 16)

// Bytes of dynamic shared memory for head size D and storage type T (every piece a multiple of 32
// bytes, so each wmma pointer below is 256-bit aligned as load/store_matrix_sync require).
template <typename T>
size_t tc_shared_bytes(int64_t D) {
  return sizeof(T) * (3 * kTcBlockRows * D)                        // q_s, k_s, v_s
         + sizeof(float) * (kTcWarps * kTcWarpRows * kTcTileKeys)  // s_s: scores, per warp
         + sizeof(T) * (kTcWarps * kTcWarpRows * kTcTileKeys)      // p_s: probabilities, per warp
         + sizeof(float) * (kTcWarps * kTcWarpRows * D);           // o_s: output accumulator, per warp
}

__device__ __forceinline__ bool tc_key_valid(const uint8_t* key_mask, int64_t b, int64_t Sk, int64_t j) {
  return j < Sk && (key_mask == nullptr || key_mask[b * Sk + j] != 0);
}

// Copies rows [r0, r0 + 64) of a [rows, D] matrix into a [64, D] shared tile, zero past `rows`.
template <typename T>
__device__ __forceinline__ void stage_tile(T* dst, const T* src, int64_t r0, int64_t rows, int64_t D) {
  for (int64_t e = threadIdx.x; e < kTcBlockRows * D; e += blockDim.x) {
    const int64_t r = r0 + e / D;
    dst[e] = r < rows ? src[r0 * D + e] : from_float<T>(0.0f);
  }
}

template <typename T>
__global__ void __launch_bounds__(kTcWarps * 32)
attention_forward_tc_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const uint8_t* __restrict__ key_mask, T* __restrict__ out, float* __restrict__ lse,
                            AttentionShape sh, float scale, DropoutArgs dropout, int64_t row_blocks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // bfloat16 wmma needs sm_80. The host never launches this kernel below sm_80 (attention_forward_tc_supported),
  // but a PTX build JIT-compiled for an older GPU would otherwise run an empty body and leave `out` and
  // `lse` unwritten: stop with an error instead.
  __trap();
#elif defined(__CUDA_ARCH__)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t D = sh.head_dim, Sq = sh.seq_q, Sk = sh.seq_k;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // One flat grid index: (batch * heads) x row blocks may exceed the 65535 limit of gridDim.y.
  const int64_t bh = blockIdx.x / row_blocks, b = bh / sh.heads;
  const int64_t i0 = (blockIdx.x % row_blocks) * kTcBlockRows;

  T* q_s = reinterpret_cast<T*>(smem_raw);                      // [64 rows][D]
  T* k_s = q_s + kTcBlockRows * D;                               // [64 keys][D]
  T* v_s = k_s + kTcBlockRows * D;                               // [64 keys][D]
  float* s_s = reinterpret_cast<float*>(v_s + kTcBlockRows * D);  // [4 warps][16 rows][64 keys]
  T* p_s = reinterpret_cast<T*>(s_s + kTcWarps * kTcWarpRows * kTcTileKeys);  // same shape
  float* o_s = reinterpret_cast<float*>(p_s + kTcWarps * kTcWarpRows * kTcTileKeys);  // [4][16][D]
  float* s_w = s_s + warp * kTcWarpRows * kTcTileKeys;  // this warp's pieces
  T* p_w = p_s + warp * kTcWarpRows * kTcTileKeys;
  float* o_w = o_s + warp * kTcWarpRows * D;

  stage_tile(q_s, q + bh * Sq * D, i0, Sq, D);
  for (int64_t e = lane; e < kTcWarpRows * D; e += 32) o_w[e] = 0.0f;
  // Running max and sum of row r of this warp, held (redundantly) by every lane.
  float m[kTcWarpRows], l[kTcWarpRows];
#pragma unroll
  for (int r = 0; r < kTcWarpRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  const T* q_w = q_s + warp * kTcWarpRows * D;

  for (int64_t j0 = 0; j0 < Sk; j0 += kTcTileKeys) {
    __syncthreads();  // every warp is done with the previous K, V tile
    stage_tile(k_s, k + bh * Sk * D, j0, Sk, D);
    stage_tile(v_s, v + bh * Sk * D, j0, Sk, D);
    const bool valid0 = tc_key_valid(key_mask, b, Sk, j0 + lane);
    const bool valid1 = tc_key_valid(key_mask, b, Sk, j0 + lane + 32);
    // Also the barrier after staging. A tile of padding only is skipped by the whole block; a tile
    // with one valid key gives every row a finite tile maximum below (the mask is per key, not per row)
    // unless an inf in q or k makes its scores -inf, which step 3 handles.
    if (!__syncthreads_or(valid0 || valid1)) continue;

    // 2. S = Q K^T for the warp's 16 rows: K is [keys][D] row-major, which is K^T in column-major.
    for (int n = 0; n < kTcTileKeys / kWm; ++n) {
      wmma::fragment<wmma::accumulator, kWm, kWm, kWm, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int64_t kd = 0; kd < D; kd += kWm) {
        wmma::fragment<wmma::matrix_a, kWm, kWm, kWm, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, kWm, kWm, kWm, T, wmma::col_major> bt;
        wmma::load_matrix_sync(a, q_w + kd, static_cast<unsigned>(D));
        wmma::load_matrix_sync(bt, k_s + n * kWm * D + kd, static_cast<unsigned>(D));
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(s_w + n * kWm, acc, kTcTileKeys, wmma::mem_row_major);
    }
    __syncwarp();

    // 3. Online softmax, one row at a time; lane j owns keys j0 + j and j0 + j + 32.
#pragma unroll
    for (int r = 0; r < kTcWarpRows; ++r) {
      const float s0 = valid0 ? scale * s_w[r * kTcTileKeys + lane] : -INFINITY;
      const float s1 = valid1 ? scale * s_w[r * kTcTileKeys + lane + 32] : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(fmaxf(s0, s1)));
      // -inf only while the row's scores are all -inf (an inf in q or k): subtract 0, not -inf, so p = 0
      // instead of NaN (as attention_cpu.cpp).
      const float shift = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = __expf(m[r] - shift);  // 0 on the first useful tile
      const float p0 = valid0 ? __expf(s0 - shift) : 0.0f;
      const float p1 = valid1 ? __expf(s1 - shift) : 0.0f;
      l[r] = l[r] * alpha + warp_sum(p0 + p1);
      m[r] = m_new;
      float z0 = 1.0f, z1 = 1.0f;
      if (dropout.active) {  // the same element index as the CPU kernel and NumPy
        const uint64_t row_index = static_cast<uint64_t>((bh * Sq + i0 + warp * kTcWarpRows + r) * Sk + j0);
        const float keep_scale = static_cast<float>(dropout.inv_keep);
        z0 = dropout_keep(dropout.base, row_index + lane, dropout.threshold) ? keep_scale : 0.0f;
        z1 = dropout_keep(dropout.base, row_index + lane + 32, dropout.threshold) ? keep_scale : 0.0f;
      }
      p_w[r * kTcTileKeys + lane] = from_float<T>(p0 * z0);
      p_w[r * kTcTileKeys + lane + 32] = from_float<T>(p1 * z1);
      for (int64_t d = lane; d < D; d += 32) o_w[r * D + d] *= alpha;
    }
    __syncwarp();

    // 4. O += P V: P [16, 64 keys] row-major, V [64 keys][D] row-major.
    for (int64_t n = 0; n < D; n += kWm) {
      wmma::fragment<wmma::accumulator, kWm, kWm, kWm, float> acc;
      wmma::load_matrix_sync(acc, o_w + n, static_cast<unsigned>(D), wmma::mem_row_major);
      for (int kk = 0; kk < kTcTileKeys; kk += kWm) {
        wmma::fragment<wmma::matrix_a, kWm, kWm, kWm, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, kWm, kWm, kWm, T, wmma::row_major> bv;
        wmma::load_matrix_sync(a, p_w + kk, kTcTileKeys);
        wmma::load_matrix_sync(bv, v_s + kk * D + n, static_cast<unsigned>(D));
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(o_w + n, acc, static_cast<unsigned>(D), wmma::mem_row_major);
    }
    __syncwarp();
  }

#pragma unroll
  for (int r = 0; r < kTcWarpRows; ++r) {
    const int64_t i = i0 + warp * kTcWarpRows + r;
    if (i >= Sq) continue;  // warp-uniform
    const bool any_key = l[r] > 0.0f;
    const float inv_l = any_key ? 1.0f / l[r] : 0.0f;  // all-padding row: zeros, never 0/0
    for (int64_t d = lane; d < D; d += 32) out[(bh * Sq + i) * D + d] = from_float<T>(o_w[r * D + d] * inv_l);
    if (lane == 0) lse[bh * Sq + i] = any_key ? m[r] + logf(l[r]) : -INFINITY;
  }
#endif
}

// The dynamic shared memory the kernel for T may use on `device`: opted in once per device and type, to
// the most any head size needs, or less where the device allows less (attention_forward_tc_supported
// sends such head sizes to the SIMT kernel). Once, because cudaFuncSetAttribute on every call is a race
// between host threads launching different head sizes; under a lock, because two threads may launch the
// first time together.
template <typename T>
cudaError_t opt_in_shared_memory(int device) {
  static std::mutex lock;
  static std::set<int> done;
  std::lock_guard<std::mutex> guard(lock);
  if (done.count(device)) return cudaSuccess;
  int optin = 0;
  cudaError_t err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const size_t most = tc_shared_bytes<T>(kCudaMaxHeadDim);
  err = cudaFuncSetAttribute(attention_forward_tc_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(most < static_cast<size_t>(optin) ? most : optin));
  if (err == cudaSuccess) done.insert(device);
  return err;
}

template <typename T>
cudaError_t launch_tc(const void* q, const void* k, const void* v, const uint8_t* key_mask, void* out, float* lse,
                      const AttentionShape& shape, float scale, const DropoutArgs& dropout, cudaStream_t stream) {
  const int64_t row_blocks = (shape.seq_q + kTcBlockRows - 1) / kTcBlockRows;
  const int64_t blocks = row_blocks * shape.batch * shape.heads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const size_t smem = tc_shared_bytes<T>(shape.head_dim);
  // Above 48 KiB a kernel must opt in to more shared memory (sm_80 allows 163 KiB, sm_86/sm_89 99 KiB,
  // sm_90 227 KiB).
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = opt_in_shared_memory<T>(device);
  if (err != cudaSuccess) return err;
  attention_forward_tc_kernel<T><<<static_cast<unsigned>(blocks), kTcWarps * 32, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), key_mask,
      static_cast<T*>(out), lse, shape, scale, dropout, row_blocks);
  return cudaGetLastError();
}

}  // namespace

bool attention_forward_tc_supported(ScalarKind kind, int64_t head_dim) {
  if (kind == ScalarKind::kFloat32 || head_dim % kWm != 0 || head_dim < kWm || head_dim > kCudaMaxHeadDim) {
    return false;
  }
  int device = 0, major = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return false;
  }
  // The shared memory must fit this device: D = 128 needs 106,496 bytes, which sm_80 and sm_90 allow
  // but sm_86/sm_89 (101,376) do not; there the SIMT kernel runs instead.
  const size_t smem = kind == ScalarKind::kFloat16 ? tc_shared_bytes<__half>(head_dim)
                                                   : tc_shared_bytes<__nv_bfloat16>(head_dim);
  return major >= 8 && smem <= static_cast<size_t>(optin);
}

cudaError_t attention_forward_tc_cuda(ScalarKind kind, const void* q, const void* k, const void* v,
                                      const uint8_t* key_mask, void* out, float* lse, const AttentionShape& shape,
                                      float scale, const DropoutArgs& dropout, cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat16:
      return launch_tc<__half>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case ScalarKind::kBFloat16:
      return launch_tc<__nv_bfloat16>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    default:
      return cudaErrorInvalidValue;  // float32 has no 16x16x16 wmma form without TF32 rounding
  }
}

}  // namespace minibert
