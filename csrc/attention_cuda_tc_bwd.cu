// Fused softmax attention BACKWARD on tensor cores (float16 / bfloat16, head_dim a multiple of 16, sm_80+),
// in the manner of FlashAttention-2. attention_backward_cuda (attention_cuda.cu) sends those inputs here;
// the SIMT kernel there stays the reference (float32, other head sizes, MINIBERT_CUDA_ATTENTION=simt).
//
// ---- The equations ------------------------------------------------------------------------------------
// For one (batch, head), with the scale c, the saved log-sum-exp L_i of query row i (natural log, of the
// SCALED scores), the dropout factor Z_ij = keep_ij / (1 - p) (keep from dropout_hash.h at element
// (bh * S_q + i) * S_k + j, as the forward), and the key mask (padding keys never take part):
//   forward:   S = Q K^T,  P_ij = exp(c S_ij - L_i),  O = (P o Z) V          (o: elementwise)
//   backward, given dO (and dL = grad_lse, or 0):
//     D_i   = rowsum(dO o O)_i - dL_i                        (row_d, computed first by its own small kernel)
//     dV    = (P o Z)^T dO
//     dP    = (dO V^T) o Z                                   (the gradient of P through the dropout)
//     dS    = P o (dP - D)                                   (softmax backward; the -dL in D is the lse term)
//     dQ    = c dS K,      dK = c dS^T Q
// The derivation of dS: O_i = sum_j P_ij Z_ij V_j and L_i depends on all S_ij, so
// dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik + dL_i), and sum_k P_ik dP_ik = sum_k P_ik Z_ik (dO_i . V_k) =
// dO_i . O_i. This is exactly the SIMT kernel's ds = p (dp z - D).
//
// ---- Who computes what -------------------------------------------------------------------------------
// A block of 4 warps owns 64 keys of one (batch, head): K_j and V_j sit in shared memory for the whole
// kernel, and the block streams over the query rows in blocks of kQ (64 for D <= 64, 32 above: fewer
// registers), Q_i and dO_i double-buffered with cp.async as the forward does with K and V. Each warp owns
// 16 of the keys, the height of one mma tile, and keeps their dK and dV [16, D] as float32 C fragments in
// registers until the end. Per query block, each warp, working in the TRANSPOSED orientation (keys are
// rows, so the accumulators' rows are its own keys):
//   1. S^T = K_w Q_i^T            A = K_w (ldmatrix), B = Q_i "col" (ldmatrix): registers [16, kQ]
//   2. P^T = exp(c S^T - L)       zero where the key is padding or the row has no key (L = -inf);
//                                 (P o Z)^T rounded to T, as A fragments (the C -> A trick of the forward)
//   3. dV_w += (P o Z)^T dO_i     B = dO_i "row" (ldmatrix.trans)
//   4. dP^T = V_w dO_i^T          A = V_w (ldmatrix), B = dO_i "col" (ldmatrix)
//   5. dS^T = P^T o (dP^T o Z^T - D), rounded to T (as FlashAttention does before the next products);
//      kept as A fragments and also stored to shared memory dS_s [64 keys][kQ]
//   6. dK_w += dS^T Q_i           B = Q_i "row" (ldmatrix.trans); the scale c is applied at the end
//   7. (after a barrier: all 4 warps' dS^T are in dS_s) dQ_i += c dS K_j: the A operand dS is dS_s read
//      transposed (ldmatrix.trans of a [key][query] tile gives exactly the A fragment of [query][key]),
//      B = K_j "row" (ldmatrix.trans). Each warp takes 16 query rows and some 16-column slices of D, and
//      adds its float32 results to dq_acc with atomicAdd (other key blocks add to the same rows): two
//      floats per lane and row on sm_80, where each is its own atomic; on sm_90 lanes pair up to add four
//      consecutive floats with one vector atomic (float4 atomicAdd), a quarter of the atomic traffic at L2
//      (the H200 profile had L2 70% busy with the tensor cores mostly idle in this kernel).
// A block whose 64 keys are all padding writes dK = dV = 0 and does nothing else.
// Shared memory (16-bit types): K, V [64][D + 8]; two stages of Q, dO [kQ][D + 8] and of L, D [kQ] (float);
// dS [64][kQ + 8]. 28,672 bytes at D = 16, 65,536 at D = 64, 50,688 at D = 80 (kQ = 32), 75,264 at D = 128:
// above 48 KiB the kernel is opted in like the forward, and attention_backward_tc_supported compares with
// the device's opt-in limit (every head size fits sm_80, sm_86/89 and sm_90).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

