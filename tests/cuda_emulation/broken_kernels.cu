// Tiny kernels for the emulator's own tests (tests/cuda_emulation/test_emulator.py): each is correct with
// one flag and carries a classic bug without it, so the tests can show the emulator tells the two apart.
// It is plain CUDA: nvcc compiles it too.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "mma_sm80.cuh"  // csrc/: mma.m16n8k16, ldmatrix, cp.async

namespace {

// out[t] = x[(t + 1) % n] through shared memory; `barrier` 0 leaves out the __syncthreads between the
// write and the read of another thread's element.
__global__ void rotate_kernel(const float* x, float* out, int barrier) {
  extern __shared__ float tile[];
  const int t = threadIdx.x, n = blockDim.x;
  tile[t] = x[t];
  if (barrier) __syncthreads();
  out[t] = tile[(t + 1) % n];
}

// Writes (`read` 0) or reads (`read` 1) shared element t + shift of a tile of blockDim.x floats.
__global__ void shifted_kernel(const float* x, float* out, int shift, int read) {
  extern __shared__ float tile[];
  const int t = threadIdx.x;
  if (read) {
    tile[t] = x[t];
    __syncthreads();
    out[t] = tile[t + shift];
  } else {
    tile[t + shift] = x[t];
    __syncthreads();
    out[t] = tile[t];
  }
}

#if __CUDA_ARCH__ >= 900
// sm_90's vector atomic: each of 32 threads adds (1, 2, 3, 4) to out[shift .. shift + 3] with one
// atomicAdd(float4*), which needs a 16-byte aligned address (shift a multiple of 4).
__global__ void vector_add_kernel(float* out, int shift) {
  atomicAdd(reinterpret_cast<float4*>(out + shift), make_float4(1.0f, 2.0f, 3.0f, 4.0f));
}
#endif

// Sums x into out[0]: with atomicAdd (`atomic` 1) or as a plain read-modify-write (a race).
__global__ void sum_kernel(const float* x, float* out, int n, int atomic) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (atomic) atomicAdd(out, x[i]);
  else out[0] += x[i];
}

// A __syncthreads only half the block reaches.
__global__ void divergent_kernel(float* out) {
  if (threadIdx.x < blockDim.x / 2) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void noop_kernel(float*) {}

__global__ void trap_kernel(float* out) {
  out[threadIdx.x] = 1.0f;
  if (threadIdx.x == 3) __trap();
}

// Warp collectives: out[lane] = (sum by xor-shuffles, value of lane+1 (down), of lane-1 (up), lane 5's
// value (idx), low and high 16 bits of the ballot of x > 0, __all_sync(x > -2), __any_sync(x > 1.5)).
__global__ void warp_kernel(const float* x, float* out) {
  const int lane = threadIdx.x % 32;
  float s = x[threadIdx.x];
  for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
  const float down = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 1);
  const float up = __shfl_up_sync(0xffffffffu, x[threadIdx.x], 1);
  const float idx = __shfl_sync(0xffffffffu, x[threadIdx.x], 5);
  const unsigned ballot = __ballot_sync(0xffffffffu, x[threadIdx.x] > 0.0f);
  const bool all = __all_sync(0xffffffffu, x[threadIdx.x] > -2.0f);
  const bool any = __any_sync(0xffffffffu, x[threadIdx.x] > 1.5f);
  float* o = out + 8 * threadIdx.x;
  o[0] = s;
  o[1] = down;
  o[2] = up;
  o[3] = idx;
  o[4] = static_cast<float>(ballot & 0xffffu);
  o[5] = static_cast<float>(ballot >> 16);
  o[6] = all ? 1.0f : 0.0f;
  o[7] = any ? 1.0f : 0.0f;
  (void)lane;
}

// Round trips float -> half -> float and float -> bfloat16 -> float.
__global__ void convert_kernel(const float* x, float* half_out, float* bf16_out, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    half_out[i] = __half2float(__float2half_rn(x[i]));
    bf16_out[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
  }
}

