"""Optimizers for the NumPy model: Adam, AdamW, and BERT's original AdamWeightDecay; gradient clipping.

All three keep, per parameter, a first moment m (running mean of g) and a second moment v (running mean
of g^2), and move the parameter against m / sqrt(v). They differ in two details:

=================  ==========================================  ==================================
optimizer          weight decay                                bias correction of m and v
=================  ==========================================  ==================================
Adam               L2: wd * p added to the gradient            yes (Kingma & Ba, 2015)
AdamW              decoupled: p -= lr * wd * p, outside Adam   yes (Loshchilov & Hutter, 2019)
AdamWeightDecay    decoupled, added to the update m/sqrt(v)    no (BERT's optimization.py)
=================  ==========================================  ==================================

Weight decay skips biases and LayerNorm parameters (BERT's ``exclude_from_weight_decay``): shrinking a
LayerNorm gain or a bias towards 0 is not a sensible prior. Every optimizer updates ``params`` in place.
"""
from __future__ import annotations

import numpy as np


def decays(name: str) -> bool:
    """True when parameter ``name`` gets weight decay: not a bias, not a LayerNorm parameter (as BERT)."""
    return not (name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name)


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    norm = sqrt(sum over tensors of ||g||^2); each g becomes g * max_norm / max(norm, max_norm), so
    the direction of the full gradient is kept (``tf.clip_by_global_norm``, which BERT used). Returns
    (clipped grads, the norm before clipping).
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())))
    if not np.isfinite(norm):
        raise FloatingPointError(f"the gradient norm is {norm}: the loss diverged (lower the learning rate)")
    scale = max_norm / max(norm, max_norm)
    return {k: g * g.dtype.type(scale) for k, g in grads.items()}, norm


class Adam:
    """Adam with L2 weight decay, the update of ``torch.optim.Adam``:

        g <- g + wd * p;   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"need lr, eps, weight_decay >= 0 and betas in [0, 1); got lr={lr}, "
                             f"eps={eps}, weight_decay={weight_decay}, betas={betas}")
        self.params, self.lr, self.betas = params, lr, tuple(betas)
        self.eps, self.weight_decay = eps, weight_decay
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0  # updates made so far

    def step(self, grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        """Apply one update with ``grads`` (keyed like ``params``); ``lr`` overrides ``self.lr`` (schedules)."""
        missing = set(self.params) - set(grads)
        if missing:
            raise KeyError(f"no gradient for {sorted(missing)}")
        self.t += 1
        lr = self.lr if lr is None else lr
        for name, p in self.params.items():
            wd = self.weight_decay if decays(name) else 0.0
            self._update(p, grads[name], self.m[name], self.v[name], lr, wd)

    def _update(self, p, g, m, v, lr, wd):
        if wd:
            g = g + wd * p
        self._adam(p, g, m, v, lr)

    def _adam(self, p, g, m, v, lr):
        """The bias-corrected Adam move, in place."""
        b1, b2 = self.betas
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        m_hat = m / (1 - b1 ** self.t)
        v_hat = v / (1 - b2 ** self.t)
        p -= lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state_dict(self) -> dict:
        """Everything needed to resume: step count and both moments (copies)."""
        return {"t": self.t, "m": {k: a.copy() for k, a in self.m.items()},
                "v": {k: a.copy() for k, a in self.v.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.t = int(state["t"])
        for k in self.params:
            self.m[k][...] = state["m"][k]
            self.v[k][...] = state["v"][k]


class AdamW(Adam):
    """Adam with decoupled weight decay, the update of ``torch.optim.AdamW`` (default wd 0.01):

        p <- p * (1 - lr * wd);  then the Adam move without any L2 term in g.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)

    def _update(self, p, g, m, v, lr, wd):
        p *= 1 - lr * wd
        self._adam(p, g, m, v, lr)


class AdamWeightDecay(Adam):
    """BERT's optimizer (``AdamWeightDecayOptimizer`` in google-research/bert), defaults as BERT's:

        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (sqrt(v) + eps) + wd * p)        (no bias correction)

    Without bias correction the early updates are *larger* than Adam's, not smaller: v starts further below
    its running average than m does, so with a constant gradient the update is (1 - b1^t) / sqrt(1 - b2^t)
    times Adam's, 3.2x at step 1, 6.6x near step 12, 1.26x at step 1,000. BERT's 10,000-step warmup covers
    that (tutorials/09_optimizers_and_schedules.ipynb measures it).
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)

    def _update(self, p, g, m, v, lr, wd):
        b1, b2 = self.betas
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        p -= lr * (m / (np.sqrt(v) + self.eps) + wd * p)
