"""Running a class on the assignments (issue #12): integrity, partial credit, feedback, hints, the
handout notebook and ``grade-all``.

The submissions below are the ones an instructor actually meets: a correct in-place softmax backward, a
wrapper around the installed solution, a file that patches the library and the gradient checker, a
half-right GELU, an attention backward that is wrong only with dropout.
"""
import csv
import io
import json
import pickle
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from minibert.assignments import ASSIGNMENTS, format_report, grade, make
from minibert.assignments.__main__ import main
from minibert.assignments.classroom import read_class_seed
from minibert.assignments.handout import LIBRARY_ROOT
from minibert.assignments.integrity import python_violations
from minibert.assignments.sandbox import Sandbox, StudentFailure, _SafeUnpickler

LAYERS = (LIBRARY_ROOT / "reference/layers.py").read_text()
SOFTMAX = "    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))\n"
IN_PLACE_SOFTMAX = "    dp -= (dp * p).sum(axis=axis, keepdims=True)\n    dp *= p\n    return dp\n"
CHEAT_IMPORT = ('def linear_backward(dy, cache):\n    """',
                'def linear_backward(dy, cache):\n    from minibert.reference.layers import linear_backward as lb\n'
                '    return lb(dy, cache)\n    """')
WRONG_LAYERNORM = (" - xhat * (g * xhat).mean(axis=-1, keepdims=True))", ")")
CHEAT_PATCH = ("import minibert.reference.layers as library\n"
               "import minibert.reference.gradcheck as gradcheck\n"
               "library.layernorm_backward = layernorm_backward\n"
               "gradcheck.check_gradients = lambda loss, inputs, analytic, **k: {n: 0.0 for n in inputs}\n")
WRONG_TANH = ("return dy * (t(0.5) * (1.0 + th) + t(0.5) * x * (1.0 - th * th) * du)",
              "return dy * (t(0.5) * (1.0 + th) + t(0.5) * x * (1.0 - th) * du)")
WRONG_DROPOUT = ("        dprobs = dprobs * rng.dropout_scale_mask(probs.shape, p, seed, offset, q.dtype.type)\n",
                 "        dprobs = dprobs / (1.0 - p)\n")  # scaled, but the dropped elements not zeroed


def layers(folder: Path, *edits, append: str = "") -> Path:
    """A backprop submission: the library's layers.py with ``edits`` ((old, new) pairs) applied."""
    folder.mkdir(parents=True, exist_ok=True)
    source = LAYERS
    for old, new in edits:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    (folder / "layers.py").write_text(source + append)
    return folder


def rows(report):
    return {r["function"]: r for r in report["functions"]}


def test_a_correct_in_place_softmax_backward_scores_full_marks(tmp_path):
    report = grade("backprop", layers(tmp_path, (SOFTMAX, IN_PLACE_SOFTMAX)))
    assert report["score"] == 12, format_report(report)
    assert rows(report)["softmax_backward"]["notes"] == []  # overwriting the upstream gradient is allowed


def test_changing_an_input_the_contract_leaves_alone_is_pointed_out(tmp_path):
    wipes_cache = "    dx = p * (dp - (dp * p).sum(axis=axis, keepdims=True))\n    p[...] = 0.0\n    return dx\n"
    report = grade("backprop", layers(tmp_path, (SOFTMAX, wipes_cache)))
    row = rows(report)["softmax_backward"]
    assert row["status"] == "pass" and any("'cache'" in note for note in row["notes"]), row


def test_wrapping_the_installed_solution_scores_zero_with_the_reason(tmp_path):
    report = grade("backprop", layers(tmp_path, CHEAT_IMPORT))
    row = rows(report)["linear_backward"]
    assert (row["points"], row["status"]) == (0, "violation")
    assert "layers.py:57 imports minibert.reference.layers.linear_backward" in row["message"]
    assert "from minibert import rng" in row["message"]  # what is allowed, in plain words
    assert report["score"] == 10  # the other functions are graded as usual


def test_patching_the_library_and_the_gradient_checker_scores_zero(tmp_path):
    report = grade("backprop", layers(tmp_path, WRONG_LAYERNORM, append=CHEAT_PATCH))
    assert report["score"] == 0
    message = rows(report)["layernorm_backward"]["message"]
    assert "changes the library: `library.layernorm_backward = ...`" in message
    assert "`gradcheck.check_gradients = ...`" in message