// C [16, 16] = A [16, 16] B (B stored transposed when `b_col` is 1), via shared memory at byte offset
// `offset` (not a multiple of 32 -> misaligned) with leading dimension `ldm`.
__global__ void wmma_kernel(const __half* a, const __half* b, float* c, int b_col, int offset, int ldm) {
  namespace wmma = nvcuda::wmma;
  extern __shared__ __align__(128) unsigned char raw[];
  __half* a_s = reinterpret_cast<__half*>(raw + offset);
  __half* b_s = a_s + 16 * ldm;
  for (int e = threadIdx.x; e < 256; e += 32) {
    a_s[(e / 16) * ldm + e % 16] = a[e];
    b_s[(e / 16) * ldm + e % 16] = b[e];
  }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a_s, ldm);
  if (b_col) {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::load_matrix_sync(fb, b_s, ldm);
    wmma::mma_sync(acc, fa, fb, acc);
  } else {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::load_matrix_sync(fb, b_s, ldm);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

// C [16, 16] = A [16, 16] B [16, 16] (all row-major; B as [k][n]) with two mma.m16n8k16, one warp.
// `mode` 0: fragments read from global memory at the PTX ISA's indices; 1: the same with a[1] and a[2]
// swapped (rows g + 8 and columns 8..15 mixed up: a wrong fragment index); 2: A by ldmatrix.x4 and B by
// ldmatrix.x4.trans from shared [k][n]; 3: B by ldmatrix.x4 from shared B^T ([n][k]); 4: lane 31 leaves
// before the mma.
template <typename T>
__global__ void mma_kernel(const T* a, const T* b, float* c, int mode) {
  using minibert::pack2;
  extern __shared__ __align__(128) unsigned char raw[];
  constexpr int kLd = 24;  // padded shared rows: 48 bytes, a multiple of 16
  T* a_s = reinterpret_cast<T*>(raw);
  T* b_s = a_s + 16 * kLd;
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t af[4], bf[2][2];  // bf[n-tile][register]
  if (mode <= 1) {
    af[0] = pack2(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]);
    af[1] = pack2(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]);
    af[2] = pack2(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]);
    af[3] = pack2(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9]);
    if (mode == 1) {
      const uint32_t swap = af[1];
      af[1] = af[2];
      af[2] = swap;
    }
    for (int nt = 0; nt < 2; ++nt) {
      const int n = nt * 8 + g;
      bf[nt][0] = pack2(b[(2 * t) * 16 + n], b[(2 * t + 1) * 16 + n]);
      bf[nt][1] = pack2(b[(2 * t + 8) * 16 + n], b[(2 * t + 9) * 16 + n]);
    }
  } else {
    for (int e = lane; e < 256; e += 32) {
      a_s[(e / 16) * kLd + e % 16] = a[e];
      if (mode == 3) b_s[(e % 16) * kLd + e / 16] = b[e];  // B^T: row n holds column n of B
      else b_s[(e / 16) * kLd + e % 16] = b[e];
    }
    __syncwarp();
    minibert::ldmatrix_x4(af, a_s + (lane % 16) * kLd + (lane / 16) * 8);
    uint32_t r[4];
    if (mode == 3) {  // lanes 0-7: n 0-7 at k 0, 8-15: n 0-7 at k 8, 16-31: n 8-15 likewise
      minibert::ldmatrix_x4(r, b_s + (lane % 8 + (lane / 16) * 8) * kLd + ((lane / 8) % 2) * 8);
    } else {  // lanes 0-15: k 0-15 at n 0, 16-31: k 0-15 at n 8
      minibert::ldmatrix_x4_trans(r, b_s + (lane % 16) * kLd + (lane / 16) * 8);
    }
    bf[0][0] = r[0], bf[0][1] = r[1], bf[1][0] = r[2], bf[1][1] = r[3];
  }
  if (mode == 4 && lane == 31) return;
  for (int nt = 0; nt < 2; ++nt) {
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    minibert::mma_m16n8k16<T>(acc, af, bf[nt], acc);
    for (int e = 0; e < 4; ++e) c[(g + 8 * (e / 2)) * 16 + nt * 8 + 2 * t + e % 2] = acc[e];
  }
}

