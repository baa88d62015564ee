// Fused softmax attention forward on tensor cores (float16 / bfloat16, head_dim a multiple of 16).
//
// The same tiled online softmax as attention_cuda.cu and attention_cpu.cpp, with the two matrix
// products done by the tensor cores' warp-wide matrix multiply-accumulate (mma.sync.m16n8k16: a 16 x 16
// tile of A times a 16 x 8 tile of B, float32 accumulators) instead of one FMA per lane. That is where
// the time goes: per query row and key the kernel does 2 D multiply-adds in the two products but only a
// handful of softmax operations, so the products decide the speed, and tensor cores do them many times
// faster than the SIMT units.
//
// What lives where. A block of 4 warps owns 64 query rows of one (batch, head); each warp owns 16 rows,
// the height of one mma tile, and works on them alone:
//   * registers, for the whole kernel: the warp's Q rows as D / 16 A fragments; the output accumulator
//     O [16, D] as D / 8 C fragments; the running max m and sum l of the lane's two rows;
//   * registers, per tile of 64 keys: the scores S [16, 64] (8 C fragments of 16 x 8), then the
//     probabilities P (4 A fragments of 16 x 16, rounded to the storage type);
//   * shared memory: only K and V, two tiles of each (double buffering, below), [64 keys][D + 8].
// mma_sm80.cuh writes out which lane holds which element. The fact the kernel is built on: a lane holds
// rows g and g + 8 (g = lane / 4) of every A and C fragment, and the 4 lanes of a group hold those rows
// whole. So, for every tile of 64 keys, each warp:
//   1. computes S = Q K^T into registers: K is [keys][D] row-major, which is the "col" B operand, and
//      ldmatrix.x4 loads two keys-by-16 B fragments at once;
//   2. runs the online softmax on the accumulator registers, in base 2 (s' = s * scale * log2 e, so that
//      each exponential is one exp2 instruction): a row's tile maximum is the max of the lane's 16
//      scores of that row and two shuffles among the 4 lanes of its group; then the rescale
//      alpha = 2^(m_old - m_new), the probabilities p = 2^(s' - m_new), the running sum l (before
//      dropout, as the CPU kernel; each lane sums its own 16 columns and the 4 partial sums are added
//      once, at the end) and the output rescale O *= alpha, all in registers;
//   3. turns P into A fragments without moving a value between lanes: the C layout of two adjacent
//      16 x 8 tiles is the A layout of one 16 x 16 tile, so each A register is two neighbouring
//      probabilities of the lane's own, dropped out and rounded to the storage type (P is rounded
//      before the second product, as FlashAttention does; everything else is float32);
//   4. computes O += P V: V is [keys][D] row-major, the B operand "row", which ldmatrix.trans delivers.
// Before, with nvcuda::wmma, S, P and O went through shared memory on every tile, because wmma does not
// say which lane holds which accumulator element and the softmax needs whole rows; with the layout
// documented, nothing but K and V touches shared memory, and no warp waits for another except to share
// the K and V tiles.
//
// Why double buffering. Loading a tile of K and V from global memory takes far longer than the
// arithmetic on it. cp.async copies global memory to shared memory in the background, without
// registers: while the warps compute on tile j in one buffer, the copies of tile j + 1 fill the other.
// The pipeline per tile: __syncthreads (everyone is done with the other buffer), issue tile j + 1 into
// it and commit the group, cp.async.wait_group 1 (every group but the newest, i.e. tile j, has landed
// for this thread), __syncthreads (and for every thread). Q takes the same road once, through the
// second buffer, before the first tile.
//
// Layout choices:
//   * the head size D is a template parameter (16, 32, ..., 128), so every loop bound and register
//     array is a compile-time constant (the fragments must be registers, not local memory), and
//     indices inside one (batch, head) are 32-bit (the launcher checks that S * D fits);
//   * every shared row is padded by 16 bytes (D + 8 elements): a row is then an odd number of
//     16-byte units long, so the 8 rows one ldmatrix tile reads start in 8 different groups of four
//     banks and each ldmatrix phase is conflict-free. The 16-byte cp.async writes of 8 consecutive
//     threads are conflict-free within a row; where they cross from one row to the next (the pad is
//     skipped) two of them share a bank group, so for D other than 64 and 128 (rows a multiple of 128
//     bytes) some write phases are 2-way (a swizzled layout would avoid it, at the price of harder
//     ldmatrix addressing);
//   * rows move from global to shared memory as 16-byte cp.async copies when the tensor's data is
//     16-byte aligned (usually), element by element otherwise; rows past the sequence are zero-filled.
// The backward pass needs only the saved log-sum-exp, so both forward kernels share it: the tensor-core
// backward of attention_cuda_tc_bwd.cu for the inputs this kernel takes, the SIMT one of attention_cuda.cu
// otherwise.
#include <cstdint>
#include <mutex>
#include <set>

