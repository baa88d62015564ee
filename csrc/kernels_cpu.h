// CPU kernels of minibert._C: raw pointers and sizes only (no torch headers), so each kernel can be
// read, compiled and tested on its own. The binding (bindings.cpp) checks every argument first, then
// splits the work into items and calls these from at::parallel_for.
#pragma once
#include <cstdint>

#include "kernel_args.h"

namespace minibert {

// Query rows per work item of the CPU attention forward (the unit of parallelism with b and h).
constexpr int64_t kCpuQueryTile = 64;

// Forward for work items [item_begin, item_end), item = (b * H + h) * n_query_tiles + query_tile.
// Writes out: [B, H, S_q, D] and lse: [B, H, S_q] (log-sum-exp of the scaled, masked scores, float64 for
// every input dtype; -inf for a row whose keys are all padding, whose output is zeros).
void attention_forward_cpu(const float* q, const float* k, const float* v, const uint8_t* key_mask,
                           float* out, double* lse, const AttentionShape& shape, float scale,
                           const DropoutArgs& dropout, int64_t item_begin, int64_t item_end);
void attention_forward_cpu(const double* q, const double* k, const double* v, const uint8_t* key_mask,
                           double* out, double* lse, const AttentionShape& shape, double scale,
                           const DropoutArgs& dropout, int64_t item_begin, int64_t item_end);

// Backward for (batch, head) pairs [bh_begin, bh_end): one pair owns its rows of dq, dk, dv, so pairs
// run in parallel without races. grad_lse ([B, H, S_q]) may be null (lse not used downstream).
void attention_backward_cpu(const float* grad_out, const float* q, const float* k, const float* v,
                            const float* out, const double* lse, const double* grad_lse,
                            const uint8_t* key_mask, float* dq, float* dk, float* dv,
                            const AttentionShape& shape, float scale, const DropoutArgs& dropout,
                            int64_t bh_begin, int64_t bh_end);
void attention_backward_cpu(const double* grad_out, const double* q, const double* k, const double* v,
                            const double* out, const double* lse, const double* grad_lse,
                            const uint8_t* key_mask, double* dq, double* dk, double* dv,
                            const AttentionShape& shape, double scale, const DropoutArgs& dropout,
                            int64_t bh_begin, int64_t bh_end);

// GELU on elements [begin, end): erf form 0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) when use_tanh. With bias (length n_cols, x viewed as
// [rows, n_cols]) the input is x + bias, fused so x + bias is never written to memory.
void gelu_forward_cpu(const float* x, const float* bias, float* y, int64_t n_cols, bool use_tanh,
                      int64_t begin, int64_t end);
void gelu_forward_cpu(const double* x, const double* bias, double* y, int64_t n_cols, bool use_tanh,
                      int64_t begin, int64_t end);

// dx = dy * gelu'(x + bias) for rows [row_begin, row_end) of [rows, n_cols]. When dbias_partial is not
// null, the column sums of dx over these rows are ADDED to it (one partial per thread; the binding sums
// the partials), so the bias gradient is reduced while dx is still in registers.
void gelu_backward_cpu(const float* dy, const float* x, const float* bias, float* dx, float* dbias_partial,
                       int64_t n_cols, bool use_tanh, int64_t row_begin, int64_t row_end);
void gelu_backward_cpu(const double* dy, const double* x, const double* bias, double* dx,
                       double* dbias_partial, int64_t n_cols, bool use_tanh, int64_t row_begin,
                       int64_t row_end);

// Hash dropout y = x * keep / (1 - p) on flat elements [begin, end) (index = flat C-order index).
// Dropout is linear in x, so the same call with the same (seed, offset) is also its backward.
void dropout_cpu(const float* x, float* y, const DropoutArgs& dropout, int64_t begin, int64_t end);
void dropout_cpu(const double* x, double* y, const DropoutArgs& dropout, int64_t begin, int64_t end);

// Residual + dropout + LayerNorm, rows [row_begin, row_end) of [rows, n_cols]:
//   h = residual + dropout(x)   (residual may be null: h = dropout(x); dropout inactive: h = residual + x)
//   y = (h - mean) * rstd * weight + bias,  mean and rstd = 1 / sqrt(var + eps) per row (biased variance)
// Writes y and the per-row mean and rstd (the backward's saved statistics). Dropout element index =
// flat index r * n_cols + c, as minibert.ops.dropout numbers the elements of x.
void layernorm_forward_cpu(const float* x, const float* residual, const float* weight, const float* bias, float* y,
                           float* mean, float* rstd, int64_t n_cols, double eps, const DropoutArgs& dropout,
                           int64_t row_begin, int64_t row_end);
void layernorm_forward_cpu(const double* x, const double* residual, const double* weight, const double* bias,
                           double* y, double* mean, double* rstd, int64_t n_cols, double eps,
                           const DropoutArgs& dropout, int64_t row_begin, int64_t row_end);

// Its backward for rows [row_begin, row_end): recomputes h from x and residual, then with
// xhat = (h - mean) * rstd and g = grad * weight writes
//   d_sum = rstd * (g - mean(g) - xhat * mean(g * xhat))   (the gradient of h, and of the residual)
//   d_x   = dropout(d_sum)                                 (the gradient of x: same mask and scale;
//                                                           not written, and may be null, without dropout)
// and ADDS the column sums of grad * xhat and of grad to dweight_partial and dbias_partial (one pair
// of partials per thread, as gelu_backward_cpu does).
void layernorm_backward_cpu(const float* grad, const float* x, const float* residual, const float* weight,
                            const float* mean, const float* rstd, float* d_sum, float* d_x, float* dweight_partial,
                            float* dbias_partial, int64_t n_cols, const DropoutArgs& dropout, int64_t row_begin,
                            int64_t row_end);
void layernorm_backward_cpu(const double* grad, const double* x, const double* residual, const double* weight,
                            const double* mean, const double* rstd, double* d_sum, double* d_x,
                            double* dweight_partial, double* dbias_partial, int64_t n_cols,
                            const DropoutArgs& dropout, int64_t row_begin, int64_t row_end);

// Cross-entropy of rows [row_begin, row_end) of logits [rows, n_cols] against integer labels [rows]:
//   lse[r] = log(sum_c exp(logits[r, c])),  loss[r] = lse[r] - logits[r, labels[r]]
// (loss[r] = 0 where labels[r] == ignore_index; lse, float64 for every input dtype, is written for every
// row). Labels are checked by the caller: each is ignore_index or in [0, n_cols).
void cross_entropy_forward_cpu(const float* logits, const int64_t* labels, float* loss, double* lse, int64_t n_cols,
                               int64_t ignore_index, int64_t row_begin, int64_t row_end);
void cross_entropy_forward_cpu(const double* logits, const int64_t* labels, double* loss, double* lse,
                               int64_t n_cols, int64_t ignore_index, int64_t row_begin, int64_t row_end);

// Its backward: d_logits[r, c] = (exp(logits[r, c] - lse[r]) - [c == labels[r]]) * grad_loss[r], a row of
// zeros where labels[r] == ignore_index.
void cross_entropy_backward_cpu(const float* grad_loss, const float* logits, const int64_t* labels, const double* lse,
                                float* d_logits, int64_t n_cols, int64_t ignore_index, int64_t row_begin,
                                int64_t row_end);
void cross_entropy_backward_cpu(const double* grad_loss, const double* logits, const int64_t* labels,
                                const double* lse, double* d_logits, int64_t n_cols, int64_t ignore_index,
                                int64_t row_begin, int64_t row_end);

}  // namespace minibert
