// A host emulation of the part of CUDA that csrc/*.cu uses, so that the unmodified kernel bodies compile
// with g++ and run on the CPU, one emulated CUDA thread per fiber (or per std::thread in the sanitizer
// builds). See csrc/emulation/README.md for what is emulated, what is checked and what is not.
//
// The stand-ins for <cuda_runtime.h>, <cuda_fp16.h>, <cuda_bf16.h> and <mma.h> in include/ all land here.
// Two pieces of CUDA syntax are not C++ and are rewritten by the driver (tests/cuda_emulation/harness.py)
// before g++ sees a .cu file: the launch `kernel<<<grid, block, smem, stream>>>(args)` becomes
// `::emu::launch(kernel, grid, block, smem, stream)(args)`, and a `__shared__` declaration becomes a
// reference into the block's emulated shared memory (`::emu::dynamic_shared<T>()` for `extern __shared__`,
// `::emu::static_shared<T[..]>(id)` otherwise). Everything else is the kernel text as nvcc sees it.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)
#error "cuda_emu.h is the host emulation of CUDA: compile with g++, not nvcc"
#endif

// Kernel headers test this to choose the emulated C++ over inline PTX (csrc/mma_sm80.cuh).
#define MINIBERT_CUDA_EMULATOR 1

// ---- qualifiers: meaningful to nvcc, empty on the host ---------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __constant__ static_assert(false, "cuda emulator: __constant__ memory is not emulated");

// ---- the runtime API subset -------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorIllegalInstruction = 715,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
};
typedef cudaError_t cudaError;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
// The vector types the kernels load 16 or 8 bytes at a time with (aligned as on the GPU).
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

struct cudaFuncAttributes {
  int binaryVersion, ptxVersion, maxDynamicSharedSizeBytes, maxThreadsPerBlock;
};

namespace emu {

// ---- what one emulated thread sees --------------------------------------------------------------------
struct ThreadCtx {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
  int linear, lane, warp;
};
ThreadCtx& ctx();  // the calling emulated thread's indices (an error outside a kernel)

// An error the emulator raises inside a kernel (a failed check, __trap, a deadlock): the launch stops and
// cudaGetLastError() reports it; emu_last_error_message() has the words.
[[noreturn]] void fail(const std::string& message);

// ---- barriers and warp collectives ----------------------------------------------------------------------
enum class BlockOp { kSync, kOr, kAnd, kCount };
int block_barrier(BlockOp op, int value, const char* file, int line);
void warp_barrier(unsigned mask, const char* file, int line);
// Every lane of `mask` contributes `value`; all contributions come back in `out` (indexed by lane).
void warp_gather(unsigned mask, uint64_t value, uint64_t out[32], const char* file, int line);
// The same with `words` (1 to kMaxGatherWords) 64-bit words per lane: lane l's word w lands in
// out[l * words + w]; a lane of the mask that exited instead of arriving contributes zeros.
constexpr int kMaxGatherWords = 4;
void warp_gather_words(unsigned mask, const uint64_t* value, int words, uint64_t* out, const char* file, int line);

// ---- shared memory --------------------------------------------------------------------------------------
void* dynamic_shared_base();
void* static_shared_base(int id, size_t bytes, size_t align);
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_base());
}
template <typename A>
A& static_shared(int id) {
  return *static_cast<A*>(static_shared_base(id, sizeof(A), alignof(A)));
}
// Fails unless [p, p + bytes) lies inside shared memory whenever p does (wmma footprints, ...).
void check_shared_range(const void* p, size_t bytes, const char* what);
// Whether [p, p + bytes) lies entirely inside the block's shared memory (one allocation of it).
bool in_shared(const void* p, size_t bytes);

// ---- cp.async (sm_80): per-thread queues of copies, retired by cp_async_wait (runtime.cpp) ----------------
// cp_async: `bytes` (4, 8, 16) from global `src` to shared `dst`, both aligned to `bytes`; only the first
// `src_bytes` are read, the rest are zeros. The destination holds the NaN pattern until the wait.
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();   // closes the thread's copies issued since the last commit into one group
void cp_async_wait(int n);  // retires (writes) every group but the newest n