def test_the_patch_cannot_reach_the_grader_even_unflagged(tmp_path, monkeypatch):
    """Without the static check, the patched library lives in the student's process only: the wrong
    LayerNorm backward still fails, and the grader's own modules are untouched."""
    import minibert.assignments.grader as grader
    from minibert.reference import gradcheck, layers as library

    monkeypatch.setattr(grader, "check_files", lambda *args: {})
    report = grade("backprop", layers(tmp_path, WRONG_LAYERNORM, append=CHEAT_PATCH))
    assert rows(report)["layernorm_backward"]["status"] in ("fail", "partial")
    assert library.layernorm_backward.__module__ == "minibert.reference.layers"
    assert gradcheck.check_gradients.__name__ == "check_gradients"


@pytest.mark.parametrize("code, what", [
    ("import importlib\n", "imports importlib"),
    ("import sys\nsys.modules['minibert.reference.layers'] = None\n", "sys.modules"),
    ("setattr(rng, 'dropout_scale_mask', None)\n", "calls setattr()"),
    ("rng.dropout_scale_mask = None\n", "changes the library"),
    ("softmax_backward.__code__ = softmax_forward.__code__\n", "__code__"),
])
def test_the_obvious_back_doors_are_refused(code, what):
    graded = ["softmax_backward", "linear_backward"]
    found = python_violations(LAYERS + code, "layers.py", LAYERS, graded)
    assert set(found) == set(graded) and what in found["softmax_backward"][0]


def test_a_violation_inside_a_function_costs_only_that_function():
    source = LAYERS.replace(SOFTMAX, "    import gc\n" + SOFTMAX)
    assert set(python_violations(source, "layers.py", LAYERS, ["softmax_backward", "linear_backward"])) == {
        "softmax_backward"}


def test_partial_credit_for_a_half_right_gelu_and_an_attention_wrong_only_with_dropout(tmp_path):
    report = grade("backprop", layers(tmp_path, WRONG_TANH, WRONG_DROPOUT))
    gelu, attention = rows(report)["gelu_backward"], rows(report)["attention_backward"]
    assert (gelu["points"], gelu["status"]) == (1, "partial")
    assert [c["passed"] for c in gelu["cases"]] == [True, False]
    assert (attention["points"], attention["status"]) == (3.11, "partial")  # 7 of 9 cases: dv is still right
    assert [c["name"] for c in attention["cases"] if not c["passed"]] == [
        f"mask=padding, dropout_p=0.2: d{x}" for x in "qk"]
    assert report["score"] == pytest.approx(12 - 1 - 0.89)


def test_a_failing_case_says_how_far_off_where_and_what_central_differences_say(tmp_path):
    report = grade("backprop", layers(tmp_path, WRONG_TANH))
    message = rows(report)["gelu_backward"]["cases"][1]["message"]
    assert message.startswith("relative error ") and "(tolerance 1e-10); worst element [" in message
    assert ": yours " in message and ", expected " in message
    assert "central differences of your gradient: relative error" in message
    text = format_report(report)
    assert "FAIL approximate='tanh': dx: relative error" in text and message in text  # never truncated
    assert "ok   approximate='none': dx" in format_report(report, verbose=True)


def test_hidden_cases_come_from_the_class_seed(tmp_path):
    folder = layers(tmp_path, WRONG_TANH)
    public, hidden = grade("backprop", folder), grade("backprop", folder, class_seed=123)
    gelu = rows(hidden)["gelu_backward"]["cases"]
    assert [c["name"] for c in gelu] == ["approximate='none': dx", "approximate='tanh': dx",
                                         "hidden approximate='none': dx", "hidden approximate='tanh': dx"]
    assert hidden["hidden"] and hidden["score"] == public["score"] == 11
    assert gelu[1]["message"] != gelu[3]["message"]  # other inputs, other numbers


def test_a_crash_or_a_memory_hog_costs_only_its_function(tmp_path):
    folder = layers(tmp_path, (SOFTMAX, "    import os\n    os._exit(3)\n"),
                    ("    x, weight = cache\n", "    x, weight = cache\n    np.ones(2 ** 40)\n"))
    report = grade("backprop", folder, memory_limit_mb=2048)
    softmax, linear = rows(report)["softmax_backward"], rows(report)["linear_backward"]
    assert softmax["status"] == "crashed" and "exit status 3" in softmax["message"]
    assert linear["status"] == "error" and "MemoryError" in linear["message"] and "2048 MB" in linear["message"]
    assert report["score"] == 12 - 1 - 2


