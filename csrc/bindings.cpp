// The one file that knows about torch: declares the minibert ops (TORCH_LIBRARY), checks every argument
// before any kernel touches memory, and registers one implementation per device with the dispatcher:
// TORCH_LIBRARY_IMPL(minibert, CPU, ...) splits CPU work across threads with at::parallel_for, and, in a
// CUDA build, TORCH_LIBRARY_IMPL(minibert, CUDA, ...) launches the CUDA kernels on the current stream.
// The dispatcher picks the implementation from the inputs' device, so no op branches on it. Importing
// minibert._C runs the registrations; the ops are then torch.ops.minibert.*. Autograd and fake (meta)
// implementations are added from Python in minibert/ops/__init__.py.
//
// Shapes: B batch, H heads, S_q / S_k query / key sequence length, D head size.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "dropout_hash.h"
#include "kernels_cpu.h"

#ifdef MINIBERT_WITH_CUDA
// c10's stream header needs only the CUDA runtime headers (ATen/cuda/CUDAContext.h would also pull in
// cuBLAS/cuSPARSE headers, which a bare toolkit may not ship).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels_cuda.h"
#endif

namespace minibert {
namespace {

constexpr int64_t kCpuMaxHeadDim = 256;

// ---------------------------------------------------------------------------------------------- checks
// Shared by both devices: the dispatcher has already chosen the device, these check the rest.

void check_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  if (t.is_cuda()) {
    TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, "minibert: ", name,
                " has dtype ", dt, ", which the CUDA kernels do not support (use float32, float16 or bfloat16)");
  } else {
    TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "minibert: ", name, " has dtype ", dt,
                ", which the CPU kernels do not support (use float32 or float64)");
  }
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "minibert: ", name_a, " and ", name_b,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), "minibert: ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

// `name` is the schema's name of the probability: dropout_p (attention) or p (dropout).
DropoutArgs make_dropout(const char* name, double p, int64_t seed, int64_t offset) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "minibert: ", name, " (the dropout probability) must be in [0, 1), got ", p);
  DropoutArgs args;
  args.active = p > 0.0;
  // floor(p * 2^24) in double, exactly as minibert.rng.dropout_threshold computes it.
  args.threshold = static_cast<uint32_t>(std::floor(p * static_cast<double>(1u << kRandomBits)));
  args.base = dropout_base(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  args.inv_keep = 1.0 / (1.0 - p);
  return args;
}

bool use_tanh_form(const std::string& approximate) {
  TORCH_CHECK(approximate == "none" || approximate == "tanh",
              "minibert: approximate must be 'none' (erf GELU) or 'tanh', got '", approximate, "'");
  return approximate == "tanh";
}

struct AttentionInputs {
  at::Tensor q, k, v, mask;  // contiguous; mask undefined when absent
  AttentionShape shape;
  DropoutArgs dropout;
};

AttentionInputs check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::optional<at::Tensor>& key_mask, int64_t max_head_dim, double dropout_p,
                                int64_t seed, int64_t offset) {
  check_dtype(q, "q");
  check_same(q, k, "q", "k");
  check_same(q, v, "q", "v");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "minibert: attention expects q, k, v of shape [batch, heads, seq, head_dim], got ranks ",
              q.dim(), ", ", k.dim(), ", ", v.dim());
  TORCH_CHECK(k.sizes() == v.sizes(), "minibert: k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "minibert: q ", q.sizes(), " and k ", k.sizes(), " must agree in batch, heads and head_dim");
  TORCH_CHECK(q.numel() > 0 && k.numel() > 0, "minibert: attention got an empty tensor (q ", q.sizes(),
              ", k ", k.sizes(), "); every dimension must be at least 1");
  TORCH_CHECK(q.size(3) <= max_head_dim, "minibert: head_dim ", q.size(3), " is not supported on ", q.device(),
              " (at most ", max_head_dim, ")");
  AttentionInputs in{q.contiguous(), k.contiguous(), v.contiguous(), at::Tensor(),
                     {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)},
                     make_dropout("dropout_p", dropout_p, seed, offset)};
  if (key_mask.has_value()) {
    const at::Tensor& m = *key_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool, "minibert: key_mask must be a bool tensor, got ", m.scalar_type());
    TORCH_CHECK(m.device() == q.device(), "minibert: key_mask is on ", m.device(), " but q is on ", q.device());
    TORCH_CHECK(m.dim() == 2 && m.size(0) == q.size(0) && m.size(1) == k.size(2),
                "minibert: key_mask must have shape [batch, seq_k] = [", q.size(0), ", ", k.size(2), "], got ",
                m.sizes());
    in.mask = m.contiguous();
  }
  return in;
}

const uint8_t* mask_ptr(const at::Tensor& mask) {
  return mask.defined() ? reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()) : nullptr;
}

// lse is float64 on the CPU, whatever q's dtype: the backward recomputes P = exp(s - lse), and a float32
// lse of a row with large scores (|s| ~ 1e5, where a float32 ulp is 0.008) would scale the whole row's P
// by up to 0.4%. The CUDA kernels compute in float32 and store float32.
at::ScalarType lse_dtype(const at::Tensor& q) { return q.is_cuda() ? at::kFloat : at::kDouble; }

