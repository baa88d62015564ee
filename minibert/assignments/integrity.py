"""Checks on a student's files before anything runs: graded code must be the student's own.

For a Python file (read with ``ast``, never imported here):

* **imports from minibert**: only those the handout itself has (``from minibert import rng`` in
  ``layers.py``, ``from minibert.reference import layers as L`` in ``blocks.py``...). Anything else, such as
  ``from minibert.reference.layers import linear_backward``, would hand in the library's answer;
* **changing the library**: assigning to, or deleting, an attribute of a name bound to a minibert
  import (``L.layernorm_backward = ...``);
* **the usual back doors**: ``setattr``/``delattr``, ``__import__``, ``exec``/``eval``/``compile``, the
  modules ``importlib``, ``builtins``, ``gc`` and ``ctypes``, and the attributes ``sys.modules``,
  ``__dict__``, ``__code__``, ``__globals__`` and ``__builtins__``.

A violation inside a graded function costs that function. One elsewhere costs every graded function of
the file that uses what it binds (an import used by two functions costs both), and every graded
function of the file when it binds nothing (a statement that changes the library at import time).

For a C++ or CUDA file, the region between ``// BEGIN ASSIGNMENT f`` and ``// END ASSIGNMENT f`` must be
there and must not use torch, ATen or c10 (the kernel is to be written, not called) nor ``#include``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

FORBIDDEN_MODULES = {"importlib", "builtins", "gc", "ctypes"}
FORBIDDEN_CALLS = {"setattr", "delattr", "__import__", "exec", "eval", "compile"}
FORBIDDEN_ATTRIBUTES = {"__dict__", "__code__", "__globals__", "__builtins__"}


def allowed_minibert_imports(pristine_source: str) -> set[tuple[str, str | None]]:
    """The (module, name) pairs the library's own file imports from minibert (name None: ``import m``)."""
    allowed = set()
    for node in ast.walk(ast.parse(pristine_source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "minibert":
            allowed |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            allowed |= {(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "minibert"}
    return allowed


def _describe_allowed(allowed) -> str:
    if not allowed:
        return "the handout imports nothing from minibert"
    parts = sorted(f"import {m}" if n is None else f"from {m} import {n}" for m, n in allowed)
    return "the only minibert imports allowed are the handout's own: " + "; ".join(parts)


class _Finder(ast.NodeVisitor):
    """Collects (node, message, names bound) for every violation in a module."""

    def __init__(self, allowed):
        self.allowed = allowed
        self.library_names: set[str] = set()  # names bound to minibert imports
        self.found: list[tuple[ast.AST, str, set]] = []

    def _import(self, node, module: str, names: list[tuple[str | None, str]]) -> None:
        """``names``: (imported name or None, bound name)."""
        root = module.split(".")[0]
        if root in FORBIDDEN_MODULES:
            self.found.append((node, f"imports {module}, which can reach around the rules", set()))
        if root != "minibert":
            return
        bound = {alias for _, alias in names}
        self.library_names |= bound
        refused = [f"{module}.{name}" if name else module for name, _ in names if (module, name) not in self.allowed]
        if refused:
            self.found.append((node, f"imports {', '.join(refused)}: graded code must be your own, and "
                                     f"{_describe_allowed(self.allowed)}", bound))

    def visit_Import(self, node):
        for alias in node.names:
            self._import(node, alias.name, [(None, alias.asname or alias.name.split(".")[0])])

    def visit_ImportFrom(self, node):
        self._import(node, node.module or "", [(a.name, a.asname or a.name) for a in node.names])

    def visit_Call(self, node):
        if isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            self.found.append((node, f"calls {node.func.id}(), which can change code the grader relies on", set()))
        self.generic_visit(node)

    def visit_Attribute(self, node):
        if node.attr in FORBIDDEN_ATTRIBUTES or (node.attr == "modules" and isinstance(node.value, ast.Name)
                                                 and node.value.id == "sys"):
            self.found.append((node, f"uses {ast.unparse(node)}, which can change code the grader relies on",
                               set()))
        self.generic_visit(node)

    def _targets(self, node, targets):
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and _root(sub) in self.library_names:
                    self.found.append((node, f"changes the library: `{ast.unparse(sub)} = ...` replaces "
                                             f"part of minibert instead of writing your own code", set()))

    def visit_Assign(self, node):
        self._targets(node, node.targets)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._targets(node, [node.target])
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._targets(node, [node.target])
        self.generic_visit(node)

    def visit_Delete(self, node):
        self._targets(node, node.targets)
        self.generic_visit(node)


def _root(node) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _owners(tree: ast.Module) -> dict[int, str]:
    """id(node) -> the top-level function ("f"), method ("C.m") or class ("C") it lies in."""
    owners = {}
    for top in tree.body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for node in ast.walk(top):
                owners[id(node)] = top.name
            if isinstance(top, ast.ClassDef):
                for method in top.body:
                    if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        for node in ast.walk(method):
                            owners[id(node)] = f"{top.name}.{method.name}"
    return owners


def _uses(tree: ast.Module, qualified_name: str) -> set[str]:
    """Every name the function uses, following the top-level functions and classes it calls."""
    tops = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    node = tops.get(qualified_name.split(".")[0])
    if node is not None and "." in qualified_name:
        node = next((m for m in node.body if getattr(m, "name", None) == qualified_name.split(".")[1]), None)
    todo, seen = ([node] if node is not None else []), set()
    while todo:
        for sub in ast.walk(todo.pop()):
            if isinstance(sub, ast.Name) and sub.id not in seen:
                seen.add(sub.id)
                if sub.id in tops:
                    todo.append(tops[sub.id])
    return seen


def python_violations(source: str, filename: str, pristine_source: str, graded: list[str]) -> dict[str, list[str]]:
    """{graded function: [violation messages]} for the student's ``source`` of ``filename``.

    ``pristine_source`` (the library's file) says which minibert imports are allowed; ``graded`` lists the
    functions of this file that are graded. Raises SyntaxError when the source does not parse.
    """
    tree = ast.parse(source, filename=filename)
    finder = _Finder(allowed_minibert_imports(pristine_source))
    finder.visit(tree)
    owners = _owners(tree)
    result: dict[str, list[str]] = {}
    for node, message, bound in finder.found:
        owner = owners.get(id(node))
        if owner in graded:
            touched = [owner]
        elif owner is not None and "." not in owner and owner[:1].isupper() and any(
                g.startswith(owner + ".") for g in graded):  # a class's other code: its graded methods
            touched = [g for g in graded if g.startswith(owner + ".")]
        else:
            touched = [g for g in graded if bound & _uses(tree, g)] if bound else []
            touched = touched or list(graded)
        where = f"{filename}:{node.lineno}"
        for function in touched:
            result.setdefault(function, []).append(f"{where} {message}")
    return result


BEGIN, END = "// BEGIN ASSIGNMENT {}", "// END ASSIGNMENT {}"
CPP_FORBIDDEN = re.compile(r"\b(torch|at|c10|aten)\s*::|#\s*include")


def student_region(source: str, function: str) -> str | None:
    """The text between the BEGIN and END markers of ``function``, or None when they are missing."""
    begin, end = BEGIN.format(function), END.format(function)
    if source.count(begin) != 1 or source.count(end) != 1 or source.index(begin) > source.index(end):
        return None
    return source[source.index(begin) + len(begin):source.index(end)]


def cpp_violations(source: str, filename: str, function: str) -> list[str]:
    """What is wrong with the student's region of ``function`` in a C++/CUDA file, in words."""
    region = student_region(source, function)
    if region is None:
        return [f"{filename}: the lines `{BEGIN.format(function)}` and `{END.format(function)}` must stay, once "
                f"each, around your code"]
    first = source.index(BEGIN.format(function))
    found = []
    for match in CPP_FORBIDDEN.finditer(region):
        line = source.count("\n", 0, first + len(BEGIN.format(function)) + match.start()) + 1
        found.append(f"{filename}:{line} uses `{match.group(0).strip()}` inside your kernel: write the loops "
                     f"yourself, without torch/ATen calls or other files")
    return found


def check_files(assignment, folder: Path, library_root: Path) -> dict[str, list[str]]:
    """{function: [violations]} for every graded function of ``assignment`` in the student's ``folder``
    (files that are missing or do not parse are left to the grader, which reports them per function)."""
    result: dict[str, list[str]] = {}
    for file in assignment.files:
        path = folder / Path(file).name
        if not path.is_file():
            continue
        graded = [t.function for t in assignment.tasks if t.file == file]
        source = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".py":
            try:
                found = python_violations(source, path.name, (library_root / file).read_text(encoding="utf-8"),
                                          graded)
            except SyntaxError:
                continue
        else:
            found = {f: cpp_violations(source, path.name, f) for f in graded}
        for function, messages in found.items():
            if messages:
                result.setdefault(function, []).extend(messages)
    return result