#include "cuda_common.cuh"
#include "dropout_hash.h"
#include "kernels_cuda.h"
#include "mma_sm80.cuh"

namespace minibert {
namespace {

constexpr int kBwWarps = 4;
constexpr int kBwKeys = 64;       // keys per block: 16 per warp
constexpr int kBwWarpKeys = 16;   // keys per warp = the mma tile height
constexpr int kBwStages = 2;      // query blocks in flight: double buffering
constexpr int kMmaK = 16;         // the k of mma.m16n8k16
__host__ __device__ constexpr int bw_query_rows(int D) { return D <= 64 ? 64 : 32; }  // kQ
__host__ __device__ constexpr int bw_ld(int D) { return tc_padded_row(D); }  // padded row of K, V, Q, dO
__host__ __device__ constexpr int bw_ld_ds(int D) { return bw_query_rows(D) + 8; }  // padded row of dS^T

// Bytes of dynamic shared memory for head size D and a 16-bit storage type.
constexpr size_t bw_shared_bytes(int D) {
  return 2 * (2 * kBwKeys * bw_ld(D)                            // K, V
              + kBwStages * 2 * bw_query_rows(D) * bw_ld(D)     // Q, dO: two stages
              + kBwKeys * bw_ld_ds(D))                          // dS^T
         + 4 * kBwStages * 2 * bw_query_rows(D);                // L, D: two stages (float)
}

template <typename T, int D>
__global__ void __launch_bounds__(kBwWarps * 32)
attention_backward_tc_kernel(const T* __restrict__ grad_out, const T* __restrict__ q, const T* __restrict__ k,
                             const T* __restrict__ v, const float* __restrict__ lse,
                             const float* __restrict__ row_d, const uint8_t* __restrict__ key_mask,
                             float* __restrict__ dq_acc, T* __restrict__ dk, T* __restrict__ dv, AttentionShape sh,
                             float scale, DropoutArgs dropout, int key_blocks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.m16n8k16 (bf16) and cp.async need sm_80: never leave dq, dk, dv silently unwritten
#elif defined(__CUDA_ARCH__)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int kQ = bw_query_rows(D);
  constexpr int kLd = bw_ld(D), kLdS = bw_ld_ds(D);
  constexpr int kQTiles = kQ / 8;          // n8 tiles of S^T per warp (8 or 4)
  constexpr int kDTiles = D / 8;           // n8 tiles of dK, dV
  constexpr int kQSteps = kQ / kMmaK;      // k16 steps over the query block
  constexpr int kQTileElems = kQ * kLd;    // one Q or dO stage
  const int Sq = static_cast<int>(sh.seq_q), Sk = static_cast<int>(sh.seq_k);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;  // rows g, g + 8 (keys here); columns 2t, 2t + 1 (queries)
  const int bh = static_cast<int>(blockIdx.x) / key_blocks, b = bh / static_cast<int>(sh.heads);
  const int j0 = (static_cast<int>(blockIdx.x) % key_blocks) * kBwKeys;
  const T* q_bh = q + static_cast<int64_t>(bh) * Sq * D;
  const T* do_bh = grad_out + static_cast<int64_t>(bh) * Sq * D;
  const T* k_bh = k + static_cast<int64_t>(bh) * Sk * D;
  const T* v_bh = v + static_cast<int64_t>(bh) * Sk * D;
  const float* lse_bh = lse + static_cast<int64_t>(bh) * Sq;
  const float* d_bh = row_d + static_cast<int64_t>(bh) * Sq;
  float* dq_bh = dq_acc + static_cast<int64_t>(bh) * Sq * D;
  const uint8_t* mask_b = key_mask == nullptr ? nullptr : key_mask + static_cast<int64_t>(b) * Sk;

  // A block of padding keys only: dK = dV = 0, and nothing to add to dQ.
  const bool my_key_valid =
      threadIdx.x < kBwKeys && j0 + static_cast<int>(threadIdx.x) < Sk &&
      (mask_b == nullptr || mask_b[j0 + threadIdx.x] != 0);
  if (!__syncthreads_or(my_key_valid)) {
    for (int e = threadIdx.x; e < kBwKeys * D; e += blockDim.x) {
      const int j = j0 + e / D;
      if (j < Sk) {
        dk[(static_cast<int64_t>(bh) * Sk + j) * D + e % D] = from_float<T>(0.0f);
        dv[(static_cast<int64_t>(bh) * Sk + j) * D + e % D] = from_float<T>(0.0f);
      }
    }
    return;
  }

  T* k_s = reinterpret_cast<T*>(smem_raw);       // [64][D + 8]
  T* v_s = k_s + kBwKeys * kLd;                  // [64][D + 8]
  T* q_s = v_s + kBwKeys * kLd;                  // [2 stages][kQ][D + 8]
  T* do_s = q_s + kBwStages * kQTileElems;       // [2 stages][kQ][D + 8]
  T* ds_s = do_s + kBwStages * kQTileElems;      // [64 keys][kQ + 8]: dS^T of the current query block
  float* lse_s = reinterpret_cast<float*>(ds_s + kBwKeys * kLdS);  // [2 stages][kQ]
  float* dd_s = lse_s + kBwStages * kQ;                             // [2 stages][kQ]

  const bool q_async = reinterpret_cast<uintptr_t>(q) % 16 == 0 && reinterpret_cast<uintptr_t>(grad_out) % 16 == 0;
  const bool kv_async = reinterpret_cast<uintptr_t>(k) % 16 == 0 && reinterpret_cast<uintptr_t>(v) % 16 == 0;
#if __CUDA_ARCH__ >= 900
  // sm_90 adds dQ four floats at a time (step 7): a row of dq_acc starts 16-byte aligned (D % 16 == 0) when
  // dq_acc does, as every buffer the bindings allocate is.
  const bool dq_vector = reinterpret_cast<uintptr_t>(dq_acc) % 16 == 0;
#endif

  // L and D of query block i0 into stage `st` (plain stores: read after the next __syncthreads). Rows past
  // S_q get L = -inf (so P = 0) and D = 0.
  auto stage_rows_ld = [&](int st, int i0) {
    for (int r = threadIdx.x; r < kQ; r += blockDim.x) {
      const bool in = i0 + r < Sq;
      lse_s[st * kQ + r] = in ? lse_bh[i0 + r] : -INFINITY;
      dd_s[st * kQ + r] = in ? d_bh[i0 + r] : 0.0f;
    }
  };

  // Prologue: K, V and query block 0 in one group.
  stage_rows<T, D, kBwKeys>(k_s, k_bh, j0, Sk, kv_async);
  stage_rows<T, D, kBwKeys>(v_s, v_bh, j0, Sk, kv_async);
  stage_rows<T, D, kQ>(q_s, q_bh, 0, Sq, q_async);
  stage_rows<T, D, kQ>(do_s, do_bh, 0, Sq, q_async);
  stage_rows_ld(0, 0);
  cp_async_commit();

  // This lane's two keys (rows g and g + 8 of the warp's tile), fixed for the whole kernel.
  const int key_lo = j0 + warp * kBwWarpKeys + g;
  bool key_ok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int j = key_lo + 8 * h;
    key_ok[h] = j < Sk && (mask_b == nullptr || mask_b[j] != 0);
  }