// ---- launches -------------------------------------------------------------------------------------------
cudaError_t run_launch(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

template <typename... P>
struct Launcher {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "cuda emulator: wrong number of kernel arguments");
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    auto* k = kernel;
    run_launch(reinterpret_cast<const void*>(k), grid, block, smem, [&] { std::apply(k, params); });
  }
};
template <typename... P>
Launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return Launcher<P...>{kernel, grid, block, smem};
}

cudaError_t func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value);
cudaError_t func_get_attributes(cudaFuncAttributes* attr, const void* kernel);

// ---- storage of __half / __nv_bfloat16 (round to nearest even, as __float2half_rn does) ----------------
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_bits(f), sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), in units of 2^-24
    const float scaled = bits_float(a) * 16777216.0f;  // exact: a power-of-two scale
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
  }
  const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);  // round the 13 dropped bits to nearest even
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

}  // namespace emu

// ---- indices ----------------------------------------------------------------------------------------------
#define threadIdx (::emu::ctx().thread_idx)
#define blockIdx (::emu::ctx().block_idx)
#define blockDim (::emu::ctx().block_dim)
#define gridDim (::emu::ctx().grid_dim)
#define warpSize 32

// ---- barriers ---------------------------------------------------------------------------------------------
#define __syncthreads() ((void)::emu::block_barrier(::emu::BlockOp::kSync, 0, __FILE__, __LINE__))
#define __syncthreads_or(p) ::emu::block_barrier(::emu::BlockOp::kOr, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_and(p) ::emu::block_barrier(::emu::BlockOp::kAnd, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_count(p) ::emu::block_barrier(::emu::BlockOp::kCount, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp_at(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __trap() ::emu::fail("the kernel executed __trap()")

namespace emu {
inline void syncwarp_at(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_barrier(mask, file, line);
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "cuda emulator: shuffles of types over 8 bytes are not emulated");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
// Which lane a shuffle reads: `kind` 0 idx, 1 xor, 2 up, 3 down, within segments of `width` lanes.
inline int shuffle_source(int lane, int kind, int arg, int width) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) fail("shuffle width must be a power of two <= 32");
  const int base = lane & ~(width - 1);
  switch (kind) {
    case 0: return base + (arg & (width - 1));
    case 1: return (lane ^ arg) < base + width && (lane ^ arg) >= base ? (lane ^ arg) : lane;
    case 2: return lane - arg >= base ? lane - arg : lane;
    default: return lane + arg < base + width ? lane + arg : lane;
  }
}
template <typename T>
T shuffle(unsigned mask, T v, int kind, int arg, int width, const char* file, int line) {
  uint64_t all[32];
  warp_gather(mask, to_bits(v), all, file, line);
  const int src = shuffle_source(ctx().lane, kind, arg, width);
  if (!((mask >> src) & 1u)) fail("a shuffle reads lane " + std::to_string(src) + ", which is not in its mask");
  return from_bits<T>(all[src]);
}
inline unsigned ballot(unsigned mask, int pred, const char* file, int line) {
  uint64_t all[32];
  warp_gather(mask, pred ? 1 : 0, all, file, line);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && all[l]) bits |= 1u << l;
  return bits;
}
// True when the predicate holds on every lane of `mask` that takes part (2: takes part and holds).
inline bool all_lanes(unsigned mask, int pred, const char* file, int line) {
  uint64_t all[32];
  warp_gather(mask, pred ? 2 : 1, all, file, line);  // 0 is left for lanes that did not take part
  for (int l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && all[l] == 1) return false;
  return true;
}
}  // namespace emu

