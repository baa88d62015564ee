// Small device helpers shared by the .cu files: float <-> storage-type conversion, warp reductions,
// 16-byte vector loads/stores, the SM count, and a dispatcher from ScalarKind to a typed launch.
// No torch headers.
#pragma once
#include <atomic>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernel_args.h"

namespace minibert {

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

constexpr unsigned kFullWarp = 0xffffffffu;

// Butterfly reductions: after log2(32) xor-shuffles every lane holds the result.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) x += __shfl_xor_sync(kFullWarp, x, s);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullWarp, x, s));
  return x;
}

// Calls f(T{}) with T the storage type of `kind` (float, __half or __nv_bfloat16).
template <typename F>
cudaError_t dispatch_kind(ScalarKind kind, F&& f) {
  switch (kind) {
    case ScalarKind::kFloat32: f(float{}); break;
    case ScalarKind::kFloat16: f(__half{}); break;
    case ScalarKind::kBFloat16: f(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();  // launch errors (bad configuration, no kernel image for this GPU, ...)
}

// V elements at p as float32: one 16-byte load when V * sizeof(T) == 16 (p must then be 16-byte aligned),
// a plain element load when V == 1. store_vec rounds to T and stores the same way.
template <typename T, int V>
union VecBits {
  static_assert(V == 1 || V * sizeof(T) == 16, "a vector is one element or 16 bytes");
  uint4 raw;
  T e[V];
};
// Under the CPU emulator a misaligned vector access fails the launch, as it faults on the GPU.
__device__ __forceinline__ void check_vec_alignment(const void* p) {
#if defined(MINIBERT_CUDA_EMULATOR)
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ::emu::fail("a 16-byte vector access at a misaligned address");
#else
  (void)p;
#endif
}
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = to_float(p[0]);
  } else {
    VecBits<T, V> b;
    check_vec_alignment(p);
    b.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = to_float(b.e[e]);
  }
}
template <typename T, int V>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&in)[V]) {
  if constexpr (V == 1) {
    p[0] = from_float<T>(in[0]);
  } else {
    VecBits<T, V> b;
#pragma unroll
    for (int e = 0; e < V; ++e) b.e[e] = from_float<T>(in[e]);
    check_vec_alignment(p);
    *reinterpret_cast<uint4*>(p) = b.raw;
  }
}

inline bool is_aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The multiprocessor count of the current device, queried once per device and cached (grids sized to
// fill the GPU once). Device numbers from kMaxCachedDevices on ask every time.
inline int device_sm_count() {
  constexpr int kMaxCachedDevices = 64;
  static std::atomic<int> cache[kMaxCachedDevices];  // zero-initialised (static storage)
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) device = 0;
  if (device >= 0 && device < kMaxCachedDevices) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0)
    return 1;  // not cached; the launcher's cudaGetLastError() reports the error
  if (device >= 0 && device < kMaxCachedDevices) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);  // grid-stride beyond
}

}  // namespace minibert