// What attention_backward needs besides check_attention: grad_out and out shaped like q, lse (and
// grad_lse, when given) the [B, H, S_q] tensor attention_forward returned.
struct AttentionGrads {
  at::Tensor grad_out, out, lse, grad_lse;  // contiguous; grad_lse undefined when absent
};

AttentionGrads check_attention_grads(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& out,
                                     const at::Tensor& lse, const std::optional<at::Tensor>& grad_lse) {
  check_same(q, grad_out, "q", "grad_out");
  check_same(q, out, "q", "out");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "minibert: grad_out and out must have the shape of q ", q.sizes(), ", got ", grad_out.sizes(),
              " and ", out.sizes());
  const std::vector<int64_t> lse_shape{q.size(0), q.size(1), q.size(2)};
  TORCH_CHECK(lse.scalar_type() == lse_dtype(q) && lse.device() == q.device() && lse.sizes() == lse_shape,
              "minibert: lse must be the ", lse_dtype(q), " [B, H, S_q] tensor returned by attention_forward, got ",
              lse.scalar_type(), " ", lse.sizes());
  AttentionGrads g{grad_out.contiguous(), out.contiguous(), lse.contiguous(), at::Tensor()};
  if (grad_lse.has_value()) {
    TORCH_CHECK(grad_lse->scalar_type() == lse_dtype(q) && grad_lse->device() == q.device() &&
                    grad_lse->sizes() == lse_shape,
                "minibert: grad_lse must match lse (", lse_dtype(q), " ", lse.sizes(), "), got ",
                grad_lse->scalar_type(), " ", grad_lse->sizes());
    g.grad_lse = grad_lse->contiguous();
  }
  return g;
}

// x viewed as [rows, n_cols] with n_cols = bias length (or 1 without bias: every element its own row).
int64_t check_bias(const at::Tensor& x, const at::Tensor& bias) {
  check_same(x, bias, "x", "bias");
  TORCH_CHECK(bias.dim() == 1 && x.dim() >= 1 && x.size(-1) == bias.size(0),
              "minibert: bias must be 1-D with the size of x's last dimension (", x.dim() ? x.size(-1) : 0,
              "), got shape ", bias.sizes());
  return bias.size(0);
}

// The checked, contiguous operands of a (bias+)GELU forward or backward. bias is undefined for plain GELU.
struct GeluInputs {
  at::Tensor x, bias, grad;  // grad undefined in the forward
  int64_t n_cols;
  bool use_tanh;
};

GeluInputs check_gelu(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& grad,
                      const std::string& approximate) {
  check_dtype(x, "x");
  GeluInputs in{x.contiguous(), bias.defined() ? bias.contiguous() : bias, at::Tensor(), 1,
                use_tanh_form(approximate)};
  if (bias.defined()) in.n_cols = check_bias(x, bias);
  if (grad.defined()) {
    check_same(x, grad, "x", "grad");
    TORCH_CHECK(grad.sizes() == x.sizes(), "minibert: grad ", grad.sizes(), " must have the shape of x ",
                x.sizes());
    in.grad = grad.contiguous();
  }
  return in;
}

// The checked, contiguous operands of residual_dropout_layernorm: x viewed as [rows, n_cols], n_cols =
// x's last dimension. residual is undefined when absent; grad, mean and rstd only in the backward.
struct LayerNormInputs {
  at::Tensor x, residual, weight, bias, grad, mean, rstd;
  int64_t rows, n_cols;
  double eps;
  DropoutArgs dropout;
};

// The saved statistics' dtype: x's on the CPU (float64 keeps its precision), float32 on CUDA (the
// kernels compute in float32 whatever the storage type).
at::ScalarType stats_dtype(const at::Tensor& x) { return x.is_cuda() ? at::kFloat : x.scalar_type(); }

std::vector<int64_t> stats_shape(const at::Tensor& x) { return std::vector<int64_t>(x.sizes().begin(), x.sizes().end() - 1); }

LayerNormInputs check_layernorm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                const at::Tensor& weight, const at::Tensor& bias, double eps, double p, int64_t seed,
                                int64_t offset) {
  check_dtype(x, "x");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) >= 1, "minibert: x must have a non-empty last dimension (the one "
              "LayerNorm normalises), got shape ", x.sizes());
  check_same(x, weight, "x", "weight");
  check_same(x, bias, "x", "bias");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && bias.sizes() == weight.sizes(),
              "minibert: weight and bias must be 1-D with the size of x's last dimension (", x.size(-1),
              "), got ", weight.sizes(), " and ", bias.sizes());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, "minibert: eps must be a finite number >= 0, got ", eps);
  LayerNormInputs in{x.contiguous(), at::Tensor(), weight.contiguous(), bias.contiguous(), at::Tensor(),
                     at::Tensor(), at::Tensor(), x.numel() / x.size(-1), x.size(-1), eps,
                     make_dropout("p", p, seed, offset)};
  if (residual.has_value()) {
    check_same(x, *residual, "x", "residual");
    TORCH_CHECK(residual->sizes() == x.sizes(), "minibert: residual ", residual->sizes(),
                " must have the shape of x ", x.sizes());
    in.residual = residual->contiguous();
  }
  return in;
}

