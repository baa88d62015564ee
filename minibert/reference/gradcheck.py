"""A central-difference gradient checker for hand-written backward passes.

For a scalar loss L(x) and a coordinate x_i, the central difference

    (L(x + h e_i) - L(x - h e_i)) / (2 h)  =  dL/dx_i + O(h^2)

needs only forward passes, so it is an independent check of a backward. In float64 with h = 1e-6 the
truncation error (h^2 ~ 1e-12) and rounding error (eps / h ~ 1e-10) are both far below the 1e-6
relative error a correct backward reaches, while a wrong formula is off by O(1).

Usage: write ``loss()`` reading the arrays in ``inputs`` (the checker perturbs them in place and restores
them), compute the analytic gradients once, then

    errors = check_gradients(loss, inputs, analytic)   # {name: relative error}
"""
from __future__ import annotations

import numpy as np


def numerical_gradient(loss, x: np.ndarray, index: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of ``loss()`` with respect to ``x.flat[index]`` (x is perturbed and restored)."""
    flat = x.reshape(-1)  # a view: writing to it perturbs x itself
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient needs a contiguous array it can perturb in place")
    grad = np.empty(len(index), dtype=np.float64)
    for n, i in enumerate(index):
        old = flat[i]
        flat[i] = old + h
        plus = float(loss())
        flat[i] = old - h
        minus = float(loss())
        flat[i] = old
        grad[n] = (plus - minus) / (2.0 * h)
    return grad


def relative_error(numeric: np.ndarray, analytic: np.ndarray) -> float:
    """||numeric - analytic|| / max(||numeric||, ||analytic||); 0 when both are exactly 0; NaN stays NaN."""
    diff = np.linalg.norm(numeric - analytic)
    scale = max(np.linalg.norm(numeric), np.linalg.norm(analytic))
    if not np.isfinite(diff) or not np.isfinite(scale):
        return float("nan")
    return 0.0 if scale == 0.0 else float(diff / scale)


def check_gradients(loss, inputs: dict[str, np.ndarray], analytic: dict[str, np.ndarray],
                    max_coords: int = 40, h: float = 1e-6, seed: int = 0) -> dict[str, float]:
    """Relative error between ``analytic[name]`` and central differences, for every name in ``inputs``.

    Each tensor is checked on all its coordinates, or on ``max_coords`` drawn at random when it is larger.
    Raises ValueError when a tensor's analytic gradient has the wrong shape or is entirely zero on the
    coordinates checked together with its numerical gradient (a check that compares 0 with 0 proves
    nothing: give the loss random weights so every input matters).
    """
    gen = np.random.default_rng(seed)
    errors = {}
    for name, x in inputs.items():
        g = np.asarray(analytic[name])
        if g.shape != x.shape:
            raise ValueError(f"analytic gradient of {name!r} has shape {g.shape}, the input {x.shape}")
        index = (np.arange(x.size) if x.size <= max_coords
                 else gen.choice(x.size, size=max_coords, replace=False))
        numeric = numerical_gradient(loss, x, index, h)
        if not numeric.any() and not g.reshape(-1)[index].any():
            raise ValueError(f"the gradient of {name!r} is zero on every coordinate checked: the check "
                             f"would prove nothing")
        errors[name] = relative_error(numeric, g.reshape(-1)[index].astype(np.float64))
    return errors
