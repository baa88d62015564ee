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
"""
from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
RANDOM_BITS = 24
_U64 = (1 << 64) - 1


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