void check_layernorm_grads(LayerNormInputs& in, const at::Tensor& grad, const at::Tensor& mean,
                           const at::Tensor& rstd) {
  check_same(in.x, grad, "x", "grad");
  TORCH_CHECK(grad.sizes() == in.x.sizes(), "minibert: grad ", grad.sizes(), " must have the shape of x ",
              in.x.sizes());
  const std::vector<int64_t> shape = stats_shape(in.x);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{mean, "mean"}, {rstd, "rstd"}})
    TORCH_CHECK(t.scalar_type() == stats_dtype(in.x) && t.device() == in.x.device() && t.sizes() == shape,
                "minibert: ", name, " must be the ", stats_dtype(in.x), " ", at::IntArrayRef(shape),
                " tensor returned by residual_dropout_layernorm_forward, got ", t.scalar_type(), " ", t.sizes(),
                " on ", t.device());
  in.grad = grad.contiguous();
  in.mean = mean.contiguous();
  in.rstd = rstd.contiguous();
}

template <typename T>
T* optional_ptr(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// The backward's gradient of x: like x with dropout; without it, it would equal d_sum (the gradient of
// the sum), so it is an empty [0] tensor and the caller uses d_sum for both (one write of x's size saved).
at::Tensor grad_x_buffer(const LayerNormInputs& in) {
  return in.dropout.active ? at::empty_like(in.x) : at::empty({0}, in.x.options());
}

// The checked, contiguous operands of cross_entropy: logits [rows, n_cols], labels int64 [rows]; the
// backward's grad_loss is [rows] of loss_dtype(logits) and lse [rows] of lse_dtype(logits) (float64 on
// the CPU, float32 on CUDA: see lse_dtype and csrc/cross_entropy_cpu.cpp). Label values are checked on the CPU
// (cheap there); on a GPU reading them would be a host sync, and the kernel answers a bad one with NaN.
struct CrossEntropyInputs {
  at::Tensor logits, labels, lse, grad_loss;
  int64_t rows, n_cols, ignore_index;
};

CrossEntropyInputs check_cross_entropy(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index) {
  check_dtype(logits, "logits");
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) >= 1, "minibert: logits must have shape [rows, n_classes] "
              "with at least one class, got ", logits.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "minibert: labels must be an int64 (torch.long) tensor, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.device() == logits.device(), "minibert: labels are on ", labels.device(), " but logits on ",
              logits.device());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), "minibert: labels must have shape [rows] = [",
              logits.size(0), "], got ", labels.sizes());
  CrossEntropyInputs in{logits.contiguous(), labels.contiguous(), at::Tensor(), at::Tensor(), logits.size(0),
                        logits.size(1), ignore_index};
  if (!labels.is_cuda() && in.rows > 0) {
    const at::Tensor bad = (in.labels != ignore_index) & ((in.labels < 0) | (in.labels >= in.n_cols));
    if (bad.any().item<bool>()) {
      const int64_t first = bad.nonzero()[0][0].item<int64_t>();
      TORCH_CHECK(false, "minibert: labels[", first, "] = ", in.labels[first].item<int64_t>(),
                  " is not a class index in [0, ", in.n_cols, ") nor ignore_index (", ignore_index, ")");
    }
  }
  return in;
}

void check_cross_entropy_grads(CrossEntropyInputs& in, const at::Tensor& grad_loss, const at::Tensor& lse) {
  const std::vector<int64_t> shape{in.rows};
  const auto check = [&](const at::Tensor& t, const char* name, at::ScalarType dtype) {
    TORCH_CHECK(t.scalar_type() == dtype && t.device() == in.logits.device() && t.sizes() == shape, "minibert: ", name,
                " must be a ", dtype, " [", in.rows, "] tensor on ", in.logits.device(),
                " (lse: the one cross_entropy_forward returned), got ", t.scalar_type(), " ", t.sizes(), " on ",
                t.device());
  };
  check(grad_loss, "grad_loss", stats_dtype(in.logits));
  check(lse, "lse", lse_dtype(in.logits));
  in.grad_loss = grad_loss.contiguous();
  in.lse = lse.contiguous();
}

// ---------------------------------------------------------------------------------------------- CPU

