"""The Python face of minibert's C++/CUDA extension: fused attention, (bias+)GELU and hash dropout.

Every function here computes the same thing two ways and picks one per call:

* **fused**: the ops of ``minibert._C`` (``torch.ops.minibert.*``, kernels in ``csrc/``), with autograd
  and fake-tensor support registered below;
* **eager**: plain PyTorch ops, used where the extension is absent, or for a device/dtype it has no
  kernel for (CPU kernels: float32/float64; CUDA kernels: float32/float16/bfloat16).

Finding the extension, in order: the compiled ``minibert._C`` (``pip install --no-build-isolation -e .``);
else a JIT build of ``csrc/`` with ``torch.utils.cpp_extension.load`` into a cache directory
(``$MINIBERT_EXT_CACHE``, default ``~/.cache/minibert/``); else eager, with ONE warning saying why.
``MINIBERT_NO_EXT=1`` skips the extension on purpose (no warning). ``backend_info()`` reports the choice.

Example::

    >>> from minibert import ops
    >>> q = k = v = torch.randn(2, 12, 128, 64)                 # [B, H, S, D]
    >>> out = ops.attention(q, k, v, attention_mask=torch.ones(2, 128))
    >>> out.shape
    torch.Size([2, 12, 128, 64])
"""
from __future__ import annotations

import glob
import os
import sys
import threading
import warnings

import torch
import torch.nn.functional as F

from minibert import rng

__all__ = ["attention", "gelu", "bias_gelu", "dropout", "dropout_scale_mask", "is_available", "backend_info",
           "ExtensionFallbackWarning"]

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
_KERNEL_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float16, torch.bfloat16)}
_MAX_HEAD_DIM = {"cpu": 256, "cuda": 128}  # csrc: kCpuMaxHeadDim, kCudaMaxHeadDim
_APPROXIMATE = ("none", "tanh")
_U64 = (1 << 64) - 1


class ExtensionFallbackWarning(UserWarning):
    """Warned once when minibert's compiled ops are unavailable and eager PyTorch ops are used instead."""


# ---------------------------------------------------------------------------------------------- loading

_lock = threading.Lock()
_state: dict | None = None  # filled once by _load(): module, how, reason, path


def _jit_build():
    """Compile csrc/ with torch's JIT extension loader (ninja) and import it; returns the module."""
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join(_CSRC, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(_CSRC, "*.cu")))
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    flavour = f"cu{torch.version.cuda}" if with_cuda else "cpu"
    cache = os.environ.get("MINIBERT_EXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minibert")
    build_dir = os.path.join(cache, f"ext-torch{torch.__version__}-{flavour}")
    os.makedirs(build_dir, exist_ok=True)
    print(f"minibert: compiling the C++{'/CUDA' if with_cuda else ''} extension into {build_dir} "
          "(first use only; a minute or two)...", file=sys.stderr)
    # No -std flag: torch adds the standard its own headers need.
    cflags = ["-O3", "-fopenmp"] + (["-DMINIBERT_WITH_CUDA=1"] if with_cuda else [])
    return cpp_extension.load(
        name="minibert_C", sources=sources + (cuda_sources if with_cuda else []), extra_include_paths=[_CSRC],
        extra_cflags=cflags, extra_cuda_cflags=["-O3", "--use_fast_math"],
        extra_ldflags=["-fopenmp"], build_directory=build_dir, with_cuda=with_cuda, verbose=False)


def _find_extension() -> dict:
    if os.environ.get("MINIBERT_NO_EXT", "0") == "1":
        return {"module": None, "how": "eager", "reason": "disabled by MINIBERT_NO_EXT=1", "path": None}
    try:
        from minibert import _C
        return {"module": _C, "how": "prebuilt", "reason": "compiled minibert._C found", "path": _C.__file__}
    except (ImportError, OSError) as e:
        prebuilt_error = f"{type(e).__name__}: {e}"
    try:
        module = _jit_build()
        return {"module": module, "how": "jit", "path": module.__file__,
                "reason": f"no usable compiled minibert._C ({prebuilt_error}); JIT-built from csrc/"}
    except Exception as e:  # any build failure (no compiler, no ninja, compile error) means: eager
        reason = (f"no usable compiled minibert._C ({prebuilt_error}) and the JIT build failed "
                  f"({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''})")
        warnings.warn(f"minibert: using PyTorch eager ops instead of the fused kernels: {reason}. "
                      "Build them with `pip install --no-build-isolation -e .`, or set MINIBERT_NO_EXT=1 "
                      "to choose eager on purpose.", ExtensionFallbackWarning, stacklevel=3)
        return {"module": None, "how": "eager", "reason": reason, "path": None}


