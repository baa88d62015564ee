// The counter-based dropout hash of minibert/rng.py, shared by the C++ and CUDA kernels.
//
// Element `index` of a dropout call with (seed, offset) is kept when the top 24 bits of
// SplitMix64(seed * GOLDEN + offset + index + GOLDEN) are >= threshold = floor(p * 2^24).
// Everything is unsigned 64-bit arithmetic, which wraps modulo 2^64 exactly as NumPy's uint64 does,
// so NumPy, C++ and CUDA draw the same mask bit for bit. No torch headers: plain C++ and nvcc both
// compile this file.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MB_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MB_HOST_DEVICE inline
#endif

namespace minibert {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ULL;
constexpr uint64_t kMix2 = 0x94D049BB133111EBULL;
constexpr int kRandomBits = 24;

// The per-call constant part of the counter: seed * GOLDEN + offset + GOLDEN (mod 2^64).
MB_HOST_DEVICE uint64_t dropout_base(uint64_t seed, uint64_t offset) {
  return seed * kGolden + offset + kGolden;
}

// 24 random bits for element `index` of a call whose dropout_base() is `base`.
MB_HOST_DEVICE uint32_t dropout_bits(uint64_t base, uint64_t index) {
  uint64_t z = base + index;
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  z = z ^ (z >> 31);
  return static_cast<uint32_t>(z >> (64 - kRandomBits));
}

// True when element `index` survives dropout with integer threshold `threshold`.
MB_HOST_DEVICE bool dropout_keep(uint64_t base, uint64_t index, uint32_t threshold) {
  return dropout_bits(base, index) >= threshold;
}

}  // namespace minibert
