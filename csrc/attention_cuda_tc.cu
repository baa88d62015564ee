// Fused softmax attention forward on tensor cores (float16 / bfloat16, head_dim a multiple of 16).
//
// The same tiled online softmax as attention_cuda.cu and attention_cpu.cpp, with the two matrix
// products done by warp-level matrix-multiply-accumulate (nvcuda::wmma, 16x16x16 tiles, float32
// accumulators) instead of one FMA per lane. That is where the time goes: per query row and key the
// kernel does 2 D multiply-adds in the two products but only a handful of softmax operations, so the
// products decide the speed, and tensor cores do them many times faster than the SIMT units.
//
// A block of 4 warps owns 64 query rows of one (batch, head); each warp owns 16 rows. Each warp first
// loads its 16 rows of Q into D / 16 wmma fragments, which stay in registers for the whole kernel. Then,
// for every tile of 64 keys:
//   1. the block stages K and V (storage type) in shared memory, 16 bytes per load;
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
//
// Layout choices, each for the speed of the shared-memory traffic:
//   * the head size D is a template parameter (16, 32, ..., 128), so every loop bound and stride is a
//     compile-time constant, and indices inside one (batch, head) are 32-bit (the launcher checks that
//     S * D fits);
//   * every shared row is padded by 16 bytes (K, V: D + 8 elements; P: 64 + 8; S and O: + 4 floats), so
//     the 16 rows of a wmma tile start in different banks instead of all in the same one;
//   * rows move between global and shared memory as 16-byte vectors (8 half/bfloat16 values).
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
constexpr int kLdS = kTcTileKeys + 4;                  // padded row strides (elements), see above
constexpr int kLdP = kTcTileKeys + 8;
__host__ __device__ constexpr int LdKV(int D) { return D + 8; }
__host__ __device__ constexpr int LdO(int D) { return D + 4; }

// Bytes of dynamic shared memory for head size D and storage type T. Every piece is a multiple of 32
// bytes, so each wmma pointer below is 256-bit aligned as load/store_matrix_sync require.
template <typename T>
constexpr size_t tc_shared_bytes(int64_t D) {
  return sizeof(T) * 2 * kTcBlockRows * (D + 8)                 // k_s, v_s (Q is staged in k_s first)
         + sizeof(float) * kTcWarps * kTcWarpRows * kLdS        // s_s: scores, per warp
         + sizeof(T) * kTcWarps * kTcWarpRows * kLdP            // p_s: probabilities, per warp
         + sizeof(float) * kTcWarps * kTcWarpRows * (D + 4);    // o_s: output accumulator, per warp
}