namespace cpu {

// Work split for the element-wise ops: one thread below kCpuMinChunk elements (a thread's start-up
// costs more than it saves there), else chunks of at least that many elements.
constexpr int64_t kCpuMinChunk = 1 << 16;

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& key_mask, double scale,
                                                     double dropout_p, int64_t seed, int64_t offset) {
  const AttentionInputs in = check_attention(q, k, v, key_mask, kCpuMaxHeadDim, dropout_p, seed, offset);
  const AttentionShape& sh = in.shape;
  at::Tensor out = at::empty_like(in.q);
  at::Tensor lse = at::empty({sh.batch, sh.heads, sh.seq_q}, in.q.options().dtype(lse_dtype(q)));
  const int64_t n_items = sh.batch * sh.heads * ((sh.seq_q + kCpuQueryTile - 1) / kCpuQueryTile);
  AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "minibert_attention_forward", [&] {
    at::parallel_for(0, n_items, 1, [&](int64_t begin, int64_t end) {
      attention_forward_cpu(in.q.data_ptr<scalar_t>(), in.k.data_ptr<scalar_t>(), in.v.data_ptr<scalar_t>(),
                            mask_ptr(in.mask), out.data_ptr<scalar_t>(), lse.data_ptr<double>(), sh,
                            static_cast<scalar_t>(scale), in.dropout, begin, end);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& grad_lse, const std::optional<at::Tensor>& key_mask,
    double scale, double dropout_p, int64_t seed, int64_t offset) {
  const AttentionInputs in = check_attention(q, k, v, key_mask, kCpuMaxHeadDim, dropout_p, seed, offset);
  const AttentionGrads g = check_attention_grads(grad_out, q, out, lse, grad_lse);
  const AttentionShape& sh = in.shape;
  at::Tensor dq = at::empty_like(in.q), dk = at::empty_like(in.k), dv = at::empty_like(in.v);
  AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "minibert_attention_backward", [&] {
    at::parallel_for(0, sh.batch * sh.heads, 1, [&](int64_t begin, int64_t end) {
      attention_backward_cpu(g.grad_out.data_ptr<scalar_t>(), in.q.data_ptr<scalar_t>(), in.k.data_ptr<scalar_t>(),
                             in.v.data_ptr<scalar_t>(), g.out.data_ptr<scalar_t>(), g.lse.data_ptr<double>(),
                             g.grad_lse.defined() ? g.grad_lse.data_ptr<double>() : nullptr, mask_ptr(in.mask),
                             dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), sh,
                             static_cast<scalar_t>(scale), in.dropout, begin, end);
    });
  });
  return {dq, dk, dv};
}

at::Tensor gelu_forward_impl(const GeluInputs& in) {
  at::Tensor y = at::empty_like(in.x);
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "minibert_gelu_forward", [&] {
    const scalar_t* b = in.bias.defined() ? in.bias.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, in.x.numel(), kCpuMinChunk, [&](int64_t begin, int64_t end) {
      gelu_forward_cpu(in.x.data_ptr<scalar_t>(), b, y.data_ptr<scalar_t>(), in.n_cols, in.use_tanh, begin, end);
    });
  });
  return y;
}

// Returns (dx, dbias); dbias undefined without bias. x is not empty (the caller answers that case), so
// n_cols >= 1. Without bias the tensor is one long row split across threads; with bias, rows are split
// and each chunk sums its own partial bias gradient (no two threads write the same partial), and the
// partials are added at the end.
std::tuple<at::Tensor, at::Tensor> gelu_backward_impl(const GeluInputs& in) {
  at::Tensor dx = at::empty_like(in.x);
  if (!in.bias.defined()) {
    AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "minibert_gelu_backward", [&] {
      at::parallel_for(0, in.x.numel(), kCpuMinChunk, [&](int64_t begin, int64_t end) {
        gelu_backward_cpu(in.grad.data_ptr<scalar_t>() + begin, in.x.data_ptr<scalar_t>() + begin, nullptr,
                          dx.data_ptr<scalar_t>() + begin, nullptr, end - begin, in.use_tanh, 0, 1);
      });
    });
    return {dx, at::Tensor()};
  }
  const int64_t rows = in.x.numel() / in.n_cols;
  const int64_t n_chunks = std::max<int64_t>(
      1, std::min<int64_t>({at::get_num_threads(), rows, in.x.numel() / kCpuMinChunk}));
  at::Tensor partials = at::zeros({n_chunks, in.n_cols}, in.x.options());
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "minibert_bias_gelu_backward", [&] {
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        gelu_backward_cpu(in.grad.data_ptr<scalar_t>(), in.x.data_ptr<scalar_t>(), in.bias.data_ptr<scalar_t>(),
                          dx.data_ptr<scalar_t>(), partials.data_ptr<scalar_t>() + c * in.n_cols, in.n_cols,
                          in.use_tanh, rows * c / n_chunks, rows * (c + 1) / n_chunks);
    });
  });
  return {dx, partials.sum(0)};
}

at::Tensor dropout(const at::Tensor& x_in, double p, int64_t seed, int64_t offset) {
  check_dtype(x_in, "x");
  const DropoutArgs args = make_dropout("p", p, seed, offset);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibert_dropout", [&] {
    at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      dropout_cpu(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), args, begin, end);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_forward_impl(const LayerNormInputs& in) {
  at::Tensor y = at::empty_like(in.x);
  at::Tensor mean = at::empty(stats_shape(in.x), in.x.options());
  at::Tensor rstd = at::empty(stats_shape(in.x), in.x.options());
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "minibert_layernorm_forward", [&] {
    at::parallel_for(0, in.rows, std::max<int64_t>(1, kCpuMinChunk / in.n_cols), [&](int64_t begin, int64_t end) {
      layernorm_forward_cpu(in.x.data_ptr<scalar_t>(), optional_ptr<scalar_t>(in.residual),
                            in.weight.data_ptr<scalar_t>(), in.bias.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                            mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), in.n_cols, in.eps,
                            in.dropout, begin, end);
    });
  });
  return {y, mean, rstd};
}

// Returns (d_sum, d_x, dweight, dbias). Rows are split into chunks, each summing its own partial
// dweight and dbias (no two threads write the same partial), added together at the end.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layernorm_backward_impl(const LayerNormInputs& in) {
  at::Tensor d_sum = at::empty_like(in.x), d_x = grad_x_buffer(in);
  const int64_t n_chunks = std::max<int64_t>(
      1, std::min<int64_t>({at::get_num_threads(), in.rows, in.rows * in.n_cols / kCpuMinChunk}));
  at::Tensor partials = at::zeros({2, n_chunks, in.n_cols}, in.x.options());
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "minibert_layernorm_backward", [&] {
    scalar_t* dw = partials.data_ptr<scalar_t>();
    scalar_t* db = dw + n_chunks * in.n_cols;
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        layernorm_backward_cpu(in.grad.data_ptr<scalar_t>(), in.x.data_ptr<scalar_t>(),
                               optional_ptr<scalar_t>(in.residual), in.weight.data_ptr<scalar_t>(),
                               in.mean.data_ptr<scalar_t>(), in.rstd.data_ptr<scalar_t>(), d_sum.data_ptr<scalar_t>(),
                               optional_ptr<scalar_t>(d_x), dw + c * in.n_cols, db + c * in.n_cols, in.n_cols,
                               in.dropout, in.rows * c / n_chunks, in.rows * (c + 1) / n_chunks);
    });
  });
  return {d_sum, d_x, partials[0].sum(0), partials[1].sum(0)};  // two tensors: outputs must not alias
}

