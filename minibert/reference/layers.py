"""The primitive layers of BERT in NumPy, each a forward and a hand-written backward.

Every layer follows the CS231n "layer with a cache" pattern:

    y, cache = layer_forward(x, params...)     # cache: whatever backward needs
    dx, dparams... = layer_backward(dy, cache)  # dy = dL/dy, same shape as y

A backward receives the gradient of the loss with respect to the layer's output and returns the gradient
with respect to each input and parameter (same shapes as they had in forward). Every function works in
float32 or float64: the output dtype is the input's. ``tests/reference`` checks every backward against
central differences in float64.

Shapes use B = batch, S = sequence, H = heads, D = head width, E = hidden width, V = vocabulary.
"""
from __future__ import annotations

import math

import numpy as np

from minibert import rng


def erf_elementwise(x: np.ndarray) -> np.ndarray:
    """erf of every element with ``math.erf`` (float64 result): exact, but a Python call per element."""
    return np.vectorize(math.erf, otypes=[np.float64])(x)


try:  # SciPy's vectorised erf is as exact and ~100x faster; NumPy itself has no erf
    from scipy.special import erf as _erf
except ImportError:  # SciPy is optional (not a minibert dependency)
    _erf = erf_elementwise

FLOAT_DTYPES = (np.float32, np.float64)


def _check_float(name: str, x: np.ndarray) -> None:
    """Raise a clear TypeError unless ``x`` is a float32/float64 NumPy array."""
    if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_DTYPES:
        kind = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"{name} must be a float32 or float64 numpy array, got {kind}")


# --- Linear ----------------------------------------------------------------------------------------
def linear_forward(x, weight, bias):
    """y = x W^T + b, with ``weight`` stored ``[out, in]`` as in PyTorch/HF.

    x: [..., in], weight: [out, in], bias: [out] -> y: [..., out].
    """
    # One 2-D matmul over all rows: NumPy runs a stacked (3-D @ 2-D) matmul as one small BLAS call per
    # leading index, several times slower.
    y = x.reshape(-1, x.shape[-1]) @ weight.T + bias  # [N, out]
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x, weight)


def linear_backward(dy, cache):
    """dx = dy W;  dW = sum over rows of dy^T x;  db = sum over rows of dy.

    Returns (dx [..., in], dweight [out, in], dbias [out]).
    """
    x, weight = cache
    dy2 = dy.reshape(-1, dy.shape[-1])  # [N, out]
    x2 = x.reshape(-1, x.shape[-1])  # [N, in]
    return (dy2 @ weight).reshape(x.shape), dy2.T @ x2, dy2.sum(axis=0)


