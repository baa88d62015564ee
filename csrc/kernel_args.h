// Plain argument structs shared by the CPU kernels, the CUDA kernels and the binding (no torch here).
#pragma once
#include <cstdint>

namespace minibert {

// q: [B, H, S_q, D], k/v: [B, H, S_k, D], all contiguous. key_mask: [B, S_k] bytes, 1 keep / 0 pad, or null.
struct AttentionShape {
  int64_t batch, heads, seq_q, seq_k, head_dim;
};

// Dropout: element `index` is kept iff dropout_bits(base, index) >= threshold, and kept values are
// scaled by inv_keep = 1 / (1 - p). `active` is p > 0. It is not the same as threshold != 0: for
// 0 < p < 2^-24 the threshold floor(p * 2^24) is 0, so every element is kept, but a kept element must
// still be scaled by 1 / (1 - p), as minibert.rng does (skipping it would be off by a relative p).
struct DropoutArgs {
  bool active;
  uint32_t threshold;
  uint64_t base;  // dropout_base(seed, offset) from dropout_hash.h
  double inv_keep;
};

// Element types the CUDA kernels take through `const void*` (the binding maps torch dtypes onto these).
enum class ScalarKind { kFloat32, kFloat16, kBFloat16 };

}  // namespace minibert
