"""What an assignment is made of, and the small checks its graders share.

An :class:`Assignment` is a list of :class:`Task` s. A task names one function of the real library (a
file under ``minibert/`` and a function, or ``Class.method``), how many points it is worth, and a
``check`` that grades a student's version of that function alone. A check gets

* ``student``: the student's function (for a method, the plain function from the student's class, which
  the check calls with an instance it builds itself),
* ``modules``: the student's modules, by file name (``modules["optim.py"]``), for checks that need a class,
* ``gen``: a ``numpy.random.Generator`` seeded freshly for each grading run (the seed is in the report),

and raises ``AssertionError`` with a message a student can act on when the function is wrong. Checks
compare against the pristine library function in float64 (the "oracle") and, for backward passes, against
central differences, which need no oracle at all.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from minibert.reference import gradcheck

# Tolerances (docs/design.md, "Tolerances"): float64 paths agree with the oracle to < 1e-10 relative; a
# correct backward agrees with central differences (h = 1e-6) to ~1e-9, a wrong one is off by O(1).
ORACLE_RTOL = 1e-10
FINITE_DIFFERENCE_RTOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Task:
    """One function the student writes: ``file`` (relative to ``minibert/``), ``function``, its points,
    what the grader checks (``grading``, one sentence for structure.md) and the ``check`` itself."""

    file: str
    function: str
    points: int
    grading: str
    check: Callable

    @property
    def handout_name(self) -> str:
        """The file's name in the handout folder (flat: ``reference/layers.py`` -> ``layers.py``)."""
        return self.file.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Assignment:
    """A named set of tasks with a title and a paragraph that tells students what they are building."""

    name: str
    title: str
    summary: str
    tasks: tuple

    @property
    def files(self) -> list[str]:
        """The library files the tasks come from, in order of first use, each once."""
        return list(dict.fromkeys(task.file for task in self.tasks))

    @property
    def max_points(self) -> int:
        """The score of a complete, correct solution."""
        return sum(task.points for task in self.tasks)


def assert_close(what: str, got, want, rtol: float = ORACLE_RTOL) -> None:
    """Raise AssertionError unless ``got`` has ``want``'s shape, is finite, and ``||got - want|| / ||want||
    <= rtol`` (max abs error <= rtol when ``want`` is all zeros)."""
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape}, expected {want.shape}")
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"{what}: contains NaN or inf")
    scale = np.linalg.norm(want)
    error = np.linalg.norm(got - want) / scale if scale else np.abs(got - want).max(initial=0.0)
    if not error <= rtol:
        raise AssertionError(f"{what}: relative error {error:.2e} against the reference (tolerance {rtol:.0e})")


def assert_finite_differences(what: str, loss: Callable[[], float], inputs: dict, analytic: dict,
                              gen: np.random.Generator) -> None:
    """Raise AssertionError unless every ``analytic[name]`` matches central differences of ``loss()`` with
    respect to ``inputs[name]`` (perturbed in place) to ``FINITE_DIFFERENCE_RTOL``; ``gen`` picks the
    coordinates checked."""
    for name, g in analytic.items():
        if np.asarray(g).shape != inputs[name].shape:
            raise AssertionError(f"{what}: gradient of {name} has shape {np.asarray(g).shape}, "
                                 f"expected {inputs[name].shape}")
    errors = gradcheck.check_gradients(loss, inputs, analytic, max_coords=24,
                                       seed=int(gen.integers(2 ** 31)))
    for name, error in errors.items():
        if not error <= FINITE_DIFFERENCE_RTOL:
            raise AssertionError(f"{what}: gradient of {name} differs from central differences by "
                                 f"{error:.2e} relative (tolerance {FINITE_DIFFERENCE_RTOL:.0e})")


def assert_raises(what: str, error: type, call: Callable) -> None:
    """Raise AssertionError unless ``call()`` raises ``error`` (bad input must be refused clearly)."""
    try:
        call()
    except error:
        return
    raise AssertionError(f"{what}: expected {error.__name__}, nothing was raised")
