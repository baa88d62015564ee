"""Every notebook in tutorials/ runs top to bottom, and its closing checks hold.

No Jupyter kernel and no extra dependency: the code cells are ``exec``-ed in order in one fresh namespace,
with the working directory a temporary folder and matplotlib on its non-interactive Agg backend. Each
notebook ends with assert statements against the library or an independent oracle, so a notebook whose
claims stop being true fails here. An error names the notebook, the cell and its source.
"""
import json
import traceback
from pathlib import Path

import matplotlib
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def load_notebook(path: Path) -> dict:
    """The notebook's JSON, checked to be nbformat v4 with cells of known types and no stored outputs."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook.get("nbformat") == 4, f"{path.name}: not an nbformat v4 notebook"
    assert notebook["cells"], f"{path.name}: no cells"
    for number, cell in enumerate(notebook["cells"], 1):
        assert cell["cell_type"] in ("code", "markdown"), f"{path.name} cell {number}: {cell['cell_type']}"
        assert isinstance(cell["source"], (list, str)), f"{path.name} cell {number}: source"
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{path.name} cell {number} has stored outputs: clear them before committing"
    return notebook


def run_notebook(path: Path) -> None:
    """Execute the code cells of ``path`` in order in one namespace; raise naming the failing cell."""
    namespace = {"__name__": "__main__"}
    for number, cell in enumerate(load_notebook(path)["cells"], 1):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{path.name}, cell {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{path.name}, cell {number} failed: {type(exc).__name__}: {exc}\n"
                                 f"--- cell source ---\n{source}\n--- traceback ---\n"
                                 f"{traceback.format_exc()}") from None


def test_notebooks_are_described_and_end_with_checks():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert path.name in readme, f"tutorials/README.md does not describe {path.name}"
        code = [cell for cell in load_notebook(path)["cells"] if cell["cell_type"] == "code"]
        assert "assert " in "".join(code[-1]["source"]), f"{path.name} must end with its checks (asserts)"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_checks_hold(path, tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    matplotlib.use("Agg")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt
    try:
        run_notebook(path)
    finally:
        plt.close("all")


def test_a_failing_cell_is_named_with_its_source(tmp_path):
    notebook = {"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# title"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": ["x = 1"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["assert x == 2, 'x is not 2'"]}]}
    path = tmp_path / "broken.ipynb"
    path.write_text(json.dumps(notebook))
    with pytest.raises(AssertionError, match=r"broken.ipynb, cell 3 failed: AssertionError: x is not 2\n"
                                             r"--- cell source ---\nassert x == 2"):
        run_notebook(path)
    notebook["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["1"]}]
    path.write_text(json.dumps(notebook))
    with pytest.raises(AssertionError, match="stored outputs"):
        load_notebook(path)