def test_the_grader_refuses_a_crafted_reply():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refuses"):
        _SafeUnpickler(io.BytesIO(pickle.dumps(("ok", Evil(), {})))).load()
    reply = ("ok", [np.arange(3.0), {"a": np.float64(2.0)}, {1, 2}], {})
    assert _SafeUnpickler(io.BytesIO(pickle.dumps(reply))).load()[1][1]["a"] == 2.0
    with pytest.raises(pickle.UnpicklingError, match="object array"):
        _SafeUnpickler(io.BytesIO(pickle.dumps(np.array([None])))).load()


def test_student_output_and_a_missing_function_do_not_confuse_the_sandbox(tmp_path):
    (tmp_path / "m.py").write_text("print('hello')\ndef f(x):\n    print('x =', x)\n    return [x, x]\n")
    deadline = time.monotonic() + 60
    with Sandbox(tmp_path) as box:
        assert box.call("m.py", "f", [((2,), {})], deadline)[0] == [[2, 2]]
        with pytest.raises(StudentFailure, match="m.py has no g"):
            box.call("m.py", "g", [((), {})], deadline)


# ---- hints -------------------------------------------------------------------------------------------

def test_hints_none_gives_the_contract_and_asks_for_the_derivation(tmp_path):
    make("backprop", tmp_path)
    handout = (tmp_path / "layers.py").read_text()
    assert "dx = rstd * (g - mean(g)" not in handout and "p * (dp - sum(dp * p))" not in handout
    assert "cache: (xhat, rstd, gamma)" in handout
    structure = (tmp_path / "structure.md").read_text()
    assert "## Derivations" in structure and "chain rule" in structure
    assert "dx = rstd * (g - mean(g)" not in structure


def test_hints_formulas_and_full(tmp_path):
    make("backprop", tmp_path / "formulas", hints="formulas")
    assert "dx = rstd * (g - mean(g)" in (tmp_path / "formulas/layers.py").read_text()
    assert "## Derivations" not in (tmp_path / "formulas/structure.md").read_text()
    make("masking", tmp_path / "full", hints="full")
    make("masking", tmp_path / "masking", hints="formulas")
    outline = "    # Candidate \"words\": lists of positions that are chosen together."
    assert outline in (tmp_path / "full/masking.py").read_text()  # the body's comments, as an outline
    assert outline not in (tmp_path / "masking/masking.py").read_text()
    with pytest.raises(ValueError, match="hints must be one of none, formulas, full"):
        make("backprop", tmp_path / "x", hints="all")


# ---- the notebook ------------------------------------------------------------------------------------

NUMPY_ASSIGNMENTS = ["backprop", "blocks", "losses_and_adamw", "masking"]


def run_cells(folder: Path, monkeypatch) -> dict:
    """Execute the code cells of folder/assignment.ipynb in order, each on its own (a failure does not
    stop the next); returns {cell number: error or None}."""
    notebook = json.loads((folder / "assignment.ipynb").read_text())
    assert notebook["nbformat"] == 4
    monkeypatch.chdir(folder)
    namespace, results = {"__name__": "__main__"}, {}
    for number, cell in enumerate(notebook["cells"], 1):
        assert cell["cell_type"] in ("code", "markdown")
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            try:
                exec(compile("".join(cell["source"]), f"cell {number}", "exec"), namespace)
                results[number] = None
            except Exception:  # noqa: BLE001 -- recorded, and the next cell runs
                results[number] = traceback.format_exc()
    return results


@pytest.mark.parametrize("name", NUMPY_ASSIGNMENTS)
def test_the_notebook_passes_with_the_solution_and_fails_on_the_handout_in_the_check_cells(name, tmp_path,
                                                                                            monkeypatch):
    make(name, tmp_path / "handout")
    shutil.copytree(tmp_path / "handout", tmp_path / "solution")
    for file in ASSIGNMENTS[name].files:
        shutil.copy(LIBRARY_ROOT / file, tmp_path / "solution")
    solved = run_cells(tmp_path / "solution", monkeypatch)
    assert all(error is None for error in solved.values()), [e for e in solved.values() if e]
    cut = run_cells(tmp_path / "handout", monkeypatch)
    setup, *checks = sorted(cut)
    assert len(checks) == len(ASSIGNMENTS[name].tasks) and cut[setup] is None
    for number in checks:
        assert cut[number] and "NotImplementedError" in cut[number], number
    notebook = json.loads((tmp_path / "handout/assignment.ipynb").read_text())
    text = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")
    assert "*Your answer:*" in text and "**Q1.**" in text


