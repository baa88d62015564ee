"""Cutting a handout from the real code: ``make(name, out_dir, hints=...)``.

The handout is the library's own source files with the bodies of the assignment's functions replaced by

    raise NotImplementedError("assignment <name>: write <function>; see structure.md")

(in C++, the region between ``// BEGIN ASSIGNMENT f`` and ``// END ASSIGNMENT f`` becomes a ``throw``).
Everything else stays byte for byte: signatures, comments, the forward passes a backward needs, imports.
The cut is made with ``ast`` so it finds the exact lines of each body however it is formatted, and the edit
is applied to the text, so no formatting is lost.

``hints`` says how much of the answer the handout shows, per cut function:

* ``none``: the docstring is replaced by the task's contract (shapes, what to return, what the cache
  holds) and structure.md asks for the derivation. The library's docstrings of backward passes state
  their formulas, so this is the default for them;
* ``formulas``: the library's docstring stays (the default for everything else);
* ``full``: the docstring, and the comment lines of the library's body as an outline to fill in.

Next to the files: ``structure.md`` (what to write, the contracts, the points, how grading works) and
``assignment.ipynb``, a notebook that loads the student's files, has one check cell per function (a
gradient check with ``minibert.reference.gradcheck`` for backward passes) and asks a few written questions.
"""
from __future__ import annotations

import ast
import json
import os
import textwrap
from pathlib import Path

from minibert.assignments.base import HINT_LEVELS, Assignment
from minibert.assignments.catalog import get
from minibert.assignments.integrity import BEGIN, END
from minibert.files import atomic_write_text

LIBRARY_ROOT = Path(__file__).resolve().parent.parent  # the minibert/ package directory
NOTEBOOK = "assignment.ipynb"


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


def _docstring(text: str, indent: str) -> list[str]:
    """``text`` as the lines of a docstring indented by ``indent``, paragraphs wrapped at 110 columns."""
    lines = []
    for paragraph in text.strip().split("\n\n"):
        lines += textwrap.wrap(paragraph, 110 - len(indent) - 3) + [""]
    lines = lines[:-1]
    body = [f"{indent}{line}".rstrip() + "\n" for line in lines[1:]]
    if not body:
        return [f'{indent}"""{lines[0]}"""\n']
    return [f'{indent}"""{lines[0]}\n', *body, f'{indent}"""\n']