// Rows are independent: split across threads in chunks of at least kCpuMinChunk elements.
std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_impl(const CrossEntropyInputs& in) {
  at::Tensor loss = at::empty({in.rows}, in.logits.options());
  at::Tensor lse = at::empty({in.rows}, in.logits.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(in.logits.scalar_type(), "minibert_cross_entropy_forward", [&] {
    at::parallel_for(0, in.rows, std::max<int64_t>(1, kCpuMinChunk / in.n_cols), [&](int64_t begin, int64_t end) {
      cross_entropy_forward_cpu(in.logits.data_ptr<scalar_t>(), in.labels.data_ptr<int64_t>(),
                                loss.data_ptr<scalar_t>(), lse.data_ptr<double>(), in.n_cols, in.ignore_index,
                                begin, end);
    });
  });
  return {loss, lse};
}

at::Tensor cross_entropy_backward_impl(const CrossEntropyInputs& in) {
  at::Tensor d_logits = at::empty_like(in.logits);
  AT_DISPATCH_FLOATING_TYPES(in.logits.scalar_type(), "minibert_cross_entropy_backward", [&] {
    at::parallel_for(0, in.rows, std::max<int64_t>(1, kCpuMinChunk / in.n_cols), [&](int64_t begin, int64_t end) {
      cross_entropy_backward_cpu(in.grad_loss.data_ptr<scalar_t>(), in.logits.data_ptr<scalar_t>(),
                                 in.labels.data_ptr<int64_t>(), in.lse.data_ptr<double>(),
                                 d_logits.data_ptr<scalar_t>(), in.n_cols, in.ignore_index, begin, end);
    });
  });
  return d_logits;
}

}  // namespace cpu

// ---------------------------------------------------------------------------------------------- CUDA

#ifdef MINIBERT_WITH_CUDA
namespace cuda {

ScalarKind scalar_kind(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return ScalarKind::kFloat16;
    case at::kBFloat16: return ScalarKind::kBFloat16;
    default: return ScalarKind::kFloat32;
  }
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "minibert: CUDA kernel ", what, " failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& key_mask, double scale,
                                                     double dropout_p, int64_t seed, int64_t offset) {
  const AttentionInputs in = check_attention(q, k, v, key_mask, kCudaMaxHeadDim, dropout_p, seed, offset);
  const AttentionShape& sh = in.shape;
  const c10::cuda::CUDAGuard guard(in.q.device());
  at::Tensor out = at::empty_like(in.q);
  at::Tensor lse = at::empty({sh.batch, sh.heads, sh.seq_q}, in.q.options().dtype(at::kFloat));
  check_cuda(attention_forward_cuda(scalar_kind(in.q), in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                                    mask_ptr(in.mask), out.data_ptr(), lse.data_ptr<float>(), sh,
                                    static_cast<float>(scale), in.dropout, c10::cuda::getCurrentCUDAStream()),
             "attention_forward");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& grad_lse, const std::optional<at::Tensor>& key_mask,
    double scale, double dropout_p, int64_t seed, int64_t offset) {
  const AttentionInputs in = check_attention(q, k, v, key_mask, kCudaMaxHeadDim, dropout_p, seed, offset);
  const AttentionGrads g = check_attention_grads(grad_out, q, out, lse, grad_lse);
  const AttentionShape& sh = in.shape;
  const c10::cuda::CUDAGuard guard(in.q.device());
  // Key tiles add into dq atomically, so it accumulates in float32 and is converted at the end.
  at::Tensor dq_acc = at::zeros(in.q.sizes(), in.q.options().dtype(at::kFloat));
  at::Tensor row_d = at::empty({sh.batch, sh.heads, sh.seq_q}, in.q.options().dtype(at::kFloat));
  at::Tensor dk = at::empty_like(in.k), dv = at::empty_like(in.v);
  check_cuda(attention_backward_cuda(scalar_kind(in.q), g.grad_out.data_ptr(), in.q.data_ptr(), in.k.data_ptr(),
                                     in.v.data_ptr(), g.out.data_ptr(), g.lse.data_ptr<float>(),
                                     g.grad_lse.defined() ? g.grad_lse.data_ptr<float>() : nullptr,
                                     mask_ptr(in.mask), dq_acc.data_ptr<float>(), dk.data_ptr(), dv.data_ptr(),
                                     row_d.data_ptr<float>(), sh, static_cast<float>(scale), in.dropout,
                                     c10::cuda::getCurrentCUDAStream()),
             "attention_backward");
  return {dq_acc.to(in.q.scalar_type()), dk, dv};
}

