// Warp-level tensor-core and asynchronous-copy helpers of sm_80 (Ampere) and newer, for
// attention_cuda_tc.cu and attention_cuda_tc_bwd.cu:
//
//   mma_m16n8k16<T>    mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: D = A B + C
//   ldmatrix_x4(_trans) ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8x8 tiles from shared
//                       memory straight into the register layout of an mma operand
//   cp_async_16         cp.async.cg.shared.global, 16 bytes global -> shared without passing through
//                       registers; cp_async_commit / cp_async_wait<N> group and retire the copies
//   ldmatrix_a, mma_add_a_bt, mma_add_a_b  (at the end) the two product shapes of attention, from those
//
// On the GPU each is one inline PTX instruction. Under the CUDA emulator (csrc/emulation, which defines
// MINIBERT_CUDA_EMULATOR) each is C++ that moves exactly the elements the PTX ISA says, lane by lane, so a
// kernel that builds or reads a fragment with a wrong index gets a wrong number in CI, as it would on a GPU.
//
// ---- The register layout (PTX ISA, "Matrix fragments for mma.m16n8k16") ------------------------------------
// The 32 lanes of a warp hold the matrices together. Name lane l by
//     groupID = l >> 2          (0..7: which row, or for B which column, the lane holds)
//     threadID_in_group = l % 4 (0..3: which pair of adjacent columns, or for B rows)
// and write g = groupID, t = threadID_in_group. Every 32-bit register holds two 16-bit elements that are
// neighbours in a row (A, C) or in a column (B); the one with the lower index is in the low 16 bits.
//
//   A, 16 x 16 (rows x k), "row": 4 registers          B, 16 x 8 (k x cols), "col": 2 registers
//     a[0] = A[g    ][2t, 2t+1]                          b[0] = B[2t, 2t+1    ][g]
//     a[1] = A[g + 8][2t, 2t+1]                          b[1] = B[2t + 8, 2t + 9][g]
//     a[2] = A[g    ][2t + 8, 2t + 9]
//     a[3] = A[g + 8][2t + 8, 2t + 9]                  C and D, 16 x 8, float: 4 registers
//                                                        c[0], c[1] = C[g    ][2t], C[g    ][2t + 1]
//                                                        c[2], c[3] = C[g + 8][2t], C[g + 8][2t + 1]
//
//        cols 0 ..  7    cols 8 .. 15                      lane 0 holds C[0][0..1] and C[8][0..1],
//   rows 0..7 | a[0] | a[2] |   (each lane: 2 cols        lane 1 holds C[0][2..3] and C[8][2..3], ...,
//   rows 8..15| a[1] | a[3] |    of 1 row per register)   lane 31 holds C[7][6..7] and C[15][6..7].
//
// So a lane holds two rows of every A and C tile: g and g + 8; the four lanes 4g .. 4g + 3 together
// hold those rows whole, which is why a row maximum or sum over a C tile takes two shuffles.
// And the C layout of two n8 tiles side by side, C0 (columns 0..7) and C1 (columns 8..15), is the A
// layout of one 16 x 16 tile: a[0] = C0[0..1], a[1] = C0[2..3], a[2] = C1[0..1], a[3] = C1[2..3]
// (rounded to 16 bits). The attention kernel feeds its probabilities to the next product that way.
//
// ---- ldmatrix -----------------------------------------------------------------------------------------------
// ldmatrix.x4 loads four 8 x 8 tiles of 16-bit elements. Lanes 8j .. 8j + 7 each give the shared address
// of one 16-byte row of tile j (any 16-byte-aligned rows: they need not be contiguous). Register j of lane
// l then receives row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 of tile j: exactly a[.] or b[.] above
// for an 8 x 8 piece. With .trans it receives column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1 instead:
// the B operand of a matrix stored row-major as [k][n] (V in attention).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_common.cuh"  // from_float
#include "kernels_cuda.h"   // ScalarKind, kCudaMaxHeadDim