def cut_functions(source: str, functions: dict[str, tuple[str, str | None]], assignment: str) -> str:
    """``source`` with the body of each function replaced by a raise. ``functions`` maps each function to
    (hints, contract): with hints "none" and a contract the docstring becomes the contract; with "full" the
    comment lines of the body stay above the raise."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []  # (first line index, end line index exclusive, replacement lines)
    for qualified_name, (hints, contract) in functions.items():
        node = find_function(tree, qualified_name)
        body = node.body
        has_docstring = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                         and isinstance(body[0].value.value, str))
        first = body[1] if has_docstring and len(body) > 1 else body[0]
        indent = " " * first.col_offset
        start = body[0].end_lineno if has_docstring else first.lineno - 1  # 0-based index after the docstring
        outline = [line for line in lines[start:node.end_lineno] if line.strip().startswith("#")] \
            if hints == "full" else []
        message = f"assignment {assignment}: write {qualified_name}; see structure.md"
        replacement = outline + [f"{indent}raise NotImplementedError({message!r})\n"]
        if hints == "none" and contract and has_docstring:
            replacement = _docstring(contract, indent) + replacement
            start = body[0].lineno - 1
        edits.append((start, node.end_lineno, replacement))
    for start, end, replacement in sorted(edits, reverse=True):  # bottom up, so indices stay valid
        lines[start:end] = replacement
    return "".join(lines)


def cut_native(source: str, functions: list[str], assignment: str, can_throw: bool = True) -> str:
    """``source`` (C++ or CUDA) with the region of each function between its BEGIN and END markers
    replaced by a throw (``can_throw=False``, for a CUDA kernel: left empty)."""
    for function in functions:
        begin, end = BEGIN.format(function), END.format(function)
        head, rest = source.split(begin, 1)
        _, tail = rest.split(end, 1)
        indent = head[head.rfind("\n") + 1:]
        message = f"assignment {assignment}: write {function}; see structure.md"
        body = (f"\n{indent}// Your code here: the online-softmax loop over key tiles (see the comment at the "
                f"top of the file).\n")
        if can_throw:
            body += f'{indent}throw std::runtime_error("{message}");\n'
        source = head + begin + body + indent + end + tail
    return source


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


def _points(n: float) -> str:
    return f"{n:g} point" if n == 1 else f"{n:g} points"


def structure_md(assignment: Assignment, sources: dict[str, str], hints: dict[str, str]) -> str:
    """The text of structure.md for ``assignment``; ``sources`` maps library file -> pristine source,
    ``hints`` each function to its hint level."""
    out = [f"# Assignment `{assignment.name}`: {assignment.title}", "", assignment.summary, "",
           "## What to write", "",
           f"Write the body of each function below in the file named, in this folder. Every other line of "
           f"those files is minibert's own code: keep signatures, names and return shapes as they are, and "
           f"call the helpers that are already there. {assignment.max_points} points in all; each function "
           f"is graded on its own, and within a function each case (an input variant and one output) earns "
           f"its share of the points. `{NOTEBOOK}` has a check cell per function and the written questions.",
           "", "| file | function | points | what the grader checks |", "|---|---|---|---|"]
    for task in assignment.tasks:
        gpu = " (graded only where a CUDA GPU is present)" if task.needs == "cuda" else ""
        out.append(f"| `{task.handout_name}` | `{task.function}` | {task.points} | {task.grading}{gpu} |")
    out += ["", "## Contracts", ""]
    derive = []
    for task in assignment.tasks:
        if task.handout_name.endswith(".py"):
            header, doc = _signature(sources[task.file], task.function)
            if hints[task.function] == "none" and task.contract:
                doc = task.contract
                derive.append(task.function)
            code = ["```python", header, "```"]
        else:
            doc, code = task.grading, []
        out += [f"### `{task.function}` ({task.handout_name}, {_points(task.points)})", "", *code, "",
                textwrap.dedent(doc), ""]
    if derive:
        out += ["## Derivations", "",
                "The contracts above say what each function receives and returns, not how to compute it. "
                "For each of " + ", ".join(f"`{f}`" for f in derive) + ": write the forward pass as "
                "equations on scalars, differentiate with the chain rule, then turn the result into array "
                "operations over whole tensors. Hand in the derivation with your code (the notebook has a "
                "cell for it); check each one with the gradient check cell before you run the grader.", ""]
    out += ["## Grading", "",
            "Check your work any time:", "", "```bash", f"minibert assignment grade {assignment.name} . --verbose",
            "```", "",
            "Your code runs in a separate process, with a time limit per function and a memory limit; the "
            "grader computes the expected outputs itself first, and compares. Numbers are compared in float64 "
            "with minibert's own implementation (relative error below 1e-10), and gradients also with central "
            "differences (relative error below 1e-6), which need no reference at all. A failing case shows "
            "the relative error, the worst element with your value and the expected one, and for gradients "
            "the central-difference error of your own function, which the notebook's check cell reproduces.",
            "",
            "The inputs come from a public seed (`--seed N` tries others). Your instructor grades with "
            "hidden cases as well, drawn from a secret seed: code that is right in general passes them, "
            "code fitted to the public inputs does not.",
            "",
            "Graded code must be your own: the grader reads your files before running them, and a graded "
            "function that imports minibert's version of itself (any minibert import the handout does not "
            "already have), changes minibert's modules (`module.function = ...`, `setattr`, `sys.modules`, "
            "`importlib`, ...) or depends on code that does, scores 0, with the reason.", ""]
    return "\n".join(out)


def _cell(kind: str, source: str) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": source.strip("\n").splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def notebook(assignment: Assignment, hints: dict[str, str]) -> dict:
    """The handout's notebook (nbformat 4): setup, one check cell per function, the questions."""
    files = ", ".join(f"`{Path(f).name}`" for f in assignment.files)
    cells = [_cell("markdown", f"# Assignment `{assignment.name}`: {assignment.title}\n\n{assignment.summary}\n\n"
                               f"Write the functions in {files} (see `structure.md`). After each change, run the "
                               f"setup cell (it imports your files afresh) and the function's check cell. When "
                               f"every check passes, answer the questions, then run the grader:\n\n"
                               f"    minibert assignment grade {assignment.name} . --verbose"),
             _cell("code", assignment.notebook_setup)]
    for task in assignment.tasks:
        cells += [_cell("markdown", f"## `{task.function}` ({task.handout_name}, {_points(task.points)})\n\n"
                                    f"The grader checks: {task.grading}."),
                  _cell("code", task.notebook)]
    derive = [t.function for t in assignment.tasks if hints[t.function] == "none" and t.contract]
    if derive:
        cells.append(_cell("markdown", "## Derivations\n\nFor " + ", ".join(f"`{f}`" for f in derive) +
                           ": the forward as scalar equations, the chain rule, then the array form."))
        cells.append(_cell("markdown", "*Your derivations:*"))
    if assignment.questions:
        cells.append(_cell("markdown", "## Questions"))
        for number, question in enumerate(assignment.questions, 1):
            cells += [_cell("markdown", f"**Q{number}.** {question}"), _cell("markdown", "*Your answer:*")]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                         "name": "python3"}, "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 4}


def make(name: str, out_dir: str | os.PathLike, force: bool = False, hints: str | None = None) -> list[Path]:
    """Write assignment ``name``'s handout into ``out_dir``: the cut files, structure.md and the notebook.

    ``hints``: "none", "formulas" or "full" for every function (default: "none" for backward passes,
    whose library docstrings give the formula, "formulas" for the rest). Returns the paths written.
    Refuses (FileExistsError) to overwrite a file already in ``out_dir`` unless ``force``: a student's work
    must never be replaced by a fresh handout by accident.
    """
    assignment = get(name)
    if hints is not None and hints not in HINT_LEVELS:
        raise ValueError(f"hints must be one of {', '.join(HINT_LEVELS)}, got {hints!r}")
    levels = {t.function: hints or t.default_hints for t in assignment.tasks}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder for the handout")
    sources = {file: (LIBRARY_ROOT / file).read_text(encoding="utf-8") for file in assignment.files}
    written = {}
    for file, source in sources.items():
        tasks = [t for t in assignment.tasks if t.file == file]
        if file.endswith(".py"):
            text = cut_functions(source, {t.function: (levels[t.function], t.contract) for t in tasks}, name)
        else:
            text = cut_native(source, [t.function for t in tasks], name, can_throw=not file.endswith(".cu"))
        written[out / Path(file).name] = text
    written[out / "structure.md"] = structure_md(assignment, sources, levels)
    written[out / NOTEBOOK] = json.dumps(notebook(assignment, levels), indent=1) + "\n"
    existing = [str(path) for path in written if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); choose an empty folder or pass force=True "
                              f"(--force) to overwrite")
    for path, text in written.items():
        atomic_write_text(path, text)
    return list(written)
