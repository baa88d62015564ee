"""The run's clock: what the loop should do before and after each step of a ``--steps`` or ``--minutes`` run.

``--steps N`` (:class:`StepPlan`): the learning rate is a function of the step: warm-up, the peak held,
then a linear decay to zero over the last ``--decay-ratio`` of the steps (``--schedule wsd``, the
default), or BERT's warm-up then linear decay over the whole run (``linear``), or ``noam`` / ``constant``;
an evaluation every ``--eval-every`` steps and a checkpoint every ``--save-every`` steps. Nothing depends
on the clock, so the run is exactly reproducible.

``--minutes N`` (:class:`TimeBudget`): the learning rate is a function of the *fraction of the budget
spent*, as in budgeted pretraining (Cramming, Geiping & Goldstein 2022, ties its one-cycle schedule to
the elapsed time): warm-up over the first ``--warmup-ratio`` of the time, then (``wsd``) the peak until
the last ``--decay-ratio`` of the time or (``linear``) a decay from the start, reaching zero exactly
when the time for training steps runs out. No step count is planned up front, so a
machine that slows down in mid-run (other jobs start) gets fewer steps, each at the right point of the
schedule, and the run still ends on time with the rate decayed. What must be left at the end is
measured, not guessed: right after the first step the loop evaluates and checkpoints once (real,
logged work), and stepping stops when the time left drops below the slowest evaluation + the slowest
checkpoint + the slowest of the last few steps (+ :data:`FINISH_SECONDS` for the summary). Evaluations
and checkpoints are placed by the clock too (``--eval-every-minutes``, ``--save-every-minutes``). The
budget counts the loop: from the first step to the final checkpoint (preparing the data comes before).

Time is read from the module-level :data:`clock`, so tests replace it to simulate slow, uneven steps.
Under torchrun, rank 0's clock decides for every rank (:func:`agree`).
"""
from __future__ import annotations

import collections
import time

from minibert.reference.schedules import constant, inverse_sqrt, linear_warmup_decay, warmup_stable_decay
from minibert.train import distributed
from minibert.train.pretrain_args import decay_steps, warmup_steps

clock = time.perf_counter  # seconds; tests replace it (budget.clock = fake)
STEP_WINDOW = 10        # the step-time estimate is the slowest of the last this-many steps
FINISH_SECONDS = 1.0    # after the final checkpoint: summary, curves, a few fill-mask examples
SCHEDULES = ("wsd", "linear", "noam", "constant")
TIME_SCHEDULES = ("wsd", "linear")  # those that decay to zero at the end, so a --minutes run can follow them


def step_schedule(kind: str, peak_lr: float, warmup_steps: int, total_steps: int, decay_steps: int = 0):
    """``lr(step)`` of a ``--steps`` run, peaking at ``peak_lr`` (``minibert.reference.schedules``).

    wsd: warm-up, the peak held, then a linear decay to 0 over the last ``decay_steps``; linear: BERT's
    warm-up then linear decay to 0 at ``total_steps``; noam: the Transformer's warm-up then 1/sqrt(step)
    decay (``inverse_sqrt`` with its d_model^-0.5 folded into the peak); constant: flat.
    """
    if kind == "wsd":
        return lambda step: warmup_stable_decay(step, peak_lr, warmup_steps, decay_steps, total_steps)
    if kind == "linear":
        return lambda step: linear_warmup_decay(step, peak_lr, warmup_steps, total_steps)
    if kind == "noam":  # inverse_sqrt peaks at factor * warmup^-0.5 (d_model = 1), at step_num = warmup
        return lambda step: inverse_sqrt(step, 1, warmup_steps, factor=peak_lr * warmup_steps ** 0.5)
    if kind == "constant":
        return lambda step: constant(step, peak_lr)
    raise ValueError(f"--schedule must be one of {SCHEDULES}, got {kind!r}")


class _Clocked:
    """Seconds spent by the run, across resumes: ``spent`` before this process plus this process's."""

    def __init__(self, spent: float):
        self.spent = spent
        self.t0 = None

    def start(self) -> None:
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.spent + (clock() - self.t0 if self.t0 is not None else 0.0)