  // dK_w (before the scale) and dV_w: element [key g + 8 (e / 2)][dn * 8 + 2t + e % 2] at [dn][e].
  float dk_acc[kDTiles][4], dv_acc[kDTiles][4];
  zero_tiles(dk_acc);
  zero_tiles(dv_acc);
  const float keep_scale = static_cast<float>(dropout.inv_keep);
  const T* kw_s = k_s + warp * kBwWarpKeys * kLd;  // the warp's 16 keys (A operand rows)
  const T* vw_s = v_s + warp * kBwWarpKeys * kLd;

  int stage = 0;  // the buffer that holds query block i0
  for (int i0 = 0; i0 < Sq; i0 += kQ, stage ^= 1) {
    __syncthreads();  // every warp is done with the other stage (block i0 - kQ) and with ds_s
    if (i0 + kQ < Sq) {
      stage_rows<T, D, kQ>(q_s + (stage ^ 1) * kQTileElems, q_bh, i0 + kQ, Sq, q_async);
      stage_rows<T, D, kQ>(do_s + (stage ^ 1) * kQTileElems, do_bh, i0 + kQ, Sq, q_async);
      stage_rows_ld(stage ^ 1, i0 + kQ);
    }
    cp_async_commit();   // possibly empty: "all but the newest group" then always means block i0
    cp_async_wait<1>();  // this thread's copies of block i0 (and K, V) have landed
    __syncthreads();     // and every thread's
    const T* q_t = q_s + stage * kQTileElems;
    const T* do_t = do_s + stage * kQTileElems;
    const float* lse_t = lse_s + stage * kQ;
    const float* dd_t = dd_s + stage * kQ;

    // 1. S^T = K_w Q^T: s[nt] is keys x queries nt * 8 .. nt * 8 + 7. A from the warp's K rows
    // (ldmatrix_a); Q is [query][d], its rows the output columns: the "col" B operand (mma_add_a_bt).
    float s[kQTiles][4];
    zero_tiles(s);
#pragma unroll
    for (int kd = 0; kd < D / kMmaK; ++kd) {
      uint32_t ka[4];
      ldmatrix_a(ka, kw_s, kLd, kd * kMmaK);
      mma_add_a_bt<T>(s, ka, q_t, kLd, kd * kMmaK);
    }

    // 2. P^T in place of S^T (float32, for dS), and (P o Z)^T rounded to T as A fragments for dV.
    // Element s[nt][e]: key g + 8 (e / 2) of the warp, query i0 + c with c = nt * 8 + 2t + e % 2.
    // z[nt][e] keeps the dropout factor Z for step 5 (1 without dropout).
    const uint64_t index0 =  // element (bh * S_q + i0) * S_k + key_lo of the forward's dropout counter
        (static_cast<uint64_t>(bh) * Sq + i0) * static_cast<uint64_t>(Sk) + static_cast<uint64_t>(key_lo);
    float z[kQTiles][4];
    uint32_t pa[kQSteps][4];
#pragma unroll
    for (int nt = 0; nt < kQTiles; ++nt) {
      float pd[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t + e % 2;
        const float l = lse_t[c];
        // A padding key, a row with no key at all (L = -inf; also rows past S_q): P = 0, never exp(+inf).
        const bool ok = key_ok[e / 2] && l != -INFINITY;
        const float p = ok ? __expf(scale * s[nt][e] - l) : 0.0f;
        s[nt][e] = p;
        z[nt][e] = 1.0f;
        if (dropout.active) {
          const uint64_t index = index0 + static_cast<uint64_t>(c) * static_cast<uint64_t>(Sk) + 8 * (e / 2);
          z[nt][e] = dropout_keep(dropout.base, index, dropout.threshold) ? keep_scale : 0.0f;
        }
        pd[e] = p * z[nt][e];
      }
      pa[nt / 2][(nt % 2) * 2 + 0] = pack2(from_float<T>(pd[0]), from_float<T>(pd[1]));  // key g
      pa[nt / 2][(nt % 2) * 2 + 1] = pack2(from_float<T>(pd[2]), from_float<T>(pd[3]));  // key g + 8
    }

    // 3. dV_w += (P o Z)^T dO: dO is [query][D] row-major, its columns the output columns: the "row" B
    // operand (mma_add_a_b, through ldmatrix.trans), one k16 step of queries at a time.
#pragma unroll
    for (int kk = 0; kk < kQSteps; ++kk) mma_add_a_b<T>(dv_acc, pa[kk], do_t, kLd, kk * kMmaK);

    // 4. dP^T = V_w dO^T, as step 1 with V for K and dO for Q.
    float dp[kQTiles][4];
    zero_tiles(dp);
#pragma unroll
    for (int kd = 0; kd < D / kMmaK; ++kd) {
      uint32_t va[4];
      ldmatrix_a(va, vw_s, kLd, kd * kMmaK);
      mma_add_a_bt<T>(dp, va, do_t, kLd, kd * kMmaK);
    }

    // 5. dS^T = P^T o (dP^T o Z - D), 0 wherever P was forced to 0 (even if D is NaN there), rounded to T:
    // A fragments for dK, and stored to ds_s for dQ.
    uint32_t dsa[kQSteps][4];
    T* ds_w = ds_s + (warp * kBwWarpKeys + g) * kLdS;  // row of key g; key g + 8 is 8 rows further
#pragma unroll
    for (int nt = 0; nt < kQTiles; ++nt) {
      T ds[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t + e % 2;
        const float p = s[nt][e];
        ds[e] = from_float<T>(p != 0.0f ? p * (dp[nt][e] * z[nt][e] - dd_t[c]) : 0.0f);
      }
      dsa[nt / 2][(nt % 2) * 2 + 0] = pack2(ds[0], ds[1]);
      dsa[nt / 2][(nt % 2) * 2 + 1] = pack2(ds[2], ds[3]);
      *reinterpret_cast<uint32_t*>(ds_w + nt * 8 + 2 * t) = dsa[nt / 2][(nt % 2) * 2 + 0];
      *reinterpret_cast<uint32_t*>(ds_w + 8 * kLdS + nt * 8 + 2 * t) = dsa[nt / 2][(nt % 2) * 2 + 1];
    }

    // 6. dK_w += dS^T Q: Q is [query][D], the "row" B operand, as dO in step 3.
#pragma unroll
    for (int kk = 0; kk < kQSteps; ++kk) mma_add_a_b<T>(dk_acc, dsa[kk], q_t, kLd, kk * kMmaK);

    __syncthreads();  // every warp's dS^T is in ds_s

    // 7. dQ_i += c dS K_j. The block's kQ query rows are kQ / 16 row tiles; the 4 warps split them, and
    // when there are fewer tiles than warps (kQ = 32) also split D in 16-column slices. The A operand
    // dS [16 queries][16 keys] is read from ds_s = dS^T [key][query] with ldmatrix.trans: register j of
    // lane l then holds dS^T[2 (l % 4), +1][l / 4] of tile j = dS[l / 4][2 (l % 4), +1], exactly a[j]
    // when tile 0 is keys 0-7 x queries 0-7, tile 1 keys 0-7 x queries 8-15, tile 2 keys 8-15 x queries
    // 0-7, tile 3 keys 8-15 x queries 8-15. B = K_j [key][D], the "row" operand (ldmatrix.trans).
    {
      constexpr int kRowTiles = kQ / 16;
      constexpr int kSlicesPerWarp = kBwWarps / kRowTiles;  // warps sharing a row tile (1 or 2)
      const int q0 = (warp % kRowTiles) * 16;
      uint32_t a[kBwKeys / kMmaK][4];  // dS [16 queries][64 keys] as 4 A fragments, for every slice
#pragma unroll
      for (int kk = 0; kk < kBwKeys / kMmaK; ++kk) {
        ldmatrix_x4_trans(a[kk], ds_s + (kk * kMmaK + (lane / 16) * 8 + lane % 8) * kLdS + q0 + ((lane / 8) % 2) * 8);
      }
      for (int dn = 2 * (warp / kRowTiles); dn < kDTiles; dn += 2 * kSlicesPerWarp) {
        float acc[2][4];
        zero_tiles(acc);
#pragma unroll
        for (int kk = 0; kk < kBwKeys / kMmaK; ++kk) mma_add_a_b<T>(acc, a[kk], k_s + dn * 8, kLd, kk * kMmaK);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const float* c = acc[half];  // rows g, g + 8 of the tile; columns 2t, 2t + 1 of its 8
          const int col = (dn + half) * 8 + 2 * t;
#if __CUDA_ARCH__ >= 900
          if (dq_vector) {
            // Lanes t and t ^ 1 swap one row's pair, so that an even t holds columns 2t .. 2t + 3 of row g
            // and an odd t columns 2t - 2 .. 2t + 1 of row g + 8: one float4 atomic where there were four.
            const bool odd = t & 1;
            const float mine0 = odd ? c[2] : c[0], mine1 = odd ? c[3] : c[1];
            const float got0 = __shfl_xor_sync(0xffffffffu, odd ? c[0] : c[2], 1);
            const float got1 = __shfl_xor_sync(0xffffffffu, odd ? c[1] : c[3], 1);
            const int i = i0 + q0 + g + (odd ? 8 : 0);
            if (i < Sq) {
              const float4 add = odd ? make_float4(scale * got0, scale * got1, scale * mine0, scale * mine1)
                                     : make_float4(scale * mine0, scale * mine1, scale * got0, scale * got1);
              atomicAdd(reinterpret_cast<float4*>(dq_bh + i * D + col - (odd ? 2 : 0)), add);
            }
            continue;
          }
#endif
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = i0 + q0 + g + 8 * h;
            if (i >= Sq) continue;
            atomicAdd(dq_bh + i * D + col, scale * c[2 * h]);
            atomicAdd(dq_bh + i * D + col + 1, scale * c[2 * h + 1]);
          }
        }
      }
    }
  }
  cp_async_wait<0>();  // nothing is left in flight (the last group is empty)

  // dK = c dS^T Q, dV: the lane's keys g, g + 8, columns dn * 8 + 2t, + 1. Keys past S_k are not written.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int j = key_lo + 8 * h;
    if (j >= Sk) continue;
