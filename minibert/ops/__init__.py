"""The Python face of minibert's C++/CUDA extension: fused attention, (bias+)GELU and hash dropout.

Every function here computes the same thing two ways and picks one per call:

* **fused**: the ops of ``minibert._C`` (``torch.ops.minibert.*``, kernels in ``csrc/``), with autograd
  and fake-tensor support registered below, when this package is imported;
* **eager**: the plain PyTorch forms of ``minibert.ops.eager``, used where the extension is absent, or for
  a device/dtype it has no kernel for (CPU kernels: float32/float64; CUDA kernels: float32/float16/bfloat16).

How the extension is found (prebuilt ``minibert._C``, else a JIT build of ``csrc/``, else eager with one
warning; ``MINIBERT_NO_EXT=1`` chooses eager on purpose) is ``minibert.ops._load``; ``backend_info()``
reports the choice and ``python -m minibert.ops`` prints it.

Example::

    >>> from minibert import ops
    >>> q = k = v = torch.randn(2, 12, 128, 64)                 # [B, H, S, D]
    >>> out = ops.attention(q, k, v, attention_mask=torch.ones(2, 128))
    >>> out.shape
    torch.Size([2, 12, 128, 64])
"""
from __future__ import annotations

import torch

from minibert.ops import eager
from minibert.ops._load import EXTENSION, MAX_HEAD_DIM, ExtensionFallbackWarning, backend_info
from minibert.ops._load import supports as _supports
from minibert.ops.eager import to_int64

__all__ = ["attention", "gelu", "bias_gelu", "dropout", "dropout_scale_mask", "is_available", "backend_info",
           "ExtensionFallbackWarning", "eager"]

_APPROXIMATE = ("none", "tanh")


def is_available() -> bool:
    """True when the compiled (or JIT-built) extension is loaded, so ``fused`` means the C++/CUDA kernels."""
    return EXTENSION.module is not None


# ---------------------------------------------------------------------------------------------- validation

def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    return p


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_approximate(approximate: str) -> None:
    if approximate not in _APPROXIMATE:
        raise ValueError(f"approximate must be 'none' (erf GELU, BERT's 'gelu') or 'tanh' ('gelu_new'), "
                         f"got {approximate!r}")


def _check_attention(q, k, v, attention_mask, dropout_p):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [batch, heads, seq, head_dim], got {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"q, k, v must share dtype and device, got q {q.dtype} on {q.device}, "
                             f"{name} {t.dtype} on {t.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, heads and head_dim")
    if q.numel() == 0 or k.numel() == 0:
        raise ValueError(f"attention got an empty tensor (q {tuple(q.shape)}, k {tuple(k.shape)}); "
                         "every dimension must be at least 1")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != (q.shape[0], k.shape[2]):
            raise ValueError(f"attention_mask must have shape [batch, seq_k] = [{q.shape[0]}, {k.shape[2]}] "
                             f"(1 keep, 0 pad), got {tuple(attention_mask.shape)}")
        if attention_mask.device != q.device:
            raise ValueError(f"attention_mask is on {attention_mask.device} but q is on {q.device}")
    return _check_p(dropout_p)


# ---------------------------------------------------------------------------------------------- public API

def attention(q, k, v, attention_mask=None, scale=None, dropout_p=0.0, seed=0, offset=0):
    """Softmax attention ``softmax(q k^T * scale + mask) v`` with optional dropout on the probabilities.

    q: [B, H, S_q, D]; k, v: [B, H, S_k, D]; attention_mask: [B, S_k], 1 keep / 0 pad (any dtype) or None;
    scale defaults to ``D ** -0.5``. Dropout (``dropout_p`` > 0) uses the counter-based hash of
    ``minibert.rng`` with (``seed``, ``offset``) on the probability element ``((b*H + h)*S_q + i)*S_k + j``,
    so it matches the NumPy reference exactly. A query row whose keys are all padding returns zeros (and
    zero gradients). Returns [B, H, S_q, D]. Differentiable in q, k, v.
    """
    dropout_p = _check_attention(q, k, v, attention_mask, dropout_p)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if not _supports(q):
        mask = None if attention_mask is None else eager.AttentionMask(attention_mask)
        return eager.attention(q, k, v, mask, scale, dropout_p, seed, offset, dropout=dropout)
    if q.shape[-1] > MAX_HEAD_DIM[q.device.type]:
        raise ValueError(f"head_dim {q.shape[-1]} is not supported by the fused kernel on {q.device.type} "
                         f"(at most {MAX_HEAD_DIM[q.device.type]}); use the eager attention path")
    key_mask = None if attention_mask is None else attention_mask != 0
    out, _ = torch.ops.minibert.attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), key_mask,
                                                  scale, dropout_p, to_int64(seed), to_int64(offset))
    return out


def gelu(x, approximate="none"):
    """GELU, ``x * Phi(x)`` (erf form, BERT's "gelu") or its tanh approximation (``approximate="tanh"``)."""
    _check_tensor("x", x)
    _check_approximate(approximate)
    if _supports(x):
        return torch.ops.minibert.gelu_forward(x.contiguous(), approximate)
    return eager.gelu(x, approximate)


