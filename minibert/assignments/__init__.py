"""Classroom assignments cut from minibert's own code, and graded function by function.

An instructor makes a handout, students fill in the bodies, the grader scores each case of each function::

    minibert assignment list
    minibert assignment make backprop handout/                 # cut files, structure.md, assignment.ipynb
    minibert assignment grade backprop handout/ --verbose      # what a student runs
    minibert assignment grade-all backprop submissions/ --csv grades.csv --class-seed-file seed.txt

* :mod:`~minibert.assignments.base`: what an assignment, a task and a case are; the shared judging;
* :mod:`~minibert.assignments.backprop` (layers' backward passes), :mod:`~minibert.assignments.blocks`
  (sub-modules' backward passes), :mod:`~minibert.assignments.losses_and_adamw`,
  :mod:`~minibert.assignments.masking`, :mod:`~minibert.assignments.kernel` (fused attention in C++):
  the assignments, each with its checks;
* :mod:`~minibert.assignments.handout`: ``make`` (cutting with ``ast``, hints, structure.md, the notebook);
* :mod:`~minibert.assignments.integrity`: the static checks that graded code is the student's own;
* :mod:`~minibert.assignments.sandbox`: the student's code in a process of its own, with limits;
* :mod:`~minibert.assignments.grader`: ``grade`` (per-case points, the report);
* :mod:`~minibert.assignments.classroom`: ``grade_all`` (a class: CSV, JSON reports, histogram).
"""
from minibert.assignments.catalog import ASSIGNMENTS, get
from minibert.assignments.grader import format_report, grade, write_report
from minibert.assignments.handout import make

__all__ = ["ASSIGNMENTS", "get", "make", "grade", "format_report", "write_report"]