// out[i] = x[(i + 4) % n] through shared memory, each thread copying 16 bytes (4 floats) with cp.async.
// `mode` 0: issue, commit, wait_group 0, __syncthreads, read (right); 1: the wait comes after the read;
// 2: no wait at all; 3: an empty group committed after the copies, then wait_group 1 (right: only the
// newest, empty group may stay in flight); 4: wait_group 1 with the copies' group the newest (too weak);
// 5: a shared address 4 bytes off 16-byte alignment; 6: a global address 4 bytes off; 7: the destination
// first holds valid data (plain stores and a barrier), then is read while a copy into it is in flight.
__global__ void cp_async_kernel(const float* x, float* out, int mode) {
  extern __shared__ __align__(128) float tile[];
  const int t = threadIdx.x, n = 4 * blockDim.x;
  float* dst = tile + 4 * t + (mode == 5 ? 1 : 0);
  const float* src = x + 4 * t + (mode == 6 ? 1 : 0);
  if (mode == 7) {
    for (int e = 0; e < 4; ++e) tile[4 * t + e] = x[4 * t + e];
    __syncthreads();
  }
  minibert::cp_async_16(dst, src, true);
  minibert::cp_async_commit();
  if (mode == 0) minibert::cp_async_wait<0>();
  if (mode == 3) {
    minibert::cp_async_commit();
    minibert::cp_async_wait<1>();
  }
  if (mode == 4) minibert::cp_async_wait<1>();
  if (mode != 7) __syncthreads();
  for (int e = 0; e < 4; ++e) {
    const int i = 4 * t + e;
    out[i] = mode == 7 ? tile[i] : tile[(i + 4) % n];
  }
  if (mode == 1 || mode == 4 || mode == 7) minibert::cp_async_wait<0>();
}

}  // namespace