def bias_gelu(x, bias, approximate="none"):
    """``gelu(x + bias)`` in one pass (x: [..., N], bias: [N]); the bias gradient is reduced in the kernel."""
    _check_tensor("x", x)
    _check_tensor("bias", bias)
    _check_approximate(approximate)
    if bias.dim() != 1 or x.dim() < 1 or x.shape[-1] != bias.shape[0]:
        raise ValueError(f"bias must be 1-D with the size of x's last dimension, got x {tuple(x.shape)} and "
                         f"bias {tuple(bias.shape)}")
    if bias.dtype != x.dtype or bias.device != x.device:
        raise ValueError(f"x and bias must share dtype and device, got {x.dtype} on {x.device} and "
                         f"{bias.dtype} on {bias.device}")
    if _supports(x):
        return torch.ops.minibert.bias_gelu_forward(x.contiguous(), bias.contiguous(), approximate)
    return eager.bias_gelu(x, bias, approximate)


def dropout(x, p, seed, offset=0):
    """Inverted hash dropout: ``x * keep / (1 - p)`` with keep from ``minibert.rng`` (flat C-order index).

    The same (seed, offset) always drops the same elements, on every backend, and backward regenerates the
    mask instead of storing it. ``p == 0`` returns x unchanged.
    """
    _check_tensor("x", x)
    p = _check_p(p)
    if p == 0.0:
        return x
    if _supports(x):
        return torch.ops.minibert.dropout(x.contiguous(), p, to_int64(seed), to_int64(offset))
    return eager.dropout(x, p, seed, offset)


def dropout_scale_mask(shape, p, seed, offset=0, device="cpu", dtype=torch.float32):
    """The tensor ``keep / (1 - p)`` of ``shape`` (flat C-order element index).

    Multiply probabilities or activations by it to apply exactly the dropout of ``dropout``/``attention``.
    """
    p = _check_p(p)
    ones = torch.ones(tuple(int(s) for s in shape), device=device, dtype=dtype)
    if p == 0.0:
        return ones
    return dropout(ones, p, seed, offset)


# ---------------------------------------------------------------------------------------------- autograd + fake
# Fake kernels give shapes and dtypes without computing (for torch.compile and meta tensors); the autograd
# formulas call the backward ops. They are registered right below, at import, when the extension is loaded.

def _attention_forward_fake(q, k, v, key_mask, scale, dropout_p, seed, offset):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)  # out [B, H, S_q, D], lse [B, H, S_q]


def _attention_backward_fake(grad_out, q, k, v, out, lse, grad_lse, key_mask, scale, dropout_p, seed, offset):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _like_input_fake(x, *args):
    return x.new_empty(x.shape)


def _bias_gelu_backward_fake(grad, x, bias, approximate):
    return x.new_empty(x.shape), bias.new_empty(bias.shape)


def _attention_setup(ctx, inputs, output):
    q, k, v, key_mask, scale, dropout_p, seed, offset = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.key_mask = key_mask
    ctx.args = (scale, dropout_p, seed, offset)


def _attention_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.minibert.attention_backward(grad_out.contiguous(), q, k, v, out, lse, grad_lse,
                                                       ctx.key_mask, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


def _gelu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.approximate = inputs[1]


def _gelu_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.minibert.gelu_backward(grad.contiguous(), x, ctx.approximate), None


def _bias_gelu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.approximate = inputs[2]


def _bias_gelu_backward(ctx, grad):
    x, bias = ctx.saved_tensors
    dx, dbias = torch.ops.minibert.bias_gelu_backward(grad.contiguous(), x, bias, ctx.approximate)
    return dx, dbias, None


def _dropout_setup(ctx, inputs, output):
    ctx.args = inputs[1:]


def _dropout_backward(ctx, grad):
    # Dropout is linear in x: its backward is the same mask and scale applied to the gradient.
    return torch.ops.minibert.dropout(grad.contiguous(), *ctx.args), None, None, None


if is_available():  # without the extension there are no torch.ops.minibert ops to register for
    torch.library.register_fake("minibert::attention_forward", _attention_forward_fake)
    torch.library.register_fake("minibert::attention_backward", _attention_backward_fake)
    for _name in ("gelu_forward", "gelu_backward", "bias_gelu_forward", "dropout"):
        torch.library.register_fake(f"minibert::{_name}", _like_input_fake)
    torch.library.register_fake("minibert::bias_gelu_backward", _bias_gelu_backward_fake)
    torch.library.register_autograd("minibert::attention_forward", _attention_backward,
                                    setup_context=_attention_setup)
    torch.library.register_autograd("minibert::gelu_forward", _gelu_backward, setup_context=_gelu_setup)
    torch.library.register_autograd("minibert::bias_gelu_forward", _bias_gelu_backward,
                                    setup_context=_bias_gelu_setup)
    torch.library.register_autograd("minibert::dropout", _dropout_backward, setup_context=_dropout_setup)
