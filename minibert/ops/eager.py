"""The plain-PyTorch forms of minibert's ops: what runs where the compiled kernels do not.

``minibert.ops`` falls back to these for a device or dtype the extension has no kernel for (or when it is
absent), and ``minibert.modeling``'s "eager" backends are these same functions, so the textbook form of
attention, of the padding mask and of hash dropout is written once. They hold every intermediate in
memory (attention keeps the whole ``[B, H, S_q, S_k]`` probability tensor), which is exactly what the
fused kernels avoid.

Shapes: B batch, H heads, S_q / S_k query / key sequence length, D head size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minibert import rng

_U64 = (1 << 64) - 1


def to_int64(n: int) -> int:
    """``n`` modulo 2**64 (as ``minibert.rng`` takes seeds, offsets and constants), as the int64 with the same
    bits: torch has no uint64 arithmetic, and the op schemas carry seeds as signed 64-bit ints."""
    n = int(n) & _U64
    return n - (1 << 64) if n >= (1 << 63) else n


def _shift_right_logical(z: torch.Tensor, s: int) -> torch.Tensor:
    """``z >> s`` on the 64 bits as unsigned: torch's >> is arithmetic, so mask off the copied sign bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def hash_bits(seed: int, offset: int, n: int, device) -> torch.Tensor:
    """``minibert.rng.random_bits(seed, offset, arange(n))`` in int64 torch ops (wrapping multiply and add)."""
    base = int(seed) * rng.GOLDEN + int(offset) + rng.GOLDEN
    z = torch.arange(n, dtype=torch.int64, device=device) + to_int64(base)
    z = (z ^ _shift_right_logical(z, 30)) * to_int64(rng.MIX1)
    z = (z ^ _shift_right_logical(z, 27)) * to_int64(rng.MIX2)
    z = z ^ _shift_right_logical(z, 31)
    return _shift_right_logical(z, 64 - rng.RANDOM_BITS)


def dropout_scale_mask(shape, p: float, seed: int, offset: int, device, dtype) -> torch.Tensor:
    """``keep / (1 - p)`` of ``shape`` with keep from the counter hash (flat C-order index); ``0 < p < 1``."""
    keep = hash_bits(seed, offset, int(torch.Size(shape).numel()), device) >= rng.dropout_threshold(p)
    return keep.reshape(shape).to(dtype) * (1.0 / (1.0 - p))