#pragma unroll
    for (int dn = 0; dn < kDTiles; ++dn) {
      const int64_t at = (static_cast<int64_t>(bh) * Sk + j) * D + dn * 8 + 2 * t;
      dk[at] = from_float<T>(scale * dk_acc[dn][2 * h]);
      dk[at + 1] = from_float<T>(scale * dk_acc[dn][2 * h + 1]);
      dv[at] = from_float<T>(dv_acc[dn][2 * h]);
      dv[at + 1] = from_float<T>(dv_acc[dn][2 * h + 1]);
    }
  }
#endif
}

// Opts attention_backward_tc_kernel<T, D> in to its dynamic shared memory once per device (under a lock:
// the forward's reasons).
template <typename T, int D>
cudaError_t opt_in_backward_shared_memory(int device) {
  constexpr size_t smem = bw_shared_bytes(D);
  if (smem <= 48 * 1024) return cudaSuccess;
  static std::mutex lock;
  static std::set<int> done;
  std::lock_guard<std::mutex> guard(lock);
  if (done.count(device)) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(attention_backward_tc_kernel<T, D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err == cudaSuccess) done.insert(device);
  else cudaGetLastError();
  return err;
}

template <typename T, int D>
cudaError_t launch_bw_tc(const void* grad_out, const void* q, const void* k, const void* v, const float* lse,
                         const float* row_d, const uint8_t* key_mask, float* dq_acc, void* dk, void* dv,
                         const AttentionShape& shape, float scale, const DropoutArgs& dropout, cudaStream_t stream) {
  const int64_t key_blocks = (shape.seq_k + kBwKeys - 1) / kBwKeys;
  const int64_t blocks = key_blocks * shape.batch * shape.heads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  if ((shape.seq_q > shape.seq_k ? shape.seq_q : shape.seq_k) * D > 0x7fffffff) return cudaErrorInvalidValue;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = opt_in_backward_shared_memory<T, D>(device);
  if (err != cudaSuccess) return err;
  attention_backward_tc_kernel<T, D><<<static_cast<unsigned>(blocks), kBwWarps * 32, bw_shared_bytes(D), stream>>>(
      static_cast<const T*>(grad_out), static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      lse, row_d, key_mask, dq_acc, static_cast<T*>(dk), static_cast<T*>(dv), shape, scale, dropout,
      static_cast<int>(key_blocks));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bw_tc_for_head_dim(const void* grad_out, const void* q, const void* k, const void* v,
                                      const float* lse, const float* row_d, const uint8_t* key_mask, float* dq_acc,
                                      void* dk, void* dv, const AttentionShape& sh, float scale,
                                      const DropoutArgs& dropout, cudaStream_t stream) {
#define MINIBERT_BW_CASE(D)                                                                                  \
  case D:                                                                                                    \
    return launch_bw_tc<T, D>(grad_out, q, k, v, lse, row_d, key_mask, dq_acc, dk, dv, sh, scale, dropout, \
                              stream);
  switch (sh.head_dim) {
    MINIBERT_BW_CASE(16)
    MINIBERT_BW_CASE(32)
    MINIBERT_BW_CASE(48)
    MINIBERT_BW_CASE(64)
    MINIBERT_BW_CASE(80)
    MINIBERT_BW_CASE(96)
    MINIBERT_BW_CASE(112)
    MINIBERT_BW_CASE(128)
    default: return cudaErrorInvalidValue;  // not a multiple of 16 in [16, kCudaMaxHeadDim]
  }
#undef MINIBERT_BW_CASE
}

}  // namespace

