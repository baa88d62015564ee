// CUDA kernels of minibert._C, as host-side launchers on raw pointers + sizes + a stream. No torch
// headers: every .cu compiles with plain `nvcc -c`. Each launcher enqueues its kernels on `stream`
// and returns cudaGetLastError(), which the binding turns into a clear Python exception.
// Inputs are float32, float16 or bfloat16 (ScalarKind); all arithmetic accumulates in float32.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernel_args.h"

namespace minibert {

constexpr int64_t kCudaMaxHeadDim = 128;

// out: like q; lse: float32 [B, H, S_q] (-inf for rows whose keys are all padding; their output is 0).
cudaError_t attention_forward_cuda(ScalarKind kind, const void* q, const void* k, const void* v,
                                   const uint8_t* key_mask, void* out, float* lse, const AttentionShape& shape,
                                   float scale, const DropoutArgs& dropout, cudaStream_t stream);

// The tensor-core forward of attention_cuda_tc.cu: float16/bfloat16, head_dim a multiple of 16, sm_80+.
// attention_forward_cuda calls it wherever attention_forward_tc_supported() says so, unless the
// environment variable MINIBERT_CUDA_ATTENTION=simt asks for the SIMT kernel (to compare the two).
bool attention_forward_tc_supported(ScalarKind kind, int64_t head_dim);
cudaError_t attention_forward_tc_cuda(ScalarKind kind, const void* q, const void* k, const void* v,
                                      const uint8_t* key_mask, void* out, float* lse, const AttentionShape& shape,
                                      float scale, const DropoutArgs& dropout, cudaStream_t stream);

// dq_acc: float32 [B, H, S_q, D], ZEROED by the caller (key tiles add into it atomically; the caller
// converts it to the input dtype). row_d: float32 [B, H, S_q] scratch for D = rowsum(dO * O) - grad_lse.
// grad_lse may be null. dk, dv: like k, v, written directly (each block owns its keys).
cudaError_t attention_backward_cuda(ScalarKind kind, const void* grad_out, const void* q, const void* k,
                                    const void* v, const void* out, const float* lse, const float* grad_lse,
                                    const uint8_t* key_mask, float* dq_acc, void* dk, void* dv, float* row_d,
                                    const AttentionShape& shape, float scale, const DropoutArgs& dropout,
                                    cudaStream_t stream);

// The tensor-core backward of attention_cuda_tc_bwd.cu (FlashAttention-2 style): float16/bfloat16, head_dim
// a multiple of 16, sm_80+, and the same contract as attention_backward_cuda, which calls it wherever
// attention_backward_tc_supported() says so (unless MINIBERT_CUDA_ATTENTION=simt).
bool attention_backward_tc_supported(ScalarKind kind, int64_t head_dim);
cudaError_t attention_backward_tc_cuda(ScalarKind kind, const void* grad_out, const void* q, const void* k,
                                       const void* v, const void* out, const float* lse, const float* grad_lse,
                                       const uint8_t* key_mask, float* dq_acc, void* dk, void* dv, float* row_d,
                                       const AttentionShape& shape, float scale, const DropoutArgs& dropout,
                                       cudaStream_t stream);

// The backward's preprocessing, shared by both kernels: row_d = rowsum(grad_out * out) - grad_lse (float32
// [B, H, S_q]; grad_lse may be null).
cudaError_t attention_row_d_cuda(ScalarKind kind, const void* grad_out, const void* out, const float* grad_lse,
                                 float* row_d, const AttentionShape& shape, cudaStream_t stream);

// y = gelu(x + bias) on n elements (x viewed as [n / n_cols, n_cols]); bias may be null.
cudaError_t gelu_forward_cuda(ScalarKind kind, const void* x, const void* bias, void* y, int64_t n,
                              int64_t n_cols, bool use_tanh, cudaStream_t stream);

// dx = dy * gelu'(x + bias) on [rows, n_cols]. dbias_acc: float32 [n_cols], ZEROED by the caller, gets
// the column sums of dx (or null when there is no bias).
cudaError_t gelu_backward_cuda(ScalarKind kind, const void* dy, const void* x, const void* bias, void* dx,
                               float* dbias_acc, int64_t rows, int64_t n_cols, bool use_tanh,
                               cudaStream_t stream);

// y = x * keep / (1 - p) on n elements, element index = flat index.
cudaError_t dropout_cuda(ScalarKind kind, const void* x, void* y, int64_t n, const DropoutArgs& dropout,
                         cudaStream_t stream);

// Residual + dropout + LayerNorm (formulas in layernorm_cpu.cpp) on [rows, n_cols], n_cols at most
// kCudaMaxLayerNormCols (the backward keeps three float32 rows in shared memory, within the 48 KB a
// block gets without opting in to more). residual may be null. mean and rstd
// are float32 [rows]; weight and bias have x's type.
constexpr int64_t kCudaMaxLayerNormCols = 4000;
cudaError_t layernorm_forward_cuda(ScalarKind kind, const void* x, const void* residual, const void* weight,
                                   const void* bias, void* y, float* mean, float* rstd, int64_t rows,
                                   int64_t n_cols, float eps, const DropoutArgs& dropout, cudaStream_t stream);

// Writes d_sum (the gradient of h = residual + dropout(x)) and d_x = dropout(d_sum) (only with dropout
// active: without it d_x would equal d_sum, and may be null), both of x's type, and
// ADDS the column sums of grad * xhat and of grad into dweight_acc and dbias_acc (float32 [n_cols],
// ZEROED by the caller).
cudaError_t layernorm_backward_cuda(ScalarKind kind, const void* grad, const void* x, const void* residual,
                                    const void* weight, const float* mean, const float* rstd, void* d_sum,
                                    void* d_x, float* dweight_acc, float* dbias_acc, int64_t rows, int64_t n_cols,
                                    const DropoutArgs& dropout, cudaStream_t stream);

// Cross-entropy of the rows of logits [rows, n_cols] (formulas in cross_entropy_cpu.cpp): loss and lse
// are float32 [rows]; loss is 0 where labels[r] == ignore_index and NaN for any other label outside
// [0, n_cols). The backward writes d_logits (logits' type) from float32 grad_loss and lse.
cudaError_t cross_entropy_forward_cuda(ScalarKind kind, const void* logits, const int64_t* labels, float* loss,
                                       float* lse, int64_t rows, int64_t n_cols, int64_t ignore_index,
                                       cudaStream_t stream);
cudaError_t cross_entropy_backward_cuda(ScalarKind kind, const float* grad_loss, const void* logits,
                                        const int64_t* labels, const float* lse, void* d_logits, int64_t rows,
                                        int64_t n_cols, int64_t ignore_index, cudaStream_t stream);

}  // namespace minibert