#include "cuda_common.cuh"
#include "dropout_hash.h"
#include "kernels_cuda.h"
#include "mma_sm80.cuh"

namespace minibert {
namespace {

constexpr int kTcWarps = 4;
constexpr int kTcWarpRows = 16;                        // query rows per warp = the mma tile height
constexpr int kTcBlockRows = kTcWarps * kTcWarpRows;  // 64 query rows per block
constexpr int kTcTileKeys = 64;                        // keys per tile: 8 n8 score tiles per warp
constexpr int kTcStages = 2;                           // K/V tiles in flight: double buffering
constexpr int kMmaK = 16;                              // the k of mma.m16n8k16 (head size step)
__host__ __device__ constexpr int LdKV(int D) { return tc_padded_row(D); }  // padded shared row (elements)
constexpr float kLog2e = 1.4426950408889634f;  // log2(e)
constexpr float kLn2 = 0.6931471805599453f;    // ln(2)

// Bytes of dynamic shared memory for head size D and storage type T: two stages of K and V tiles
// (69,632 bytes at D = 128 in 16-bit types). Every row starts 16-byte aligned (D + 8 elements of 2 bytes
// is a multiple of 16), as cp.async and ldmatrix require.
template <typename T>
constexpr size_t tc_shared_bytes(int64_t D) {
  return sizeof(T) * kTcStages * 2 * kTcTileKeys * LdKV(static_cast<int>(D));
}

template <typename T, int D>
__global__ void __launch_bounds__(kTcWarps * 32)
attention_forward_tc_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const uint8_t* __restrict__ key_mask, T* __restrict__ out, float* __restrict__ lse,
                            AttentionShape sh, float scale, DropoutArgs dropout, int row_blocks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // mma.m16n8k16 with bfloat16 and cp.async need sm_80. The host never launches this kernel below sm_80
  // (attention_forward_tc_supported), but a PTX build JIT-compiled for an older GPU would otherwise run
  // an empty body and leave `out` and `lse` unwritten: stop with an error instead.
  __trap();
#elif defined(__CUDA_ARCH__)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int kLd = LdKV(D);
  constexpr int kTileElems = kTcTileKeys * kLd;  // one K or V tile in shared memory
  constexpr int kNTiles = kTcTileKeys / 8;       // n8 score tiles per key tile (8)
  constexpr int kDTiles = D / 8;                 // n8 output tiles (D / 8)
  const int Sq = static_cast<int>(sh.seq_q), Sk = static_cast<int>(sh.seq_k);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;  // groupID, threadID_in_group: rows g, g + 8; columns 2t, 2t + 1
  // One flat grid index: (batch * heads) x row blocks may exceed the 65535 limit of gridDim.y.
  const int bh = static_cast<int>(blockIdx.x) / row_blocks, b = bh / static_cast<int>(sh.heads);
  const int i0 = (static_cast<int>(blockIdx.x) % row_blocks) * kTcBlockRows;
  // 64-bit offsets once per block; inside a (batch, head) every index is 32-bit.
  const T* q_bh = q + static_cast<int64_t>(bh) * Sq * D;
  const T* k_bh = k + static_cast<int64_t>(bh) * Sk * D;
  const T* v_bh = v + static_cast<int64_t>(bh) * Sk * D;
  T* out_bh = out + static_cast<int64_t>(bh) * Sq * D;
  const uint8_t* mask_b = key_mask == nullptr ? nullptr : key_mask + static_cast<int64_t>(b) * Sk;
  // 16-byte copies need 16-byte aligned rows: a tensor's data usually is (rows are D * 2 >= 32 bytes).
  const bool q_async = reinterpret_cast<uintptr_t>(q) % 16 == 0;
  const bool kv_async = reinterpret_cast<uintptr_t>(k) % 16 == 0 && reinterpret_cast<uintptr_t>(v) % 16 == 0;
  const float scale_log2 = scale * kLog2e;  // scores in base-2 units (step 2 below)

  T* k_s = reinterpret_cast<T*>(smem_raw);  // [2 stages][64 keys][D + 8]
  T* v_s = k_s + kTcStages * kTileElems;    // [2 stages][64 keys][D + 8]

  // Q through the second K buffer (group 1), while tile 0 of K and V starts into the first (group 2).
  stage_rows<T, D, kTcTileKeys>(k_s + kTileElems, q_bh, i0, Sq, q_async);
  cp_async_commit();
  stage_rows<T, D, kTcTileKeys>(k_s, k_bh, 0, Sk, kv_async);
  stage_rows<T, D, kTcTileKeys>(v_s, v_bh, 0, Sk, kv_async);
  cp_async_commit();
  cp_async_wait<1>();  // this thread's Q copies have landed (tile 0 may still be in flight)
  __syncthreads();     // and every thread's

