"""The assignment tool: handouts cut from the real code, graded function by function.

For every NumPy assignment: the cut files import and each cut function raises NotImplementedError; the
library's own source gets full marks; the untouched handout gets 0 for exactly the cut functions; one
injected bug per function costs points of that function only; bad input is refused clearly. The kernel
assignment (C++ builds) is tested in test_assignment_kernel.py; integrity, partial credit, notebooks and
the class workflow in test_assignment_classroom.py.
"""
import ast
import inspect
import json
import shutil
from pathlib import Path

import pytest

from minibert.assignments import ASSIGNMENTS, format_report, grade, make, write_report
from minibert.assignments.__main__ import main
from minibert.assignments.handout import LIBRARY_ROOT
from minibert.assignments.notebook import load

# One bug per function: (text in the pristine file, its replacement). Wrong signs, missing terms, a
# missing factor, an unstable formula, a tie broken the wrong way, a wrong probability.
BUGS = {
    "backprop": {
        "linear_backward": ("dy2.sum(axis=0)", "dy2.sum(axis=0) * 2"),
        "layernorm_backward": (" - xhat * (g * xhat).mean(axis=-1, keepdims=True))", ")"),
        "gelu_backward": ("return dy * (cdf + x * pdf)", "return dy * (cdf - x * pdf)"),
        "softmax_backward": ("return p * (dp - (dp * p).sum(axis=axis, keepdims=True))", "return p * dp"),
        "attention_backward": ("dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale",
                               "dk = dscores.transpose(0, 1, 3, 2) @ q"),
    },
    "blocks": {
        "embeddings_backward": ("L.embedding_backward(dsum.sum(axis=0, keepdims=True), c_pos)",
                                "L.embedding_backward(dsum[:1], c_pos)"),
        "self_attention_backward": ("    dx = dres\n", "    dx = 0.0\n"),
        "feed_forward_backward": ("return dres + (dpre2 @ w1).reshape(x.shape)",
                                  "return (dpre2 @ w1).reshape(x.shape)"),
        "pooler_backward": ("dpooled * (1.0 - pooled * pooled)", "dpooled * (1.0 - pooled)"),
        "mlm_head_backward": ("dt = L.gelu_backward(dt, c_gelu)", "dt = dt * c_gelu[1]"),
    },
    "losses_and_adamw": {
        "log_softmax": ("return x - (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)))",
                        "return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))"),
        "cross_entropy_backward": ("dflat[predicted] = g * (dloss / count)", "dflat[predicted] = g * dloss"),
        "clip_grad_norm": ("scale = max_norm / max(norm, max_norm)", "scale = max_norm / norm"),
        "Adam._adam": ("v_hat = v / (1 - b2 ** self.t)", "v_hat = v"),
        "AdamW._update": ("p *= 1 - lr * wd", "p *= 1 - wd"),
        "linear_warmup_decay": ("return base_lr * max(0.0, 1.0 - step / total_steps)",
                                "return base_lr * (1.0 - step / total_steps)"),
    },
    "masking": {
        "truncate_seq_pair": ("len(tokens_a) > len(tokens_b) else", "len(tokens_a) >= len(tokens_b) else"),
        "MaskingSpec.from_vocab": ("replacement_ids=tuple(i for i in range(len(tokens)) if i not in special)",
                                   "replacement_ids=tuple(range(len(tokens)))"),
        "mask_tokens": ("if rng.random() < MASK_PROB:", "if rng.random() < 0.7:"),
    },
}
NAMES = sorted(BUGS)  # the NumPy assignments