class StepPlan(_Clocked):
    """``--steps N``: ``total_steps`` steps at ``lr(step)``; evaluate / save every so many steps."""

    def __init__(self, total_steps: int, lr, eval_every: int, save_every: int, start_step: int = 0,
                 spent: float = 0.0):
        super().__init__(spent)
        self.total_steps, self.lr, self.start_step = total_steps, lr, start_step
        self.eval_every, self.save_every = eval_every, save_every

    def before_step(self, step: int) -> dict:
        """Whether the run is finished after ``step`` steps, the next step's learning rate, and the fraction
        of the run done (``progress``)."""
        finished = step >= self.total_steps
        return {"finished": float(finished), "lr": 0.0 if finished else self.lr(step),
                "progress": min(1.0, step / self.total_steps)}

    def after_step(self, step: int) -> dict:
        """Whether to evaluate / checkpoint now that ``step`` steps are done (the final round is the loop's)."""
        periodic = self.start_step < step < self.total_steps
        return {"eval": float(periodic and bool(self.eval_every) and step % self.eval_every == 0),
                "save": float(periodic and bool(self.save_every) and step % self.save_every == 0)}

    def measured(self, kind: str, seconds: float) -> None:
        pass  # a step count does not depend on the clock

    def state(self) -> dict:
        return {"total_steps": self.total_steps, "elapsed": self.elapsed()}

    def describe(self) -> str:
        return f"{self.total_steps} steps"

    def describe_position(self, step: int) -> str:
        return f"step {step} of {self.total_steps}"

    def describe_stop(self) -> str:
        return f" of {self.total_steps}"

    def summary(self, step: int) -> dict:
        return {"stopped": "completed" if step >= self.total_steps else f"stopped early at step {step}"}


class TimeBudget(_Clocked):
    """``--minutes N``: the learning rate and the end of the run follow the clock (see the module docstring)."""

    def __init__(self, seconds: float, peak_lr: float, warmup_ratio: float, eval_every_s: float,
                 save_every_s: float, evaluates: bool, spent: float = 0.0, slowest: dict | None = None,
                 fraction: float = 0.0, recent_steps: list | None = None, schedule: str = "linear",
                 decay_ratio: float = 1.0):
        super().__init__(spent)
        if schedule not in TIME_SCHEDULES:
            raise ValueError(f"a --minutes run follows one of {TIME_SCHEDULES}, got {schedule!r}")
        self.seconds, self.peak_lr, self.warmup_ratio = seconds, peak_lr, warmup_ratio
        self.schedule, self.decay_ratio = schedule, decay_ratio
        self.every = {"eval": eval_every_s if evaluates else None, "save": save_every_s}
        self.slowest = dict(slowest or {})           # "eval", "save": the slowest one seen, in seconds
        self.recent_steps = collections.deque(recent_steps or (), maxlen=STEP_WINDOW)
        self.last = {"eval": spent if "eval" in self.slowest else None,
                     "save": spent if "save" in self.slowest else None}
        self.fraction_spent = fraction
        self.total_steps = None

    def reserve(self) -> float:
        """Seconds to keep for the end: a final evaluation, a checkpoint, one more step, the summary."""
        return (self.slowest.get("eval", 0.0) + self.slowest.get("save", 0.0)
                + max(self.recent_steps, default=0.0) + FINISH_SECONDS)

    def fraction(self) -> float:
        """The fraction of the training time spent, elapsed / (budget - reserve), in [0, 1].

        It never decreases: a slow step that raises the reserve brings the end (and the decay) forward,
        and when that step leaves the window the rate does not climb back.
        """
        available = self.seconds - self.reserve()
        now = self.elapsed() / available if available > 0 else 1.0
        self.fraction_spent = min(1.0, max(self.fraction_spent, now))
        return self.fraction_spent

    def before_step(self, step: int) -> dict:
        f = self.fraction()
        if self.schedule == "wsd":
            lr = warmup_stable_decay(f, self.peak_lr, self.warmup_ratio, self.decay_ratio, 1.0)
        else:
            lr = linear_warmup_decay(f, self.peak_lr, self.warmup_ratio, 1.0)
        return {"finished": float(f >= 1.0), "lr": lr, "progress": f}

    def after_step(self, step: int) -> dict:
        """Evaluate / checkpoint when one was never measured (right after the first step) or is due by time."""
        now = self.elapsed()
        due = {}
        for kind, every in self.every.items():
            due[kind] = float(every is not None and (self.last[kind] is None or now - self.last[kind] >= every))
        return due

    def measured(self, kind: str, seconds: float) -> None:
        """Record how long a step / an evaluation / a checkpoint took."""
        if kind == "step":
            self.recent_steps.append(seconds)
        else:
            self.slowest[kind] = max(self.slowest.get(kind, 0.0), seconds)
            self.last[kind] = self.elapsed()

    def state(self) -> dict:
        """What ``--resume`` needs to continue with the budget that is left."""
        return {"total_steps": None, "elapsed": self.elapsed(),
                "budget": {"seconds": self.seconds, "elapsed": self.elapsed(), "fraction": self.fraction_spent,
                           "slowest": dict(self.slowest), "recent_steps": list(self.recent_steps)}}

    def describe(self) -> str:
        return (f"a {self.seconds / 60:g} min budget (the learning rate follows the time; the final evaluation "
                f"and checkpoint fit inside)")

    def describe_position(self, step: int) -> str:
        spent = self.elapsed()
        return (f"step {step}: {spent / 60:.2f} min of the {self.seconds / 60:g} min budget spent, "
                f"{max(0.0, self.seconds - spent) / 60:.2f} min left")

    def describe_stop(self) -> str:
        spent = self.elapsed()
        return f" ({spent / 60:.2f} of {self.seconds / 60:g} min spent; the rest is kept for --resume)"

    def summary(self, step: int) -> dict:
        """How the run ended: within the budget, and why stepping stopped when it did."""
        spent = self.elapsed()
        if not self.recent_steps:
            why = (f"stopped early: the {self.seconds / 60:g} min budget had no time left for a step after the "
                   f"final evaluation and checkpoint")
        else:
            why = (f"time budget: stepping stopped at {spent / 60:.2f} of {self.seconds / 60:g} min, keeping "
                   f"{self.reserve():.1f} s for the final evaluation, checkpoint and summary")
        return {"stopped": why, "budget_seconds": self.seconds, "reserve_seconds": self.reserve()}

    def expected_steps(self, steps_done: int) -> int:
        """Steps the run will have made at the end if the machine keeps its recent speed (for the log)."""
        if not self.recent_steps:
            return steps_done
        mean = sum(self.recent_steps) / len(self.recent_steps)
        left = self.seconds - self.reserve() - self.elapsed()
        return steps_done + max(0, int(left / mean))


