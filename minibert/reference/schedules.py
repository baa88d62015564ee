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


def warmup_stable_decay(step: int, base_lr: float, warmup_steps: int, decay_steps: int, total_steps: int) -> float:
    """Warm-up, stable, decay ("WSD"; Hu et al., 2024, MiniCPM; Hägele et al., 2024):

        lr = base_lr * step / warmup_steps                        while step < warmup_steps,
        lr = base_lr                                              until total_steps - decay_steps,
        lr = base_lr * max(0, (total_steps - step) / decay_steps)  after: linear to 0 at total_steps.

    BERT's schedule spends the whole run decaying, so its average rate is half the peak; this one holds
    the peak and anneals only at the end, which is where the loss of a WSD run drops. ``minibert pretrain``
    uses it with the decay on its last, 128-token phase. Steps and totals may be fractions of a time
    budget instead of step counts (``step`` = the fraction spent, ``total_steps`` = 1.0).
    """
    _check_step(step)
    if warmup_steps < 0 or decay_steps <= 0 or warmup_steps + decay_steps > total_steps:
        raise ValueError(f"need warmup_steps >= 0, decay_steps > 0 and warmup_steps + decay_steps <= total_steps, "
                         f"got {warmup_steps}, {decay_steps}, {total_steps}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return base_lr * min(1.0, max(0.0, (total_steps - step) / decay_steps))


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