at::Tensor gelu_forward_impl(const GeluInputs& in) {
  at::Tensor y = at::empty_like(in.x);
  const c10::cuda::CUDAGuard guard(in.x.device());
  check_cuda(gelu_forward_cuda(scalar_kind(in.x), in.x.data_ptr(), in.bias.defined() ? in.bias.data_ptr() : nullptr,
                               y.data_ptr(), in.x.numel(), in.n_cols, in.use_tanh, c10::cuda::getCurrentCUDAStream()),
             "gelu_forward");
  return y;
}

// Returns (dx, dbias); dbias undefined without bias. The kernel adds column sums into a float32
// accumulator, converted to the input dtype at the end.
std::tuple<at::Tensor, at::Tensor> gelu_backward_impl(const GeluInputs& in) {
  const bool has_bias = in.bias.defined();
  const int64_t n_cols = has_bias ? in.n_cols : in.x.numel();  // without bias: one long row
  const c10::cuda::CUDAGuard guard(in.x.device());
  at::Tensor dx = at::empty_like(in.x);
  at::Tensor dbias_acc = has_bias ? at::zeros({n_cols}, in.x.options().dtype(at::kFloat)) : at::Tensor();
  check_cuda(gelu_backward_cuda(scalar_kind(in.x), in.grad.data_ptr(), in.x.data_ptr(),
                                has_bias ? in.bias.data_ptr() : nullptr, dx.data_ptr(),
                                has_bias ? dbias_acc.data_ptr<float>() : nullptr, in.x.numel() / n_cols, n_cols,
                                in.use_tanh, c10::cuda::getCurrentCUDAStream()),
             "gelu_backward");
  return {dx, has_bias ? dbias_acc.to(in.x.scalar_type()) : at::Tensor()};
}