# --- Embedding -------------------------------------------------------------------------------------
def embedding_forward(ids, table):
    """y = table[ids]: a row look-up. ids: int [...], table: [V, E] -> y: [..., E]."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"embedding ids must be integers, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"embedding ids must lie in [0, {table.shape[0]}), "
                         f"got values in [{ids.min()}, {ids.max()}]")
    return table[ids], (ids, table.shape)


def embedding_backward(dy, cache):
    """dtable[v] = sum of dy over every position whose id is v (a scatter-add); ids get no gradient."""
    ids, shape = cache
    dtable = np.zeros(shape, dtype=dy.dtype)
    # np.add.at, not dtable[ids] += dy: a repeated id must accumulate, not overwrite.
    np.add.at(dtable, ids.reshape(-1), dy.reshape(-1, shape[1]))
    return dtable


# --- LayerNorm -------------------------------------------------------------------------------------
def layernorm_forward(x, gamma, beta, eps):
    """y = gamma * xhat + beta, xhat = (x - mean) / sqrt(var + eps), statistics over the last dim.

    x: [..., E], gamma/beta: [E]. ``var`` is the biased (1/E) variance, as in BERT.
    """
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + x.dtype.type(eps))  # [..., 1]
    xhat = xc * rstd
    return gamma * xhat + beta, (xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    """With g = dy * gamma:  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))  (means over the last dim);
    dgamma = sum(dy * xhat);  dbeta = sum(dy)  (sums over every leading dim).
    """
    xhat, rstd, gamma = cache
    g = dy * gamma
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    lead = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


# --- GELU ------------------------------------------------------------------------------------------
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715  # Hendrycks & Gimpel (2016), eq. 2


def gelu_forward(x, approximate: str = "none"):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF (Hendrycks & Gimpel, 2016).

    ``approximate="none"``: Phi(x) = (1 + erf(x / sqrt 2)) / 2, exact; BERT's ``hidden_act="gelu"``.
    ``approximate="tanh"``: Phi(x) ~ (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3); ``gelu_new``.
    """
    _check_float("gelu input", x)
    t = x.dtype.type
    if approximate == "none":
        cdf = (t(0.5) * (1.0 + _erf(x / t(math.sqrt(2.0))))).astype(x.dtype)
        return x * cdf, (x, cdf, None, approximate)
    if approximate == "tanh":
        th = np.tanh(t(_SQRT_2_OVER_PI) * (x + t(_TANH_CUBIC) * x * x * x))
        return t(0.5) * x * (1.0 + th), (x, None, th, approximate)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(dy, cache):
    """Exact form: d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi).

    Tanh form: d/dx [x (1 + tanh u) / 2] = (1 + tanh u) / 2 + x (1 - tanh^2 u) u' / 2,
    u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    """
    x, cdf, th, approximate = cache
    t = x.dtype.type
    if approximate == "none":
        pdf = np.exp(t(-0.5) * x * x) * t(1.0 / math.sqrt(2.0 * math.pi))
        return dy * (cdf + x * pdf)
    du = t(_SQRT_2_OVER_PI) * (1.0 + t(3.0 * _TANH_CUBIC) * x * x)
    return dy * (t(0.5) * (1.0 + th) + t(0.5) * x * (1.0 - th * th) * du)


def bias_gelu_forward(x, bias, approximate: str = "none"):
    """y = GELU(x + bias), bias broadcast over the last dim: the intermediate layer's dense + activation
    as one op (what the fused kernel computes). x: [..., F], bias: [F]."""
    return gelu_forward(x + bias, approximate)  # the cache holds x + bias, all backward needs


def bias_gelu_backward(dy, cache):
    """dx = GELU'(x + b) * dy;  dbias = dx summed over every leading dim. Returns (dx, dbias)."""
    dx = gelu_backward(dy, cache)
    return dx, dx.reshape(-1, dx.shape[-1]).sum(axis=0)


