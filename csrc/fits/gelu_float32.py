"""Fits the float32 GELU constants of csrc/math_cpu.h: run it to see where those numbers come from.

    python csrc/fits/gelu_float32.py

Two functions are fitted, each by iteratively reweighted least squares (IRLS): solve a weighted least-squares
problem, raise the weight where the error came out large, solve again. The weights settle where the largest
error is as small as it can be (the minimax fit a textbook would get with the Remez algorithm, in a dozen
lines of NumPy).

1. ``normal_tail_approx``: erfc(a) exp(a^2) = t P(t) with t = 1 / (1 + a / 2), P of degree 6, for
   a = |x| / sqrt 2 in [0, 9.34] (|x| <= 13.2; beyond it the tail is below float32's range). The error
   that counts is not one number: the tail's ABSOLUTE error decides the GELU backward near x = 0
   (Phi(x) = 1 - tail, tail = 1/2) and the forward x - x tail, its RELATIVE error decides the far
   negative tail, where x Phi(x) is tiny. So each point's allowed relative error is
   min(6e-8 / tail, 3e-6), and the fit makes the worst ratio of error to allowance smallest.
2. ``exp2_nonpositive_or_zero``: 2^f = 1 + f q(f) on f in [-1/2, 1/2], q of degree 4, smallest relative
   error. Writing it as 1 + f q(f) keeps 2^0 = 1 exact.

Needs only NumPy and the standard library (``math.erfc`` in float64).
"""
from __future__ import annotations

import math

import numpy as np

TAIL_DEGREE, TAIL_T_SCALE, A_MAX = 6, 0.5, 9.34
TAIL_ABS, TAIL_REL = 6e-8, 3e-6
EXP2_DEGREE = 4  # of q in 2^f = 1 + f q(f)


def irls(basis: np.ndarray, target: np.ndarray, allowed: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Coefficients c minimising max |basis @ c - target| / allowed, by reweighted least squares."""
    weight = np.ones_like(target)
    for _ in range(iterations):
        scale = weight / allowed
        coef, *_ = np.linalg.lstsq(basis * scale[:, None], target * scale, rcond=None)
        ratio = np.abs(basis @ coef - target) / allowed
        weight = weight * np.sqrt(ratio)
        weight /= weight.max()
    return coef


def fit_tail() -> tuple[np.ndarray, dict]:
    """P's coefficients, highest power first (math_cpu.h stores them times 1/2), and the fit's errors."""
    a = np.concatenate([np.linspace(0, 3, 20000), np.linspace(3, A_MAX, 20000)])
    erfc = np.array([math.erfc(v) for v in a])
    t = 1 / (1 + TAIL_T_SCALE * a)
    target = erfc * np.exp(a * a) / t  # P(t); smooth, 1 at a = 0
    tail = erfc / 2
    allowed_rel = np.minimum(TAIL_ABS / tail, TAIL_REL)
    coef = irls(np.vander(t, TAIL_DEGREE + 1), target, np.abs(target) * allowed_rel)
    rel = np.abs(np.vander(t, TAIL_DEGREE + 1) @ coef - target) / target
    return coef, {"max_rel": rel.max(), "max_abs_of_tail": (rel * tail).max()}


def fit_exp2() -> tuple[np.ndarray, dict]:
    """q's coefficients, highest power first, and the fit's relative error."""
    f = np.linspace(-0.5, 0.5, 20001)
    exact = 2.0 ** f
    basis = np.vander(f, EXP2_DEGREE + 1) * f[:, None]  # f q(f)
    coef = irls(basis, exact - 1, exact)
    return coef, {"max_rel": (np.abs(basis @ coef + 1 - exact) / exact).max()}


def main():
    tail, tail_err = fit_tail()
    exp2, exp2_err = fit_exp2()
    print(f"P(t), t = 1 / (1 + a / 2), highest power first: relative error {tail_err['max_rel']:.2e}, "
          f"absolute error of the tail {tail_err['max_abs_of_tail']:.2e}")
    print("  " + ", ".join(f"{np.float32(c):.8e}f" for c in tail))
    print(f"q(f) in 2^f = 1 + f q(f), highest power first: relative error {exp2_err['max_rel']:.2e}")
    print("  " + ", ".join(f"{np.float32(c):.8e}f" for c in exp2))


if __name__ == "__main__":
    main()
