// Hash dropout on the CPU: y = x * keep / (1 - p), keep from the counter-based hash of dropout_hash.h.
#include "dropout_hash.h"
#include "kernels_cpu.h"
#include "math_cpu.h"

namespace minibert {
namespace {

template <typename T>
MB_INLINE void dropout_range(const T* x, T* y, const DropoutArgs& dropout, int64_t begin, int64_t end) {
  const T inv_keep = static_cast<T>(dropout.inv_keep);
  for (int64_t i = begin; i < end; ++i)
    y[i] = dropout_keep(dropout.base, static_cast<uint64_t>(i), dropout.threshold) ? x[i] * inv_keep : T(0);
}

}  // namespace

MB_CPU_CLONES void dropout_cpu(const float* x, float* y, const DropoutArgs& dropout, int64_t begin, int64_t end) {
  dropout_range(x, y, dropout, begin, end);
}
MB_CPU_CLONES void dropout_cpu(const double* x, double* y, const DropoutArgs& dropout, int64_t begin,
                               int64_t end) {
  dropout_range(x, y, dropout, begin, end);
}

}  // namespace minibert