// Entry points for the emulator's driver (same signature as csrc/emulation/ops.cpp's).
extern "C" {

// buffers: x, out. ints: n threads, barrier.
int emu_op_rotate(void** b, const int64_t* i, const double*) {
  rotate_kernel<<<1, static_cast<unsigned>(i[0]), sizeof(float) * i[0]>>>(static_cast<const float*>(b[0]),
                                                                          static_cast<float*>(b[1]),
                                                                          static_cast<int>(i[1]));
  return cudaGetLastError();
}

// buffers: x, out. ints: n threads, shift, read.
int emu_op_shifted(void** b, const int64_t* i, const double*) {
  shifted_kernel<<<1, static_cast<unsigned>(i[0]), sizeof(float) * i[0]>>>(
      static_cast<const float*>(b[0]), static_cast<float*>(b[1]), static_cast<int>(i[1]), static_cast<int>(i[2]));
  return cudaGetLastError();
}

// buffers: x, out (one float, zero). ints: n, atomic, threads per block.
int emu_op_sum(void** b, const int64_t* i, const double*) {
  const int n = static_cast<int>(i[0]), threads = static_cast<int>(i[2]);
  sum_kernel<<<(n + threads - 1) / threads, threads>>>(static_cast<const float*>(b[0]), static_cast<float*>(b[1]), n,
                                                        static_cast<int>(i[1]));
  return cudaGetLastError();
}

// buffers: out (16-byte aligned). ints: shift. Built below sm_90 there is no float4 atomicAdd to call.
int emu_op_vector_add(void** b, const int64_t* i, const double*) {
#if __CUDA_ARCH__ >= 900
  vector_add_kernel<<<1, 32>>>(static_cast<float*>(b[0]), static_cast<int>(i[0]));
  return cudaGetLastError();
#else
  (void)b;
  (void)i;
  return cudaErrorInvalidDeviceFunction;
#endif
}

int emu_op_divergent(void** b, const int64_t*, const double*) {
  divergent_kernel<<<1, 64>>>(static_cast<float*>(b[0]));
  return cudaGetLastError();
}

int emu_op_trap(void** b, const int64_t*, const double*) {
  trap_kernel<<<1, 32>>>(static_cast<float*>(b[0]));
  return cudaGetLastError();
}

// buffers: x [threads], out [threads, 8]. ints: threads.
int emu_op_warp(void** b, const int64_t* i, const double*) {
  warp_kernel<<<1, static_cast<unsigned>(i[0])>>>(static_cast<const float*>(b[0]), static_cast<float*>(b[1]));
  return cudaGetLastError();
}

int emu_op_convert(void** b, const int64_t* i, const double*) {
  convert_kernel<<<1, 64>>>(static_cast<const float*>(b[0]), static_cast<float*>(b[1]), static_cast<float*>(b[2]),
                            static_cast<int>(i[0]));
  return cudaGetLastError();
}

// buffers: a, b (half [16, 16]), c (float [16, 16]). ints: b_col, offset, ldm, opt_in (bytes of dynamic
// shared memory to opt in to first, 0 for none), smem (bytes to launch with, 0 for what the tiles need).
int emu_op_wmma(void** b, const int64_t* i, const double*) {
  const int offset = static_cast<int>(i[1]), ldm = static_cast<int>(i[2]);
  size_t smem = i[4] ? static_cast<size_t>(i[4]) : offset + 2 * 16 * ldm * sizeof(__half);
  if (i[3]) {
    const cudaError_t err = cudaFuncSetAttribute(wmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(i[3]));
    if (err != cudaSuccess) return err;
  }
  wmma_kernel<<<1, 32, smem>>>(static_cast<const __half*>(b[0]), static_cast<const __half*>(b[1]),
                               static_cast<float*>(b[2]), static_cast<int>(i[0]), offset, ldm);
  return cudaGetLastError();
}

// ints: grid x, grid y, block x. A launch the driver must refuse or accept as a GPU does.
int emu_op_launch_config(void** b, const int64_t* i, const double*) {
  noop_kernel<<<dim3(static_cast<unsigned>(i[0]), static_cast<unsigned>(i[1])), static_cast<unsigned>(i[2])>>>(
      static_cast<float*>(b[0]));
  return cudaGetLastError();
}

// buffers: a, b (16 x 16, row-major), c (float 16 x 16). ints: mode (see mma_kernel), bf16 (0: half).
int emu_op_mma(void** b, const int64_t* i, const double*) {
  const int mode = static_cast<int>(i[0]);
  const size_t smem = 2 * 16 * 24 * 2;
  if (i[1]) {
    mma_kernel<__nv_bfloat16><<<1, 32, smem>>>(static_cast<const __nv_bfloat16*>(b[0]),
                                               static_cast<const __nv_bfloat16*>(b[1]), static_cast<float*>(b[2]), mode);
  } else {
    mma_kernel<__half><<<1, 32, smem>>>(static_cast<const __half*>(b[0]), static_cast<const __half*>(b[1]),
                                        static_cast<float*>(b[2]), mode);
  }
  return cudaGetLastError();
}

// buffers: x, out (float, 4 * threads + 4: room for the misaligned source). ints: threads, mode.
int emu_op_cp_async(void** b, const int64_t* i, const double*) {
  const unsigned threads = static_cast<unsigned>(i[0]);
  cp_async_kernel<<<1, threads, (4 * threads + 4) * sizeof(float)>>>(static_cast<const float*>(b[0]),
                                                                    static_cast<float*>(b[1]),
                                                                    static_cast<int>(i[1]));
  return cudaGetLastError();
}

}  // extern "C"
