"""``python -m minibert.assignments list | make | grade | grade-all``.

``add_arguments(parser)`` and ``run(args)`` let ``minibert assignment ...`` reuse the same options.
"""
from __future__ import annotations

import argparse
import sys

from minibert.assignments import ASSIGNMENTS, format_report, grade, make, write_report
from minibert.assignments.base import HINT_LEVELS
from minibert.assignments.classroom import grade_all, read_class_seed
from minibert.assignments.grader import DEFAULT_TIME_LIMIT, PUBLIC_SEED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``list`` / ``make`` / ``grade`` / ``grade-all`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the assignments and their functions")
    make_parser = sub.add_parser("make", help="cut a handout: the files with bodies removed, structure.md and "
                                              "a notebook")
    make_parser.add_argument("name", help="assignment name (see `list`)")
    make_parser.add_argument("dir", help="folder to write the handout into")
    make_parser.add_argument("--hints", choices=HINT_LEVELS,
                             help="none: contracts only (shapes, returns, cache), derive the formulas; formulas: "
                                  "the library's docstrings; full: also the body's comments as an outline "
                                  "(default: none for backward passes, formulas for the rest)")
    make_parser.add_argument("--force", action="store_true", help="overwrite files already in DIR")
    grade_parser = sub.add_parser("grade", help="grade a student's folder, function by function")
    grade_parser.add_argument("name", help="assignment name (see `list`)")
    grade_parser.add_argument("dir", help="the student's folder (a filled-in handout)")
    grade_parser.add_argument("--json", metavar="F", help="also write the report as JSON to F")
    grade_parser.add_argument("--seed", type=int, default=PUBLIC_SEED,
                              help="random inputs to test on (default: the public seed, %(default)s)")
    grade_parser.add_argument("--verbose", action="store_true", help="show every case, passes included")
    grade_parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="S",
                              help="seconds each function may run before it is stopped (default %(default)s)")
    all_parser = sub.add_parser("grade-all", help="grade a class: one folder per student -> CSV, JSON reports, "
                                                  "histogram")
    all_parser.add_argument("name", help="assignment name (see `list`)")
    all_parser.add_argument("submissions", help="folder with one folder per student")
    all_parser.add_argument("--csv", required=True, metavar="F",
                            help="the grades CSV; the reports go to F without .csv, the histogram to F.png")
    all_parser.add_argument("--class-seed-file", metavar="F",
                            help="file holding the secret class seed that draws the hidden cases (created with a "
                                 "fresh seed if absent; keep it to grade again identically)")
    all_parser.add_argument("--jobs", type=int, default=1, metavar="N", help="students graded at once")
    all_parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="S",
                            help="seconds each function may run before it is stopped (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Do what ``args`` asks; returns the exit status (0 ok, 2 bad input, message on stderr)."""
    try:
        if args.action == "list":
            for assignment in ASSIGNMENTS.values():
                print(f"{assignment.name}: {assignment.title} ({assignment.max_points} points)")
                for task in assignment.tasks:
                    plural = "s" if task.points != 1 else ""
                    gpu = "  (CUDA GPU only)" if task.needs == "cuda" else ""
                    print(f"    {task.handout_name:<26} {task.function:<24} {task.points} point{plural}{gpu}")
        elif args.action == "make":
            paths = make(args.name, args.dir, force=args.force, hints=args.hints)
            print(f"wrote {len(paths)} files to {args.dir}: {', '.join(p.name for p in paths)}")
        elif args.action == "grade":
            report = grade(args.name, args.dir, seed=args.seed, time_limit_s=args.time_limit)
            print(format_report(report, verbose=args.verbose))
            if args.json:
                write_report(report, args.json)
        else:
            class_seed = None
            if args.class_seed_file:
                class_seed, created = read_class_seed(args.class_seed_file)
                if created:
                    print(f"wrote a new class seed to {args.class_seed_file}: keep it secret, and keep it "
                          f"(grading again with it draws the same hidden cases)")
            reports = grade_all(args.name, args.submissions, args.csv, class_seed=class_seed, jobs=args.jobs,
                                time_limit_s=args.time_limit)
            for report in reports:
                print(f"{report['student_dir']}: {report['score']:g}/{report['max_score']}")
            print(f"wrote {args.csv}, one JSON report per student, and a histogram of the totals")
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as exc:
        print(f"minibert assignments: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    """Parse ``argv`` and run."""
    parser = argparse.ArgumentParser(prog="python -m minibert.assignments", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
