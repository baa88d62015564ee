"""``python -m minibert.assignments list | make NAME DIR | grade NAME DIR [--json F]``.

``add_arguments(parser)`` and ``run(args)`` let ``minibert assignment ...`` reuse the same options.
"""
from __future__ import annotations

import argparse
import sys

from minibert.assignments import ASSIGNMENTS, format_report, grade, make, write_report
from minibert.assignments.grader import DEFAULT_TIME_LIMIT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``list`` / ``make`` / ``grade`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the assignments and their functions")
    make_parser = sub.add_parser("make", help="cut a handout: the files with bodies removed, and structure.md")
    make_parser.add_argument("name", help="assignment name (see `list`)")
    make_parser.add_argument("dir", help="folder to write the handout into")
    make_parser.add_argument("--force", action="store_true", help="overwrite files already in DIR")
    grade_parser = sub.add_parser("grade", help="grade a student's folder, function by function")
    grade_parser.add_argument("name", help="assignment name (see `list`)")
    grade_parser.add_argument("dir", help="the student's folder (a filled-in handout)")
    grade_parser.add_argument("--json", metavar="F", help="also write the report as JSON to F")
    grade_parser.add_argument("--seed", type=int, help="random inputs to test on (default: fresh each run)")
    grade_parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="S",
                              help="seconds each function may run before it is stopped (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Do what ``args`` asks; returns the exit status (0 ok, 2 bad input, message on stderr)."""
    try:
        if args.action == "list":
            for assignment in ASSIGNMENTS.values():
                print(f"{assignment.name}: {assignment.title} ({assignment.max_points} points)")
                for task in assignment.tasks:
                    plural = "s" if task.points != 1 else ""
                    print(f"    {task.handout_name:<14} {task.function:<24} {task.points} point{plural}")
        elif args.action == "make":
            paths = make(args.name, args.dir, force=args.force)
            print(f"wrote {len(paths)} files to {args.dir}: {', '.join(p.name for p in paths)}")
        else:
            report = grade(args.name, args.dir, seed=args.seed, time_limit_s=args.time_limit)
            print(format_report(report))
            if args.json:
                write_report(report, args.json)
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
