"""What an assignment is made of, and the machinery its checks share.

An :class:`Assignment` is a list of :class:`Task` s. A task names one function of the real library (a
file under ``minibert/`` and a function, or ``Class.method``), how many points it is worth, and a
``check(t, gen)`` that grades a student's version of that function alone:

* ``t`` is a :class:`TaskRun`. ``t.call(*args)`` runs the student's function on the arguments in the
  student's own process (see :mod:`~minibert.assignments.sandbox`) and returns what it returned;
  ``with t.variant(name, cases) as v:`` groups the cases one set of inputs is judged on (each output of
  the function, usually), and ``v.close``, ``v.gradient``, ``v.check`` and ``v.raises`` judge them.
* ``gen`` is a ``numpy.random.Generator``, seeded from the public seed or, for the hidden cases of a
  class, from the instructor's class seed.

A check computes the reference outputs first (the pristine library function, in float64, on its own
copies), then calls the student's code. Every case is judged and reported, so a function that is right
on most inputs earns most of its points: its points are shared equally among its cases. When the
student's code raises or runs out of time, the cases of that variant fail with that message and the
check goes on with the next variant.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import time
from typing import Callable

import numpy as np

from minibert.assignments.sandbox import StudentFailure, write_back
from minibert.reference import gradcheck

# Tolerances (docs/design.md, "Tolerances"): float64 paths agree with the oracle to < 1e-10 relative; a
# correct backward agrees with central differences (h = 1e-6) to ~1e-9, a wrong one is off by O(1).
ORACLE_RTOL = 1e-10
FINITE_DIFFERENCE_RTOL = 1e-6
HINT_LEVELS = ("none", "formulas", "full")


@dataclasses.dataclass(frozen=True)
class Task:
    """One function the student writes.

    ``file`` (relative to ``minibert/``) and ``function``; its ``points``; ``grading``, one sentence for
    structure.md on what is checked; the ``check`` itself. ``contract``: the docstring a handout made with
    ``--hints none`` shows instead of the library's, which states the formula (None: the library's
    docstring is a contract already). ``in_place``: the arguments the function modifies as its result (a
    ``grads`` dict it adds to, the lists it trims, an optimizer's state); the grader copies their new
    values back. ``may_change``: arguments it may overwrite on the way (the upstream gradient of a
    backward pass). A change to any other argument is pointed out in the report. ``notebook``: the code
    of the function's check cell in the handout's notebook. ``needs``: "cuda" for a task graded only
    where a GPU is present.
    """

    file: str
    function: str
    points: int
    grading: str
    check: Callable
    contract: str | None = None
    may_change: tuple = ()
    in_place: tuple = ()
    notebook: str = ""
    needs: str | None = None

    @property
    def handout_name(self) -> str:
        """The file's name in the handout folder (flat: ``reference/layers.py`` -> ``layers.py``)."""
        return self.file.rsplit("/", 1)[-1]

    @property
    def default_hints(self) -> str:
        """"none" for a function whose library docstring gives the formula away, else "formulas"."""
        return "none" if self.contract else "formulas"


@dataclasses.dataclass(frozen=True)
class Assignment:
    """A named set of tasks with a title, a paragraph that tells students what they are building, the
    notebook's first code cell (``notebook_setup``, which loads the student's files), the written
    ``questions`` the notebook asks, and ``loaders``: for files that are not Python, the function
    ("module:function") that loads one in the student's process (the kernel assignment compiles C++)."""

    name: str
    title: str
    summary: str
    tasks: tuple
    notebook_setup: str = ""
    questions: tuple = ()
    loaders: dict | None = None

    @property
    def files(self) -> list[str]:
        """The library files the tasks come from, in order of first use, each once."""
        return list(dict.fromkeys(task.file for task in self.tasks))

    @property
    def max_points(self) -> int:
        """The score of a complete, correct solution (tasks that need a GPU included)."""
        return sum(task.points for task in self.tasks)


# ---- judging one output ---------------------------------------------------------------------------------

def _index(flat_index: int, shape: tuple) -> str:
    return str(list(np.unravel_index(flat_index, shape))) if shape else "[]"


def compare(got, want, rtol: float = ORACLE_RTOL) -> str | None:
    """None when ``got`` has ``want``'s shape, is finite and ``||got - want|| / ||want|| <= rtol`` (max
    abs error <= rtol when ``want`` is all zeros); otherwise what is wrong, with the worst element."""
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return f"returned {type(got).__name__}, expected an array of shape {np.shape(want)}"
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    bad = ~np.isfinite(got)
    if bad.any():
        i = int(np.argmax(bad))
        return (f"contains NaN or inf ({int(bad.sum())} of {got.size} elements); first at "
                f"{_index(i, got.shape)}: yours {got.flat[i]}, expected {want.flat[i]:.6g}")
    scale = np.linalg.norm(want)
    diff = np.abs(got - want)
    error = np.linalg.norm(got - want) / scale if scale else diff.max(initial=0.0)
    if error <= rtol:
        return None
    i = int(np.argmax(diff))
    return (f"relative error {error:.2e} (tolerance {rtol:.0e}); worst element {_index(i, got.shape)}: "
            f"yours {got.flat[i]:.6g}, expected {want.flat[i]:.6g}")


def finite_difference_error(loss: Callable[[], float], x: np.ndarray, analytic, seed: int) -> str:
    """How the student's gradient ``analytic`` of ``loss`` with respect to ``x`` compares with central
    differences (``minibert.reference.gradcheck``, up to 24 coordinates, chosen by ``seed``), in words."""
    try:
        analytic = np.asarray(analytic, dtype=np.float64)
        error = gradcheck.check_gradients(loss, {"x": x}, {"x": analytic}, max_coords=24, seed=seed)["x"]
    except (ValueError, TypeError) as exc:
        return f"central differences: {exc}"
    verdict = "ok" if error <= FINITE_DIFFERENCE_RTOL else f"tolerance {FINITE_DIFFERENCE_RTOL:.0e}"
    return f"central differences of your gradient: relative error {error:.2e} ({verdict})"


# ---- cases, variants and a task's run ------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    """One judged case: ``name`` ("variant: output"), whether it ``passed``, ``message`` (what was wrong)
    and ``kind`` ("pass", "fail", or the StudentFailure kind that stopped it)."""

    name: str
    passed: bool
    message: str = ""
    kind: str = "pass"


class Variant:
    """The cases judged on one set of inputs. Created by :meth:`TaskRun.variant`."""

    def __init__(self, run: "TaskRun", name: str, outputs: list[str]):
        self.run, self.name, self.pending = run, name, list(outputs)

    def _record(self, output: str, message: str | None, kind: str = "fail") -> None:
        if output not in self.pending:
            raise KeyError(f"case {output!r} of {self.name!r} is not declared or was judged twice")
        self.pending.remove(output)
        name = f"{self.name}: {output}" if self.name else output
        if self.run.hidden:
            name = f"hidden {name}"
        self.run.cases.append(Case(name, message is None, message or "", "pass" if message is None else kind))

    def check(self, output: str, ok: bool, message: str = "") -> None:
        """Judge a property: pass when ``ok``, else fail with ``message``."""
        self._record(output, None if ok else message)

    def close(self, output: str, got, want, rtol: float = ORACLE_RTOL) -> None:
        """Judge ``got`` against the reference ``want`` (see :func:`compare`)."""
        self._record(output, compare(got, want, rtol))

    def gradient(self, output: str, got, want, loss: Callable[[], float], x: np.ndarray, gen) -> None:
        """Judge a gradient: against the reference ``want`` and against central differences of ``loss``
        with respect to ``x``; a failure reports both, so the student can reproduce the second with
        ``minibert.reference.gradcheck`` on their own function."""
        problem = compare(got, want)
        fd = finite_difference_error(loss, x, got, int(gen.integers(2 ** 31))) if np.shape(got) == x.shape else ""
        if problem is None and fd.endswith("(ok)"):
            self._record(output, None)
        else:
            self._record(output, "; ".join(part for part in (problem or "matches the reference", fd) if part))

    def raises(self, output: str, error: type, *args, **kwargs) -> None:
        """Judge that the student's function refuses ``args`` with ``error`` (bad input must be refused
        clearly)."""
        try:
            self.run.call(*args, **kwargs)
        except StudentFailure as exc:
            if exc.kind == "error" and error.__name__ in exc.error_types:
                self._record(output, None)
            elif exc.kind in ("error", "not implemented"):
                self._record(output, f"expected {error.__name__}, got: {exc}")
            else:
                raise
            return
        self._record(output, f"expected {error.__name__}, nothing was raised")

    def fail_pending(self, message: str, kind: str) -> None:
        """Fail every case not judged yet (the student's code stopped the variant)."""
        for output in list(self.pending):
            self._record(output, message, kind)


class TaskRun:
    """One task being graded: the student's function behind ``call``, the cases judged so far, and the
    time budget (shared by all the function's calls)."""

    def __init__(self, task: Task, sandbox, time_limit_s: float, hidden: bool = False):
        self.task, self.sandbox, self.hidden = task, sandbox, hidden
        self.time_limit_s = time_limit_s
        self.deadline = time.monotonic() + time_limit_s
        self.cases: list[Case] = []
        self.notes: list[str] = []
        self.stopped: StudentFailure | None = None

    def call(self, *args, **kwargs):
        """The student's function on ``args``, run in the sandbox. The arguments it modifies as its result
        (``Task.in_place``) are updated here; a change to one outside ``Task.may_change`` is noted.
        Raises StudentFailure when the student's code raises, runs out of time or crashes."""
        return self._call(None, [(args, kwargs)])[0]

    def call_many(self, calls: list[tuple]) -> list:
        """The student's function on each argument tuple of ``calls``, in one round trip to the sandbox
        (for checks that call it hundreds of times); otherwise as :meth:`call`."""
        return self._call(None, [(args, {}) for args in calls])

    def call_driver(self, driver: str, *args, **kwargs):
        """``driver(student module, *args)`` run in the sandbox (``"module:function"``, a function of the
        grader): for checks that must measure the student's code where it runs."""
        return self._call(driver, [(args, kwargs)])[0]

    def _call(self, driver, calls):
        if self.stopped is not None:
            raise StudentFailure(self.stopped.kind, f"not run: {self.stopped}")
        function = None if driver else self.task.function
        try:
            results, changes = self.sandbox.call(self.task.handout_name, function, calls, self.deadline,
                                                 self.task.in_place, driver)
        except StudentFailure as exc:
            if exc.kind == "timeout":
                exc = StudentFailure("timeout", f"still running after {self.time_limit_s:g} s (an endless loop?)")
                self.stopped = exc
            raise exc from None
        for (args, kwargs), changed in zip(calls, changes if not driver else []):
            for arg_name, value in changed.items():
                if arg_name in self.task.in_place:
                    bound = _bind(self.task, args, kwargs)
                    if arg_name in bound:
                        write_back(bound[arg_name], value)
                elif arg_name not in self.task.may_change:
                    note = (f"changed its argument {arg_name!r} in place; the contract leaves it alone (the "
                            f"grader passed a copy, so it cost nothing here, but a caller would see the change)")
                    if note not in self.notes:
                        self.notes.append(note)
        return results

    @contextlib.contextmanager
    def variant(self, name: str, outputs: list[str]):
        """Declare the cases (``outputs``) judged on one set of inputs; cases left unjudged because the
        student's code stopped fail with its message."""
        v = Variant(self, name, outputs)
        try:
            yield v
        except StudentFailure as exc:
            v.fail_pending(str(exc), exc.kind)
            return
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # what came back is not what the contract says (a tuple too short, a list for a dict...)
            v.fail_pending(f"the grader could not use what your function returned ({type(exc).__name__}: {exc})",
                           "fail")
            return
        if v.pending:
            raise RuntimeError(f"check of {self.task.function}: cases {v.pending} of {name!r} were not judged")


def _bind(task: Task, args: tuple, kwargs: dict) -> dict:
    """The arguments by parameter name, from the library function's signature."""
    module = importlib.import_module("minibert." + task.file[:-len(".py")].replace("/", "."))
    function = module
    for part in task.function.split("."):
        function = getattr(function, part)
    return dict(inspect.signature(function).bind(*args, **kwargs).arguments)