namespace minibert {

// Two 16-bit values in one register, `lo` (the lower row/column index) in the low half.
template <typename T>
__device__ __forceinline__ uint32_t pack2(T lo, T hi) {
  static_assert(sizeof(T) == 2, "pack2 packs 16-bit types");
  uint16_t l, h;
  memcpy(&l, &lo, 2);
  memcpy(&h, &hi, 2);
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}

#if defined(MINIBERT_CUDA_EMULATOR)

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  ::emu::mma_m16n8k16<T>(d, a, b, c);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) { ::emu::ldmatrix(r, 4, false, row); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) { ::emu::ldmatrix(r, 4, true, row); }
// 16 bytes from global `src` to shared `dst` (both 16-byte aligned); `valid` false writes 16 zero bytes
// and reads nothing.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  ::emu::cp_async(dst, src, 16, valid ? 16 : 0);
}
__device__ __forceinline__ void cp_async_commit() { ::emu::cp_async_commit(); }
// Waits until at most N of this thread's committed groups are still in flight (the newest N).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  ::emu::cp_async_wait(N);
}

#else  // nvcc

// The instructions exist from sm_80 on. nvcc's host pass sees only the declarations' empty bodies; a
// device pass for an older architecture (a PTX JIT target) gets __trap() instead of the instruction.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MINIBERT_SM80_ASM(...) asm volatile(__VA_ARGS__)
#elif defined(__CUDA_ARCH__)
#define MINIBERT_SM80_ASM(...) __trap()
#else
#define MINIBERT_SM80_ASM(...) \
  do {                         \
  } while (0)
#endif

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "f16 or bf16 inputs");
  if constexpr (std::is_same<T, __half>::value) {
    MINIBERT_SM80_ASM(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    MINIBERT_SM80_ASM(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
}

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
  MINIBERT_SM80_ASM("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                    : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                    : "r"(shared_address(row))
                    : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
  MINIBERT_SM80_ASM("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                    : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                    : "r"(shared_address(row))
                    : "memory");
}

// .cg: cache in L2 only (K and V are read once per block; L1 would only be polluted). With src-size 0 the
// 16 destination bytes are zero-filled and nothing is read.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  MINIBERT_SM80_ASM("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
                    "r"(valid ? 16 : 0)
                    : "memory");
}
__device__ __forceinline__ void cp_async_commit() { MINIBERT_SM80_ASM("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  MINIBERT_SM80_ASM("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#undef MINIBERT_SM80_ASM
#endif

// ---- Warp-tile products built from the primitives ------------------------------------------------------
// The attention kernels' products all take one of two shapes. A is a 16 x 16 A fragment in registers; B
// is a matrix in shared memory, row-major with a row stride of `ld` elements (16-byte aligned rows), and
// acc holds N n8 tiles of C (N even: one ldmatrix.x4 brings the B fragments of two tiles).

// ---- Where the tensor-core attention kernels run (host) ---------------------------------------------------
// Both take float16/bfloat16 with a head size that is a multiple of the mma's k (16), up to
// kCudaMaxHeadDim, on a device of compute capability 8.0 or newer whose opt-in shared memory per block
// holds `smem` bytes (their tiles at that head size). Anything else, or a device that cannot be queried,
// runs the SIMT kernels.
inline bool tc_attention_runs_here(ScalarKind kind, int64_t head_dim, size_t smem) {
  if (kind == ScalarKind::kFloat32 || head_dim % 16 != 0 || head_dim < 16 || head_dim > kCudaMaxHeadDim) {
    return false;
  }
  int device = 0, major = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return false;
  }
  return major >= 8 && smem <= static_cast<size_t>(optin);
}

// ---- Staging rows into shared memory ---------------------------------------------------------------------
// The shared tiles of both attention kernels keep rows of D elements padded to D + 8: a row is then an odd
// number of 16-byte units long, so the 8 rows one ldmatrix tile reads start in 8 different groups of four
// banks (conflict-free), and every row starts 16-byte aligned, as cp.async and ldmatrix require.
__host__ __device__ constexpr int tc_padded_row(int D) { return D + 8; }

// Copies rows [r0, r0 + kRows) of a row-major [rows, D] global matrix into a [kRows, D + 8] shared tile,
// zero past `rows`. `async` (block-uniform: `src` is 16-byte aligned) issues 16-byte cp.async copies,
// which land at a later cp_async_wait; otherwise the rows are stored element by element at once.
template <typename T, int D, int kRows>
__device__ __forceinline__ void stage_rows(T* dst, const T* src, int r0, int rows, bool async) {
  constexpr int kLd = tc_padded_row(D);
  constexpr int kVecs = D * static_cast<int>(sizeof(T)) / 16;  // 16-byte vectors per row
  constexpr int kPerVec = 16 / static_cast<int>(sizeof(T));
  if (async) {
    for (int e = threadIdx.x; e < kRows * kVecs; e += blockDim.x) {
      const int r = e / kVecs, c = (e % kVecs) * kPerVec;
      const bool in = r0 + r < rows;
      cp_async_16(dst + r * kLd + c, in ? src + (r0 + r) * D + c : src, in);  // !in: 16 zero bytes
    }
  } else {
    for (int e = threadIdx.x; e < kRows * D; e += blockDim.x) {
      const int r = e / D, c = e % D;
      dst[r * kLd + c] = r0 + r < rows ? src[(r0 + r) * D + c] : from_float<T>(0.0f);
    }
  }
}

// N n8 tiles of C, all zero (an accumulator before its first product).
template <int N>
__device__ __forceinline__ void zero_tiles(float (&acc)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
  }
}