  // The warp's 16 query rows as A fragments (ldmatrix_a), kept in registers for every key tile.
  uint32_t qa[D / kMmaK][4];
  const T* q_w = k_s + kTileElems + warp * kTcWarpRows * kLd;  // the warp's rows of the staged Q
#pragma unroll
  for (int kd = 0; kd < D / kMmaK; ++kd) ldmatrix_a(qa[kd], q_w, kLd, kd * kMmaK);

  // Per lane: O[row][dn * 8 + 2t + (e & 1)] at o[dn][e], row g for e < 2 and g + 8 for e >= 2; and the
  // running max and (partial: this lane's columns only) sum of rows g (index 0) and g + 8 (index 1).
  float o[kDTiles][4];
  zero_tiles(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  int stage = 0;  // the buffer that holds tile j0
  for (int j0 = 0; j0 < Sk; j0 += kTcTileKeys, stage ^= 1) {
    __syncthreads();  // every warp is done with the other buffer (tile j0 - 64, or Q)
    if (j0 + kTcTileKeys < Sk) {
      stage_rows<T, D, kTcTileKeys>(k_s + (stage ^ 1) * kTileElems, k_bh, j0 + kTcTileKeys, Sk, kv_async);
      stage_rows<T, D, kTcTileKeys>(v_s + (stage ^ 1) * kTileElems, v_bh, j0 + kTcTileKeys, Sk, kv_async);
    }
    cp_async_commit();  // an empty group after the last tile keeps "all but the newest" meaning tile j0
    const bool valid0 = j0 + lane < Sk && (mask_b == nullptr || mask_b[j0 + lane] != 0);
    const bool valid1 = j0 + lane + 32 < Sk && (mask_b == nullptr || mask_b[j0 + lane + 32] != 0);
    cp_async_wait<1>();  // this thread's copies of tile j0 have landed
    // ... and every thread's. A tile of padding only is skipped by the whole block; a tile with one
    // valid key gives every row a finite tile maximum below (the mask is per key, not per row) unless
    // an inf in q or k makes its scores -inf, which step 2 handles.
    if (!__syncthreads_or(valid0 || valid1)) continue;
    // Key c of the tile (0..63) is valid when bit c % 32 of valid_lo (c < 32) or valid_hi is set.
    const unsigned valid_lo = __ballot_sync(kFullWarp, valid0), valid_hi = __ballot_sync(kFullWarp, valid1);
    const T* k_t = k_s + stage * kTileElems;
    const T* v_t = v_s + stage * kTileElems;

    // 1. S = Q K^T: s[nt] is the 16 x 8 tile of keys nt * 8 .. nt * 8 + 7. K is [key][d], so its rows
    // are the output columns: the "col" B operand (mma_add_a_bt), one k16 step of d at a time.
    float s[kNTiles][4];
    zero_tiles(s);
#pragma unroll
    for (int kd = 0; kd < D / kMmaK; ++kd) mma_add_a_bt<T>(s, qa[kd], k_t, kLd, kd * kMmaK);

    // 2. Online softmax on the registers. Element s[nt][e] is row g + 8 (e / 2), key c = nt * 8 + 2t + e % 2.
    // The scores are kept in base-2 units, s * scale * log2(e), so that each probability is one
    // exp2 = one ex2.approx instruction: p = 2^(s' - m') = e^(scale s - scale m). The running max m is
    // in the same units; lse converts back at the end. Per score that is a multiply, a max, a subtract,
    // the exp2, an add into the row sum and half a conversion: the tensor cores need only a few cycles
    // per score, so these instructions, not the products, would otherwise set the pace. That is also
    // why a tile whose 64 keys are all valid (every tile but the last, without padding) skips the
    // per-key mask; a masked key's score becomes -inf, and 2^-inf = 0 is its probability.
    const bool full_tile = (valid_lo & valid_hi) == kFullWarp;  // the same in every lane
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] *= scale_log2;
        if (!full_tile) {
          const int c = nt * 8 + 2 * t + e % 2;
          if (!(((c < 32 ? valid_lo : valid_hi) >> (c % 32)) & 1u)) s[nt][e] = -INFINITY;
        }
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[nt][e]);
      }
    }
    float shift[2], alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // the 4 lanes of a group hold the row: lanes differing in bits 0, 1
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(kFullWarp, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(kFullWarp, tile_max[h], 2));
      const float m_new = fmaxf(m[h], tile_max[h]);
      // -inf only while the row's scores are all -inf (an inf in q or k): subtract 0, not -inf, so p = 0
      // instead of NaN (as attention_cpu.cpp).
      shift[h] = m_new == -INFINITY ? 0.0f : m_new;
      alpha[h] = exp2f(m[h] - shift[h]);  // 0 on the first useful tile
      m[h] = m_new;
      l[h] *= alpha[h];
    }
    // 3. P, dropped out and rounded, as the A fragments of the second product: k step kk covers keys
    // 16 kk .. 16 kk + 15 = score tiles 2 kk (a[0], a[1]) and 2 kk + 1 (a[2], a[3]).
    uint32_t pa[kTcTileKeys / kMmaK][4];
    const uint64_t row_index0 =  // the element index of the CPU kernel and NumPy (64-bit: B H S_q S_k)
        (static_cast<uint64_t>(bh) * Sq + i0 + warp * kTcWarpRows + g) * static_cast<uint64_t>(Sk) + j0;
    const uint64_t row_step = 8 * static_cast<uint64_t>(Sk);  // row g + 8
    const float keep_scale = static_cast<float>(dropout.inv_keep);
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      float pd[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[nt][e] - shift[e / 2]);  // 0 for a masked key (s = -inf)
        l[e / 2] += p;  // the softmax normaliser: probabilities before dropout
        pd[e] = p;
        if (dropout.active) {
          const uint64_t index = row_index0 + (e / 2) * row_step + nt * 8 + 2 * t + e % 2;
          pd[e] = dropout_keep(dropout.base, index, dropout.threshold) ? p * keep_scale : 0.0f;
        }
      }
      pa[nt / 2][(nt % 2) * 2 + 0] = pack2(from_float<T>(pd[0]), from_float<T>(pd[1]));  // row g
      pa[nt / 2][(nt % 2) * 2 + 1] = pack2(from_float<T>(pd[2]), from_float<T>(pd[3]));  // row g + 8
    }

    // 4. O = alpha O + P V. V is [key][d]: its columns are the output columns, the "row" B operand
    // (mma_add_a_b), one k16 step of keys at a time.