def agree(decision: dict, rank: int, world_size: int, device) -> dict:
    """Every rank does what rank 0's clock decided; a stop request (``"interrupted"``) on any rank stops all.

    (One all-reduce: the other ranks contribute zeros, so the sum is rank 0's value; a no-op for one
    process.)
    """
    if world_size == 1:
        return decision
    mine = {k: float(v) if rank == 0 or k == "interrupted" else 0.0 for k, v in decision.items()}
    return distributed.all_reduce_sum(mine, world_size, device)


def make_plan(args, saved: dict | None, start_step: int, evaluates: bool):
    """The plan of a new run (``--steps`` or ``--minutes``), or of the run ``saved`` (its trainer state)."""
    spent = saved.get("elapsed", 0.0) if saved is not None else 0.0
    minutes = args.minutes if args.minutes is not None else 0.0
    every = {k: 60.0 * (v if v is not None else max(1.0, minutes / 5))
             for k, v in (("eval", args.eval_every_minutes), ("save", args.save_every_minutes))}
    if saved is not None and saved.get("budget"):  # a --minutes run continues with the budget it has left
        b = saved["budget"]
        return TimeBudget(b["seconds"], args.lr, args.warmup_ratio, every["eval"], every["save"], evaluates,
                          spent=b["elapsed"], slowest=b["slowest"], fraction=b["fraction"],
                          recent_steps=b.get("recent_steps"), schedule=args.schedule, decay_ratio=args.decay_ratio)
    if saved is None and args.steps is None:
        return TimeBudget(minutes * 60.0, args.lr, args.warmup_ratio, every["eval"], every["save"], evaluates,
                          schedule=args.schedule, decay_ratio=args.decay_ratio)
    total = saved["total_steps"] if saved is not None else args.steps
    schedule = step_schedule(args.schedule, args.lr, warmup_steps(args, total), total, decay_steps(args, total))
    return StepPlan(total, schedule, args.eval_every, args.save_every, start_step, spent)
