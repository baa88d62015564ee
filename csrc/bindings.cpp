// The one file that knows about torch: registers the minibert ops with the dispatcher
// (TORCH_LIBRARY), checks every argument before any kernel touches memory, picks the CPU or CUDA
// kernel, and splits CPU work across threads with at::parallel_for. Importing minibert._C runs the
// registrations; the ops are then torch.ops.minibert.*. Autograd and fake (meta) implementations are
// added from Python in minibert/ops.py.
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

bool dtype_supported(const at::Tensor& t) {
  const auto dt = t.scalar_type();
  if (t.is_cuda()) return dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16;
  return dt == at::kFloat || dt == at::kDouble;
}

void check_float_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() || t.is_cuda(), "minibert: ", name, " must be a CPU or CUDA tensor, got ",
              t.device());
#ifndef MINIBERT_WITH_CUDA
  TORCH_CHECK(!t.is_cuda(), "minibert: ", name, " is a CUDA tensor but minibert._C was built without CUDA; "
              "rebuild with FORCE_CUDA=1 or use the eager backend");
#endif
  TORCH_CHECK(dtype_supported(t), "minibert: ", name, " has dtype ", t.scalar_type(), ", which the ",
              t.is_cuda() ? "CUDA kernels do not support (use float32, float16 or bfloat16)"
                          : "CPU kernels do not support (use float32 or float64)");
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "minibert: ", name_a, " and ", name_b,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), "minibert: ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

DropoutArgs make_dropout(double p, int64_t seed, int64_t offset) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "minibert: dropout probability must be in [0, 1), got ", p);
  DropoutArgs args;
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

#ifdef MINIBERT_WITH_CUDA
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
#endif

// ---------------------------------------------------------------------------------------------- attention

struct AttentionInputs {
  at::Tensor q, k, v, mask;  // contiguous; mask undefined when absent
  AttentionShape shape;
};

AttentionInputs check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::optional<at::Tensor>& key_mask) {
  check_float_input(q, "q");
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
  const int64_t max_d =
#ifdef MINIBERT_WITH_CUDA
      q.is_cuda() ? kCudaMaxHeadDim :
#endif
                  kCpuMaxHeadDim;
  TORCH_CHECK(q.size(3) <= max_d, "minibert: head_dim ", q.size(3), " is not supported on ", q.device(),
              " (at most ", max_d, ")");
  AttentionInputs in{q.contiguous(), k.contiguous(), v.contiguous(), at::Tensor(),
                     {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)}};
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

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, const std::optional<at::Tensor>& key_mask,
                                                     double scale, double dropout_p, int64_t seed, int64_t offset) {
  const AttentionInputs in = check_attention(q_in, k_in, v_in, key_mask);
  const DropoutArgs dropout = make_dropout(dropout_p, seed, offset);
  const AttentionShape& sh = in.shape;
  at::Tensor out = at::empty_like(in.q);
  const auto lse_dtype = in.q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor lse = at::empty({sh.batch, sh.heads, sh.seq_q}, in.q.options().dtype(lse_dtype));
#ifdef MINIBERT_WITH_CUDA
  if (in.q.is_cuda()) {
    const c10::cuda::CUDAGuard guard(in.q.device());
    check_cuda(attention_forward_cuda(scalar_kind(in.q), in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                                      mask_ptr(in.mask), out.data_ptr(), lse.data_ptr<float>(), sh,
                                      static_cast<float>(scale), dropout, c10::cuda::getCurrentCUDAStream()),
               "attention_forward");
    return {out, lse};
  }
#endif
  const int64_t n_items = sh.batch * sh.heads * ((sh.seq_q + kCpuQueryTile - 1) / kCpuQueryTile);
  AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "minibert_attention_forward", [&] {
    at::parallel_for(0, n_items, 1, [&](int64_t begin, int64_t end) {
      attention_forward_cpu(in.q.data_ptr<scalar_t>(), in.k.data_ptr<scalar_t>(), in.v.data_ptr<scalar_t>(),
                            mask_ptr(in.mask), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), sh,
                            static_cast<scalar_t>(scale), dropout, begin, end);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& grad_lse,
    const std::optional<at::Tensor>& key_mask, double scale, double dropout_p, int64_t seed, int64_t offset) {
  const AttentionInputs in = check_attention(q_in, k_in, v_in, key_mask);
  const DropoutArgs dropout = make_dropout(dropout_p, seed, offset);
  const AttentionShape& sh = in.shape;
  check_same(q_in, grad_out, "q", "grad_out");
  check_same(q_in, out, "q", "out");
  TORCH_CHECK(grad_out.sizes() == q_in.sizes() && out.sizes() == q_in.sizes(),
              "minibert: grad_out and out must have the shape of q ", q_in.sizes(), ", got ", grad_out.sizes(),
              " and ", out.sizes());
  const auto lse_dtype = q_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> lse_shape{sh.batch, sh.heads, sh.seq_q};
  TORCH_CHECK(lse.scalar_type() == lse_dtype && lse.device() == q_in.device() && lse.sizes() == lse_shape,
              "minibert: lse must be the ", lse_dtype, " [B, H, Sq] tensor returned by attention_forward, got ",
              lse.scalar_type(), " ", lse.sizes());
  at::Tensor glse;
  if (grad_lse.has_value()) {
    TORCH_CHECK(grad_lse->scalar_type() == lse_dtype && grad_lse->device() == q_in.device() &&
                    grad_lse->sizes() == lse_shape,
                "minibert: grad_lse must match lse (", lse_dtype, " ", lse.sizes(), "), got ",
                grad_lse->scalar_type(), " ", grad_lse->sizes());
    glse = grad_lse->contiguous();
  }
  const at::Tensor go = grad_out.contiguous(), o = out.contiguous(), l = lse.contiguous();
  at::Tensor dk = at::empty_like(in.k), dv = at::empty_like(in.v);
#ifdef MINIBERT_WITH_CUDA
  if (in.q.is_cuda()) {
    const c10::cuda::CUDAGuard guard(in.q.device());
    at::Tensor dq_acc = at::zeros(in.q.sizes(), in.q.options().dtype(at::kFloat));
    at::Tensor row_d = at::empty(lse_shape, in.q.options().dtype(at::kFloat));
    check_cuda(attention_backward_cuda(scalar_kind(in.q), go.data_ptr(), in.q.data_ptr(), in.k.data_ptr(),
                                       in.v.data_ptr(), o.data_ptr(), l.data_ptr<float>(),
                                       glse.defined() ? glse.data_ptr<float>() : nullptr, mask_ptr(in.mask),
                                       dq_acc.data_ptr<float>(), dk.data_ptr(), dv.data_ptr(),
                                       row_d.data_ptr<float>(), sh, static_cast<float>(scale), dropout,
                                       c10::cuda::getCurrentCUDAStream()),
               "attention_backward");
    return {dq_acc.to(in.q.scalar_type()), dk, dv};
  }
#endif
  at::Tensor dq = at::empty_like(in.q);
  AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "minibert_attention_backward", [&] {
    at::parallel_for(0, sh.batch * sh.heads, 1, [&](int64_t begin, int64_t end) {
      attention_backward_cpu(go.data_ptr<scalar_t>(), in.q.data_ptr<scalar_t>(), in.k.data_ptr<scalar_t>(),
                             in.v.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(),
                             glse.defined() ? glse.data_ptr<scalar_t>() : nullptr, mask_ptr(in.mask),
                             dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), sh,
                             static_cast<scalar_t>(scale), dropout, begin, end);
    });
  });
  return {dq, dk, dv};
}

