"""The launchers of csrc/kernels_cuda.h on CPU torch tensors, through the emulator (one function each).

Inputs are float32, float16 or bfloat16 CPU tensors; outputs are allocated here and filled with NaN first,
so an element a kernel forgets to write shows up as NaN in the comparison.
"""
from __future__ import annotations

import torch

KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
SIMT, TENSOR_CORE, AUTO = 1, 2, 0


def _nan_like(t, dtype=None):
    return torch.full(t.shape, float("nan"), dtype=dtype or t.dtype)


def _shape(q, k):
    B, H, Sq, D = q.shape
    return [B, H, Sq, k.shape[2], D]


def attention_forward(emu, q, k, v, key_mask=None, scale=None, p=0.0, seed=0, offset=0, path=AUTO):
    """(out, lse) of attention_forward_cuda (path AUTO), the SIMT kernel or the tensor-core kernel."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = _nan_like(q)
    lse = torch.full(q.shape[:3], float("nan"), dtype=torch.float32)
    mask = None if key_mask is None else key_mask.to(torch.uint8).contiguous()
    emu.call("attention_forward", [q, k, v, mask, out, lse],
             [KIND[q.dtype], *_shape(q, k), seed, offset, path], [scale, p])
    return out, lse


def attention_forward_tc_supported(emu, dtype, head_dim) -> bool:
    answer = torch.zeros(1, dtype=torch.int32)
    emu.call("attention_forward_tc_supported", [answer], [KIND[dtype], head_dim])
    return bool(answer.item())


def attention_backward(emu, grad_out, q, k, v, out, lse, key_mask=None, grad_lse=None, scale=None, p=0.0, seed=0,
                       offset=0, path=AUTO, dq_shift=0):
    """(dq, dk, dv) as the binding computes them: dq accumulated in float32, then cast to q's dtype. path:
    attention_backward_cuda's own choice (AUTO), the SIMT kernel or the tensor-core kernel. dq_shift > 0
    starts the float32 dQ accumulator that many floats into its buffer (not 16-byte aligned, unlike the
    binding's)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dq_acc = torch.zeros(q.numel() + dq_shift, dtype=torch.float32)[dq_shift:].view(q.shape)
    dk, dv = _nan_like(k), _nan_like(v)
    row_d = torch.full(q.shape[:3], float("nan"), dtype=torch.float32)
    mask = None if key_mask is None else key_mask.to(torch.uint8).contiguous()
    emu.call("attention_backward", [grad_out, q, k, v, out, lse, grad_lse, mask, dq_acc, dk, dv, row_d],
             [KIND[q.dtype], *_shape(q, k), seed, offset, path], [scale, p])
    return dq_acc.to(q.dtype), dk, dv


def attention_backward_tc_supported(emu, dtype, head_dim) -> bool:
    answer = torch.zeros(1, dtype=torch.int32)
    emu.call("attention_backward_tc_supported", [answer], [KIND[dtype], head_dim])
    return bool(answer.item())


def gelu_forward(emu, x, bias=None, approximate="none"):
    y = _nan_like(x)
    n_cols = x.shape[-1]
    emu.call("gelu_forward", [x, bias, y], [KIND[x.dtype], x.numel(), n_cols, approximate == "tanh"])
    return y


def gelu_backward(emu, dy, x, bias=None, approximate="none"):
    """(dx, dbias) with dbias None without a bias; dbias is the float32 accumulator cast to x's dtype."""
    dx = _nan_like(x)
    n_cols = x.shape[-1]
    dbias = None if bias is None else torch.zeros(n_cols, dtype=torch.float32)
    emu.call("gelu_backward", [dy, x, bias, dx, dbias], [KIND[x.dtype], x.numel() // n_cols, n_cols,
                                                         approximate == "tanh"])
    return dx, None if dbias is None else dbias.to(x.dtype)


def dropout(emu, x, p, seed, offset=0):
    y = _nan_like(x)
    emu.call("dropout", [x, y], [KIND[x.dtype], x.numel(), seed, offset], [p])
    return y


def layernorm_forward(emu, x, residual, weight, bias, eps=1e-12, p=0.0, seed=0, offset=0):
    """(y, mean, rstd) of LayerNorm(residual + dropout(x)) over the last dimension."""
    n_cols = x.shape[-1]
    rows = x.numel() // n_cols
    y = _nan_like(x)
    mean, rstd = (torch.full((rows,), float("nan")) for _ in range(2))
    emu.call("layernorm_forward", [x, residual, weight, bias, y, mean, rstd],
             [KIND[x.dtype], rows, n_cols, seed, offset], [eps, p])
    return y, mean, rstd


def layernorm_backward(emu, grad, x, residual, weight, mean, rstd, p=0.0, seed=0, offset=0):
    """(d_sum, d_x, dweight, dbias): d_x is None without dropout (the kernel leaves it to d_sum)."""
    n_cols = x.shape[-1]
    rows = x.numel() // n_cols
    d_sum = _nan_like(x)
    d_x = _nan_like(x) if p > 0 else None
    dweight, dbias = torch.zeros(n_cols), torch.zeros(n_cols)
    emu.call("layernorm_backward", [grad, x, residual, weight, mean, rstd, d_sum, d_x, dweight, dbias],
             [KIND[x.dtype], rows, n_cols, seed, offset], [p])
    return d_sum, d_x, dweight.to(x.dtype), dbias.to(x.dtype)


def cross_entropy_forward(emu, logits, labels, ignore_index=-100):
    """(loss, lse), float32 [rows], of logits [rows, n_classes] against int64 labels [rows]."""
    rows, n_cols = logits.shape
    loss, lse = (torch.full((rows,), float("nan")) for _ in range(2))
    emu.call("cross_entropy_forward", [logits, labels, loss, lse], [KIND[logits.dtype], rows, n_cols, ignore_index])
    return loss, lse


def cross_entropy_backward(emu, grad_loss, logits, labels, lse, ignore_index=-100):
    """d_logits (logits' dtype) from float32 grad_loss and lse."""
    rows, n_cols = logits.shape
    d = _nan_like(logits)
    emu.call("cross_entropy_backward", [grad_loss, logits, labels, lse, d],
             [KIND[logits.dtype], rows, n_cols, ignore_index])
    return d
