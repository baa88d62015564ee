"""Repository hygiene: checks about the code base as a whole, not about what it computes.

* No two modules of ``minibert/`` import each other in a circle at module level (lazy imports inside
  functions are deliberate and do not count).
* Nothing tracked cites a file outside the repository (the repository must stand on its own).
* Every path the README's reading order and the design documents name exists.
"""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
READING_ORDER_HEADING = "## Read the code in this order"


# ------------------------------------------------------------------------------------------------------
# (a) The module-level import graph of a package, and its cycles
# ------------------------------------------------------------------------------------------------------
def module_files(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} for every ``.py`` file under ``root/package`` (``__init__`` names the
    package itself: ``pkg/sub/__init__.py`` is ``pkg.sub``)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """True for ``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` (a block that never runs)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module):
    """The Import/ImportFrom nodes that run when the module is imported.

    Function bodies run later (an import there is a deliberate lazy import); class bodies, ``if``/``try``/
    ``with``/loop blocks at module level run at import time; ``if TYPE_CHECKING:`` bodies never run.
    """
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)
                         or isinstance(child, ast.excepthandler) or isinstance(child, ast.match_case))


def _ancestors(module: str) -> list[str]:
    """The packages Python initialises before ``module``: ``a.b.c`` -> ``["a", "a.b"]``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """The module-level import graph of ``root/package``: {importer: {imported module: line number}}.

    Only modules of the package are nodes. ``from a.b import c`` imports the module ``a.b.c`` when that
    file exists, else ``a.b`` (``c`` is a name defined in ``a/b/__init__.py`` or ``a/b.py``). Importing
    ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b`` first, so it is an edge to those packages
    too, except to the importer's own enclosing packages: those are already being initialised before
    the importer's first line runs, so importing them again does nothing (this is why a package
    ``__init__`` that imports its own submodules is no cycle).
    """
    modules = module_files(root, package)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        own_packages = set(_ancestors(importer)) | ({importer} if is_package else set())
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _module_level_imports(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: from the importer's package, up level - 1 packages
                    base = importer.split(".") if is_package else importer.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in modules else source)
            for target in targets:
                # An imported name may point below the last module file (``import pkg.mod.attr`` is
                # an error anyway); the deepest existing module is the one that runs.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if not target:
                    continue  # outside the package (numpy, torch, the standard library)
                for module in _ancestors(target) + [target]:
                    if module != importer and module not in own_packages and module in modules:
                        line = graph[importer].get(module, node.lineno)
                        graph[importer][module] = min(line, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as a list of modules ``[m0, m1, ..., m0]``, or None when the graph has none."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {node: WHITE for node in graph}
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        path = [start]
        colour[start] = GREY
        iterators = [iter(sorted(graph[start]))]
        while iterators:
            nxt = next(iterators[-1], None)
            if nxt is None:
                colour[path.pop()] = BLACK
                iterators.pop()
            elif colour.get(nxt) == GREY:
                return path[path.index(nxt):] + [nxt]
            elif colour.get(nxt) == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                iterators.append(iter(sorted(graph[nxt])))
    return None


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]], root: Path) -> str:
    """``a (a.py:3) -> b (b/__init__.py:7) -> a``: each step with the line that makes it."""
    modules = module_files(root, cycle[0].split(".")[0])
    steps = []
    for here, there in zip(cycle, cycle[1:]):
        rel = modules[here].relative_to(root).as_posix()
        steps.append(f"{here} imports {there} at module level ({rel}:{graph[here][there]})")
    return "\n  ".join(steps)


def test_import_graph_finds_a_cycle_in_a_synthetic_package(tmp_path):
    """The checker itself: it finds real cycles and ignores what Python handles fine."""
    def write(rel, text):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    write("pkg/__init__.py", "from pkg.config import Config\n")
    write("pkg/config.py", "import os\n")
    # A package whose __init__ imports its submodules, which import each other and the package's
    # siblings: normal, no cycle.
    write("pkg/tok/__init__.py", "from pkg.tok.bert import Tokenizer\nfrom . import basic\n")
    write("pkg/tok/basic.py", "from pkg import config\n")
    write("pkg/tok/bert.py", "from .basic import split\nfrom pkg.config import Config\n")
    # A lazy import inside a function and a TYPE_CHECKING import: no edge.
    write("pkg/lazy.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import model\n"
                         "def f():\n    from pkg import model\n")
    write("pkg/model.py", "import numpy\nfrom pkg import lazy\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.tok"] == {"pkg.tok.bert": 1, "pkg.tok.basic": 2}
    assert graph["pkg.tok.bert"] == {"pkg.tok.basic": 1, "pkg.config": 2}
    assert graph["pkg.lazy"] == {}
    assert find_cycle(graph) is None

    # A direct circle: a -> b -> a.
    write("pkg/a.py", "x = 1\nimport pkg.b\n")
    write("pkg/b.py", "from pkg.a import x\n")
    cycle = find_cycle(import_graph(tmp_path, "pkg"))
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b"} and cycle[0] == cycle[-1]
    message = describe_cycle(cycle, import_graph(tmp_path, "pkg"), tmp_path)
    assert "pkg/a.py:2" in message and "pkg/b.py:1" in message
    (tmp_path / "pkg/b.py").write_text("def f():\n    from pkg.a import x\n", encoding="utf-8")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None

    # A circle through a package __init__: importing pkg.tok.basic first runs pkg/tok/__init__.py,
    # which imports bert, which imports vocab, which is still half-initialised.
    write("pkg/vocab.py", "from pkg.tok.basic import split\n")
    write("pkg/tok/bert.py", "from .basic import split\nfrom pkg import vocab\n")
    cycle = find_cycle(import_graph(tmp_path, "pkg"))
    assert cycle is not None and set(cycle) == {"pkg.vocab", "pkg.tok", "pkg.tok.bert"}, cycle
    # ... and the same circle written with a relative import inside the package.
    write("pkg/tok/bert.py", "from .basic import split\nfrom .. import vocab\n")
    assert set(find_cycle(import_graph(tmp_path, "pkg")) or []) == {"pkg.vocab", "pkg.tok", "pkg.tok.bert"}