// ---------------------------------------------------------------------------------------------- GELU

// x viewed as [rows, n_cols] with n_cols = bias length (or 1 without bias: every element its own row).
int64_t check_bias(const at::Tensor& x, const at::Tensor& bias) {
  check_same(x, bias, "x", "bias");
  TORCH_CHECK(bias.dim() == 1 && x.dim() >= 1 && x.size(-1) == bias.size(0),
              "minibert: bias must be 1-D with the size of x's last dimension (", x.dim() ? x.size(-1) : 0,
              "), got shape ", bias.sizes());
  return bias.size(0);
}

at::Tensor gelu_forward_impl(const at::Tensor& x_in, const at::Tensor& bias_in, const std::string& approximate) {
  check_float_input(x_in, "x");
  const bool use_tanh = use_tanh_form(approximate);
  const int64_t n_cols = bias_in.defined() ? check_bias(x_in, bias_in) : 1;
  const at::Tensor x = x_in.contiguous();
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : bias_in;
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
#ifdef MINIBERT_WITH_CUDA
  if (x.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x.device());
    check_cuda(gelu_forward_cuda(scalar_kind(x), x.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr,
                                 y.data_ptr(), x.numel(), n_cols, use_tanh, c10::cuda::getCurrentCUDAStream()),
               "gelu_forward");
    return y;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibert_gelu_forward", [&] {
    const scalar_t* b = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      gelu_forward_cpu(x.data_ptr<scalar_t>(), b, y.data_ptr<scalar_t>(), n_cols, use_tanh, begin, end);
    });
  });
  return y;
}

// Returns (dx, dbias); dbias undefined without bias.
std::tuple<at::Tensor, at::Tensor> gelu_backward_impl(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                      const at::Tensor& bias_in, const std::string& approximate) {
  check_float_input(x_in, "x");
  check_same(x_in, grad_in, "x", "grad");
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "minibert: grad ", grad_in.sizes(), " must have the shape of x ",
              x_in.sizes());
  const bool use_tanh = use_tanh_form(approximate);
  const bool has_bias = bias_in.defined();
  const int64_t n_cols = has_bias ? check_bias(x_in, bias_in) : std::max<int64_t>(x_in.numel(), 1);
  const int64_t rows = x_in.numel() / n_cols;
  const at::Tensor x = x_in.contiguous(), dy = grad_in.contiguous();
  const at::Tensor bias = has_bias ? bias_in.contiguous() : bias_in;
  at::Tensor dx = at::empty_like(x);
  at::Tensor dbias;