at::Tensor dropout(const at::Tensor& x_in, double p, int64_t seed, int64_t offset) {
  check_dtype(x_in, "x");
  const DropoutArgs args = make_dropout("p", p, seed, offset);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(dropout_cuda(scalar_kind(x), x.data_ptr(), y.data_ptr(), x.numel(), args,
                          c10::cuda::getCurrentCUDAStream()),
             "dropout");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_forward_impl(const LayerNormInputs& in) {
  TORCH_CHECK(in.n_cols <= kCudaMaxLayerNormCols, "minibert: x's last dimension ", in.n_cols,
              " is too large for the CUDA LayerNorm kernel (at most ", kCudaMaxLayerNormCols, ")");
  const c10::cuda::CUDAGuard guard(in.x.device());
  at::Tensor y = at::empty_like(in.x);
  at::Tensor mean = at::empty(stats_shape(in.x), in.x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty(stats_shape(in.x), in.x.options().dtype(at::kFloat));
  check_cuda(layernorm_forward_cuda(scalar_kind(in.x), in.x.data_ptr(),
                                    in.residual.defined() ? in.residual.data_ptr() : nullptr, in.weight.data_ptr(),
                                    in.bias.data_ptr(), y.data_ptr(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
                                    in.rows, in.n_cols, static_cast<float>(in.eps), in.dropout,
                                    c10::cuda::getCurrentCUDAStream()),
             "layernorm_forward");
  return {y, mean, rstd};
}

// dweight and dbias are added up in float32 accumulators and converted to the input dtype at the end.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layernorm_backward_impl(const LayerNormInputs& in) {
  TORCH_CHECK(in.n_cols <= kCudaMaxLayerNormCols, "minibert: x's last dimension ", in.n_cols,
              " is too large for the CUDA LayerNorm kernel (at most ", kCudaMaxLayerNormCols, ")");
  const c10::cuda::CUDAGuard guard(in.x.device());
  at::Tensor d_sum = at::empty_like(in.x), d_x = grad_x_buffer(in);
  at::Tensor acc = at::zeros({2, in.n_cols}, in.x.options().dtype(at::kFloat));
  check_cuda(layernorm_backward_cuda(scalar_kind(in.x), in.grad.data_ptr(), in.x.data_ptr(),
                                     in.residual.defined() ? in.residual.data_ptr() : nullptr,
                                     in.weight.data_ptr(), in.mean.data_ptr<float>(), in.rstd.data_ptr<float>(),
                                     d_sum.data_ptr(), in.dropout.active ? d_x.data_ptr() : nullptr,
                                     acc.data_ptr<float>(),
                                     acc.data_ptr<float>() + in.n_cols, in.rows, in.n_cols, in.dropout,
                                     c10::cuda::getCurrentCUDAStream()),
             "layernorm_backward");
  // Copies (not views of acc): the op's outputs must not alias each other.
  return {d_sum, d_x, acc[0].to(in.x.scalar_type(), false, true), acc[1].to(in.x.scalar_type(), false, true)};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_impl(const CrossEntropyInputs& in) {
  const c10::cuda::CUDAGuard guard(in.logits.device());
  at::Tensor loss = at::empty({in.rows}, in.logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty({in.rows}, in.logits.options().dtype(at::kFloat));
  check_cuda(cross_entropy_forward_cuda(scalar_kind(in.logits), in.logits.data_ptr(), in.labels.data_ptr<int64_t>(),
                                        loss.data_ptr<float>(), lse.data_ptr<float>(), in.rows, in.n_cols,
                                        in.ignore_index, c10::cuda::getCurrentCUDAStream()),
             "cross_entropy_forward");
  return {loss, lse};
}

at::Tensor cross_entropy_backward_impl(const CrossEntropyInputs& in) {
  const c10::cuda::CUDAGuard guard(in.logits.device());
  at::Tensor d_logits = at::empty_like(in.logits);
  check_cuda(cross_entropy_backward_cuda(scalar_kind(in.logits), in.grad_loss.data_ptr<float>(), in.logits.data_ptr(),
                                         in.labels.data_ptr<int64_t>(), in.lse.data_ptr<float>(), d_logits.data_ptr(),
                                         in.rows, in.n_cols, in.ignore_index, c10::cuda::getCurrentCUDAStream()),
             "cross_entropy_backward");
  return d_logits;
}

}  // namespace cuda
#endif  // MINIBERT_WITH_CUDA

// ---------------------------------------------------------------------------------------------- GELU ops
// The four GELU ops check their arguments, then run a device's gelu_forward_impl / gelu_backward_impl:
// the template argument is the cpu:: or the cuda:: one, picked where each device's ops are registered.
// An empty x (some dimension 0) is answered here, for both devices, without a kernel: an empty result
// and a zero bias gradient. The kernels may then assume n_cols >= 1 (they divide by it).

template <at::Tensor (*Forward)(const GeluInputs&)>
at::Tensor gelu_forward(const at::Tensor& x, const std::string& approximate) {
  const GeluInputs in = check_gelu(x, at::Tensor(), at::Tensor(), approximate);
  return in.x.numel() == 0 ? at::empty_like(in.x) : Forward(in);
}
template <at::Tensor (*Forward)(const GeluInputs&)>
at::Tensor bias_gelu_forward(const at::Tensor& x, const at::Tensor& bias, const std::string& approximate) {
  const GeluInputs in = check_gelu(x, bias, at::Tensor(), approximate);
  return in.x.numel() == 0 ? at::empty_like(in.x) : Forward(in);
}
template <std::tuple<at::Tensor, at::Tensor> (*Backward)(const GeluInputs&)>
at::Tensor gelu_backward(const at::Tensor& grad, const at::Tensor& x, const std::string& approximate) {
  const GeluInputs in = check_gelu(x, at::Tensor(), grad, approximate);
  return in.x.numel() == 0 ? at::empty_like(in.x) : std::get<0>(Backward(in));
}
template <std::tuple<at::Tensor, at::Tensor> (*Backward)(const GeluInputs&)>
std::tuple<at::Tensor, at::Tensor> bias_gelu_backward(const at::Tensor& grad, const at::Tensor& x,
                                                      const at::Tensor& bias, const std::string& approximate) {
  const GeluInputs in = check_gelu(x, bias, grad, approximate);
  if (in.x.numel() == 0) return {at::empty_like(in.x), at::zeros_like(in.bias)};  // no rows: dbias = 0
  return Backward(in);
}

// ---------------------------------------------------------------------------------------------- LayerNorm ops
// residual_dropout_layernorm: y = LayerNorm(residual + dropout(x)) over the last dimension, with the
// saved per-row mean and rstd. Checked here for both devices; no rows (an empty x) is answered without
// a kernel: empty results and zero dweight, dbias.

template <std::tuple<at::Tensor, at::Tensor, at::Tensor> (*Forward)(const LayerNormInputs&)>
std::tuple<at::Tensor, at::Tensor, at::Tensor> layernorm_forward(const at::Tensor& x,
                                                                 const std::optional<at::Tensor>& residual,
                                                                 const at::Tensor& weight, const at::Tensor& bias,
                                                                 double eps, double p, int64_t seed, int64_t offset) {
  const LayerNormInputs in = check_layernorm(x, residual, weight, bias, eps, p, seed, offset);
  if (in.rows == 0) {
    const auto stats = in.x.options().dtype(stats_dtype(in.x));
    return {at::empty_like(in.x), at::empty(stats_shape(in.x), stats), at::empty(stats_shape(in.x), stats)};
  }
  return Forward(in);
}

template <std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> (*Backward)(const LayerNormInputs&)>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layernorm_backward(
    const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, double p, int64_t seed, int64_t offset) {
  // eps is not needed (rstd holds it), and the bias only shifts y: weight's shape stands in for both.
  LayerNormInputs in = check_layernorm(x, residual, weight, weight, 0.0, p, seed, offset);
  check_layernorm_grads(in, grad, mean, rstd);
  if (in.rows == 0) return {at::empty_like(in.x), grad_x_buffer(in), at::zeros_like(in.weight),
                            at::zeros_like(in.weight)};
  return Backward(in);
}

// ---------------------------------------------------------------------------------------------- cross-entropy ops
// cross_entropy: per-row loss and log-sum-exp of logits [rows, n_classes] against int64 labels [rows].
// Checked here for both devices; no rows is answered without a kernel.

template <std::tuple<at::Tensor, at::Tensor> (*Forward)(const CrossEntropyInputs&)>
std::tuple<at::Tensor, at::Tensor> cross_entropy_forward(const at::Tensor& logits, const at::Tensor& labels,
                                                         int64_t ignore_index) {
  const CrossEntropyInputs in = check_cross_entropy(logits, labels, ignore_index);
  if (in.rows == 0) return {at::empty({0}, in.logits.options().dtype(stats_dtype(in.logits))),
                            at::empty({0}, in.logits.options().dtype(lse_dtype(in.logits)))};
  return Forward(in);
}

template <at::Tensor (*Backward)(const CrossEntropyInputs&)>
at::Tensor cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& labels,
                                  const at::Tensor& lse, int64_t ignore_index) {
  CrossEntropyInputs in = check_cross_entropy(logits, labels, ignore_index);
  check_cross_entropy_grads(in, grad_loss, lse);
  return in.rows == 0 ? at::empty_like(in.logits) : Backward(in);
}

}  // namespace
}  // namespace minibert