def _load() -> dict:
    """Find the extension once per process and register autograd + fake kernels for its ops."""
    global _state
    with _lock:
        if _state is None:
            state = _find_extension()
            if state["module"] is not None:
                _register_python_parts()
            _state = state
    return _state


def _supports(t: torch.Tensor) -> bool:
    """True when the loaded extension has a kernel for this tensor's device and dtype."""
    module = _load()["module"]
    if module is None or t.device.type not in _KERNEL_DTYPES:
        return False
    if t.device.type == "cuda" and not getattr(module, "with_cuda", False):
        return False
    return t.dtype in _KERNEL_DTYPES[t.device.type]


def is_available() -> bool:
    """True when the compiled (or JIT-built) extension is loaded, so ``fused`` means the C++/CUDA kernels."""
    return _load()["module"] is not None


def backend_info() -> dict:
    """What runs where, and why: the backend of each op on each device, the extension path and the reason.

    Keys: ``backend`` ("extension" or "eager"), ``how`` ("prebuilt", "jit" or "eager"), ``reason``,
    ``extension_path``, ``cuda_kernels`` (built with CUDA), ``kernel_dtypes`` (device -> dtypes with
    a fused kernel), and ``ops``: op name -> {device -> "fused" or "eager"} (for float32 inputs).
    """
    state = _load()
    module = state["module"]
    cuda_kernels = bool(module is not None and getattr(module, "with_cuda", False))
    devices = {"cpu": module is not None, "cuda": cuda_kernels}
    kernel_dtypes = {dev: [str(dt).replace("torch.", "") for dt in dts] if devices[dev] else []
                     for dev, dts in _KERNEL_DTYPES.items()}
    per_device = {dev: "fused" if ok else "eager" for dev, ok in devices.items()}
    return {
        "backend": "extension" if module is not None else "eager",
        "how": state["how"],
        "reason": state["reason"],
        "extension_path": state["path"],
        "cuda_kernels": cuda_kernels,
        "cuda_device_present": torch.cuda.is_available(),
        "kernel_dtypes": kernel_dtypes,
        "ops": {name: dict(per_device) for name in ("attention", "gelu", "bias_gelu", "dropout")},
    }


# ---------------------------------------------------------------------------------------------- validation

def _as_int64(n: int) -> int:
    """A seed/offset taken modulo 2**64 (as rng.py does), as the signed int64 the op schema carries."""
    n = int(n) & _U64
    return n - (1 << 64) if n >= (1 << 63) else n


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
    key_mask = None if attention_mask is None else attention_mask != 0
    if _supports(q):
        if q.shape[-1] > _MAX_HEAD_DIM[q.device.type]:
            raise ValueError(f"head_dim {q.shape[-1]} is not supported by the fused kernel on {q.device.type} "
                             f"(at most {_MAX_HEAD_DIM[q.device.type]}); use the eager attention path")
        out, _ = torch.ops.minibert.attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), key_mask,
                                                      scale, dropout_p, _as_int64(seed), _as_int64(offset))
        return out
    return _attention_eager(q, k, v, key_mask, scale, dropout_p, seed, offset)


def gelu(x, approximate="none"):
    """GELU, ``x * Phi(x)`` (erf form, BERT's "gelu") or its tanh approximation (``approximate="tanh"``)."""
    _check_tensor("x", x)
    _check_approximate(approximate)
    if _supports(x):
        return torch.ops.minibert.gelu_forward(x.contiguous(), approximate)
    return F.gelu(x, approximate=approximate)


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
    return F.gelu(x + bias, approximate=approximate)


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
        return torch.ops.minibert.dropout(x.contiguous(), p, _as_int64(seed), _as_int64(offset))
    return x * dropout_scale_mask(x.shape, p, seed, offset, x.device, x.dtype)


def dropout_scale_mask(shape, p, seed, offset=0, device="cpu", dtype=torch.float32):
    """The tensor ``keep / (1 - p)`` of ``shape`` (flat C-order element index), for the eager attention path.

    Multiply probabilities or activations by it to apply exactly the dropout of ``dropout``/``attention``.
    """
    p = _check_p(p)
    shape = tuple(int(s) for s in shape)
    ones = torch.ones(shape, device=device, dtype=dtype)
    if p == 0.0:
        return ones
    if _supports(ones):
        return torch.ops.minibert.dropout(ones, p, _as_int64(seed), _as_int64(offset))
    keep = _hash_bits_torch(seed, offset, ones.numel(), ones.device) >= rng.dropout_threshold(p)
    return keep.reshape(shape).to(dtype) * (1.0 / (1.0 - p))


