"""Re-execute the tutorials in a real Jupyter kernel and store their outputs and figures.

    python tutorials/build.py                 # every tutorials/NN_*.ipynb
    python tutorials/build.py 02 09_optimizers_and_schedules.ipynb

Each notebook runs top to bottom exactly as a student's Jupyter would run it (nbclient + ipykernel, the
inline matplotlib backend), but in a temporary working directory, so nothing it writes lands in the
repository, and with one torch/OpenMP thread, so its printed numbers do not depend on the machine's core
count. The executed notebook, with its outputs, is written back in place (atomically) so that GitHub shows
the printed shapes, numbers and figures.

Stored outputs could lie: someone edits a code cell and commits without re-running. So the build records
``metadata.minibert.code_hash``, the sha256 of the code cells' sources, and ``tests/test_tutorials.py``
checks that it still equals the hash of the code: an edit without a rebuild fails the tests.

The same functions run the notebooks in the tests (``run_notebook``), so a notebook behaves the same in
both places; a failing cell is reported with the notebook's name, the cell's number and its source.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parent
REPOSITORY = TUTORIALS.parent
MAX_BYTES = 1_000_000          # a notebook with its figures must stay small enough to review and diff
CELL_TIMEOUT_S = 600           # a guard against a hung cell, not a speed requirement
MODEL_VARIABLE = "MINIBERT_TUTORIAL_MODEL"
# The tiny pretrained model of notebooks that need one (07): seconds to train, enough to have features.
TINY_PRETRAIN_ARGS = ("--steps", "40", "--layers", "2", "--hidden", "64", "--heads", "2", "--intermediate", "128",
                      "--max-seq-length", "64", "--dupe-factor", "1", "--eval-every", "1000", "--quiet")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    """The notebooks to build: every ``tutorials/NN_*.ipynb`` when ``names`` is empty, else each name
    resolved as a path, a file name in tutorials/ (with or without ``.ipynb``) or a two-digit prefix."""
    every = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    paths = []
    for name in names:
        candidates = [Path(name)] if Path(name).is_file() else \
            [p for p in every if p.name in (name, name + ".ipynb") or p.name.startswith(name + "_")]
        if len(candidates) != 1:
            raise SystemExit(f"build.py: {name!r} names {len(candidates)} notebooks in {TUTORIALS} "
                             f"(known: {', '.join(p.name for p in every)})")
        paths.append(candidates[0].resolve())
    return paths


def code_hash(notebook: dict) -> str:
    """sha256 of the code cells' sources, in order: what the stored outputs were computed from.

    Markdown edits do not change it (they cannot make an output wrong); any change to code does."""
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in notebook["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(sources, ensure_ascii=True).encode("ascii")).hexdigest()


def stored_hash(notebook: dict) -> str | None:
    """The code hash recorded by the last build, or None when the notebook was never built."""
    return notebook.get("metadata", {}).get("minibert", {}).get("code_hash")


def needs_model(notebook: dict) -> bool:
    """True when a code cell reads the tiny pretrained model (``MINIBERT_TUTORIAL_MODEL``)."""
    return any(MODEL_VARIABLE in "".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")


def pretrain_tiny_model(out_dir: str | os.PathLike) -> str:
    """Pretrain the tiny model that notebooks read from ``MINIBERT_TUTORIAL_MODEL``; returns the run folder."""
    out_dir = os.fspath(out_dir)
    command = [sys.executable, "-m", "minibert", "pretrain", *TINY_PRETRAIN_ARGS, "--out", out_dir]
    # cwd: the run folder's parent, so nothing lands in the caller's working directory
    result = subprocess.run(command, env=kernel_environment(), cwd=os.path.dirname(os.path.abspath(out_dir)),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pretraining the tutorials' tiny model failed ({' '.join(command)}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return out_dir


def kernel_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a notebook's kernel: this one, plus

    * the repository on ``PYTHONPATH``, so ``import minibert`` works without installing it;
    * one OpenMP/MKL thread: torch's tiny matrices are fastest on one, and the numbers do not depend on
      the machine (a kernel-start cell would have to be stored in every notebook; the environment is not);
    * the inline matplotlib backend, as in Jupyter, so figures become ``image/png`` outputs;
    * a fixed ``PYTHONHASHSEED``, so set iteration order, and what a notebook prints from it, is the same on
      every run.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="module://matplotlib_inline.backend_inline",
               PYTHONHASHSEED="0")
    env.update(extra or {})
    return env


class NotebookError(AssertionError):
    """A cell failed: the message names the notebook, the cell (1-based, counting markdown cells too, as
    Jupyter's cell list shows them) and its source, then the kernel's traceback."""


def run_notebook(path: str | os.PathLike, workdir: str | os.PathLike, extra_env: dict[str, str] | None = None,
                 timeout: int = CELL_TIMEOUT_S):
    """Execute the notebook at ``path`` in a fresh python3 kernel whose working directory is ``workdir``;
    return the executed ``nbformat`` notebook. Raises ``NotebookError`` naming the failing cell."""
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError as exc:
        raise NotebookError(f"running notebooks needs nbclient, nbformat and ipykernel ({exc}); "
                            "install the test extra: pip install -e .[test]") from None

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    current = {"index": None}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": os.fspath(workdir)}},
                            on_cell_execute=lambda cell, cell_index: current.update(index=cell_index))
    try:
        client.execute(env=kernel_environment(extra_env))
    except CellExecutionError as exc:
        number = current["index"] + 1
        source = notebook.cells[current["index"]].source
        raise NotebookError(f"{path.name}, cell {number} failed: {exc.ename}: {exc.evalue}\n"
                            f"--- cell source ---\n{source}\n--- traceback ---\n"
                            f"{_ANSI.sub('', exc.traceback)}") from None
    except Exception as exc:          # the kernel did not start or died: say so, with the notebook's name
        if current["index"] is None:
            raise NotebookError(f"{path.name}: the Jupyter kernel could not run it ({type(exc).__name__}: {exc}); "
                                "install the test extra: pip install -e .[test]") from exc
        raise NotebookError(f"{path.name}, cell {current['index'] + 1}: the kernel failed "
                            f"({type(exc).__name__}: {exc})") from exc
    return notebook


def strip_volatile(notebook) -> None:
    """Drop what changes on every run without meaning anything (timings, widget state, the kernel's
    exact Python patch version), so that a rebuild of unchanged code gives a small diff."""
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
    notebook.metadata.pop("widgets", None)
    language = notebook.metadata.get("language_info", {})
    language.pop("version", None)


def serialise(notebook) -> str:
    """The notebook as nbformat's JSON text, ending in a newline as every other text file here."""
    import nbformat
    return nbformat.writes(notebook) + "\n"


def build(path: Path, model_dir: str | None) -> int:
    """Execute ``path``, record its code hash, write it back atomically; returns its size in bytes."""
    from minibert.files import atomic_write_text

    extra = {MODEL_VARIABLE: model_dir} if model_dir else {}
    with tempfile.TemporaryDirectory(prefix="minibert-tutorial-") as workdir:
        notebook = run_notebook(path, workdir, extra)
    strip_volatile(notebook)
    notebook.metadata["minibert"] = {"code_hash": code_hash(notebook)}
    text = serialise(notebook)
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise SystemExit(f"build.py: {path.name} would be {size:,} bytes with its outputs, over the "
                         f"{MAX_BYTES:,}-byte limit: make its figures smaller (figsize, dpi) or print less; "
                         "the file was not written")
    atomic_write_text(path, text)
    return size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Re-execute tutorials in a Jupyter kernel and store outputs.")
    parser.add_argument("names", nargs="*", help="notebooks (default: every tutorials/NN_*.ipynb)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPOSITORY))
    paths = notebook_paths(args.names)
    with contextlib.ExitStack() as stack:
        model_dir = None
        if any(needs_model(json.loads(p.read_text(encoding="utf-8"))) for p in paths):
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="minibert-tutorial-model-"))
            print("pretraining the tiny model of", MODEL_VARIABLE, "...", flush=True)
            model_dir = pretrain_tiny_model(os.path.join(root, "run"))
        for path in paths:
            print(f"{path.name}: running ...", end=" ", flush=True)
            size = build(path, model_dir)
            print(f"stored ({size / 1e3:.0f} kB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