def solution(name: str, folder: Path) -> Path:
    """The library's own files, flat, as a student who wrote the reference would hand them in."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in ASSIGNMENTS[name].files:
        shutil.copy(LIBRARY_ROOT / file, folder / Path(file).name)
    return folder


def points(report: dict) -> dict:
    return {r["function"]: r["points"] for r in report["functions"]}


def full(name: str) -> dict:
    return {t.function: t.points for t in ASSIGNMENTS[name].tasks}


def test_every_task_has_a_bug_and_the_catalog_is_sane():
    assert set(BUGS) == set(ASSIGNMENTS) - {"kernel"}
    for name, assignment in ASSIGNMENTS.items():
        if name == "kernel":
            continue
        assert set(BUGS[name]) == {t.function for t in assignment.tasks}, name
        assert all(t.points > 0 for t in assignment.tasks)


@pytest.mark.parametrize("name", NAMES)
def test_cut_files_import_and_every_cut_function_raises(name, tmp_path):
    paths = make(name, tmp_path)
    assert {p.name for p in paths} == {Path(f).name for f in ASSIGNMENTS[name].files} | {"structure.md",
                                                                                          "assignment.ipynb"}
    structure = (tmp_path / "structure.md").read_text()
    for task in ASSIGNMENTS[name].tasks:
        assert f"`{task.function}`" in structure
        module = load(task.handout_name, tmp_path)
        obj = module
        for part in task.function.split("."):
            obj = getattr(obj, part)
        function = inspect.unwrap(getattr(obj, "__func__", obj))  # a classmethod's plain function
        args = [None] * sum(p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD
                            for p in inspect.signature(function).parameters.values())
        with pytest.raises(NotImplementedError, match=f"assignment {name}: write {task.function}; see structure.md"):
            function(*args)
        # The default hints: a backward pass shows its contract, not the library's formula; the rest keep theirs.
        want = task.contract if task.contract else _pristine_function(task).__doc__
        assert " ".join((function.__doc__ or "").split()) == " ".join((want or "").split())


def _pristine_function(task):
    module = load(task.file, LIBRARY_ROOT)
    obj = module
    for part in task.function.split("."):
        obj = getattr(obj, part)
    return getattr(obj, "__func__", obj)


def _functions(source: str) -> dict:
    """{"f" or "Class.method": ast dump} for every function of a module."""
    found = {}
    for node in ast.parse(source).body:
        methods = node.body if isinstance(node, ast.ClassDef) else [node]
        prefix = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
        found.update({prefix + m.name: ast.dump(m) for m in methods if isinstance(m, ast.FunctionDef)})
    return found


@pytest.mark.parametrize("name", NAMES)
def test_everything_but_the_cut_bodies_is_the_library_source(name, tmp_path):
    make(name, tmp_path)
    cut = {t.function for t in ASSIGNMENTS[name].tasks}
    for file in ASSIGNMENTS[name].files:
        pristine = _functions((LIBRARY_ROOT / file).read_text())
        handout = _functions((tmp_path / Path(file).name).read_text())
        assert handout.keys() == pristine.keys()
        assert {f for f in pristine if pristine[f] != handout[f]} == cut & pristine.keys(), file


@pytest.mark.parametrize("name", NAMES)
def test_the_library_source_gets_full_marks(name, tmp_path):
    report = grade(name, solution(name, tmp_path))
    assert points(report) == full(name), format_report(report)
    assert report["score"] == report["max_score"] == ASSIGNMENTS[name].max_points
    assert all(r["status"] == "pass" for r in report["functions"])


@pytest.mark.parametrize("name", NAMES)
def test_the_untouched_handout_gets_zero_for_exactly_the_cut_functions(name, tmp_path):
    make(name, tmp_path)
    report = grade(name, tmp_path)
    assert points(report) == {function: 0 for function in full(name)}
    assert {r["status"] for r in report["functions"]} == {"not implemented"}
    assert report["score"] == 0


@pytest.mark.parametrize("name, function", [(n, f) for n in NAMES for f in BUGS[n]])
def test_one_bug_costs_points_of_that_function_only(name, function, tmp_path):
    folder = solution(name, tmp_path)
    old, new = BUGS[name][function]
    task = next(t for t in ASSIGNMENTS[name].tasks if t.function == function)
    path = folder / task.handout_name
    source = path.read_text()
    assert source.count(old) == 1, f"the bug for {function} must edit exactly one place"
    path.write_text(source.replace(old, new))
    report = grade(name, folder)
    got = points(report)
    assert got.pop(function) < task.points, format_report(report)
    assert got == {f: p for f, p in full(name).items() if f != function}, format_report(report)
    row = next(r for r in report["functions"] if r["function"] == function)
    assert row["status"] in ("fail", "partial") and row["message"], row
    assert all(c["message"] for c in row["cases"] if not c["passed"])


def test_crashes_in_student_code_are_reported_per_function(tmp_path):
    folder = solution("losses_and_adamw", tmp_path)
    optim = folder / "optim.py"
    optim.write_text(optim.read_text().replace("    if max_norm <= 0:", "    1 / 0\n    if max_norm <= 0:"))
    (folder / "schedules.py").write_text("def linear_warmup_decay(:\n")  # a syntax error
    (folder / "losses.py").write_text((folder / "losses.py").read_text().replace(
        "    m = x.max(axis=axis, keepdims=True)\n", "    return x[..., :1]\n"))  # the wrong shape
    report = grade("losses_and_adamw", folder, seed=3)
    rows = {r["function"]: r for r in report["functions"]}
    assert rows["clip_grad_norm"]["status"] == "error" and "ZeroDivisionError" in rows["clip_grad_norm"]["message"]
    assert "optim.py:" in rows["clip_grad_norm"]["message"]  # where, in the student's file
    assert rows["linear_warmup_decay"]["status"] == "missing"
    assert "SyntaxError" in rows["linear_warmup_decay"]["message"]
    assert rows["log_softmax"]["status"] == "fail" and "shape" in rows["log_softmax"]["message"]
    assert {f: r["points"] for f, r in rows.items() if r["status"] == "pass"} == {
        "cross_entropy_backward": 3, "Adam._adam": 2, "AdamW._update": 2}


def test_an_endless_loop_is_stopped_and_costs_only_its_function(tmp_path):
    folder = solution("masking", tmp_path)
    masking = folder / "masking.py"
    masking.write_text(masking.read_text().replace(
        "    candidates = [i for i, token", "    while True:\n        pass\n    candidates = [i for i, token"))
    report = grade("masking", folder, time_limit_s=0.5)
    rows = {r["function"]: r for r in report["functions"]}
    assert rows["mask_tokens"]["status"] == "timeout" and "0.5 s" in rows["mask_tokens"]["message"]
    assert points(report) == {**full("masking"), "mask_tokens": 0}


def test_the_public_seed_is_the_default_and_a_seed_reproduces_a_report(tmp_path):
    folder = solution("backprop", tmp_path)
    first, again = grade("backprop", folder), grade("backprop", folder, seed=0)
    assert first == again and first["seed"] == 0 and not first["hidden"]
    other = grade("backprop", folder, seed=11)
    assert other["seed"] == 11 and other["score"] == 12


def test_bad_input_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown assignment 'nope'; choose one of: backprop"):
        grade("nope", tmp_path)
    with pytest.raises(ValueError, match="unknown assignment"):
        make("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        grade("backprop", tmp_path / "missing")
    report = grade("masking", tmp_path)  # an empty folder: every function missing, nothing crashes
    assert {r["status"] for r in report["functions"]} == {"missing"} and report["score"] == 0
    assert "instances.py is missing" in report["functions"][0]["message"]
    make("backprop", tmp_path / "h")
    with pytest.raises(FileExistsError, match="--force"):
        make("backprop", tmp_path / "h")
    make("backprop", tmp_path / "h", force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        make("backprop", tmp_path / "file")


def test_cli_list_make_grade_and_errors(tmp_path, capsys):
    assert main(["list"]) == 0
    assert "mask_tokens" in capsys.readouterr().out
    assert main(["make", "backprop", str(tmp_path / "h")]) == 0
    assert main(["make", "backprop", str(tmp_path / "f"), "--hints", "full"]) == 0
    assert main(["grade", "backprop", str(tmp_path / "h"), "--json", str(tmp_path / "r.json"), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "attention_backward" in out and "score: 0/12" in out and "raises NotImplementedError" in out
    assert json.loads((tmp_path / "r.json").read_text())["max_score"] == 12
    assert main(["grade", "nope", str(tmp_path)]) == 2
    assert "unknown assignment 'nope'" in capsys.readouterr().err
    assert main(["grade", "backprop", str(tmp_path / "absent")]) == 2


def test_write_report_is_atomic_json(tmp_path):
    report = grade("backprop", solution("backprop", tmp_path / "s"), seed=1)
    write_report(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
