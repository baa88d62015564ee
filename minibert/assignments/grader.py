"""Grading a student's folder: ``grade(name, student_dir) -> report``.

1. The student's files are read with ``ast`` (never imported here) and checked for code that is not
   theirs or that changes the library (:mod:`~minibert.assignments.integrity`); a violation scores 0 for
   the function(s) it touches, with the reason in plain words.
2. Each task's check computes the reference outputs here, in the grading process, and runs the
   student's function in a child process (:mod:`~minibert.assignments.sandbox`) with a time limit per
   function and a memory limit; all comparisons happen here.
3. Every case is reported with its share of the function's points. The public cases are drawn from
   ``seed`` (the same for everyone unless a student asks for another); an instructor's ``class_seed``
   adds as many hidden cases again, so a submission tuned to the public inputs gains nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from minibert.assignments.base import TaskRun
from minibert.assignments.catalog import get
from minibert.assignments.integrity import check_files
from minibert.assignments.sandbox import DEFAULT_MEMORY_LIMIT_MB, Sandbox, StudentFailure
from minibert.files import atomic_write_text

DEFAULT_TIME_LIMIT = 60.0  # seconds per function; a correct one needs well under 1 s
DEFAULT_BUILD_TIME_LIMIT = 300.0  # seconds to compile a C++ file
PUBLIC_SEED = 0  # the inputs every student's `grade` uses unless --seed says otherwise
LIBRARY_ROOT = Path(__file__).resolve().parent.parent  # the minibert/ package directory


@dataclasses.dataclass
class FunctionResult:
    """The grade of one function. ``status``: "pass", "partial", "fail", "error", "not implemented",
    "timeout", "crashed", "missing", "violation" or "skipped" (a task that needs a GPU, on a machine
    without one; it counts for nothing). ``message``: the first failing case and what was wrong with it.
    ``cases``: every case as {name, passed, message}; ``notes``: remarks that cost nothing."""

    file: str
    function: str
    points: float
    max_points: int
    status: str
    message: str
    cases: list
    notes: list


def grade(name: str, student_dir: str | os.PathLike, seed: int | None = None, class_seed: int | None = None,
          time_limit_s: float = DEFAULT_TIME_LIMIT, memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
          build_time_limit_s: float = DEFAULT_BUILD_TIME_LIMIT) -> dict:
    """Grade the student's folder for assignment ``name``; returns the report as a dict.

    ``seed``: the public inputs (default ``PUBLIC_SEED``); ``class_seed``: also run the hidden cases it
    draws. ``time_limit_s``: each function's budget; ``memory_limit_mb``: the student process's.
    Report keys: assignment, student_dir, seed, hidden (whether hidden cases ran), score, max_score
    (skipped tasks excluded), functions (:class:`FunctionResult` s as dicts).
    """
    assignment = get(name)
    folder = Path(student_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"student folder {folder} does not exist or is not a folder; make a handout "
                                f"with `minibert assignment make {name} {folder}`")
    seed = PUBLIC_SEED if seed is None else int(seed)
    violations = check_files(assignment, folder, LIBRARY_ROOT)
    results = []
    with Sandbox(folder, memory_limit_mb, assignment.loaders) as sandbox:
        for index, task in enumerate(assignment.tasks):
            seeds = [("public", [seed, index])] + ([("hidden", [class_seed, index, 1])] if class_seed is not None
                                                   else [])
            results.append(_grade_task(task, sandbox, violations.get(task.function), seeds, time_limit_s,
                                       build_time_limit_s))
    counted = [r for r in results if r.status != "skipped"]
    return {"assignment": name, "student_dir": str(folder), "seed": seed, "hidden": class_seed is not None,
            "score": round(sum(r.points for r in counted), 2), "max_score": sum(r.max_points for r in counted),
            "functions": [dataclasses.asdict(r) for r in results]}


def _grade_task(task, sandbox, violations, seeds, time_limit_s, build_time_limit_s) -> FunctionResult:
    """Run one task's check (public and hidden cases) and turn the cases into a FunctionResult."""
    def result(status, message, points=0.0, cases=(), notes=()):
        return FunctionResult(task.handout_name, task.function, points, task.points, status, message,
                              [dataclasses.asdict(c) for c in cases], list(notes))

    if task.needs == "cuda" and not _cuda_available():
        return result("skipped", "needs a CUDA GPU; this machine has none (graded where one is present)")
    if violations:
        return result("violation", "; ".join(violations) + " -- this function scores 0")
    limit = build_time_limit_s if not task.handout_name.endswith(".py") else time_limit_s
    try:
        sandbox.load(task.handout_name, time.monotonic() + limit)
    except StudentFailure as exc:
        status = "timeout" if exc.kind == "timeout" else "missing"
        message = f"building or importing {task.handout_name} took more than {limit:g} s" if exc.kind == "timeout" \
            else str(exc)
        return result(status, message)
    cases, notes = [], []
    for kind, entropy in seeds:
        run = TaskRun(task, sandbox, time_limit_s, hidden=kind == "hidden")
        task.check(run, np.random.default_rng(entropy))
        cases += run.cases
        notes += [n for n in run.notes if n not in notes]
    passed = sum(c.passed for c in cases)
    points = round(task.points * passed / len(cases), 2) if cases else 0.0
    failing = [c for c in cases if not c.passed]
    if not failing:
        return result("pass", "", float(task.points), cases, notes)
    status = "partial" if passed else failing[0].kind
    message = f"{failing[0].name}: {failing[0].message}"
    if passed:
        message = f"{passed} of {len(cases)} cases pass; first failure: {message}"
    return result(status, message, points, cases, notes)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _points(p: float) -> str:
    return f"{p:g}"


def format_report(report: dict, verbose: bool = False) -> str:
    """The report as text: one row per function, then, under each function that lost points, its failing
    cases in full (``verbose``: every case, passes included, and the notes)."""
    rows = [("file", "function", "points", "status")]
    for r in report["functions"]:
        rows.append((r["file"], r["function"], f"{_points(r['points'])}/{r['max_points']}", r["status"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    details = []
    for r in report["functions"]:
        shown = r["cases"] if verbose else [c for c in r["cases"] if not c["passed"]]
        if r["status"] in ("pass", "skipped") and not (verbose and (shown or r["notes"])):
            continue
        if not shown and r["status"] != "pass":
            details.append(f"{r['function']}: {r['status']}: {r['message']}")
            continue
        share = r["max_points"] / len(r["cases"]) if r["cases"] else 0
        passed = sum(c["passed"] for c in r["cases"])
        details.append(f"{r['function']} ({passed} of {len(r['cases'])} cases pass, {share:.3g} points each):")
        for case in shown:
            mark = "ok  " if case["passed"] else "FAIL"
            details.append(f"  {mark} {case['name']}" + (f": {case['message']}" if case["message"] else ""))
    for r in report["functions"]:
        details += [f"{r['function']}: note: {note}" for note in r["notes"]]
    hidden = ", hidden cases included" if report.get("hidden") else ""
    lines.append(f"score: {_points(report['score'])}/{report['max_score']}  (assignment {report['assignment']}, "
                 f"seed {report['seed']}{hidden})")
    return "\n".join(lines + ([""] + details if details else []))


def write_report(report: dict, path: str | os.PathLike) -> None:
    """Write the report as JSON, atomically (an interrupted run never leaves half a report)."""
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
