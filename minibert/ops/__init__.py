"""The Python face of minibert's C++/CUDA extension: fused attention, (bias+)GELU, hash dropout,
residual + dropout + LayerNorm and cross-entropy (alone, or with the vocabulary projection before it).

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

import math
import numbers

import torch
from torch._subclasses.fake_tensor import is_fake

from minibert.ops import eager
from minibert.ops._load import (EXTENSION, KERNEL_DTYPES, MAX_HEAD_DIM, MAX_LAYERNORM_COLS, ExtensionFallbackWarning,
                                backend_info)
from minibert.ops._load import supports as _supports
from minibert.ops.eager import to_int64

__all__ = ["attention", "gelu", "bias_gelu", "dropout", "dropout_scale_mask", "residual_dropout_layernorm",
           "cross_entropy", "linear_cross_entropy", "is_available", "backend_info", "ExtensionFallbackWarning", "eager"]

_APPROXIMATE = ("none", "tanh")


def is_available() -> bool:
    """True when the compiled (or JIT-built) extension is loaded, so ``fused`` means the C++/CUDA kernels."""
    return EXTENSION.module is not None


# ---------------------------------------------------------------------------------------------- validation
# Every argument is checked here, before any kernel runs, and every error names the argument at fault.
# The checks must also trace under torch.compile(fullgraph=True): they look at types, shapes, dtypes and
# devices, which the compiler knows, and read a tensor's values only where noted (the attention mask).

def _check_p(name: str, p) -> float:
    """A dropout probability: a real number (not a bool or a string) in [0, 1); returns it as a float."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} (the dropout probability) must be a real number in [0, 1), got {p!r}")
    p = float(p)
    if not 0.0 <= p < 1.0:  # also refuses NaN, for which every comparison is False
        raise ValueError(f"{name} (the dropout probability) must be in [0, 1), got {p!r}")
    return p


def _check_counter(name: str, n) -> int:
    """A dropout seed or offset: a Python or NumPy integer, any value, taken modulo 2**64 (as an int64).

    bool is refused although Python counts it as an integer: ``seed=True`` is almost surely a mistake."""
    if isinstance(n, bool) or not isinstance(n, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{name} must be an integer (any value; it is taken modulo 2**64), got {n!r}")
    return to_int64(n)


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_approximate(approximate) -> None:
    if approximate not in _APPROXIMATE:
        raise ValueError(f"approximate must be 'none' (erf GELU, BERT's 'gelu') or 'tanh' ('gelu_new'), "
                         f"got {approximate!r}")


def _check_scale(scale, head_dim: int) -> float:
    """The score scale: a finite real number, or None for ``head_dim ** -0.5``."""
    if scale is None:
        # With head_dim 0 every score is an empty sum, 0, whatever the scale: 1 avoids 0 ** -0.5.
        return float(head_dim ** -0.5) if head_dim > 0 else 1.0
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a finite real number or None, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def _check_shape(shape) -> tuple:
    """A tensor shape: a sequence of non-negative integers (a tuple, list or torch.Size)."""
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, (numbers.Integral, torch.SymInt)) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"shape must be a sequence of non-negative integers, got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not have negative sizes, got {tuple(shape)}")
    return tuple(shape)