def dropout(x: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """Inverted hash dropout ``x * keep / (1 - p)``, the mask regenerated from (seed, offset)."""
    if p == 0.0:
        return x
    return x * dropout_scale_mask(x.shape, p, seed, offset, x.device, x.dtype)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU, erf form (``"none"``) or tanh approximation (``"tanh"``)."""
    return F.gelu(x, approximate=approximate)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(x + bias)``, with ``x + bias`` written to memory (what the fused kernel avoids)."""
    return F.gelu(x + bias, approximate=approximate)


def residual_dropout_layernorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                               bias: torch.Tensor, eps: float, p: float = 0.0, seed: int = 0,
                               offset: int = 0, dropout=dropout) -> torch.Tensor:
    """``LayerNorm(residual + dropout(x))`` over the last dimension (``residual`` None: ``LayerNorm(dropout(x))``),
    as three ops that each write their result: the dropped x, the sum, the normalised output."""
    h = dropout(x, p, seed, offset)
    if residual is not None:
        h = h + residual
    if h.dtype in (torch.float16, torch.bfloat16):
        # Normalise in float32, as the CUDA kernel does: torch's half-precision CPU layer_norm loses the
        # row's spread (a 1-column row, whose normalised value is exactly 0, came out as +-0.3 with eps 1e-12).
        return F.layer_norm(h.float(), (h.shape[-1],), weight.float(), bias.float(), eps).to(h.dtype)
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Per-row cross-entropy ``logsumexp(logits[r]) - logits[r, labels[r]]`` (0 where the label is
    ``ignore_index``) of ``logits [..., V]``, in torch ops that each write a tensor of the logits' size.
    float16 and bfloat16 logits are computed in float32 and give a float32 loss, as the CUDA kernel does.

    The row maximum is subtracted first (so large logits keep their digits), where it is finite: a +inf
    logit then gives what float64 gives (loss inf at other labels, gradient 0 at the finite logits) where
    ``F.cross_entropy`` returns NaN for the whole row."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    top = logits.detach().amax(dim=-1, keepdim=True) if logits.shape[-1] else logits.sum(-1, keepdim=True)
    shifted = logits - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    ignored = labels == ignore_index
    picked = shifted.gather(-1, labels.masked_fill(ignored, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(ignored, torch.zeros_like(picked), torch.logsumexp(shifted, dim=-1) - picked)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                         ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, loss)``: ``logits = x @ weight.T + bias`` and its per-row ``cross_entropy``, as two ops."""
    logits = F.linear(x, weight, bias)
    return logits, cross_entropy(logits, labels, ignore_index)


class AttentionMask:
    """The key-padding mask of a batch in the forms eager attention needs, made once and reused.

    Built from a ``[B, S_k]`` mask of 1 (real token) / 0 (padding), any dtype. A model builds one per
    forward pass and every layer shares it: eager attention reads ``key_keep``, the SDPA path
    ``additive`` (cached per dtype) and ``has_keys``.
    """

    def __init__(self, attention_mask: torch.Tensor):
        self.key_keep = attention_mask != 0                # [B, S_k] bool
        keep = self.key_keep[:, None, None, :]             # [B, 1, 1, S_k]: broadcasts over H and S_q
        self.has_keys = keep.any(dim=-1, keepdim=True)    # [B, 1, 1, 1]: False = all padding
        self._additive: dict[torch.dtype, torch.Tensor] = {}

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, 1, S_k]: 0 for a real key, the most negative finite ``dtype`` number for a padding key.

        Finite rather than -inf: a row whose keys are all padding then gets a finite (uniform) softmax
        instead of 0/0 = NaN, and the SDPA path zeroes that row with ``has_keys``. exp(min - max) underflows
        to exactly 0, so a padding key contributes nothing to a row that has a real key.
        """
        if dtype not in self._additive:
            keep = self.key_keep[:, None, None, :]
            zeros = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
            self._additive[dtype] = zeros.masked_fill(~keep, torch.finfo(dtype).min)
        return self._additive[dtype]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask | None, scale: float,
              dropout_p: float = 0.0, seed: int = 0, offset: int = 0, dropout=dropout) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v in plain tensor ops (the textbook form); q: [B, H, S_q, D],
    k, v: [B, H, S_k, D] -> [B, H, S_q, D].

    A query row with no usable key (all its keys padding, no keys at all, or every score -inf from an
    inf in q or k) returns zeros and zero gradients. With ``dropout_p > 0`` the probabilities are
    dropped by ``dropout(probs, dropout_p, seed, offset)``: element (b, h, i, j) has the flat index
    ``((b*H + h)*S_q + i)*S_k + j``, the rng contract. ``minibert.ops.dropout`` may be passed to use the
    dropout kernel where there is one; the default is this module's pure-torch ``dropout``.
    """
    # The scores are edited in place (masked_fill_): autograd allows it, as neither the product nor the
    # fills need these values for their backward, and it keeps one [B, H, S_q, S_k] tensor, not three.
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale                    # [B, H, S_q, S_k]
    if mask is not None:
        # Replace the scores of padding keys (rather than add ``mask.additive``): a NaN or inf score of a
        # padding key, from a NaN or inf in its k, must not leak into the row (NaN + min is NaN).
        scores.masked_fill_(~mask.key_keep[:, None, None, :], -math.inf)
    if scores.shape[-1] == 0:  # no keys at all (S_k = 0): the product below gives zeros
        return torch.matmul(scores, v)
    # A row whose largest score is infinite would make softmax compute inf - inf = NaN, in the backward
    # too. Its scores are replaced by their limit: 0 at the keys that equal the maximum, -inf elsewhere.
    # A maximum of -inf means no key to attend to (all padding, or an inf in q or k): the row's output
    # (smaller than its probabilities) is then set to zeros, which also stops its gradient. One of +inf
    # puts all the weight on the +inf keys, and every other key gets exactly 0 (and its v a zero gradient).
    top = scores.detach().amax(dim=-1, keepdim=True)                          # [B, H, S_q, 1]
    infinite_top = top.isinf()
    scores.masked_fill_(infinite_top & (scores != top), -math.inf)
    scores.masked_fill_(infinite_top & (scores == top), 0.0)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = dropout(probs, dropout_p, seed, offset)
    return torch.matmul(probs, v).masked_fill(top == -math.inf, 0.0)
