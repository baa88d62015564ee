"""Every notebook in tutorials/ runs top to bottom in a Jupyter kernel, its closing checks hold, and the
outputs stored in it were computed from the code it holds.

The notebooks run as a student runs them: nbclient starts an ipykernel (the ``test`` extra installs both)
with the working directory a temporary folder, via ``tutorials/build.py``'s ``run_notebook``, the same
function that stores the outputs. Each notebook ends with assert statements against the library or an
independent oracle, so a notebook whose claims stop being true fails here, naming the notebook, the cell
and its source.

The fast tests check the stored files: the code hash recorded by the build equals the hash of the code
cells (else the stored outputs may describe code that no longer exists: rebuild with
``python tutorials/build.py NAME``), every notebook stores a figure, stays under 1 MB, ends with "Your
turn" exercises and then its asserts, and tutorials/README.md describes it.
"""
import importlib.util
import json
import re
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def _load_build_module():
    spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


def load(path: Path) -> dict:
    """The notebook's JSON, checked to be nbformat v4 with cells of known types."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook.get("nbformat") == 4, f"{path.name}: not an nbformat v4 notebook"
    assert notebook["cells"], f"{path.name}: no cells"
    for number, cell in enumerate(notebook["cells"], 1):
        assert cell["cell_type"] in ("code", "markdown"), f"{path.name} cell {number}: {cell['cell_type']}"
    return notebook


def source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.fixture(scope="session")
def tutorial_model(tmp_path_factory):
    """A tiny model pretrained once per test session for the notebooks that read MINIBERT_TUTORIAL_MODEL."""
    return build.pretrain_tiny_model(tmp_path_factory.mktemp("tutorial_model") / "run")


def test_the_readme_describes_every_tutorial():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert path.name in readme, f"tutorials/README.md does not describe {path.name}"
    assert "python tutorials/build.py" in readme


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs_were_computed_from_this_code(path):
    notebook = load(path)
    assert build.stored_hash(notebook) == build.code_hash(notebook), (
        f"{path.name}: its code changed since its outputs were stored (or it was never built); "
        f"rebuild it with: python tutorials/build.py {path.name}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_structure_figure_size_exercises_and_final_asserts(path):
    notebook = load(path)
    assert path.stat().st_size < build.MAX_BYTES, f"{path.name}: {path.stat().st_size:,} bytes, over 1 MB"
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "assert " in source(code[-1]), f"{path.name} must end with its checks (asserts)"
    figures = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} stores no figure: plot something, then python tutorials/build.py {path.name}"
    markdown = [source(c) for c in notebook["cells"] if c["cell_type"] == "markdown"]
    turn = [i for i, text in enumerate(markdown) if re.search(r"^#+ .*Your turn", text, re.M)]
    assert turn, f"{path.name} has no '## ... Your turn' section"
    # "**Exercise 1**" in the text, or an "### Exercise 1: ..." heading per exercise
    exercises = set(re.findall(r"(?:\*\*|^#+ )Exercise (\d+)", "\n".join(markdown[turn[0]:]), re.M))
    assert 2 <= len(exercises) <= 4, f"{path.name}: {len(exercises)} exercises, want 2 to 4"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} stores an error output"


def test_code_hash_follows_code_not_prose():
    cells = [{"cell_type": "markdown", "source": ["# a"]}, {"cell_type": "code", "source": ["x = 1\n", "y = 2"]}]
    before = build.code_hash({"cells": cells})
    cells[0]["source"] = ["# another title"]
    assert build.code_hash({"cells": cells}) == before
    cells[1]["source"] = ["x = 1\n", "y = 3"]
    assert build.code_hash({"cells": cells}) != before
    assert build.code_hash({"cells": [{"cell_type": "code", "source": "x = 1\ny = 2"}]}) == before


def test_build_names_resolve_and_an_unknown_one_is_a_clear_error():
    assert build.notebook_paths([]) == NOTEBOOKS
    first = NOTEBOOKS[0]
    assert build.notebook_paths([first.name[:2]]) == [first]
    assert build.notebook_paths([first.stem]) == [first]
    with pytest.raises(SystemExit, match="'99_nothing' names 0 notebooks"):
        build.notebook_paths(["99_nothing"])


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_a_kernel_and_its_checks_hold(path, tmp_path, request):
    extra = {}
    if build.needs_model(load(path)):
        extra[build.MODEL_VARIABLE] = request.getfixturevalue("tutorial_model")
    before = sorted(p.name for p in TUTORIALS.iterdir())
    executed = build.run_notebook(path, tmp_path, extra)
    assert sorted(p.name for p in TUTORIALS.iterdir()) == before, f"{path.name} wrote into tutorials/"
    assert build.code_hash(executed) == build.code_hash(load(path))


def test_a_failing_cell_is_named_with_its_source(tmp_path):
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# title"]},
        {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["x = 1"]},
        {"cell_type": "code", "id": "c", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["assert x == 2, 'x is not 2'"]}]}
    path = tmp_path / "broken.ipynb"
    path.write_text(json.dumps(notebook))
    with pytest.raises(build.NotebookError, match=r"broken.ipynb, cell 3 failed: AssertionError: x is not 2\n"
                                                  r"--- cell source ---\nassert x == 2"):
        build.run_notebook(path, tmp_path)


def test_the_kernel_runs_in_the_work_folder_with_one_thread_inline_figures_and_the_model_variable(tmp_path):
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "a", "metadata": {}, "execution_count": None, "outputs": [], "source": [
            "import os\n", "import matplotlib, matplotlib.pyplot as plt, torch\n",
            f"assert os.path.realpath(os.getcwd()) == {str(tmp_path.resolve())!r}, os.getcwd()\n",
            "assert os.environ['MINIBERT_TUTORIAL_MODEL'] == 'model-dir'\n",
            "assert torch.get_num_threads() == 1, torch.get_num_threads()\n",
            "assert 'inline' in matplotlib.get_backend(), matplotlib.get_backend()\n",
            "plt.plot([0, 1]); plt.show()"]}]}
    assert build.needs_model(notebook) and not build.needs_model({"cells": notebook["cells"][:0]})
    path = tmp_path / "environment.ipynb"
    path.write_text(json.dumps(notebook))
    executed = build.run_notebook(path, tmp_path, {build.MODEL_VARIABLE: "model-dir"})
    outputs = executed.cells[0].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs), outputs


def test_build_stores_outputs_and_hash_and_refuses_a_notebook_over_the_size_limit(tmp_path, monkeypatch):
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "a", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["print(6 * 7)"]}]}
    path = tmp_path / "small.ipynb"
    original = json.dumps(notebook)
    path.write_text(original)
    monkeypatch.setattr(build, "MAX_BYTES", 100)
    with pytest.raises(SystemExit, match=r"small.ipynb would be [\d,]+ bytes .* over the 100-byte limit"):
        build.build(path, None)
    assert path.read_text() == original, "a notebook over the limit must not be written"
    monkeypatch.setattr(build, "MAX_BYTES", 1_000_000)
    build.build(path, None)
    stored = json.loads(path.read_text())
    assert "".join(stored["cells"][0]["outputs"][0]["text"]) == "42\n"
    assert "execution" not in stored["cells"][0]["metadata"]
    assert build.stored_hash(stored) == build.code_hash(notebook)