TORCH_LIBRARY(minibert, m) {
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor? key_mask, float scale, float dropout_p, "
        "int seed, int offset) -> (Tensor, Tensor)");
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor? grad_lse, Tensor? key_mask, float scale, float dropout_p, int seed, int offset) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("gelu_forward(Tensor x, str approximate) -> Tensor");
  m.def("gelu_backward(Tensor grad, Tensor x, str approximate) -> Tensor");
  m.def("bias_gelu_forward(Tensor x, Tensor bias, str approximate) -> Tensor");
  m.def("bias_gelu_backward(Tensor grad, Tensor x, Tensor bias, str approximate) -> (Tensor, Tensor)");
  m.def("dropout(Tensor x, float p, int seed, int offset) -> Tensor");
  m.def("residual_dropout_layernorm_forward(Tensor x, Tensor? residual, Tensor weight, Tensor bias, float eps, "
        "float p, int seed, int offset) -> (Tensor, Tensor, Tensor)");
  m.def("residual_dropout_layernorm_backward(Tensor grad, Tensor x, Tensor? residual, Tensor weight, Tensor mean, "
        "Tensor rstd, float p, int seed, int offset) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cross_entropy_forward(Tensor logits, Tensor labels, int ignore_index) -> (Tensor, Tensor)");
  m.def("cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor labels, Tensor lse, int ignore_index) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(minibert, CPU, m) {
  namespace d = minibert::cpu;
  m.impl("attention_forward", &d::attention_forward);
  m.impl("attention_backward", &d::attention_backward);
  m.impl("gelu_forward", &minibert::gelu_forward<d::gelu_forward_impl>);
  m.impl("gelu_backward", &minibert::gelu_backward<d::gelu_backward_impl>);
  m.impl("bias_gelu_forward", &minibert::bias_gelu_forward<d::gelu_forward_impl>);
  m.impl("bias_gelu_backward", &minibert::bias_gelu_backward<d::gelu_backward_impl>);
  m.impl("dropout", &d::dropout);
  m.impl("residual_dropout_layernorm_forward", &minibert::layernorm_forward<d::layernorm_forward_impl>);
  m.impl("residual_dropout_layernorm_backward", &minibert::layernorm_backward<d::layernorm_backward_impl>);
  m.impl("cross_entropy_forward", &minibert::cross_entropy_forward<d::cross_entropy_forward_impl>);
  m.impl("cross_entropy_backward", &minibert::cross_entropy_backward<d::cross_entropy_backward_impl>);
}

#ifdef MINIBERT_WITH_CUDA
TORCH_LIBRARY_IMPL(minibert, CUDA, m) {
  namespace d = minibert::cuda;
  m.impl("attention_forward", &d::attention_forward);
  m.impl("attention_backward", &d::attention_backward);
  m.impl("gelu_forward", &minibert::gelu_forward<d::gelu_forward_impl>);
  m.impl("gelu_backward", &minibert::gelu_backward<d::gelu_backward_impl>);
  m.impl("bias_gelu_forward", &minibert::bias_gelu_forward<d::gelu_forward_impl>);
  m.impl("bias_gelu_backward", &minibert::bias_gelu_backward<d::gelu_backward_impl>);
  m.impl("dropout", &d::dropout);
  m.impl("residual_dropout_layernorm_forward", &minibert::layernorm_forward<d::layernorm_forward_impl>);
  m.impl("residual_dropout_layernorm_backward", &minibert::layernorm_backward<d::layernorm_backward_impl>);
  m.impl("cross_entropy_forward", &minibert::cross_entropy_forward<d::cross_entropy_forward_impl>);
  m.impl("cross_entropy_backward", &minibert::cross_entropy_backward<d::cross_entropy_backward_impl>);
}
#else
namespace minibert {
namespace {
// A CPU-only build answers a CUDA tensor with what to do, not the dispatcher's "could not run ... with
// arguments from the 'CUDA' backend". (minibert.ops never sends one here: it reads with_cuda.)
void built_without_cuda(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, "minibert: ", op.schema().name(), " got a CUDA tensor but minibert._C was built without "
              "CUDA; rebuild with FORCE_CUDA=1 or use the eager backend");
}
}  // namespace
}  // namespace minibert

TORCH_LIBRARY_IMPL(minibert, CUDA, m) {
  for (const char* name : {"attention_forward", "attention_backward", "gelu_forward", "gelu_backward",
                           "bias_gelu_forward", "bias_gelu_backward", "dropout",
                           "residual_dropout_layernorm_forward", "residual_dropout_layernorm_backward",
                           "cross_entropy_forward", "cross_entropy_backward"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&minibert::built_without_cuda>());
}
#endif

// Importing the module runs the registrations above; it also says what it was built with.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "minibert C++/CUDA kernels; the ops live in torch.ops.minibert (see minibert/ops/__init__.py)";
#ifdef MINIBERT_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