bool attention_backward_tc_supported(ScalarKind kind, int64_t head_dim) {
  if (head_dim < 0 || head_dim > kCudaMaxHeadDim) return false;
  return tc_attention_runs_here(kind, head_dim, bw_shared_bytes(static_cast<int>(head_dim)));
}

cudaError_t attention_backward_tc_cuda(ScalarKind kind, const void* grad_out, const void* q, const void* k,
                                       const void* v, const void* out, const float* lse, const float* grad_lse,
                                       const uint8_t* key_mask, float* dq_acc, void* dk, void* dv, float* row_d,
                                       const AttentionShape& shape, float scale, const DropoutArgs& dropout,
                                       cudaStream_t stream) {
  if (kind == ScalarKind::kFloat32) return cudaErrorInvalidValue;  // no m16n8k16 form without TF32 rounding
  // D = rowsum(dO o O) - grad_lse first (the SIMT backward's preprocessing kernel), then the key blocks.
  cudaError_t err = attention_row_d_cuda(kind, grad_out, out, grad_lse, row_d, shape, stream);
  if (err != cudaSuccess) return err;
  if (kind == ScalarKind::kFloat16) {
    return launch_bw_tc_for_head_dim<__half>(grad_out, q, k, v, lse, row_d, key_mask, dq_acc, dk, dv, shape, scale,
                                             dropout, stream);
  }
  return launch_bw_tc_for_head_dim<__nv_bfloat16>(grad_out, q, k, v, lse, row_d, key_mask, dq_acc, dk, dv, shape,
                                                  scale, dropout, stream);
}

}  // namespace minibert
