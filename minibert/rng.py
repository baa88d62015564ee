"""Counter-based random numbers for dropout, identical in NumPy, C++ and CUDA.

A dropout mask is not drawn from a stateful generator but computed: element ``i`` of a dropout call with
seed ``seed`` and offset ``offset`` is kept when ``hash(seed, offset + i)`` clears a threshold. Because the
hash is a pure function of three integers,

* the NumPy reference, the C++ kernel and the CUDA kernel produce the same mask bit for bit, so the
  backends can be compared with dropout on;
* a backward pass regenerates the mask from (seed, offset) instead of storing it, which is what lets the
  fused attention kernel keep no [S, S] tensor;
* every element is independent of every other, so any thread can compute any element in any order.

The hash is SplitMix64's finaliser (Steele, Lea & Flood, 2014), a well-tested 64-bit bijective mixer, on
the counter ``seed * GOLDEN + (offset + i)`` (all arithmetic modulo 2**64):

    z = seed * 0x9E3779B97F4A7C15 + offset + i + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z =  z ^ (z >> 31)
    r = z >> 40                                  # 24 random bits, 0 <= r < 2**24
    keep  <=>  r >= threshold,  threshold = floor(p * 2**24)   (computed in float64 on the host)

The comparison is on integers, so no backend's float rounding can flip a bit. A kept element is scaled by
``1 / (1 - p)`` (inverted dropout, so inference needs no rescaling).

Element index conventions (the contract every backend honours):
* elementwise dropout on a tensor: ``i`` is the flat C-order index of the element;
* attention-probability dropout on ``[B, H, S_q, S_k]``: ``i = ((b * H + h) * S_q + q) * S_k + k``.

Dropout sites
-------------
A training forward pass uses one ``dropout_seed``; each place that drops (a *site*) gets its own counter
range, starting at ``dropout_site_offset(layer, site, numel)``, so no two sites share a counter and every
backend that uses this table (the NumPy reference and the torch model do) drops the same elements::

    layer                 site                     tensor dropped
    --------------------  -----------------------  ------------------------------------------------------
    EMBEDDINGS_LAYER      SITE_EMBEDDINGS          embedding LayerNorm output [B, S, E]
    encoder layer l       SITE_ATTENTION_PROBS     attention probabilities [B, H, S, S]
    encoder layer l       SITE_ATTENTION_OUTPUT    attention output dense, before the residual [B, S, E]
    encoder layer l       SITE_FFN_OUTPUT          feed-forward output dense, before the residual [B, S, E]
    L (number of layers)  SITE_CLASSIFIER          pooled vector before a classifier head [B, E]
"""
from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
RANDOM_BITS = 24
_U64 = (1 << 64) - 1

# The dropout-site table (see the module docstring).
EMBEDDINGS_LAYER = -1  # the embeddings' dropout counts as "layer -1"
SITE_EMBEDDINGS = 0  # (layer -1) after the embedding LayerNorm
SITE_ATTENTION_PROBS = 0  # (layer l) on the attention probabilities
SITE_ATTENTION_OUTPUT = 1  # (layer l) after the attention output dense
SITE_FFN_OUTPUT = 2  # (layer l) after the feed-forward output dense
SITE_CLASSIFIER = 0  # (layer L, one past the last encoder layer) on the pooled vector of a classifier
SITES_PER_LAYER = 3
SITE_STRIDE = 1 << 40  # counters per site: ~1.1e12 elements, far more than any activation holds


def dropout_threshold(p: float) -> int:
    """The integer threshold for drop probability ``p``: element kept iff its 24 random bits >= this."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    return int(np.floor(float(p) * (1 << RANDOM_BITS)))


def random_bits(seed: int, offset: int, index: np.ndarray) -> np.ndarray:
    """24-bit hash values (uint64 array shaped like ``index``) for counters ``offset + index``."""
    seed = int(seed) & _U64
    offset = int(offset) & _U64
    base = np.uint64((seed * GOLDEN + offset + GOLDEN) & _U64)
    z = np.asarray(index, dtype=np.uint64) + base  # uint64 arrays wrap silently, as C does
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(64 - RANDOM_BITS)


def keep_mask(shape, p: float, seed: int, offset: int = 0) -> np.ndarray:
    """Boolean mask of kept elements for a dropout call on a C-order tensor of ``shape``."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = random_bits(seed, offset, np.arange(n, dtype=np.uint64))
    return (bits >= np.uint64(dropout_threshold(p))).reshape(shape)


def dropout_scale_mask(shape, p: float, seed: int, offset: int = 0, dtype=np.float64) -> np.ndarray:
    """``keep_mask / (1 - p)`` as ``dtype``: multiply activations by it to apply inverted dropout."""
    if p == 0.0:
        return np.ones(shape, dtype=dtype)
    return keep_mask(shape, p, seed, offset).astype(dtype) * dtype(1.0 / (1.0 - p))


def dropout_site_offset(layer: int, site: int, numel: int) -> int:
    """The RNG offset of a dropout site: ``((layer + 1) * SITES_PER_LAYER + site) * 2**40``.

    ``layer`` is ``EMBEDDINGS_LAYER`` (-1) for the embeddings, the encoder layer index 0..L-1, or L for the
    classifier; ``site`` is one of the ``SITE_*`` constants. Every site owns the disjoint counter range
    [offset, offset + 2**40); ``numel`` (the element count of the tensor dropped) is checked to fit it.
    Element i of the site's tensor (flat C-order index; [B, H, S_q, S_k] for attention probabilities)
    uses counter ``offset + i`` under the step's ``dropout_seed``.
    """
    if layer < EMBEDDINGS_LAYER or not 0 <= site < SITES_PER_LAYER or (
            layer == EMBEDDINGS_LAYER and site != SITE_EMBEDDINGS):
        raise ValueError(f"no dropout site (layer={layer}, site={site}): layer is -1 (embeddings, site 0) "
                         f"or an encoder layer >= 0 with site 0, 1 or 2")
    if not 0 <= numel <= SITE_STRIDE:
        raise ValueError(f"a dropout site holds at most 2**40 elements, got {numel}")
    return ((layer + 1) * SITES_PER_LAYER + site) * SITE_STRIDE