#pragma unroll
    for (int dn = 0; dn < kDTiles; ++dn) {
      o[dn][0] *= alpha[0];
      o[dn][1] *= alpha[0];
      o[dn][2] *= alpha[1];
      o[dn][3] *= alpha[1];
    }
#pragma unroll
    for (int kk = 0; kk < kTcTileKeys / kMmaK; ++kk) mma_add_a_b<T>(o, pa[kk], v_t, kLd, kk * kMmaK);
  }
  // Every copy has landed by now, except with S_k = 0 (the binding never sends it): then tile 0's
  // zero-filling copies were issued and the loop never waited for them.
  cp_async_wait<0>();

  // The 4 lanes of a group each summed their own 16 columns of a row: add them up.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(kFullWarp, l[h], 1);
    l[h] += __shfl_xor_sync(kFullWarp, l[h], 2);
  }
  const bool pairs = reinterpret_cast<uintptr_t>(out) % 4 == 0;  // 4-byte stores of column pairs
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int i = i0 + warp * kTcWarpRows + g + 8 * h;
    if (i >= Sq) continue;
    const bool any_key = l[h] > 0.0f;
    const float inv_l = any_key ? 1.0f / l[h] : 0.0f;  // all-padding row: zeros, never 0/0
#pragma unroll
    for (int dn = 0; dn < kDTiles; ++dn) {
      T* dst = out_bh + i * D + dn * 8 + 2 * t;
      const T lo = from_float<T>(o[dn][2 * h] * inv_l), hi = from_float<T>(o[dn][2 * h + 1] * inv_l);
      if (pairs) {
        *reinterpret_cast<uint32_t*>(dst) = pack2(lo, hi);
      } else {
        dst[0] = lo;
        dst[1] = hi;
      }
    }
    // m is in base-2 units (step 2): lse = ln(sum_j e^(scale s_j)) = m ln 2 + ln l.
    if (t == 0) lse[static_cast<int64_t>(bh) * Sq + i] = any_key ? m[h] * kLn2 + logf(l[h]) : -INFINITY;
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
  // 69,632 bytes of shared memory at D = 128: sm_80, sm_86/sm_89 and sm_90 all have it.
  if (head_dim < 0 || head_dim > kCudaMaxHeadDim) return false;
  const size_t smem = kind == ScalarKind::kFloat16 ? tc_shared_bytes<__half>(head_dim)
                                                   : tc_shared_bytes<__nv_bfloat16>(head_dim);
  return tc_attention_runs_here(kind, head_dim, smem);
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
      return cudaErrorInvalidValue;  // float32 has no m16n8k16 form without TF32 rounding
  }
}

}  // namespace minibert