def _check_same_kind(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` is real where ``ref`` is, fake where ``ref`` is fake (FakeTensorMode: shapes, no values).

    Mixing the two is refused here by name; torch would fail later with an assertion about FakeTensorMode.
    (Under torch.compile every tensor is traced alike, so there is nothing to check.)"""
    if not torch.compiler.is_compiling() and is_fake(t) != is_fake(ref):
        raise ValueError(f"{name} and {ref_name} must both be real tensors or both fake tensors (made under "
                         f"the same FakeTensorMode), got {name} {'fake' if is_fake(t) else 'real'}")


def _check_attention(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [batch, heads, seq, head_dim], got {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"q, k, v must share dtype and device, got q {q.dtype} on {q.device}, "
                             f"{name} {t.dtype} on {t.device}")
        _check_same_kind(name, t, "q", q)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, heads and head_dim")


def _values_readable(t: torch.Tensor) -> bool:
    """Whether ``t`` has values to read: meta and fake tensors (shape-only tracing) have none."""
    return t.device.type != "meta" and not is_fake(t)


def _check_mask(attention_mask, q, k) -> torch.Tensor | None:
    """The key-padding mask, checked: returns it as a bool keep-mask [B, S_k] (True = real key), or None.

    Its values must be 0 or 1 (any real dtype; a bool mask needs no check). Reading them is what catches an
    additive mask (0 keep, -10000 pad: the HF convention), which read as "non-zero = keep" would attend
    only to the padding. On a GPU this check costs a host-device sync, accepted for non-bool masks (the
    model passes a bool mask and pays nothing). Under torch.compile the check is torch._assert_async,
    which the compiled graph keeps and runs (no graph break, no data-dependent Python branch); on a GPU
    it fails as a device-side assert, which ends the process's CUDA context: loud, never silent. Meta
    and fake tensors have no values to check.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != (q.shape[0], k.shape[2]):
        raise ValueError(f"attention_mask must have shape [batch, seq_k] = [{q.shape[0]}, {k.shape[2]}] "
                         f"(1 keep, 0 pad), got {tuple(attention_mask.shape)}")
    if attention_mask.device != q.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but q is on {q.device}")
    _check_same_kind("attention_mask", attention_mask, "q", q)
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_complex():
        raise TypeError(f"attention_mask must be a bool, integer or floating-point tensor, "
                        f"got {attention_mask.dtype}")
    problem = ("attention_mask must hold 1 (keep) and 0 (padding) only (NaN is refused). An additive mask (0 "
               "keep, a large negative number pad, as in HF) converts with attention_mask=(additive_mask == 0)")
    binary = ((attention_mask == 0) | (attention_mask == 1)).all()  # NaN == anything is False: refused too
    if torch.compiler.is_compiling():
        torch._assert_async(binary, problem)
    elif _values_readable(attention_mask) and not bool(binary):
        bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
        raise ValueError(f"{problem}; got {bad[0].item()!r}")
    return attention_mask != 0


# ---------------------------------------------------------------------------------------------- public API

def attention(q, k, v, attention_mask=None, scale=None, dropout_p=0.0, seed=0, offset=0):
    """Softmax attention ``softmax(q k^T * scale + mask) v`` with optional dropout on the probabilities.

    q: [B, H, S_q, D]; k, v: [B, H, S_k, D]; attention_mask: [B, S_k] or None, 1 keep / 0 pad (bool, or
    any real dtype holding only 0 and 1); scale defaults to ``D ** -0.5``. Dropout (``dropout_p`` > 0)
    uses the counter-based hash of ``minibert.rng`` with (``seed``, ``offset``) on the probability element
    ``((b*H + h)*S_q + i)*S_k + j``, so it matches the NumPy reference exactly. A query row whose keys are
    all padding (or that has no keys, S_k = 0) returns zeros (and zero gradients). Returns [B, H, S_q, D].
    Differentiable in q, k, v (once: double backward raises; use the eager path for it).
    """
    _check_attention(q, k, v)
    dropout_p = _check_p("dropout_p", dropout_p)
    seed, offset = _check_counter("seed", seed), _check_counter("offset", offset)
    scale = _check_scale(scale, q.shape[-1])
    key_mask = _check_mask(attention_mask, q, k)
    # The kernel covers non-empty tensors of its dtypes with head_dim up to its limit; anything else has
    # the same answer from the eager path (backends are a switch: a fallback, not an error). Empty
    # inputs have defined answers there: an empty output, or zeros when there are no keys (S_k = 0).
    if (not _supports(q) or q.numel() == 0 or k.numel() == 0
            or q.shape[-1] > MAX_HEAD_DIM[q.device.type]):
        mask = None if key_mask is None else eager.AttentionMask(key_mask)
        return eager.attention(q, k, v, mask, scale, dropout_p, seed, offset, dropout=dropout)
    out, _ = torch.ops.minibert.attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), key_mask,
                                                  scale, dropout_p, seed, offset)
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
                         f"bias {bias.dtype} on {bias.device}")
    _check_same_kind("bias", bias, "x", x)
    if _supports(x):
        return torch.ops.minibert.bias_gelu_forward(x.contiguous(), bias.contiguous(), approximate)
    return eager.bias_gelu(x, bias, approximate)


def dropout(x, p, seed, offset=0):
    """Inverted hash dropout: ``x * keep / (1 - p)`` with keep from ``minibert.rng`` (flat C-order index).

    The same (seed, offset) always drops the same elements, on every backend, and backward regenerates the
    mask instead of storing it. ``p == 0`` returns x unchanged; any ``p > 0`` scales the kept elements,
    even one so small that no element is dropped. seed and offset are integers, taken modulo 2**64.
    """
    _check_tensor("x", x)
    p = _check_p("p", p)
    seed, offset = _check_counter("seed", seed), _check_counter("offset", offset)
    if p == 0.0:
        return x
    if _supports(x):
        return torch.ops.minibert.dropout(x.contiguous(), p, seed, offset)
    return eager.dropout(x, p, seed, offset)


def dropout_scale_mask(shape, p, seed, offset=0, device="cpu", dtype=torch.float32):
    """The tensor ``keep / (1 - p)`` of ``shape`` (flat C-order element index), of a floating ``dtype``.

    Multiply probabilities or activations by it to apply exactly the dropout of ``dropout``/``attention``;
    equal to ``minibert.rng.dropout_scale_mask``.
    """
    shape = _check_shape(shape)
    p = _check_p("p", p)
    seed, offset = _check_counter("seed", seed), _check_counter("offset", offset)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (a 0/1 mask scaled by 1 / (1 - p) is "
                        f"not an integer), got {dtype!r}")
    ones = torch.ones(shape, device=device, dtype=dtype)
    if p == 0.0:
        return ones
    return dropout(ones, p, seed, offset)


def residual_dropout_layernorm(x, residual, weight, bias, eps=1e-12, p=0.0, seed=0, offset=0):
    """``LayerNorm(residual + dropout(x))`` over the last dimension, in one pass over the rows.

    x: [..., E] (a sub-layer's output); residual: like x, or None for ``LayerNorm(dropout(x))``; weight,
    bias: [E]; eps: added to the variance (BERT: 1e-12). Dropout (``p`` > 0) is ``dropout(x, p, seed,
    offset)`` exactly (same mask, flat C-order index of x), so a model that calls this at a dropout site
    drops what ``minibert.reference`` drops. This is how each post-LN BERT sub-block ends:
    ``LayerNorm(h + dropout(dense(a)))``. Differentiable in x, residual, weight and bias (once).
    """
    _check_tensor("x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dimension (the one LayerNorm normalises), "
                         f"got shape {tuple(x.shape)}")
    named = [("weight", weight), ("bias", bias)] + ([] if residual is None else [("residual", residual)])
    for name, t in named:
        _check_tensor(name, t)
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"x and {name} must share dtype and device, got {x.dtype} on {x.device} and "
                             f"{name} {t.dtype} on {t.device}")
        _check_same_kind(name, t, "x", x)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.dim() != 1 or t.shape[0] != x.shape[-1]:
            raise ValueError(f"{name} must be 1-D with the size of x's last dimension ({x.shape[-1]}), "
                             f"got shape {tuple(t.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite real number >= 0, got {eps!r}")
    eps = float(eps)
    p = _check_p("p", p)
    seed, offset = _check_counter("seed", seed), _check_counter("offset", offset)
    if _supports(x) and x.shape[-1] <= MAX_LAYERNORM_COLS.get(x.device.type, x.shape[-1]):
        contiguous = None if residual is None else residual.contiguous()
        y, _, _ = torch.ops.minibert.residual_dropout_layernorm_forward(
            x.contiguous(), contiguous, weight.contiguous(), bias.contiguous(), eps, p, seed, offset)
        return y
    return eager.residual_dropout_layernorm(x, residual, weight, bias, eps, p, seed, offset)


def _check_labels(logits, labels, ignore_index) -> int:
    """logits [..., V] (V >= 1) and integer labels [...] on logits' device; returns ignore_index as an int."""
    _check_tensor("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last dimension (the classes), got shape {tuple(logits.shape)}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class indices (torch.long), got {labels.dtype}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels must have shape {tuple(logits.shape[:-1])} (logits' shape without the classes), "
                         f"got {tuple(labels.shape)}")
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device} but logits on {logits.device}")
    _check_same_kind("labels", labels, "logits", logits)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    return int(ignore_index)


def cross_entropy(logits, labels, ignore_index=-100):
    """Per-row cross-entropy ``logsumexp(logits[r]) - logits[r, labels[r]]``, without log_softmax in memory.

    logits: [..., V]; labels: [...] integer class indices in [0, V), or ``ignore_index`` (BERT's -100, a
    position that is not predicted) where the loss is 0 and so is the gradient. Returns the loss per row,
    shape ``labels.shape``, in logits' dtype (float32 for float16/bfloat16 logits): ``.sum()`` and
    ``.mean()`` are then the usual reductions. The kernel reads each row once forward and once backward,
    writing only the gradient (see csrc/cross_entropy_cpu.cpp). A label outside [0, V) that is not
    ``ignore_index`` raises on the CPU; on a GPU it gives a NaN loss (checking would cost a host sync).
    Differentiable in logits (once).
    """
    ignore_index = _check_labels(logits, labels, ignore_index)
    if not _supports(logits):
        if labels.device.type == "cpu" and _values_readable(labels) and labels.numel():
            # the kernel's check (csrc/bindings.cpp), so the eager path names the argument at fault too
            bad = (labels != ignore_index) & ((labels < 0) | (labels >= logits.shape[-1]))
            if bool(bad.any()):
                raise ValueError(f"labels hold {int(labels[bad][0])}, which is not a class index in "
                                 f"[0, {logits.shape[-1]}) nor ignore_index ({ignore_index})")
        return eager.cross_entropy(logits, labels, ignore_index)
    loss, _ = torch.ops.minibert.cross_entropy_forward(logits.reshape(-1, logits.shape[-1]),
                                                       labels.reshape(-1).long(), ignore_index)
    return loss.reshape(labels.shape)


def _row_losses(logits, labels, ignore_index):
    """(loss, lse) of the rows of logits [M, V]: the kernel where there is one, else the same in torch ops."""
    if _supports(logits):
        return torch.ops.minibert.cross_entropy_forward(logits, labels, ignore_index)
    lse = torch.logsumexp(logits.float(), dim=-1)
    return lse - logits.float().gather(1, labels[:, None]).squeeze(1), lse


def _row_losses_backward(grad_loss, logits, labels, lse, ignore_index):
    """d logits of _row_losses: (softmax - onehot) * grad_loss per row (every label a class here)."""
    if _supports(logits):
        return torch.ops.minibert.cross_entropy_backward(grad_loss.contiguous(), logits, labels, lse, ignore_index)
    d = torch.exp(logits.float() - lse[:, None])
    d[torch.arange(len(labels), device=d.device), labels] -= 1.0
    return (d * grad_loss[:, None]).to(logits.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """logits = x W^T + b, and the cross-entropy of the rows whose label is not ignore_index; the backward
    multiplies only those rows' gradient (every other row's is exactly zero). See linear_cross_entropy."""

    @staticmethod
    def forward(ctx, x, weight, bias, labels, ignore_index):
        logits = torch.nn.functional.linear(x, weight, bias)                      # [N, V]
        rows = (labels != ignore_index).nonzero().squeeze(1)                      # [M]: the predicted rows
        every = rows.numel() == labels.numel()  # e.g. masked_positions_only: then no row copies at all
        if every:
            picked, picked_labels = logits, labels
        else:
            picked, picked_labels = logits.index_select(0, rows), labels.index_select(0, rows)  # [M, V], [M]
        loss_rows, lse = _row_losses(picked, picked_labels, ignore_index)
        loss = loss_rows if every else loss_rows.new_zeros(labels.shape).index_copy_(0, rows, loss_rows)  # [N]
        ctx.save_for_backward(x, weight, rows, picked, picked_labels, lse)
        ctx.has_bias, ctx.ignore_index, ctx.every = bias is not None, ignore_index, every
        ctx.set_materialize_grads(False)  # grad_logits is None unless the caller differentiates the logits
        return logits, loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logits, grad_loss):
        x, weight, rows, picked, picked_labels, lse = ctx.saved_tensors
        if grad_loss is None:  # only the logits were differentiated: a plain linear layer's backward
            d_picked = None
        else:
            d_picked = _row_losses_backward(grad_loss if ctx.every else grad_loss.index_select(0, rows), picked,
                                            picked_labels, lse, ctx.ignore_index)  # [M, V]
        if grad_logits is not None:
            d = grad_logits if d_picked is None else grad_logits.index_add(0, rows, d_picked.to(grad_logits.dtype))
            rows, x_rows = None, x                                                # all N rows take part
        elif d_picked is not None:
            d, x_rows = d_picked, x if ctx.every else x.index_select(0, rows)
            rows = None if ctx.every else rows
        else:
            return None, None, None, None, None
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = d @ weight
            if rows is not None:  # the gradient of every ignored row is zero
                dx = x.new_zeros(x.shape).index_copy_(0, rows, dx)
        if ctx.needs_input_grad[1]:
            dweight = d.t() @ x_rows
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = d.sum(0)
        return dx, dweight, dbias, None, None


def linear_cross_entropy(x, weight, bias, labels, ignore_index=-100):
    """``(logits, loss)``: ``logits = x @ weight.T + bias`` and ``cross_entropy(logits, labels)`` per row.

    x: [N, E]; weight: [V, E]; bias: [V] or None; labels: [N], class indices or ``ignore_index``. Returns
    logits [N, V] and the loss per row [N] (0 at ignored rows), exactly as ``eager.linear_cross_entropy``.
    What differs is the backward, for the usual BERT batch where most rows are ignored (85% with 15%
    masking): an ignored row's gradient is exactly zero, so the cross-entropy kernel runs on the predicted
    rows only, and the two gradient matrix products of the projection (dx = d W, dW = d^T x) and the bias
    gradient take only those M rows, not all N: about 2/3 of the projection's multiply-adds skipped at
    15% masking, with no change in any number. The forward still computes every row's logits (they
    are returned). Gradients that reach the logits from elsewhere are added in, and then all N rows take
    part. Differentiable in x, weight and bias (once); the predicted rows are found with a nonzero(),
    a host sync on a GPU.
    """
    _check_tensor("x", x)
    _check_tensor("weight", weight)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [N, E] and weight [V, E] with the same E, got x {tuple(x.shape)} and weight "
                         f"{tuple(weight.shape)}")
    named = [("weight", weight)] + ([] if bias is None else [("bias", bias)])
    for name, t in named:
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"x and {name} must share dtype and device, got {x.dtype} on {x.device} and {name} "
                             f"{t.dtype} on {t.device}")
    if bias is not None:
        _check_tensor("bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (one class)")
    ignore_index = _check_labels(x.new_empty((x.shape[0], 1)), labels, ignore_index)
    return _LinearCrossEntropy.apply(x, weight, bias, labels.long(), ignore_index)


# ---------------------------------------------------------------------------------------------- autograd + fake
# Fake kernels give shapes and dtypes without computing (for torch.compile, FakeTensorMode and meta
# tensors); the autograd formulas call the backward ops. They are registered right below, at import, when
# the extension is loaded. The dispatcher sends a call to the fake kernel whenever ANY tensor argument is
# meta or fake, so a fake kernel must refuse what the real one refuses (a CPU q with a meta mask would
# otherwise "succeed" with an uninitialised CPU tensor): _native_* mirror csrc/bindings.cpp's checks,
# with its messages, as RuntimeError (what TORCH_CHECK raises).

def _native_check(ok: bool, *message) -> None:
    if not ok:
        raise RuntimeError("minibert: " + "".join(str(m) for m in message))


def _native_check_dtype(t, name):
    allowed = KERNEL_DTYPES.get(t.device.type)
    if allowed is None:  # meta tensors: no kernel to match, but the ops are for floating-point data
        _native_check(t.is_floating_point(), name, " has dtype ", t.dtype, "; the kernels take floating point")
    else:
        _native_check(t.dtype in allowed, name, " has dtype ", t.dtype, ", which the ", t.device.type,
                      " kernels do not support (use ", ", ".join(str(d) for d in allowed), ")")


def _native_check_same(a, b, name_a, name_b):
    _native_check(a.dtype == b.dtype, name_a, " and ", name_b, " must have the same dtype, got ", a.dtype,
                  " and ", b.dtype)
    _native_check(a.device == b.device, name_a, " and ", name_b, " must be on the same device, got ", a.device,
                  " and ", b.device)


def _native_check_p(name, p):
    _native_check(0.0 <= p < 1.0, name, " (the dropout probability) must be in [0, 1), got ", p)


def _native_check_attention(q, k, v, key_mask, dropout_p):
    _native_check_dtype(q, "q")
    _native_check_same(q, k, "q", "k")
    _native_check_same(q, v, "q", "v")
    _native_check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, "attention expects q, k, v of shape "
                  "[batch, heads, seq, head_dim], got ranks ", q.dim(), ", ", k.dim(), ", ", v.dim())
    _native_check(k.shape == v.shape, "k and v must have the same shape, got ", tuple(k.shape), " and ",
                  tuple(v.shape))
    _native_check(q.shape[0] == k.shape[0] and q.shape[1] == k.shape[1] and q.shape[3] == k.shape[3],
                  "q ", tuple(q.shape), " and k ", tuple(k.shape), " must agree in batch, heads and head_dim")
    _native_check(q.numel() > 0 and k.numel() > 0, "attention got an empty tensor (q ", tuple(q.shape), ", k ",
                  tuple(k.shape), "); every dimension must be at least 1")
    max_head_dim = MAX_HEAD_DIM.get(q.device.type)
    _native_check(max_head_dim is None or q.shape[3] <= max_head_dim, "head_dim ", q.shape[3],
                  " is not supported on ", q.device, " (at most ", max_head_dim, ")")
    _native_check_p("dropout_p", dropout_p)
    if key_mask is not None:
        _native_check(key_mask.dtype == torch.bool, "key_mask must be a bool tensor, got ", key_mask.dtype)
        _native_check(key_mask.device == q.device, "key_mask is on ", key_mask.device, " but q is on ", q.device)
        _native_check(tuple(key_mask.shape) == (q.shape[0], k.shape[2]), "key_mask must have shape [batch, "
                      "seq_k] = [", q.shape[0], ", ", k.shape[2], "], got ", tuple(key_mask.shape))


def _lse_dtype(q):
    return torch.float32 if q.device.type == "cuda" else torch.float64  # as lse_dtype in csrc/bindings.cpp


def _native_check_gelu(x, bias, grad, approximate):
    _native_check_dtype(x, "x")
    _native_check(approximate in _APPROXIMATE, "approximate must be 'none' (erf GELU) or 'tanh', got '",
                  approximate, "'")
    if bias is not None:
        _native_check_same(x, bias, "x", "bias")
        _native_check(bias.dim() == 1 and x.dim() >= 1 and x.shape[-1] == bias.shape[0], "bias must be 1-D "
                      "with the size of x's last dimension, got shape ", tuple(bias.shape))
    if grad is not None:
        _native_check_same(x, grad, "x", "grad")
        _native_check(grad.shape == x.shape, "grad ", tuple(grad.shape), " must have the shape of x ",
                      tuple(x.shape))


def _attention_forward_fake(q, k, v, key_mask, scale, dropout_p, seed, offset):
    _native_check_attention(q, k, v, key_mask, dropout_p)
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=_lse_dtype(q))  # out [B, H, S_q, D], lse [B, H, S_q]


def _attention_backward_fake(grad_out, q, k, v, out, lse, grad_lse, key_mask, scale, dropout_p, seed, offset):
    _native_check_attention(q, k, v, key_mask, dropout_p)
    _native_check_same(q, grad_out, "q", "grad_out")
    _native_check_same(q, out, "q", "out")
    _native_check(grad_out.shape == q.shape and out.shape == q.shape, "grad_out and out must have the shape "
                  "of q ", tuple(q.shape), ", got ", tuple(grad_out.shape), " and ", tuple(out.shape))
    for name, t in (("lse", lse), ("grad_lse", grad_lse)):
        _native_check(t is None or (t.dtype == _lse_dtype(q) and t.device == q.device
                                    and tuple(t.shape) == tuple(q.shape[:3])),
                      name, " must be the ", _lse_dtype(q), " [B, H, S_q] tensor returned by attention_forward")
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _gelu_forward_fake(x, approximate):
    _native_check_gelu(x, None, None, approximate)
    return x.new_empty(x.shape)


def _gelu_backward_fake(grad, x, approximate):
    _native_check_gelu(x, None, grad, approximate)
    return x.new_empty(x.shape)


def _bias_gelu_forward_fake(x, bias, approximate):
    _native_check_gelu(x, bias, None, approximate)
    return x.new_empty(x.shape)


def _bias_gelu_backward_fake(grad, x, bias, approximate):
    _native_check_gelu(x, bias, grad, approximate)
    return x.new_empty(x.shape), bias.new_empty(bias.shape)


def _dropout_fake(x, p, seed, offset):
    _native_check_dtype(x, "x")
    _native_check_p("p", p)
    return x.new_empty(x.shape)


def _stats_dtype(x):
    return torch.float32 if x.device.type == "cuda" else x.dtype  # as stats_dtype in csrc/bindings.cpp


def _native_check_layernorm(x, residual, weight, bias, eps, p):
    _native_check_dtype(x, "x")
    _native_check(x.dim() >= 1 and x.shape[-1] >= 1, "x must have a non-empty last dimension (the one "
                  "LayerNorm normalises), got shape ", tuple(x.shape))
    _native_check_same(x, weight, "x", "weight")
    _native_check_same(x, bias, "x", "bias")
    _native_check(weight.dim() == 1 and weight.shape[0] == x.shape[-1] and bias.shape == weight.shape,
                  "weight and bias must be 1-D with the size of x's last dimension (", x.shape[-1], "), got ",
                  tuple(weight.shape), " and ", tuple(bias.shape))
    _native_check(math.isfinite(eps) and eps >= 0.0, "eps must be a finite number >= 0, got ", eps)
    _native_check_p("p", p)
    if residual is not None:
        _native_check_same(x, residual, "x", "residual")
        _native_check(residual.shape == x.shape, "residual ", tuple(residual.shape), " must have the shape of x ",
                      tuple(x.shape))
    max_cols = MAX_LAYERNORM_COLS.get(x.device.type)
    _native_check(max_cols is None or x.shape[-1] <= max_cols, "x's last dimension ", x.shape[-1],
                  " is too large for the CUDA LayerNorm kernel (at most ", max_cols, ")")


def _layernorm_forward_fake(x, residual, weight, bias, eps, p, seed, offset):
    _native_check_layernorm(x, residual, weight, bias, eps, p)
    stats = x.new_empty(x.shape[:-1], dtype=_stats_dtype(x))
    return x.new_empty(x.shape), stats, stats.new_empty(stats.shape)


def _layernorm_backward_fake(grad, x, residual, weight, mean, rstd, p, seed, offset):
    _native_check_layernorm(x, residual, weight, weight, 0.0, p)
    _native_check_same(x, grad, "x", "grad")
    _native_check(grad.shape == x.shape, "grad ", tuple(grad.shape), " must have the shape of x ", tuple(x.shape))
    for name, t in (("mean", mean), ("rstd", rstd)):
        _native_check(t.dtype == _stats_dtype(x) and t.device == x.device and t.shape == x.shape[:-1],
                      name, " must be the ", _stats_dtype(x), " ", tuple(x.shape[:-1]), " tensor returned by "
                      "residual_dropout_layernorm_forward, got ", t.dtype, " ", tuple(t.shape), " on ", t.device)
    d_x = x.new_empty(x.shape if p > 0 else (0,))  # without dropout d_x would be d_sum: an empty tensor
    return x.new_empty(x.shape), d_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _native_check_cross_entropy(logits, labels):
    _native_check_dtype(logits, "logits")
    _native_check(logits.dim() == 2 and logits.shape[1] >= 1, "logits must have shape [rows, n_classes] with at "
                  "least one class, got ", tuple(logits.shape))
    _native_check(labels.dtype == torch.int64, "labels must be an int64 (torch.long) tensor, got ", labels.dtype)
    _native_check(labels.device == logits.device, "labels are on ", labels.device, " but logits on ", logits.device)
    _native_check(labels.dim() == 1 and labels.shape[0] == logits.shape[0], "labels must have shape [rows] = [",
                  logits.shape[0], "], got ", tuple(labels.shape))


def _cross_entropy_forward_fake(logits, labels, ignore_index):
    _native_check_cross_entropy(logits, labels)
    loss = logits.new_empty(logits.shape[:1], dtype=_stats_dtype(logits))
    return loss, loss.new_empty(loss.shape, dtype=_lse_dtype(logits))


def _cross_entropy_backward_fake(grad_loss, logits, labels, lse, ignore_index):
    _native_check_cross_entropy(logits, labels)
    for name, t, dtype in (("grad_loss", grad_loss, _stats_dtype(logits)), ("lse", lse, _lse_dtype(logits))):
        _native_check(t.dtype == dtype and t.device == logits.device and tuple(t.shape) == tuple(logits.shape[:1]),
                      name, " must be a ", dtype, " [", logits.shape[0], "] tensor on ", logits.device, " (lse: the "
                      "one cross_entropy_forward returned), got ", t.dtype, " ", tuple(t.shape), " on ", t.device)
    return logits.new_empty(logits.shape)


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


def _layernorm_setup(ctx, inputs, output):
    x, residual, weight, bias, eps, p, seed, offset = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, residual, weight, mean, rstd)
    ctx.args = (p, seed, offset)


def _layernorm_backward(ctx, grad_y, grad_mean, grad_rstd):
    # mean and rstd are saved statistics, not results anyone differentiates: their gradients are ignored.
    x, residual, weight, mean, rstd = ctx.saved_tensors
    d_sum, d_x, d_weight, d_bias = torch.ops.minibert.residual_dropout_layernorm_backward(
        grad_y.contiguous(), x, residual, weight, mean, rstd, *ctx.args)
    if ctx.args[0] == 0.0:  # no dropout: the gradient of x is the gradient of the sum (d_x is empty)
        d_x = d_sum
    return d_x, (None if residual is None else d_sum), d_weight, d_bias, None, None, None, None


def _cross_entropy_setup(ctx, inputs, output):
    logits, labels, ignore_index = inputs
    ctx.save_for_backward(logits, labels, output[1])
    ctx.ignore_index = ignore_index


def _cross_entropy_backward(ctx, grad_loss, grad_lse):
    # lse is the saved log-sum-exp (as attention's), returned for the backward, not for differentiating.
    logits, labels, lse = ctx.saved_tensors
    d_logits = torch.ops.minibert.cross_entropy_backward(grad_loss.contiguous(), logits, labels, lse,
                                                         ctx.ignore_index)
    return d_logits, None, None


def _no_double_backward(op: str, eager_choice: str):
    """An autograd formula for a backward op: raises, so that differentiating a gradient of ``op`` (double
    backward, e.g. a gradient penalty) fails clearly instead of silently giving zeros."""
    def backward(ctx, *grads):
        raise RuntimeError(f"double backward through minibert.ops.{op} is not supported; use {eager_choice}: "
                           "plain torch ops, which autograd differentiates again")
    return backward


if is_available():  # without the extension there are no torch.ops.minibert ops to register for
    for _name, _fake in (("attention_forward", _attention_forward_fake),
                         ("attention_backward", _attention_backward_fake),
                         ("gelu_forward", _gelu_forward_fake), ("gelu_backward", _gelu_backward_fake),
                         ("bias_gelu_forward", _bias_gelu_forward_fake),
                         ("bias_gelu_backward", _bias_gelu_backward_fake), ("dropout", _dropout_fake),
                         ("residual_dropout_layernorm_forward", _layernorm_forward_fake),
                         ("residual_dropout_layernorm_backward", _layernorm_backward_fake),
                         ("cross_entropy_forward", _cross_entropy_forward_fake),
                         ("cross_entropy_backward", _cross_entropy_backward_fake)):
        torch.library.register_fake(f"minibert::{_name}", _fake)
    torch.library.register_autograd("minibert::attention_forward", _attention_backward,
                                    setup_context=_attention_setup)
    torch.library.register_autograd("minibert::gelu_forward", _gelu_backward, setup_context=_gelu_setup)
    torch.library.register_autograd("minibert::bias_gelu_forward", _bias_gelu_backward,
                                    setup_context=_bias_gelu_setup)
    torch.library.register_autograd("minibert::dropout", _dropout_backward, setup_context=_dropout_setup)
    torch.library.register_autograd("minibert::residual_dropout_layernorm_forward", _layernorm_backward,
                                    setup_context=_layernorm_setup)
    # Dropout's backward is the dropout op itself (linear), so it differentiates again; the others do not.
    torch.library.register_autograd("minibert::attention_backward", _no_double_backward(
        "attention", "attn_implementation='eager' (minibert.ops.eager.attention)"))
    for _name in ("gelu_backward", "bias_gelu_backward"):
        torch.library.register_autograd(f"minibert::{_name}", _no_double_backward(
            _name.replace("_backward", ""), "gelu_implementation='eager' (minibert.ops.eager.gelu)"))
    torch.library.register_autograd("minibert::residual_dropout_layernorm_backward", _no_double_backward(
        "residual_dropout_layernorm", "layernorm_implementation='eager' (minibert.ops.eager.residual_dropout_layernorm)"))
    torch.library.register_autograd("minibert::cross_entropy_forward", _cross_entropy_backward,
                                    setup_context=_cross_entropy_setup)
    torch.library.register_autograd("minibert::cross_entropy_backward", _no_double_backward(
        "cross_entropy", "loss_implementation='eager' (minibert.ops.eager.cross_entropy)"))