// The optional last argument of a shuffle is the segment width (32 when absent).
#define EMU_SHUFFLE(kind, mask, v, arg, ...) \
  ::emu::shuffle(mask, v, kind, arg, ::emu::width_or_32(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_sync(mask, v, src, ...) EMU_SHUFFLE(0, mask, v, src, __VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) EMU_SHUFFLE(1, mask, v, m, __VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) EMU_SHUFFLE(2, mask, v, d, __VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) EMU_SHUFFLE(3, mask, v, d, __VA_ARGS__)
#define __ballot_sync(mask, p) ::emu::ballot(mask, p, __FILE__, __LINE__)
#define __any_sync(mask, p) (::emu::ballot(mask, p, __FILE__, __LINE__) != 0u)
#define __all_sync(mask, p) ::emu::all_lanes(mask, p, __FILE__, __LINE__)
namespace emu {
inline int width_or_32() { return 32; }
inline int width_or_32(int w) { return w; }
}  // namespace emu

// ---- atomics (real atomic read-modify-writes, so ThreadSanitizer sees them as such) ------------------------
template <typename T>
inline T emu_atomic_update(T* p, T (*f)(T, T), T v) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cuda emulator: atomics on 4- and 8-byte types only");
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U* up = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(up, __ATOMIC_RELAXED);
  for (;;) {
    T oldv;
    std::memcpy(&oldv, &old, sizeof(T));
    const T newv = f(oldv, v);
    U neww;
    std::memcpy(&neww, &newv, sizeof(T));
    if (__atomic_compare_exchange_n(up, &old, neww, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return oldv;
  }
}
template <typename T>
inline T atomicAdd(T* p, T v) {
  return emu_atomic_update<T>(p, [](T a, T b) { return static_cast<T>(a + b); }, v);
}
#if __CUDA_ARCH__ >= 900
// sm_90's vector atomicAdd on float2 / float4 (one red.global.add.v2/v4.f32): as on the GPU, each component
// is added atomically on its own (the vector as a whole is not one atomic), and the address must be aligned
// to the vector's size. Declared for sm_90 only, as CUDA's headers do, so an sm_80 build that calls it fails.
template <typename V>
inline V emu_vector_atomic_add(V* p, V v) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(V) != 0) {
    const std::string size = std::to_string(sizeof(V));
    ::emu::fail("atomicAdd(float" + std::to_string(sizeof(V) / 4) + "*): the address is not " + size +
                "-byte aligned");
  }
  float* f = reinterpret_cast<float*>(p);
  const float* add = reinterpret_cast<const float*>(&v);
  V old;
  float* o = reinterpret_cast<float*>(&old);
  for (size_t c = 0; c < sizeof(V) / 4; ++c) {
    o[c] = emu_atomic_update<float>(f + c, [](float a, float b) { return a + b; }, add[c]);
  }
  return old;
}
inline float2 atomicAdd(float2* p, float2 v) { return emu_vector_atomic_add(p, v); }
inline float4 atomicAdd(float4* p, float4 v) { return emu_vector_atomic_add(p, v); }
#endif
template <typename T>
inline T atomicMax(T* p, T v) {
  return emu_atomic_update<T>(p, [](T a, T b) { return a > b ? a : b; }, v);
}
template <typename T>
inline T atomicMin(T* p, T v) {
  return emu_atomic_update<T>(p, [](T a, T b) { return a < b ? a : b; }, v);
}
template <typename T>
inline T atomicExch(T* p, T v) {
  return emu_atomic_update<T>(p, [](T, T b) { return b; }, v);
}

// ---- fast-math intrinsics: the exact functions (the GPU's approximations differ in the last bits) -------
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// ---- half and bfloat16 ------------------------------------------------------------------------------------
struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(::emu::float_to_half_bits(f)) {}
  operator float() const { return ::emu::half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(::emu::float_to_bf16_bits(f)) {}
  operator float() const { return ::emu::bf16_bits_to_float(__x); }
};
inline float __half2float(__half h) { return ::emu::half_bits_to_float(h.__x); }
inline __half __float2half_rn(float f) {
  __half h;
  h.__x = ::emu::float_to_half_bits(f);
  return h;
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return ::emu::bf16_bits_to_float(b.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  __nv_bfloat16 b;
  b.__x = ::emu::float_to_bf16_bits(f);
  return b;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

// ---- runtime calls --------------------------------------------------------------------------------------
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return ::emu::func_set_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}
template <typename... P>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void (*kernel)(P...)) {
  return ::emu::func_get_attributes(attr, reinterpret_cast<const void*>(kernel));
}

// ---- the wmma subset: m16n16k16, half/bfloat16 inputs, float accumulators ----------------------------------
// Every lane's fragment holds the whole 16x16 tile (the hardware spreads it over the lanes; the layout is
// unspecified by the API, so code that is correct cannot tell). load/mma/store wait for the whole warp
// first, as the CUDA documentation says they do; store_matrix_sync then writes, from each lane, the
// elements the hardware's accumulator layout gives that lane, so a missing __syncwarp before other lanes
// read the stored tile shows up as NaN from the shared-memory prefill.
namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "cuda emulator: only the m16n16k16 wmma shape is emulated");
  static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value
                                                      : (std::is_same<T, __half>::value ||
                                                         std::is_same<T, __nv_bfloat16>::value),
                "cuda emulator: wmma inputs must be __half or __nv_bfloat16 and accumulators float");
  static constexpr int num_elements = 256;
  T x[256];  // element (r, c) of the tile at x[16 r + c]
};