# ---------------------------------------------------------------------------------------------- eager paths

def _attention_eager(q, k, v, key_mask, scale, dropout_p, seed, offset):
    """The same attention with plain torch ops (it holds the whole [B, H, S_q, S_k] probability tensor)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # [B, H, S_q, S_k]
    if key_mask is not None:
        # The dtype's most negative finite number, not -inf: a row of all padding then stays finite
        # (uniform) instead of NaN, and the multiplication below zeroes it and its gradient.
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if key_mask is not None:
        probs = probs * key_mask.any(dim=-1).to(probs.dtype)[:, None, None, None]
    if dropout_p > 0.0:
        probs = probs * dropout_scale_mask(probs.shape, dropout_p, seed, offset, probs.device, probs.dtype)
    return torch.matmul(probs, v)


def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return c - (1 << 64) if c >= (1 << 63) else c


def _shift_right_logical(z: torch.Tensor, s: int) -> torch.Tensor:
    """``z >> s`` on the 64 bits as unsigned: torch's >> is arithmetic, so mask off the copied sign bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _hash_bits_torch(seed: int, offset: int, n: int, device) -> torch.Tensor:
    """``minibert.rng.random_bits(seed, offset, arange(n))`` in int64 torch ops (wrapping multiply and add)."""
    base = (int(seed) * rng.GOLDEN + int(offset) + rng.GOLDEN) & _U64
    z = torch.arange(n, dtype=torch.int64, device=device) + _signed(base)
    z = (z ^ _shift_right_logical(z, 30)) * _signed(rng.MIX1)
    z = (z ^ _shift_right_logical(z, 27)) * _signed(rng.MIX2)
    z = z ^ _shift_right_logical(z, 31)
    return _shift_right_logical(z, 64 - rng.RANDOM_BITS)


# ---------------------------------------------------------------------------------------------- autograd + fake

def _register_python_parts() -> None:
    """Autograd formulas and fake (shape-only) kernels for the C++ ops; run once, after they are loaded."""
    lib = torch.library

    @lib.register_fake("minibert::attention_forward")
    def _(q, k, v, key_mask, scale, dropout_p, seed, offset):
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype)

    @lib.register_fake("minibert::attention_backward")
    def _(grad_out, q, k, v, out, lse, grad_lse, key_mask, scale, dropout_p, seed, offset):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def attention_setup(ctx, inputs, output):
        q, k, v, key_mask, scale, dropout_p, seed, offset = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.key_mask = key_mask
        ctx.args = (scale, dropout_p, seed, offset)

    def attention_backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.minibert.attention_backward(grad_out.contiguous(), q, k, v, out, lse, grad_lse,
                                                           ctx.key_mask, *ctx.args)
        return dq, dk, dv, None, None, None, None, None

    lib.register_autograd("minibert::attention_forward", attention_backward, setup_context=attention_setup)

    for name in ("gelu_forward", "gelu_backward", "bias_gelu_forward", "dropout"):
        lib.register_fake(f"minibert::{name}")(lambda x, *args: x.new_empty(x.shape))

    @lib.register_fake("minibert::bias_gelu_backward")
    def _(grad, x, bias, approximate):
        return x.new_empty(x.shape), bias.new_empty(bias.shape)

    def gelu_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.approximate = inputs[1]

    def gelu_backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.minibert.gelu_backward(grad.contiguous(), x, ctx.approximate), None

    lib.register_autograd("minibert::gelu_forward", gelu_backward, setup_context=gelu_setup)

    def bias_gelu_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.approximate = inputs[2]

    def bias_gelu_backward(ctx, grad):
        x, bias = ctx.saved_tensors
        dx, dbias = torch.ops.minibert.bias_gelu_backward(grad.contiguous(), x, bias, ctx.approximate)
        return dx, dbias, None

    lib.register_autograd("minibert::bias_gelu_forward", bias_gelu_backward, setup_context=bias_gelu_setup)

    def dropout_setup(ctx, inputs, output):
        ctx.args = inputs[1:]

    def dropout_backward(ctx, grad):
        # Dropout is linear in x: its backward is the same mask and scale applied to the gradient.
        return torch.ops.minibert.dropout(grad.contiguous(), *ctx.args), None, None, None

    lib.register_autograd("minibert::dropout", dropout_backward, setup_context=dropout_setup)


if __name__ == "__main__":  # `python -m minibert.ops`: show which backend is active and why
    import json

    print(json.dumps(backend_info(), indent=2))
