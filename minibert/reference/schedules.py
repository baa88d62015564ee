"""Learning-rate schedules: lr as a function of ``step``, the number of updates already made (0 for the
first update), so ``optimizer.step(grads, lr=schedule(step))`` then ``step += 1``.
"""
from __future__ import annotations


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step counts updates made so far and cannot be negative, got {step}")


def constant(step: int, base_lr: float) -> float:
    """lr = base_lr at every step."""
    _check_step(step)
    return base_lr


def linear_warmup_decay(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """BERT's schedule (google-research/bert ``optimization.py``):

        lr = base_lr * step / warmup_steps            while step < warmup_steps,
        lr = base_lr * max(0, 1 - step / total_steps)  after.

    The decay line runs from base_lr at step 0 to 0 at ``total_steps``, and warmup overrides its first
    part, so lr jumps slightly down at the end of warmup; HF's ``get_linear_schedule_with_warmup`` instead
    decays from the end of warmup. BERT-Base: base_lr 1e-4, warmup 10,000 of 1,000,000 steps.
    """
    _check_step(step)
    if warmup_steps < 0 or total_steps <= 0:
        raise ValueError(f"need warmup_steps >= 0 and total_steps > 0, got {warmup_steps}, {total_steps}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return base_lr * max(0.0, 1.0 - step / total_steps)


def inverse_sqrt(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """The Transformer's schedule (Vaswani et al., 2017, eq. 3), with step_num = step + 1 (1-based there):

        lr = factor * d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)

    a linear rise for ``warmup_steps`` steps, peaking at (d_model * warmup_steps)^-0.5, then 1/sqrt decay.
    """
    _check_step(step)
    if d_model <= 0 or warmup_steps <= 0:
        raise ValueError(f"need d_model > 0 and warmup_steps > 0, got {d_model}, {warmup_steps}")
    n = step + 1
    return factor * d_model ** -0.5 * min(n ** -0.5, n * warmup_steps ** -1.5)
