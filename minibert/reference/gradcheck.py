"""A central-difference gradient checker for hand-written backward passes.

For a scalar loss L(x) and a coordinate x_i, the central difference

    (L(x + h e_i) - L(x - h e_i)) / (2 h)  =  dL/dx_i + O(h^2)

needs only forward passes, so it is an independent check of a backward. In float64 with h = 1e-6 the
truncation error (h^2 ~ 1e-12) and rounding error (eps / h ~ 1e-10) are both far below the 1e-6
relative error a correct backward reaches, while a wrong formula is off by O(1).

Usage: write ``loss()`` reading the arrays in ``inputs`` (the checker perturbs them in place and restores
them), compute the analytic gradients once, then

    errors = check_gradients(loss, inputs, analytic)   # {name: relative error}

``python -m minibert.reference.gradcheck`` runs it on every parameter of a tiny BERT and prints the errors.
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


def main() -> int:
    """Show the work: check every parameter of a tiny float64 BertForPreTraining, dropout on, and print
    each tensor's relative error (a correct backward gives ~1e-9 or less; a wrong one O(1))."""
    from minibert.config import BertConfig
    from minibert.reference.model import BertForPreTraining

    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=8, initializer_range=0.5)
    model = BertForPreTraining(config, dtype=np.float64, seed=0)
    gen = np.random.default_rng(0)
    ids = gen.integers(0, 40, (2, 6))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])  # the second sequence ends in padding
    labels = np.where(gen.random((2, 6)) < 0.3, ids, -100)
    labels[:, 1] = ids[:, 1]

    def loss():
        return model.forward(ids, None, mask, labels, np.array([0, 1]), training=True, dropout_seed=1)["loss"]

    print(f"loss {loss():.6f}; relative error of each gradient (up to 12 coordinates per tensor):")
    analytic = model.backward()
    # The key bias's true gradient is 0 (softmax ignores a constant added to a row): print its size instead.
    for name in model.params:
        if name.endswith("attention.self.key.bias"):
            print(f"  |grad| {np.abs(analytic[name]).max():.1e} (0 in exact arithmetic)  {name}")
    errors = check_gradients(loss, {k: v for k, v in model.params.items()
                                    if not k.endswith("attention.self.key.bias")}, analytic, max_coords=12)
    for name, err in errors.items():
        print(f"  {err:.1e}  {name}")
    print(f"worst: {max(errors.values()):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
