"""Cutting a handout from the real code: ``make(name, out_dir)``.

The handout is the library's own source files with the bodies of the assignment's functions replaced by

    raise NotImplementedError("assignment <name>: write <function>; see structure.md")

Everything else stays byte for byte: signatures, docstrings (which state each function's contract),
comments, the forward passes a backward needs, imports. The cut is made with ``ast`` so it finds the exact
lines of each body however it is formatted, and the edit is applied to the text, so no formatting is lost.
Next to the files, ``structure.md`` tells students what to write, what each function is checked on, how
many points it is worth, and how to run the grader.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

from minibert.assignments.base import Assignment
from minibert.assignments.catalog import get
from minibert.files import atomic_write_text

LIBRARY_ROOT = Path(__file__).resolve().parent.parent  # the minibert/ package directory


def find_function_scope(tree: ast.Module, class_path: str) -> ast.ClassDef:
    """The ``class`` node ``A`` or ``A.B`` at the top level of ``tree``; KeyError if absent."""
    node = tree
    for class_name in class_path.split("."):
        node = next((n for n in node.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
        if node is None:
            raise KeyError(f"no class {class_path!r}")
    return node


def find_function(tree: ast.Module, qualified_name: str) -> ast.FunctionDef:
    """The ``def`` node of ``name`` or ``Class.method`` at the top level of ``tree``; KeyError if absent."""
    class_path, _, name = qualified_name.rpartition(".")
    scope = find_function_scope(tree, class_path).body if class_path else tree.body
    for node in scope:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise KeyError(f"no function {qualified_name!r}")


def cut_functions(source: str, functions: list[str], assignment: str) -> str:
    """``source`` with the body of each of ``functions`` (after its docstring) replaced by a raise."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []  # (first line index, end line index exclusive, replacement lines)
    for qualified_name in functions:
        node = find_function(tree, qualified_name)
        body = node.body
        has_docstring = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                         and isinstance(body[0].value.value, str))
        first = body[1] if has_docstring and len(body) > 1 else body[0]
        start = (body[0].end_lineno if has_docstring else first.lineno - 1)  # 0-based index after the docstring
        indent = " " * first.col_offset
        message = f"assignment {assignment}: write {qualified_name}; see structure.md"
        edits.append((start, node.end_lineno, [f"{indent}raise NotImplementedError({message!r})\n"]))
    for start, end, replacement in sorted(edits, reverse=True):  # bottom up, so indices stay valid
        lines[start:end] = replacement
    return "".join(lines)


def _signature(source: str, qualified_name: str) -> tuple[str, str]:
    """(``def ...:`` line(s), docstring) of a function, as written in the library."""
    node = find_function(ast.parse(source), qualified_name)
    lines = source.splitlines()
    header = "\n".join(lines[node.lineno - 1:node.body[0].lineno - 1]).strip()
    doc = ast.get_docstring(node) or ""
    if "." in qualified_name:  # a method: its class's docstring states the formulas it shares
        class_name = qualified_name.rsplit(".", 1)[0]
        class_doc = ast.get_docstring(find_function_scope(ast.parse(source), class_name)) or ""
        doc = f"{doc}\n\nFrom the docstring of `{class_name}`:\n\n{class_doc}".strip()
    return header, doc


def _points(n: int) -> str:
    return f"{n} point" if n == 1 else f"{n} points"


def structure_md(assignment: Assignment, sources: dict[str, str]) -> str:
    """The text of structure.md for ``assignment``; ``sources`` maps library file -> pristine source."""
    out = [f"# Assignment `{assignment.name}`: {assignment.title}", "", assignment.summary, "",
           "## What to write", "",
           f"Write the body of each function below in the file named, in this folder. Every other line of "
           f"those files is minibert's own code: keep signatures, names and return shapes as they are, and "
           f"call the helpers that are already there. {assignment.max_points} points in all; each function "
           f"is graded on its own, so one wrong function costs only its own points. The grader imports the files "
           f"of this folder by path; everything they import from `minibert` is the installed library.", "",
           "| file | function | points | what the grader checks |", "|---|---|---|---|"]
    for task in assignment.tasks:
        out.append(f"| `{task.handout_name}` | `{task.function}` | {task.points} | {task.grading} |")
    out += ["", "## Contracts", ""]
    for task in assignment.tasks:
        header, doc = _signature(sources[task.file], task.function)
        out += [f"### `{task.function}` ({task.handout_name}, {_points(task.points)})", "", "```python", header,
                "```", "", doc, ""]
    out += ["## Grading", "",
            "Each function is run on fresh random inputs (a new seed each run, printed with the score) and "
            "checked as the table above says: numbers are compared in float64 with minibert's own "
            "implementation (relative error below 1e-10), and gradients also with central differences "
            "(relative error below 1e-6), which need no reference at all. Check your work any time:",
            "", "```bash", f"python -m minibert.assignments grade {assignment.name} . --json report.json", "```", "",
            "It prints one row per function (points, status, and what was wrong) and writes the same as JSON. "
            "A function that raises gets 0 points and its exception is shown; the others are still graded. "
            "`python -m minibert.reference.gradcheck` shows how a gradient check works.", ""]
    return "\n".join(out)


def make(name: str, out_dir: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write assignment ``name``'s handout into ``out_dir``: the cut files and ``structure.md``.

    Returns the paths written. Refuses (FileExistsError) to overwrite a file already in ``out_dir``
    unless ``force``: a student's work must never be replaced by a fresh handout by accident.
    """
    assignment = get(name)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder for the handout")
    sources = {file: (LIBRARY_ROOT / file).read_text(encoding="utf-8") for file in assignment.files}
    written = {out / Path(file).name: cut_functions(source, [t.function for t in assignment.tasks if t.file == file],
                                                      name) for file, source in sources.items()}
    written[out / "structure.md"] = structure_md(assignment, sources)
    existing = [str(path) for path in written if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); choose an empty folder or pass force=True "
                              f"(--force) to overwrite")
    for path, text in written.items():
        atomic_write_text(path, text)
    return list(written)
