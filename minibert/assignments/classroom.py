"""Grading a whole class: ``grade_all(name, submissions_dir, csv_path)``.

``submissions_dir`` holds one folder per student (the folder's name is the student's). Each is graded on
its own, in its own process, ``jobs`` at a time, with the public cases and, given a class seed, the hidden
ones. Written next to the CSV (``grades.csv``):

* ``grades.csv``: one row per student: the points of each function, the total, and for each function
  that lost points its first failing case;
* ``grades/<student>.json``: each student's full report (every case), to send back;
* ``grades.png``: a histogram of the totals.
"""
from __future__ import annotations

import concurrent.futures
import csv
import io
import multiprocessing
import os
import secrets
from pathlib import Path

from minibert.assignments.catalog import get
from minibert.assignments.grader import DEFAULT_TIME_LIMIT, grade, write_report
from minibert.files import atomic_write_text


def read_class_seed(path: str | os.PathLike) -> tuple[int, bool]:
    """The class seed stored in ``path``, creating the file with a fresh secret seed when it does not exist
    (readable by its owner only). Returns (seed, created)."""
    path = Path(path)
    if path.exists():
        text = path.read_text(encoding="utf-8").strip()
        try:
            return int(text), False
        except ValueError:
            raise ValueError(f"{path} must hold one integer (the class seed), found {text[:40]!r}") from None
    seed = secrets.randbits(63)
    atomic_write_text(path, f"{seed}\n")
    path.chmod(0o600)
    return seed, True


def _grade_one(name, folder, class_seed, time_limit_s):
    return grade(name, folder, class_seed=class_seed, time_limit_s=time_limit_s)


def grade_all(name: str, submissions_dir: str | os.PathLike, csv_path: str | os.PathLike,
              class_seed: int | None = None, jobs: int = 1, time_limit_s: float = DEFAULT_TIME_LIMIT) -> list[dict]:
    """Grade every student folder in ``submissions_dir``; write the CSV, the JSON reports and the histogram.
    Returns the reports, sorted by student."""
    assignment = get(name)
    root = Path(submissions_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"submissions folder {root} does not exist or is not a folder")
    students = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise ValueError(f"{root} holds no student folders (one folder per student, named after them)")
    if jobs > 1:
        # "spawn": each worker is a fresh interpreter, so nothing of one student's grading leaks into another's
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            reports = list(pool.map(_grade_one, [name] * len(students), students, [class_seed] * len(students),
                                    [time_limit_s] * len(students)))
    else:
        reports = [_grade_one(name, folder, class_seed, time_limit_s) for folder in students]
    csv_path = Path(csv_path)
    atomic_write_text(csv_path, grades_csv(assignment, students, reports))
    report_dir = csv_path.with_suffix("")
    report_dir.mkdir(parents=True, exist_ok=True)
    for folder, report in zip(students, reports):
        write_report(report, report_dir / f"{folder.name}.json")
    histogram([r["score"] for r in reports], reports[0]["max_score"], csv_path.with_suffix(".png"), name)
    return reports


def grades_csv(assignment, students: list[Path], reports: list[dict]) -> str:
    """The CSV text: student, points per function, total, then the first error of each function."""
    functions = [t.function for t in assignment.tasks]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["student", *functions, "total", *(f"{f} error" for f in functions)])
    for folder, report in zip(students, reports):
        rows = {r["function"]: r for r in report["functions"]}
        errors = [rows[f]["message"] if rows[f]["status"] not in ("pass", "skipped") else "" for f in functions]
        writer.writerow([folder.name, *(f"{rows[f]['points']:g}" for f in functions), f"{report['score']:g}",
                         *errors])
    return out.getvalue()


def histogram(totals: list[float], max_score: int, path: Path, name: str) -> None:
    """A histogram of the class's totals, saved as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(totals, bins=min(20, max(1, int(max_score))), range=(0, max_score), edgecolor="black")
    ax.set_xlabel(f"total points (of {max_score})")
    ax.set_ylabel("students")
    ax.set_title(f"assignment {name}: {len(totals)} submissions")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