// Copies rows [r0, r0 + 64) of a [rows, D] matrix into a [64, D + 8] shared tile, zero past `rows`:
// 16-byte vectors when `src` is 16-byte aligned (a tensor's data usually is), else element by element.
template <typename T, int D>
__device__ __forceinline__ void stage_rows(T* dst, const T* src, int r0, int rows) {
  constexpr int kVecs = D * static_cast<int>(sizeof(T)) / 16;  // 16-byte vectors per row
  constexpr int kPerVec = 16 / static_cast<int>(sizeof(T));
  if (reinterpret_cast<uintptr_t>(src) % 16 == 0) {  // block-uniform
    for (int e = threadIdx.x; e < kTcBlockRows * kVecs; e += blockDim.x) {
      const int r = e / kVecs, c = (e % kVecs) * kPerVec;
      uint4 chunk = make_uint4(0u, 0u, 0u, 0u);  // +0.0 in half and bfloat16
      if (r0 + r < rows) chunk = *reinterpret_cast<const uint4*>(src + (r0 + r) * D + c);
      *reinterpret_cast<uint4*>(dst + r * LdKV(D) + c) = chunk;
    }
  } else {
    for (int e = threadIdx.x; e < kTcBlockRows * D; e += blockDim.x) {
      const int r = e / D, c = e % D;
      dst[r * LdKV(D) + c] = r0 + r < rows ? src[(r0 + r) * D + c] : from_float<T>(0.0f);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kTcWarps * 32)
attention_forward_tc_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const uint8_t* __restrict__ key_mask, T* __restrict__ out, float* __restrict__ lse,
                            AttentionShape sh, float scale, DropoutArgs dropout, int row_blocks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // bfloat16 wmma needs sm_80. The host never launches this kernel below sm_80 (attention_forward_tc_supported),
  // but a PTX build JIT-compiled for an older GPU would otherwise run an empty body and leave `out` and
  // `lse` unwritten: stop with an error instead.
  __trap();
#elif defined(__CUDA_ARCH__)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int kLdKV = LdKV(D), kLdO = LdO(D);
  const int Sq = static_cast<int>(sh.seq_q), Sk = static_cast<int>(sh.seq_k);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // One flat grid index: (batch * heads) x row blocks may exceed the 65535 limit of gridDim.y.
  const int bh = static_cast<int>(blockIdx.x) / row_blocks, b = bh / static_cast<int>(sh.heads);
  const int i0 = (static_cast<int>(blockIdx.x) % row_blocks) * kTcBlockRows;
  // 64-bit offsets once per block; inside a (batch, head) every index is 32-bit.
  const T* q_bh = q + static_cast<int64_t>(bh) * Sq * D;
  const T* k_bh = k + static_cast<int64_t>(bh) * Sk * D;
  const T* v_bh = v + static_cast<int64_t>(bh) * Sk * D;
  T* out_bh = out + static_cast<int64_t>(bh) * Sq * D;
  const uint8_t* mask_b = key_mask == nullptr ? nullptr : key_mask + static_cast<int64_t>(b) * Sk;

  T* k_s = reinterpret_cast<T*>(smem_raw);                         // [64 keys][D + 8]
  T* v_s = k_s + kTcBlockRows * kLdKV;                              // [64 keys][D + 8]
  float* s_s = reinterpret_cast<float*>(v_s + kTcBlockRows * kLdKV);  // [4 warps][16 rows][64 + 4]
  T* p_s = reinterpret_cast<T*>(s_s + kTcWarps * kTcWarpRows * kLdS);  // [4 warps][16 rows][64 + 8]
  float* o_s = reinterpret_cast<float*>(p_s + kTcWarps * kTcWarpRows * kLdP);  // [4][16][D + 4]
  float* s_w = s_s + warp * kTcWarpRows * kLdS;  // this warp's pieces
  T* p_w = p_s + warp * kTcWarpRows * kLdP;
  float* o_w = o_s + warp * kTcWarpRows * kLdO;

  // Q, staged through k_s, into fragments that stay in registers for every key tile.
  stage_rows<T, D>(k_s, q_bh, i0, Sq);
  for (int e = lane; e < kTcWarpRows * kLdO; e += 32) o_w[e] = 0.0f;
  __syncthreads();
  wmma::fragment<wmma::matrix_a, kWm, kWm, kWm, T, wmma::row_major> qa[D / kWm];
#pragma unroll
  for (int kd = 0; kd < D / kWm; ++kd) {
    wmma::load_matrix_sync(qa[kd], k_s + warp * kTcWarpRows * kLdKV + kd * kWm, kLdKV);
  }
  // Running max and sum of row r of this warp, held (redundantly) by every lane.
  float m[kTcWarpRows], l[kTcWarpRows];
#pragma unroll
  for (int r = 0; r < kTcWarpRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }

  for (int j0 = 0; j0 < Sk; j0 += kTcTileKeys) {
    __syncthreads();  // every warp is done with the previous K, V tile (and with Q in k_s)
    stage_rows<T, D>(k_s, k_bh, j0, Sk);
    stage_rows<T, D>(v_s, v_bh, j0, Sk);
    const bool valid0 = j0 + lane < Sk && (mask_b == nullptr || mask_b[j0 + lane] != 0);
    const bool valid1 = j0 + lane + 32 < Sk && (mask_b == nullptr || mask_b[j0 + lane + 32] != 0);
    // Also the barrier after staging. A tile of padding only is skipped by the whole block; a tile
    // with one valid key gives every row a finite tile maximum below (the mask is per key, not per row)
    // unless an inf in q or k makes its scores -inf, which step 3 handles.
    if (!__syncthreads_or(valid0 || valid1)) continue;

    // 2. S = Q K^T for the warp's 16 rows: K is [keys][D] row-major, which is K^T in column-major.
#pragma unroll
    for (int n = 0; n < kTcTileKeys / kWm; ++n) {
      wmma::fragment<wmma::accumulator, kWm, kWm, kWm, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kd = 0; kd < D / kWm; ++kd) {
        wmma::fragment<wmma::matrix_b, kWm, kWm, kWm, T, wmma::col_major> bt;
        wmma::load_matrix_sync(bt, k_s + n * kWm * kLdKV + kd * kWm, kLdKV);
        wmma::mma_sync(acc, qa[kd], bt, acc);
      }
      wmma::store_matrix_sync(s_w + n * kWm, acc, kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // 3. Online softmax, one row at a time; lane j owns keys j0 + j and j0 + j + 32.
#pragma unroll
    for (int r = 0; r < kTcWarpRows; ++r) {
      const float s0 = valid0 ? scale * s_w[r * kLdS + lane] : -INFINITY;
      const float s1 = valid1 ? scale * s_w[r * kLdS + lane + 32] : -INFINITY;
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
      if (dropout.active) {  // the same element index as the CPU kernel and NumPy (64-bit: B H S_q S_k)
        const uint64_t row_index =
            (static_cast<uint64_t>(bh) * Sq + i0 + warp * kTcWarpRows + r) * static_cast<uint64_t>(Sk) + j0;
        const float keep_scale = static_cast<float>(dropout.inv_keep);
        z0 = dropout_keep(dropout.base, row_index + lane, dropout.threshold) ? keep_scale : 0.0f;
        z1 = dropout_keep(dropout.base, row_index + lane + 32, dropout.threshold) ? keep_scale : 0.0f;
      }
      p_w[r * kLdP + lane] = from_float<T>(p0 * z0);
      p_w[r * kLdP + lane + 32] = from_float<T>(p1 * z1);
      if (alpha != 1.0f) {  // warp-uniform; once a row's max settles, most tiles skip this round trip
#pragma unroll
        for (int d = lane; d < D; d += 32) o_w[r * kLdO + d] *= alpha;
      }
    }
    __syncwarp();

    // 4. O += P V: P [16, 64 keys] row-major, V [64 keys][D] row-major.
#pragma unroll
    for (int n = 0; n < D; n += kWm) {
      wmma::fragment<wmma::accumulator, kWm, kWm, kWm, float> acc;
      wmma::load_matrix_sync(acc, o_w + n, kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kTcTileKeys; kk += kWm) {
        wmma::fragment<wmma::matrix_a, kWm, kWm, kWm, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, kWm, kWm, kWm, T, wmma::row_major> bv;
        wmma::load_matrix_sync(a, p_w + kk, kLdP);
        wmma::load_matrix_sync(bv, v_s + kk * kLdKV + n, kLdKV);
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(o_w + n, acc, kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }

#pragma unroll
  for (int r = 0; r < kTcWarpRows; ++r) {
    const int i = i0 + warp * kTcWarpRows + r;
    if (i >= Sq) continue;  // warp-uniform
    const bool any_key = l[r] > 0.0f;
    const float inv_l = any_key ? 1.0f / l[r] : 0.0f;  // all-padding row: zeros, never 0/0
#pragma unroll
    for (int d = lane; d < D; d += 32) out_bh[i * D + d] = from_float<T>(o_w[r * kLdO + d] * inv_l);
    if (lane == 0) lse[static_cast<int64_t>(bh) * Sq + i] = any_key ? m[r] + logf(l[r]) : -INFINITY;
  }
#endif
}

// Opts attention_forward_tc_kernel<T, D> in to its dynamic shared memory once per device. Once, because
// cudaFuncSetAttribute on every call races with launches from other host threads; under a lock, because
// two threads may launch the first time together. attention_forward_tc_supported has checked that the
// device allows that much.
template <typename T, int D>
cudaError_t opt_in_shared_memory(int device) {
  constexpr size_t smem = tc_shared_bytes<T>(D);
  if (smem <= 48 * 1024) return cudaSuccess;  // no opt-in needed
  static std::mutex lock;
  static std::set<int> done;
  std::lock_guard<std::mutex> guard(lock);
  if (done.count(device)) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(attention_forward_tc_kernel<T, D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err == cudaSuccess) done.insert(device);
  else cudaGetLastError();  // the caller returns err; the next launch must not find it pending too
  return err;
}

template <typename T, int D>
cudaError_t launch_tc(const void* q, const void* k, const void* v, const uint8_t* key_mask, void* out, float* lse,
                      const AttentionShape& shape, float scale, const DropoutArgs& dropout, cudaStream_t stream) {
  const int64_t row_blocks = (shape.seq_q + kTcBlockRows - 1) / kTcBlockRows;
  const int64_t blocks = row_blocks * shape.batch * shape.heads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  // The kernel's indices inside one (batch, head) are 32-bit (attention_forward_cuda sends larger S to
  // the SIMT kernel).
  if ((shape.seq_q > shape.seq_k ? shape.seq_q : shape.seq_k) * D > 0x7fffffff) return cudaErrorInvalidValue;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = opt_in_shared_memory<T, D>(device);
  if (err != cudaSuccess) return err;
  attention_forward_tc_kernel<T, D><<<static_cast<unsigned>(blocks), kTcWarps * 32, tc_shared_bytes<T>(D), stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), key_mask,
      static_cast<T*>(out), lse, shape, scale, dropout, static_cast<int>(row_blocks));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tc_for_head_dim(const void* q, const void* k, const void* v, const uint8_t* key_mask, void* out,
                                   float* lse, const AttentionShape& shape, float scale, const DropoutArgs& dropout,
                                   cudaStream_t stream) {
  switch (shape.head_dim) {
    case 16: return launch_tc<T, 16>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case 32: return launch_tc<T, 32>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case 48: return launch_tc<T, 48>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case 64: return launch_tc<T, 64>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case 80: return launch_tc<T, 80>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case 96: return launch_tc<T, 96>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case 112: return launch_tc<T, 112>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case 128: return launch_tc<T, 128>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    default: return cudaErrorInvalidValue;  // not a multiple of 16 in [16, kCudaMaxHeadDim]
  }
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
  // The shared memory must fit this device (95,232 bytes at D = 128: sm_80, sm_86/sm_89 and sm_90 all
  // have it; a device with less runs the SIMT kernel instead).
  const size_t smem = kind == ScalarKind::kFloat16 ? tc_shared_bytes<__half>(head_dim)
                                                   : tc_shared_bytes<__nv_bfloat16>(head_dim);
  return major >= 8 && smem <= static_cast<size_t>(optin);
}

cudaError_t attention_forward_tc_cuda(ScalarKind kind, const void* q, const void* k, const void* v,
                                      const uint8_t* key_mask, void* out, float* lse, const AttentionShape& shape,
                                      float scale, const DropoutArgs& dropout, cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat16:
      return launch_tc_for_head_dim<__half>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    case ScalarKind::kBFloat16:
      return launch_tc_for_head_dim<__nv_bfloat16>(q, k, v, key_mask, out, lse, shape, scale, dropout, stream);
    default:
      return cudaErrorInvalidValue;  // float32 has no 16x16x16 wmma form without TF32 rounding
  }
}

}  // namespace minibert