def test_minibert_has_no_import_cycles():
    graph = import_graph(REPO, "minibert")
    assert len(graph) > 20 and "minibert.config" in graph["minibert"]
    cycle = find_cycle(graph)
    assert cycle is None, (
        "minibert/ has an import cycle at module level (importing one of these modules first fails or "
        "sees a half-initialised module):\n  " + describe_cycle(cycle, graph, REPO)
        + "\nBreak it by moving the shared code to a lower module, or import lazily inside the function "
          "that needs it (with a comment saying why).")


# ------------------------------------------------------------------------------------------------------
# (b) The repository stands on its own: nothing tracked cites notes that live outside it
# ------------------------------------------------------------------------------------------------------
# Built from pieces so that this file does not match its own patterns.
_NOTE_NAMES = ("DESIGN" + ".md", "STYLE" + ".md")
_SHARED = "shared"
_OUTSIDE = re.compile(r"\.\./" + _SHARED + r"\b|/work/" + _SHARED + r"\b|\b(?:"
                      + "|".join(re.escape(n) for n in _NOTE_NAMES) + r")\b")


def tracked_text_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files")
    return [p for p in out.decode().split("\0") if p]


def test_no_tracked_file_cites_anything_outside_the_repository():
    tracked = tracked_text_files()
    # A note may be cited once the repository holds a file of that name (then it defines it).
    defined = {Path(p).name for p in tracked} & set(_NOTE_NAMES)
    offenders = []
    for rel in tracked:
        path = REPO / rel
        if not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (images, compiled code)
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            for match in _OUTSIDE.finditer(line):
                if match.group(0) not in defined:
                    offenders.append(f"{rel}:{lineno}: {match.group(0)!r} in {line.strip()[:120]!r}")
    assert not offenders, (
        "these tracked files cite notes that are not in the repository; cite docs/design.md or "
        "docs/architecture.md (and the section) instead:\n  " + "\n  ".join(offenders))


# ------------------------------------------------------------------------------------------------------
# (c) Paths the README's reading order and the docs name exist
# ------------------------------------------------------------------------------------------------------
def readme_section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.find(heading + "\n")
    assert start >= 0, f"README.md has no section {heading!r}"
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else len(text)]


_TOP_LEVEL = ("minibert/", "csrc/", "tests/", "tutorials/", "benchmarks/", "docs/", ".ci/")


def repo_paths(text: str) -> list[str]:
    """Repository paths quoted in ``backticks`` or linked with ``](path)`` in Markdown ``text``.

    A path counts when it starts with a top-level folder of the repository or names a top-level file;
    patterns (``<name>``, ``*``, ``{i}``) and anchors are left out.
    """
    candidates = re.findall(r"`([^`\s]+)`", text) + re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)
    found = []
    for c in candidates:
        c = c.rstrip(".,:;")
        if any(ch in c for ch in "<>*{}$") or "://" in c:
            continue
        if c.startswith(_TOP_LEVEL) or c in ("README.md", "setup.py", "pyproject.toml", "pytest.ini"):
            found.append(c)
    return found


def test_reading_order_names_files_that_exist():
    section = readme_section(READING_ORDER_HEADING)
    paths = repo_paths(section)
    order = [p for p in paths if not p.startswith("docs/")]
    assert len(order) >= 7, f"the reading order should name at least 7 files, found {order}"
    missing = [p for p in paths if not (REPO / p).exists()]
    assert not missing, (f"README's {READING_ORDER_HEADING!r} names files that do not exist: {missing}; "
                         "a file moved or was renamed: update the reading order")


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md", "docs/architecture.md", "tutorials/README.md"])
def test_docs_name_files_that_exist(doc):
    base = REPO / doc
    assert base.is_file(), f"{doc} is missing"
    missing = []
    for p in repo_paths(base.read_text(encoding="utf-8")):
        # Links are relative to the document; quoted paths are relative to the repository root.
        if not ((REPO / p).exists() or (base.parent / p).exists()):
            missing.append(p)
    assert not missing, (f"{doc} names repository paths that do not exist: {sorted(set(missing))}; "
                         "a file moved or was renamed: update the document (or restore the file)")