def test_the_blocks_notebook_asks_why_the_key_bias_gradient_is_zero(tmp_path):
    make("blocks", tmp_path)
    assert "gradient of the key bias exactly zero" in (tmp_path / "assignment.ipynb").read_text()


# ---- the class workflow ----------------------------------------------------------------------------

def demo_class(root: Path) -> Path:
    """Five students: correct, in-place correct, cheat by import, cheat by patching, partly wrong."""
    layers(root / "ada")
    layers(root / "ben", (SOFTMAX, IN_PLACE_SOFTMAX))
    layers(root / "cy", CHEAT_IMPORT)
    layers(root / "dee", WRONG_LAYERNORM, append=CHEAT_PATCH)
    layers(root / "eve", WRONG_TANH, (SOFTMAX, "    raise NotImplementedError\n"))
    return root


def test_grade_all_writes_the_exact_csv_the_reports_and_the_histogram(tmp_path, capsys):
    submissions = demo_class(tmp_path / "submissions")
    seed_file = tmp_path / "class-seed.txt"
    seed_file.write_text("2024\n")
    assert main(["grade-all", "backprop", str(submissions), "--csv", str(tmp_path / "grades.csv"),
                 "--class-seed-file", str(seed_file), "--jobs", "2"]) == 0
    got = list(csv.reader(io.StringIO((tmp_path / "grades.csv").read_text())))
    functions = ["linear_backward", "layernorm_backward", "gelu_backward", "softmax_backward", "attention_backward"]
    assert got[0] == ["student", *functions, "total", *(f"{f} error" for f in functions)]
    assert [row[:7] for row in got[1:]] == [
        ["ada", "2", "3", "2", "1", "4", "12"],
        ["ben", "2", "3", "2", "1", "4", "12"],
        ["cy", "0", "3", "2", "1", "4", "10"],
        ["dee", "0", "0", "0", "0", "0", "0"],
        ["eve", "2", "3", "1", "0", "4", "10"],
    ]
    errors = {row[0]: dict(zip(functions, row[7:])) for row in got[1:]}
    assert all(e == "" for student in ("ada", "ben") for e in errors[student].values())
    assert errors["cy"]["linear_backward"].startswith(
        "layers.py:57 imports minibert.reference.layers.linear_backward: graded code must be your own")
    assert all("changes the library: `library.layernorm_backward = ...`" in e for e in errors["dee"].values())
    line = LAYERS[:LAYERS.index(SOFTMAX)].count("\n") + 1
    assert errors["eve"]["softmax_backward"] == f"axis=-1: dx: raises NotImplementedError (at layers.py:{line})"
    assert errors["eve"]["gelu_backward"].startswith(
        "2 of 4 cases pass; first failure: approximate='tanh': dx: relative error ")
    report = json.loads((tmp_path / "grades" / "eve.json").read_text())
    assert report["hidden"] and len(rows(report)["gelu_backward"]["cases"]) == 4
    assert (tmp_path / "grades.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cy: 10/12" in capsys.readouterr().out.replace(str(submissions) + "/", "")


def test_the_class_seed_file_is_created_once_and_kept(tmp_path):
    seed, created = read_class_seed(tmp_path / "seed.txt")
    assert created and read_class_seed(tmp_path / "seed.txt") == (seed, False)
    assert oct((tmp_path / "seed.txt").stat().st_mode)[-3:] == "600"
    (tmp_path / "bad.txt").write_text("secret")
    with pytest.raises(ValueError, match="one integer"):
        read_class_seed(tmp_path / "bad.txt")
    assert main(["grade-all", "backprop", str(tmp_path / "none"), "--csv", str(tmp_path / "g.csv")]) == 2


def test_output_that_breaks_the_contract_fails_its_cases_without_stopping_the_grader(tmp_path):
    for file in ASSIGNMENTS["masking"].files:
        shutil.copy(LIBRARY_ROOT / file, tmp_path)
    source = (tmp_path / "masking.py").read_text()
    (tmp_path / "masking.py").write_text(source.replace("    return masked_ids, positions, labels\n",
                                                        "    return masked_ids\n"))
    report = grade("masking", tmp_path)
    row = rows(report)["mask_tokens"]
    assert row["status"] == "fail" and "the grader could not use what your function returned" in row["message"]
    assert report["score"] == 3