#ifdef MINIBERT_WITH_CUDA
  if (x.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor dbias_acc = has_bias ? at::zeros({n_cols}, x.options().dtype(at::kFloat)) : at::Tensor();
    if (x.numel() > 0)
      check_cuda(gelu_backward_cuda(scalar_kind(x), dy.data_ptr(), x.data_ptr(), has_bias ? bias.data_ptr() : nullptr,
                                    dx.data_ptr(), has_bias ? dbias_acc.data_ptr<float>() : nullptr, rows, n_cols,
                                    use_tanh, c10::cuda::getCurrentCUDAStream()),
                 "gelu_backward");
    if (has_bias) dbias = dbias_acc.to(x.scalar_type());
    return {dx, dbias};
  }
#endif
  // Without bias the tensor is one long row split across threads; with bias, rows are split and each
  // chunk sums its own partial bias gradient (no two threads write the same partial).
  const int64_t n_chunks = has_bias ? std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows)) : 1;
  at::Tensor partials = has_bias ? at::zeros({n_chunks, n_cols}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibert_gelu_backward", [&] {
    const scalar_t* b = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
    if (!has_bias) {
      at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
        gelu_backward_cpu(dy.data_ptr<scalar_t>() + begin, x.data_ptr<scalar_t>() + begin, nullptr,
                          dx.data_ptr<scalar_t>() + begin, nullptr, end - begin, use_tanh, 0, 1);
      });
      return;
    }
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        gelu_backward_cpu(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), b, dx.data_ptr<scalar_t>(),
                          partials.data_ptr<scalar_t>() + c * n_cols, n_cols, use_tanh, rows * c / n_chunks,
                          rows * (c + 1) / n_chunks);
    });
  });
  if (has_bias) dbias = partials.sum(0);
  return {dx, dbias};
}

at::Tensor gelu_forward(const at::Tensor& x, const std::string& approximate) {
  return gelu_forward_impl(x, at::Tensor(), approximate);
}
at::Tensor gelu_backward(const at::Tensor& grad, const at::Tensor& x, const std::string& approximate) {
  return std::get<0>(gelu_backward_impl(grad, x, at::Tensor(), approximate));
}
at::Tensor bias_gelu_forward(const at::Tensor& x, const at::Tensor& bias, const std::string& approximate) {
  return gelu_forward_impl(x, bias, approximate);
}
std::tuple<at::Tensor, at::Tensor> bias_gelu_backward(const at::Tensor& grad, const at::Tensor& x,
                                                      const at::Tensor& bias, const std::string& approximate) {
  return gelu_backward_impl(grad, x, bias, approximate);
}

// ---------------------------------------------------------------------------------------------- dropout

at::Tensor dropout(const at::Tensor& x_in, double p, int64_t seed, int64_t offset) {
  check_float_input(x_in, "x");
  const DropoutArgs args = make_dropout(p, seed, offset);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
#ifdef MINIBERT_WITH_CUDA
  if (x.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x.device());
    check_cuda(dropout_cuda(scalar_kind(x), x.data_ptr(), y.data_ptr(), x.numel(), args,
                            c10::cuda::getCurrentCUDAStream()),
               "dropout");
    return y;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "minibert_dropout", [&] {
    at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      dropout_cpu(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), args, begin, end);
    });
  });
  return y;
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
}

// One implementation per op serves both devices: it validates, then branches on the device.
#define MINIBERT_IMPLS(m)                                     \
  m.impl("attention_forward", &minibert::attention_forward);   \
  m.impl("attention_backward", &minibert::attention_backward); \
  m.impl("gelu_forward", &minibert::gelu_forward);             \
  m.impl("gelu_backward", &minibert::gelu_backward);           \
  m.impl("bias_gelu_forward", &minibert::bias_gelu_forward);   \
  m.impl("bias_gelu_backward", &minibert::bias_gelu_backward); \
  m.impl("dropout", &minibert::dropout)

TORCH_LIBRARY_IMPL(minibert, CPU, m) { MINIBERT_IMPLS(m); }
#ifdef MINIBERT_WITH_CUDA
TORCH_LIBRARY_IMPL(minibert, CUDA, m) { MINIBERT_IMPLS(m); }
#endif

// Importing the module runs the registrations above; it also says what it was built with.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "minibert C++/CUDA kernels; the ops live in torch.ops.minibert (see minibert/ops.py)";
#ifdef MINIBERT_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