// The A fragment of rows 0..15, columns k0 .. k0 + 15 of a row-major shared matrix: lanes 0-15 address
// rows 0-15 at column k0, lanes 16-31 the same rows at k0 + 8, so the four 8 x 8 tiles arrive as a[0]
// (rows 0-7, cols 0-7), a[1] (rows 8-15), a[2] (cols 8-15) and a[3].
template <typename T>
__device__ __forceinline__ void ldmatrix_a(uint32_t (&a)[4], const T* rows, int ld, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(a, rows + (lane % 16) * ld + k0 + (lane / 16) * 8);
}

// acc[n] += A (B[8 n .. 8 n + 7][k0 .. k0 + 15])^T: B's rows are the output columns, the "col" operand,
// as K in S = Q K^T (K stored [key][d]). Lanes 0-7 address rows 0-7 of a pair of tiles at column k0,
// lanes 8-15 the same rows at k0 + 8, lanes 16-31 rows 8-15 likewise.
template <typename T, int N>
__device__ __forceinline__ void mma_add_a_bt(float (&acc)[N][4], const uint32_t (&a)[4], const T* b, int ld, int k0) {
  static_assert(N % 2 == 0, "one ldmatrix.x4 brings two n8 tiles");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < N; n += 2) {
    uint32_t frag[4];
    ldmatrix_x4(frag, b + (n * 8 + lane % 8 + (lane / 16) * 8) * ld + k0 + ((lane / 8) % 2) * 8);
    mma_m16n8k16<T>(acc[n], a, frag, acc[n]);
    mma_m16n8k16<T>(acc[n + 1], a, frag + 2, acc[n + 1]);
  }
}

// acc[n] += A B[k0 .. k0 + 15][8 n .. 8 n + 7]: B's columns are the output columns, the "row" operand, as
// V in O = P V (V stored [key][d]), which ldmatrix.trans delivers. Lanes 0-15 address rows k0 + 0..15
// at column 8 n, lanes 16-31 the same rows at 8 n + 8.
template <typename T, int N>
__device__ __forceinline__ void mma_add_a_b(float (&acc)[N][4], const uint32_t (&a)[4], const T* b, int ld, int k0) {
  static_assert(N % 2 == 0, "one ldmatrix.x4 brings two n8 tiles");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < N; n += 2) {
    uint32_t frag[4];
    ldmatrix_x4_trans(frag, b + (k0 + lane % 16) * ld + n * 8 + (lane / 16) * 8);
    mma_m16n8k16<T>(acc[n], a, frag, acc[n]);
    mma_m16n8k16<T>(acc[n + 1], a, frag + 2, acc[n + 1]);
  }
}

}  // namespace minibert
