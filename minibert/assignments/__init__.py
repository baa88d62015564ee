"""Classroom assignments cut from minibert's own code, and graded function by function.

An instructor makes a handout, students fill in the bodies, the grader scores each function separately::

    python -m minibert.assignments list
    python -m minibert.assignments make backprop handout/      # cut files + structure.md
    python -m minibert.assignments grade backprop handout/ --json report.json

* :mod:`~minibert.assignments.base`: what an assignment and a task are; the shared checks;
* :mod:`~minibert.assignments.backprop` (layers' backward passes), :mod:`~minibert.assignments.blocks`
  (sub-modules' backward passes), :mod:`~minibert.assignments.losses_and_adamw`,
  :mod:`~minibert.assignments.masking`: the assignments, each with its checks;
* :mod:`~minibert.assignments.handout`: ``make`` (cutting with ``ast``, writing structure.md);
* :mod:`~minibert.assignments.grader`: ``grade`` (isolated imports, per-function points, the report).
"""
from minibert.assignments.catalog import ASSIGNMENTS, get
from minibert.assignments.grader import format_report, grade, write_report
from minibert.assignments.handout import make

__all__ = ["ASSIGNMENTS", "get", "make", "grade", "format_report", "write_report"]