template <typename Use, typename T, typename L>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, const typename std::common_type<T>::type& value) {
  for (auto& e : f.x) e = value;  // no barrier: the documentation promises none
}
}  // namespace wmma
}  // namespace nvcuda

namespace emu {
// Arguments every lane of the warp must agree on, and the alignment/ldm/bounds rules of the hardware.
void wmma_check(const char* op, const void* p, unsigned ldm, int layout, size_t elem_size);

template <typename T>
inline void wmma_load(T* dst, const T* p, unsigned ldm, bool row_major, const char* op) {
  wmma_check(op, p, ldm, row_major ? 0 : 1, sizeof(T));
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) dst[16 * r + c] = row_major ? p[r * ldm + c] : p[c * ldm + r];
}
// The lane that holds accumulator element (r, c) on sm_80/sm_90 (two m16n8 halves side by side).
inline int accumulator_owner(int r, int c) { return (r % 8) * 4 + (c % 8) / 2; }
}  // namespace emu

namespace nvcuda {
namespace wmma {
template <typename Use, typename T>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
  ::emu::wmma_load(f.x, p, ldm, true, "wmma::load_matrix_sync");
}
template <typename Use, typename T>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
  // A col_major fragment of A or B is the transpose in memory: element (r, c) at p[c * ldm + r].
  ::emu::wmma_load(f.x, p, ldm, false, "wmma::load_matrix_sync");
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float, void>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  ::emu::wmma_load(f.x, p, ldm, layout == mem_row_major, "wmma::load_matrix_sync");
}
template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float, void>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float, void>& c) {
  ::emu::warp_barrier(0xffffffffu, "wmma::mma_sync", 0);
  float out[256];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float acc = c.x[16 * r + n];
      for (int k = 0; k < 16; ++k) acc += static_cast<float>(a.x[16 * r + k]) * static_cast<float>(b.x[16 * k + n]);
      out[16 * r + n] = acc;
    }
  std::memcpy(d.x, out, sizeof(out));
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float, void>& f, unsigned ldm,
                              layout_t layout) {
  ::emu::wmma_check("wmma::store_matrix_sync", p, ldm, layout == mem_row_major ? 0 : 1, sizeof(float));
  const int lane = ::emu::ctx().lane;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      if (::emu::accumulator_owner(r, c) == lane)
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[16 * r + c];
}
}  // namespace wmma
}  // namespace nvcuda