# --- Softmax ---------------------------------------------------------------------------------------
def softmax_forward(x, axis: int = -1):
    """p = exp(x - max x) / sum exp(x - max x) along ``axis`` (subtracting the max avoids overflow)."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    p = e / e.sum(axis=axis, keepdims=True)
    return p, (p, axis)


def softmax_backward(dp, cache):
    """dx = p * (dp - sum(dp * p)) along ``axis`` (the Jacobian diag(p) - p p^T applied to dp)."""
    p, axis = cache
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))


# --- Dropout ---------------------------------------------------------------------------------------
def dropout_forward(x, p: float, seed: int, offset: int = 0):
    """Inverted dropout: y = x * keep / (1 - p), keep from the counter RNG of ``minibert.rng``.

    Element i (flat C-order index) uses counter ``offset + i`` under ``seed``, so any backend computes the
    same mask. The cache holds (p, seed, offset), not the mask: backward regenerates it.
    """
    _check_float("dropout input", x)
    rng.dropout_threshold(p)  # raises unless 0 <= p < 1
    cache = (p, seed, offset, x.shape, x.dtype)
    if p == 0.0:  # inference, or dropout switched off: the identity, with no mask to compute
        return x, cache
    return x * rng.dropout_scale_mask(x.shape, p, seed, offset, x.dtype.type), cache


def dropout_backward(dy, cache):
    """dx = dy * keep / (1 - p), with the same mask regenerated from (seed, offset)."""
    p, seed, offset, shape, dtype = cache
    if p == 0.0:
        return dy
    return dy * rng.dropout_scale_mask(shape, p, seed, offset, dtype.type)


# --- Scaled dot-product attention ------------------------------------------------------------------
def attention_forward(q, k, v, attention_mask=None, scale=None, dropout_p: float = 0.0, seed: int = 0,
                      offset: int = 0):
    """out = dropout(softmax(q k^T * scale + mask)) v, per batch and head (Vaswani et al., 2017, eq. 1).

    q: [B, H, S_q, D], k and v: [B, H, S_k, D] -> out: [B, H, S_q, D].
    attention_mask: [B, S_k] of 1 (attend) / 0 (padding key), or None. A padding key gets probability
    exactly 0. A query row whose keys are *all* padding has nothing to attend to: its probabilities, output
    and gradients are zeros (never NaN, never a uniform average of padding).
    scale: defaults to D ** -0.5. Dropout acts on the probabilities; element (b, h, i, j) uses counter
    ``offset + ((b * H + h) * S_q + i) * S_k + j`` under ``seed`` (the flat index of [B, H, S_q, S_k]).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float(f"attention {name}", t)
        if t.ndim != 4:
            raise ValueError(f"attention {name} must be [B, H, S, D], got shape {t.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, S_q, D = q.shape
    S_k = k.shape[2]
    if k.shape != (B, H, S_k, D) or v.shape != k.shape:
        raise ValueError(f"k and v must be [B, H, S_k, D] = [{B}, {H}, S_k, {D}] like q; "
                         f"got k {k.shape}, v {v.shape}")
    scale = q.dtype.type(D ** -0.5 if scale is None else scale)

    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # [B, H, S_q, S_k]
    if attention_mask is None:
        keep = np.ones((B, 1, 1, S_k), dtype=bool)
    else:
        attention_mask = np.asarray(attention_mask)
        if attention_mask.shape != (B, S_k):
            raise ValueError(f"attention_mask must be [B, S_k] = [{B}, {S_k}] of 1 keep / 0 pad, "
                             f"got shape {attention_mask.shape}")
        keep = (attention_mask != 0)[:, None, None, :]  # [B, 1, 1, S_k]
    # A masked softmax: padding scores become -inf, so exp() gives exactly 0 for them. A fully padded row
    # has max -inf; using 0 instead keeps exp(-inf - 0) = 0 and avoids -inf - -inf = NaN.
    scores = np.where(keep, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0).astype(q.dtype)
    e = np.exp(scores - row_max)
    denom = e.sum(axis=-1, keepdims=True)
    probs = e / np.where(denom > 0, denom, 1.0).astype(q.dtype)  # fully padded rows stay 0

    if dropout_p > 0.0:
        dropped = probs * rng.dropout_scale_mask(probs.shape, dropout_p, seed, offset, q.dtype.type)
    else:
        rng.dropout_threshold(dropout_p)  # validates p
        dropped = probs
    out = dropped @ v  # [B, H, S_q, D]
    return out, (q, k, v, probs, dropped, scale, dropout_p, seed, offset)


def attention_backward(dout, cache):
    """Gradients of attention_forward. With P the probabilities, M the dropout scale mask, P' = P * M:

    dv = P'^T dout;  dP = (dout v^T) * M;  dS = P * (dP - rowsum(dP * P))  (softmax backward);
    dq = dS k * scale;  dk = dS^T q * scale.  Padding keys and fully padded rows get dS = 0 since P = 0.
    Returns (dq, dk, dv), shaped like q, k, v.
    """
    q, k, v, probs, dropped, scale, p, seed, offset = cache
    dv = dropped.transpose(0, 1, 3, 2) @ dout  # [B, H, S_k, D]
    dprobs = dout @ v.transpose(0, 1, 3, 2)  # [B, H, S_q, S_k]
    if p > 0.0:
        dprobs = dprobs * rng.dropout_scale_mask(probs.shape, p, seed, offset, q.dtype.type)
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    dq = (dscores @ k) * scale
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale
    return dq, dk, dv
