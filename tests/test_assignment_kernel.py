"""The "kernel" assignment: fused attention in C++, compiled by the grader.

Fast tests check the handout's cut and the C++ integrity rules; the slow ones build three files (20-60 s
each, cached by content under $MINIBERT_EXT_CACHE/assignments, so a second run is quick; the `prebuilt`
fixture compiles the three side by side first): the library's own kernel scores full marks, the
handout's skeleton compiles and scores 0, and a kernel that forgets to rescale the running sum loses the
correctness points (and with them memory and speed, which count only for a correct kernel). The CUDA
task is skipped where there is no GPU.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minibert.assignments import format_report, grade, make
from minibert.assignments.handout import LIBRARY_ROOT
from minibert.assignments.integrity import cpp_violations

SOURCE = (LIBRARY_ROOT / "assignments/csrc/attention_kernel.cpp").read_text()
RESCALE = "      l[r] *= alpha[r];\n"


def submission(folder: Path, source: str = SOURCE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "attention_kernel.cpp").write_text(source)
    shutil.copy(LIBRARY_ROOT / "assignments/csrc/attention_kernel_cuda.cu", folder)
    return folder


def cases(report):
    return {c["name"]: c for c in report["functions"][0]["cases"]}


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory):
    """Compiles the three C++ files the slow tests grade side by side (each compile is one g++ on one core)
    into the build cache that grading reads, so the tests find their builds there: three one-minute
    compiles take about a minute and a half on two cores, not three minutes. A file that does not compile
    is left for its test to report."""
    root = tmp_path_factory.mktemp("prebuilt")
    make("kernel", root / "skeleton")
    files = [submission(root / "library") / "attention_kernel.cpp", root / "skeleton" / "attention_kernel.cpp",
             submission(root / "no_rescale", SOURCE.replace(RESCALE, "")) / "attention_kernel.cpp"]
    code = ("import sys; from pathlib import Path; from minibert.assignments.kernel import build; "
            "build(Path(sys.argv[1]))")
    compiles = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for path in files]
    for process in compiles:
        process.wait()


def test_the_handout_keeps_the_binding_and_cuts_the_loop(tmp_path):
    make("kernel", tmp_path)
    handout = (tmp_path / "attention_kernel.cpp").read_text()
    assert "PYBIND11_MODULE" in handout and "at::parallel_for" in handout and "exp_fast" in handout
    assert "online softmax" in handout and "alpha[r] = exp_fast" not in handout
    assert 'throw std::runtime_error("assignment kernel: write attention_rows; see structure.md");' in handout
    assert "// BEGIN ASSIGNMENT attention_rows" in handout and "// END ASSIGNMENT attention_rows" in handout
    cuda = (tmp_path / "attention_kernel_cuda.cu").read_text()
    assert "__expf(m - m_new)" not in cuda and "throw" not in cuda.split("BEGIN ASSIGNMENT")[1].split("END")[0]
    assert cpp_violations(handout, "attention_kernel.cpp", "attention_rows") == []


def test_calling_torch_inside_the_kernel_or_dropping_the_markers_is_refused():
    cheat = SOURCE.replace("  // END ASSIGNMENT attention_rows", "  auto x = at::softmax(scores, -1);\n"
                                                                    "  // END ASSIGNMENT attention_rows")
    found = cpp_violations(cheat, "attention_kernel.cpp", "attention_rows")
    assert len(found) == 1 and "uses `at::` inside your kernel" in found[0]
    assert "must stay" in cpp_violations(SOURCE.replace("// BEGIN ASSIGNMENT attention_rows", ""),
                                         "attention_kernel.cpp", "attention_rows")[0]


@pytest.mark.slow
def test_the_library_kernel_scores_full_marks(tmp_path, prebuilt):
    """Every correctness and memory case passes. The speed case is a timing on a shared machine, and tests
    never assert a time: it must have run and reported its measurement, and the grade depends on it only
    through that case (on an idle machine the library kernel earns it as well)."""
    report = grade("kernel", submission(tmp_path))
    speed = [c for c in report["functions"][0]["cases"] if c["name"].startswith("speed")]
    assert len(speed) == 1 and "torch eager" in speed[0]["message"] + " ".join(report["functions"][0]["notes"])
    others = [c for c in report["functions"][0]["cases"] if not c["name"].startswith("speed")]
    assert others and all(c["passed"] for c in others), format_report(report, verbose=True)
    share = report["functions"][0]["max_points"] / len(report["functions"][0]["cases"])
    expected = 10 if speed[0]["passed"] else round(10 - share, 2)
    assert (report["score"], report["max_score"]) == (expected, 10), format_report(report, verbose=True)
    cuda = report["functions"][1]
    if cuda["status"] == "skipped":
        assert "needs a CUDA GPU" in cuda["message"]
    notes = report["functions"][0]["notes"]
    assert any("peak extra memory" in n for n in notes) and any("torch eager" in n for n in notes)


@pytest.mark.slow
def test_the_skeleton_compiles_and_scores_zero(tmp_path, prebuilt):
    make("kernel", tmp_path)
    report = grade("kernel", tmp_path)
    row = report["functions"][0]
    assert (report["score"], row["status"]) == (0, "not implemented"), format_report(report)
    assert "write attention_rows" in row["message"]
    assert cases(report)["memory at S=4096: no [S, S] buffer"]["message"].startswith("not measured")


@pytest.mark.slow
def test_a_missing_rescale_of_the_running_sum_loses_the_correctness_points(tmp_path, prebuilt):
    assert SOURCE.count(RESCALE) == 1
    report = grade("kernel", submission(tmp_path, SOURCE.replace(RESCALE, "")))
    got = cases(report)
    correctness = ["float64, no padding: out", "float64, padding: out", "float32, padding: out"]
    assert all(not got[name]["passed"] and "relative error" in got[name]["message"] for name in correctness)
    assert report["score"] == 0 and report["functions"][0]["status"] == "fail", format_report(report)
