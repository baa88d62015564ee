// The entry points of the emulated kernels: one C function per launcher of csrc/kernels_cuda.h, all with
// the same signature so that the Python driver calls each the same way (ctypes in its own process, or the
// runner executable of the sanitizer builds):
//
//   int emu_op_NAME(void** buffers, const int64_t* ints, const double* reals)   // returns a cudaError_t
//
// `buffers` are host arrays the driver allocated (outputs prefilled with NaN), or null for an absent
// optional argument. To emulate a new kernel file: add it to KERNEL_SOURCES in
// tests/cuda_emulation/harness.py and an emu_op_ function here (the driver finds it by name).
#include <cstdint>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <string>

#include "cuda_emu.h"
#include "dropout_hash.h"
#include "kernel_args.h"
#include "kernels_cuda.h"

namespace {

using minibert::AttentionShape;
using minibert::DropoutArgs;
using minibert::ScalarKind;

ScalarKind kind_of(int64_t k) { return static_cast<ScalarKind>(k); }

// The same DropoutArgs csrc/bindings.cpp's make_dropout builds from (p, seed, offset).
DropoutArgs dropout_args(double p, int64_t seed, int64_t offset) {
  DropoutArgs args;
  args.active = p > 0.0;
  args.threshold = static_cast<uint32_t>(std::floor(p * static_cast<double>(1u << minibert::kRandomBits)));
  args.base = minibert::dropout_base(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  args.inv_keep = 1.0 / (1.0 - p);
  return args;
}

AttentionShape shape_of(const int64_t* i) { return AttentionShape{i[1], i[2], i[3], i[4], i[5]}; }

}  // namespace

extern "C" {

// buffers: q, k, v, key_mask (uint8 or null), out, lse. ints: kind, B, H, S_q, S_k, D, seed, offset, path
// (0: attention_forward_cuda's own choice, 1: the SIMT kernel, 2: the tensor-core kernel). reals: scale, p.
int emu_op_attention_forward(void** b, const int64_t* i, const double* r) {
  const DropoutArgs dropout = dropout_args(r[1], i[6], i[7]);
  const auto* mask = static_cast<const uint8_t*>(b[3]);
  if (i[8] == 2)
    return minibert::attention_forward_tc_cuda(kind_of(i[0]), b[0], b[1], b[2], mask, b[4], static_cast<float*>(b[5]),
                                               shape_of(i), static_cast<float>(r[0]), dropout, nullptr);
  const char* saved = std::getenv("MINIBERT_CUDA_ATTENTION");
  const std::string restore = saved ? saved : "";
  if (i[8] == 1) setenv("MINIBERT_CUDA_ATTENTION", "simt", 1);
  const cudaError_t err = minibert::attention_forward_cuda(kind_of(i[0]), b[0], b[1], b[2], mask, b[4],
                                                           static_cast<float*>(b[5]), shape_of(i),
                                                           static_cast<float>(r[0]), dropout, nullptr);
  if (i[8] == 1) {
    if (saved) setenv("MINIBERT_CUDA_ATTENTION", restore.c_str(), 1);
    else unsetenv("MINIBERT_CUDA_ATTENTION");
  }
  return err;
}

// ints: kind, D. buffers: one int32 for the answer.
int emu_op_attention_forward_tc_supported(void** b, const int64_t* i, const double*) {
  *static_cast<int32_t*>(b[0]) = minibert::attention_forward_tc_supported(kind_of(i[0]), i[1]) ? 1 : 0;
  return cudaSuccess;
}

// buffers: grad_out, q, k, v, out, lse, grad_lse (or null), key_mask (or null), dq_acc (zeroed), dk, dv,
// row_d. ints: kind, B, H, S_q, S_k, D, seed, offset, path (0: attention_backward_cuda's own choice, 1: the
// SIMT kernel, 2: the tensor-core kernel). reals: scale, p.
int emu_op_attention_backward(void** b, const int64_t* i, const double* r) {
  const DropoutArgs dropout = dropout_args(r[1], i[6], i[7]);
  const auto* lse = static_cast<const float*>(b[5]);
  const auto* grad_lse = static_cast<const float*>(b[6]);
  const auto* mask = static_cast<const uint8_t*>(b[7]);
  auto* dq_acc = static_cast<float*>(b[8]);
  auto* row_d = static_cast<float*>(b[11]);
  if (i[8] == 2)
    return minibert::attention_backward_tc_cuda(kind_of(i[0]), b[0], b[1], b[2], b[3], b[4], lse, grad_lse, mask,
                                                dq_acc, b[9], b[10], row_d, shape_of(i), static_cast<float>(r[0]),
                                                dropout, nullptr);
  const char* saved = std::getenv("MINIBERT_CUDA_ATTENTION");
  const std::string restore = saved ? saved : "";
  if (i[8] == 1) setenv("MINIBERT_CUDA_ATTENTION", "simt", 1);
  const cudaError_t err = minibert::attention_backward_cuda(kind_of(i[0]), b[0], b[1], b[2], b[3], b[4], lse,
                                                            grad_lse, mask, dq_acc, b[9], b[10], row_d, shape_of(i),
                                                            static_cast<float>(r[0]), dropout, nullptr);
  if (i[8] == 1) {
    if (saved) setenv("MINIBERT_CUDA_ATTENTION", restore.c_str(), 1);
    else unsetenv("MINIBERT_CUDA_ATTENTION");
  }
  return err;
}

// ints: kind, D. buffers: one int32 for the answer.
int emu_op_attention_backward_tc_supported(void** b, const int64_t* i, const double*) {
  *static_cast<int32_t*>(b[0]) = minibert::attention_backward_tc_supported(kind_of(i[0]), i[1]) ? 1 : 0;
  return cudaSuccess;
}

// buffers: x, bias (or null), y. ints: kind, n, n_cols, use_tanh.
int emu_op_gelu_forward(void** b, const int64_t* i, const double*) {
  return minibert::gelu_forward_cuda(kind_of(i[0]), b[0], b[1], b[2], i[1], i[2], i[3] != 0, nullptr);
}

// buffers: dy, x, bias (or null), dx, dbias_acc (zeroed, or null). ints: kind, rows, n_cols, use_tanh.
int emu_op_gelu_backward(void** b, const int64_t* i, const double*) {
  return minibert::gelu_backward_cuda(kind_of(i[0]), b[0], b[1], b[2], b[3], static_cast<float*>(b[4]), i[1], i[2],
                                      i[3] != 0, nullptr);
}

// buffers: x, y. ints: kind, n, seed, offset. reals: p.
int emu_op_dropout(void** b, const int64_t* i, const double* r) {
  return minibert::dropout_cuda(kind_of(i[0]), b[0], b[1], i[1], dropout_args(r[0], i[2], i[3]), nullptr);
}

// buffers: x, residual (or null), weight, bias, y, mean, rstd. ints: kind, rows, n_cols, seed, offset.
// reals: eps, p.
int emu_op_layernorm_forward(void** b, const int64_t* i, const double* r) {
  return minibert::layernorm_forward_cuda(kind_of(i[0]), b[0], b[1], b[2], b[3], b[4], static_cast<float*>(b[5]),
                                          static_cast<float*>(b[6]), i[1], i[2], static_cast<float>(r[0]),
                                          dropout_args(r[1], i[3], i[4]), nullptr);
}

// buffers: grad, x, residual (or null), weight, mean, rstd, d_sum, d_x (or null), dweight_acc, dbias_acc
// (both zeroed). ints: kind, rows, n_cols, seed, offset. reals: p.
int emu_op_layernorm_backward(void** b, const int64_t* i, const double* r) {
  return minibert::layernorm_backward_cuda(kind_of(i[0]), b[0], b[1], b[2], b[3], static_cast<const float*>(b[4]),
                                           static_cast<const float*>(b[5]), b[6], b[7], static_cast<float*>(b[8]),
                                           static_cast<float*>(b[9]), i[1], i[2], dropout_args(r[0], i[3], i[4]),
                                           nullptr);
}

// buffers: logits, labels (int64), loss, lse (float32). ints: kind, rows, n_cols, ignore_index.
int emu_op_cross_entropy_forward(void** b, const int64_t* i, const double*) {
  return minibert::cross_entropy_forward_cuda(kind_of(i[0]), b[0], static_cast<const int64_t*>(b[1]),
                                              static_cast<float*>(b[2]), static_cast<float*>(b[3]), i[1], i[2], i[3],
                                              nullptr);
}

// buffers: grad_loss (float32), logits, labels (int64), lse (float32), d_logits. ints: kind, rows, n_cols,
// ignore_index.
int emu_op_cross_entropy_backward(void** b, const int64_t* i, const double*) {
  return minibert::cross_entropy_backward_cuda(kind_of(i[0]), static_cast<const float*>(b[0]), b[1],
                                               static_cast<const int64_t*>(b[2]), static_cast<const float*>(b[3]), b[4],
                                               i[1], i[2], i[3], nullptr);
}

}  // extern "C"