// ---- mma.sync.aligned.m16n8k16 and ldmatrix (sm_80), lane by lane as the PTX ISA lays them out -----------
// csrc/mma_sm80.cuh calls these under the emulator. Each lane passes only its own registers, and gets only
// its own results, exactly where the PTX ISA puts them (the layout is written out in mma_sm80.cuh), so a
// fragment built or read with a wrong index gives a wrong number here as it would on the GPU. Both wait for
// the whole warp (they are .sync.aligned) and fail unless all 32 lanes execute the same instruction.
namespace emu {
// A 16-bit element of a register: `hi` 0 is the low half (the element with the lower row/column index).
inline uint16_t reg_half(uint64_t reg, int hi) { return static_cast<uint16_t>(reg >> (16 * hi)); }

void warp_op_check(const uint64_t* all, int words, uint64_t tag, const char* op);

template <typename T>
inline float half_value(uint16_t bits) {
  return std::is_same<T, __half>::value ? half_bits_to_float(bits) : bf16_bits_to_float(bits);
}

// D = A B + C for one m16n8k16 tile: a[4], b[2] (two 16-bit elements per register), c[4], d[4] float.
template <typename T>
inline void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "cuda emulator: mma.m16n8k16 is emulated for f16 and bf16 inputs");
  const uint64_t tag = 0x6d6d61000000ull | (std::is_same<T, __half>::value ? 1 : 2);  // "mma", type
  const uint64_t mine[4] = {tag, a[0] | static_cast<uint64_t>(a[1]) << 32, a[2] | static_cast<uint64_t>(a[3]) << 32,
                            b[0] | static_cast<uint64_t>(b[1]) << 32};
  uint64_t all[32 * 4];
  warp_gather_words(0xffffffffu, mine, 4, all, "mma.sync.aligned.m16n8k16", 0);
  warp_op_check(all, 4, tag, "mma.sync.aligned.m16n8k16");
  // A register r of lane l (word 1 + r / 2, half r % 2 of that word's two registers)
  auto a_reg = [&](int l, int r) { return static_cast<uint32_t>(all[4 * l + 1 + r / 2] >> (32 * (r % 2))); };
  auto b_reg = [&](int l, int r) { return static_cast<uint32_t>(all[4 * l + 3] >> (32 * r)); };
  // Element (row, k) of A: lane groupID = row % 8, threadID_in_group = (k % 8) / 2; register
  // (row >= 8) + 2 (k >= 8); the half k % 2.
  auto A = [&](int row, int k) {
    return half_value<T>(reg_half(a_reg((row % 8) * 4 + (k % 8) / 2, (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)), k % 2));
  };
  // Element (k, col) of B: lane groupID = col, threadID_in_group = (k % 8) / 2; register k >= 8; half k % 2.
  auto B = [&](int k, int col) { return half_value<T>(reg_half(b_reg(col * 4 + (k % 8) / 2, k >= 8 ? 1 : 0), k % 2)); };
  const int lane = ctx().lane, group = lane >> 2, tig = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {  // c[i], d[i]: row groupID + 8 (i >= 2), column 2 threadID_in_group + i % 2
    const int row = group + (i >= 2 ? 8 : 0), col = 2 * tig + i % 2;
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);  // each product exact in float
    out[i] = acc;
  }
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: lanes 8 j .. 8 j + 7 give the row addresses of
// matrix j (16 bytes each); register j of lane l receives row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1
// of matrix j, or with .trans column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1.
inline void ldmatrix(uint32_t* r, int num, bool trans, const void* row_address) {
  const uint64_t tag = 0x6c646d000000ull | static_cast<uint64_t>(num) << 4 | (trans ? 1 : 0);  // "ldm"
  const uint64_t mine[2] = {tag, reinterpret_cast<uintptr_t>(row_address)};
  uint64_t all[32 * 2];
  const char* op = trans ? "ldmatrix .trans" : "ldmatrix";
  warp_gather_words(0xffffffffu, mine, 2, all, op, 0);
  warp_op_check(all, 2, tag, op);
  for (int l = 0; l < 8 * num; ++l) {  // only these lanes' addresses are used
    const void* p = reinterpret_cast<const void*>(all[2 * l + 1]);
    if (all[2 * l + 1] % 16 != 0)
      fail(std::string(op) + ": lane " + std::to_string(l) + "'s row address is not 16-byte aligned");
    if (!in_shared(p, 16))
      fail(std::string(op) + ": lane " + std::to_string(l) + "'s row is not (entirely) in shared memory");
  }
  const int lane = ctx().lane;
  auto element = [&](int matrix, int row, int col) {
    uint16_t v;
    std::memcpy(&v, reinterpret_cast<const unsigned char*>(all[2 * (8 * matrix + row) + 1]) + 2 * col, 2);
    return static_cast<uint32_t>(v);
  };
  uint32_t out[4];
  for (int j = 0; j < num; ++j) {
    const int a = lane / 4, b = 2 * (lane % 4);
    out[j] = trans ? element(j, b, a) | element(j, b + 1, a) << 16 : element(j, a, b) | element(j, a, b + 1) << 16;
  }
  // Every lane has read before any goes on (its next store must not change what another lane reads).
  warp_barrier(0xffffffffu, op, 0);
  for (int j = 0; j < num; ++j) r[j] = out[j];
}
}  // namespace emu
