"""Grading a student's folder: ``grade(name, student_dir) -> report``.

Each of the student's files is imported by path under a unique module name (so it can never shadow or
be confused with minibert's own modules), then each task's check runs on the student's function alone.
Whatever the student's code does (raise, return the wrong shape, return NaN, fail to import) is caught
and reported for that function only; the grader itself never stops early.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import secrets
import signal
import sys
import threading
import traceback
import uuid
from pathlib import Path

import numpy as np

from minibert.assignments.catalog import get
from minibert.files import atomic_write_text


DEFAULT_TIME_LIMIT = 60.0  # seconds per function; a correct one needs well under 1 s


class TimeLimitExceeded(BaseException):
    """Raised inside student code that runs past the time limit. A BaseException, so that a student's
    ``except Exception:`` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise TimeLimitExceeded in the code run inside after ``seconds`` (an infinite loop in a student's
    function must not hang the grader). Works in the main thread on POSIX; elsewhere there is no limit."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeLimitExceeded(f"still running after {seconds:g} s (an infinite loop?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclasses.dataclass
class FunctionResult:
    """The grade of one function: ``status`` is "pass", "fail", "not implemented", "error", "timeout" or
    "missing"."""

    file: str
    function: str
    points: int
    max_points: int
    status: str
    message: str


def load_student_module(path: Path):
    """Import the file ``path`` as a fresh module with a unique name; returns (module, None) or
    (None, error message) when the file is missing or fails to import."""
    if not path.is_file():
        return None, f"{path.name} is missing from the student folder"
    name = f"_minibert_student_{path.stem}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up here
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # a SyntaxError or a crash at import must not stop the grader
        del sys.modules[name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None, f"importing {path.name} failed: {_last_line(exc)}"
    return module, None


def _last_line(exc: BaseException) -> str:
    """``Type: message`` and where in the student's code it was raised."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "minibert/assignments" not in f.filename]
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _resolve(module, qualified_name: str):
    """The object ``Class.method`` or ``function`` in ``module`` (AttributeError when absent)."""
    obj = module
    for part in qualified_name.split("."):
        obj = getattr(obj, part)
    return obj


def grade(name: str, student_dir: str | os.PathLike, seed: int | None = None,
          time_limit_s: float | None = DEFAULT_TIME_LIMIT) -> dict:
    """Grade the student's folder for assignment ``name``; returns the report as a dict.

    ``seed`` makes a run reproducible; by default a fresh one is drawn (and recorded in the report), so
    each run tests on new random inputs. ``time_limit_s`` bounds each function's check (None: no limit).
    Report keys: assignment, student_dir, seed, score, max_score,
    functions (a list of :class:`FunctionResult` as dicts).
    """
    assignment = get(name)
    folder = Path(student_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"student folder {folder} does not exist or is not a folder; make a handout "
                                f"with `python -m minibert.assignments make {name} {folder}`")
    seed = secrets.randbits(32) if seed is None else int(seed)
    modules, import_errors = {}, {}
    for file in assignment.files:
        filename = Path(file).name
        modules[filename], import_errors[filename] = load_student_module(folder / filename)
    results = []
    try:
        for index, task in enumerate(assignment.tasks):
            gen = np.random.default_rng([seed, index])
            results.append(_grade_task(task, modules, import_errors, gen, time_limit_s))
    finally:
        for module in modules.values():
            if module is not None:
                sys.modules.pop(module.__name__, None)
    return {"assignment": name, "student_dir": str(folder), "seed": seed,
            "score": sum(r.points for r in results), "max_score": assignment.max_points,
            "functions": [dataclasses.asdict(r) for r in results]}


def _grade_task(task, modules, import_errors, gen, seconds) -> FunctionResult:
    """Run one task's check on the student's function; every outcome becomes a FunctionResult."""
    def result(status, message="", points=0):
        return FunctionResult(task.handout_name, task.function, points, task.points, status, message)

    module = modules[task.handout_name]
    if module is None:
        return result("missing", import_errors[task.handout_name])
    try:
        student = _resolve(module, task.function)
    except AttributeError:
        return result("missing", f"{task.handout_name} has no {task.function}")
    # np.errstate: a student's overflow is reported by the check (as NaN or inf), not as a warning.
    with np.errstate(all="ignore"):
        try:
            with time_limit(seconds):
                task.check(student, modules, gen)
        except TimeLimitExceeded as exc:
            return result("timeout", str(exc))
        except NotImplementedError:
            return result("not implemented", "raises NotImplementedError")
        except AssertionError as exc:
            return result("fail", str(exc))
        except Exception as exc:  # noqa: BLE001 -- any crash in student code costs this function only
            return result("error", _last_line(exc))
    return result("pass", "", task.points)


def format_report(report: dict) -> str:
    """The report as a table: one row per function, then the total."""
    rows = [("file", "function", "points", "status", "message")]
    for r in report["functions"]:
        message = r["message"] if len(r["message"]) <= 100 else r["message"][:97] + "..."
        rows.append((r["file"], r["function"], f"{r['points']}/{r['max_points']}", r["status"], message))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"score: {report['score']}/{report['max_score']}  (assignment {report['assignment']}, "
                 f"seed {report['seed']})")
    return "\n".join(line.rstrip() for line in lines)


def write_report(report: dict, path: str | os.PathLike) -> None:
    """Write the report as JSON, atomically (an interrupted run never leaves half a report)."""
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
