"""benchmarks/_common.py: the --device choice, the machine name it gives the results, and the tables."""
import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _common  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch):
    monkeypatch.setattr(_common, "_TIMES_GPU", None)


def test_device_argument_parses_the_three_choices():
    parser = argparse.ArgumentParser()
    _common.add_device_argument(parser)
    assert parser.parse_args([]).device == "all"
    assert parser.parse_args(["--device", "cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])


def test_cpu_only_runs_are_named_after_the_cpu_even_where_a_gpu_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    assert _common.machine_name() == "cuda-nvidia-h200"  # nothing chosen yet: the GPU names the machine
    assert _common.device_configs("cpu") == [("cpu", torch.float32)]
    assert _common.machine_name().startswith("cpu-")
    assert _common.device_configs("cuda") == [("cuda", torch.float32), ("cuda", torch.bfloat16)]
    assert _common.machine_name() == "cuda-nvidia-h200"
    assert [d for d, _ in _common.device_configs("all")] == ["cpu", "cuda", "cuda"]


def test_asking_for_a_gpu_that_is_not_there_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        _common.device_configs("cuda")
    assert _common.device_configs("all") == [("cpu", torch.float32)]  # 'all' means what there is


def test_time_fn_counts_at_least_the_repeats_and_reports_the_median():
    calls = []
    result = _common.time_fn(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(result["samples_s"]) == 5
    assert result["min_s"] <= result["median_s"] <= max(result["samples_s"])


def test_cuda_check_script_parses_and_names_only_what_exists():
    """benchmarks/cuda_check.sh runs only on a GPU, so here: valid bash, and every script and test file it
    names is in the repository (a renamed file would otherwise surface on the next, scarce, GPU run)."""
    import re
    import subprocess

    root = Path(__file__).resolve().parent.parent
    script = root / "benchmarks" / "cuda_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    named = set(re.findall(r"((?:benchmarks|tests)/[\w/]+\.py)", script.read_text()))
    assert {"benchmarks/attention.py", "benchmarks/gelu.py", "benchmarks/layernorm.py",
            "tests/test_ops_attention.py"} <= named
    assert [p for p in named if not (root / p).is_file()] == []
