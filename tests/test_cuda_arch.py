"""The CUDA build embeds PTX, and an op never takes the fused path on a GPU the build cannot run.

No GPU is needed: the run-time check is driven through a stand-in for its probe launch, and
tests/cuda_emulation/test_emulator.py shows on an emulated sm_120 that a build without PTX has no kernel
image there while one with compute_90 PTX runs.
"""
import re
import types
import warnings
from pathlib import Path

import pytest
import torch

from minibert.ops import _load

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_arch_list_embeds_ptx():
    setup = (ROOT / "setup.py").read_text()
    default = re.search(r'setdefault\("TORCH_CUDA_ARCH_LIST", "([^"]+)"\)', setup).group(1)
    archs = default.split(";")
    assert archs[-1].endswith("+PTX"), default  # the newest architecture's PTX, JIT-compiled for newer GPUs
    assert {"8.0", "9.0"} <= {a.replace("+PTX", "") for a in archs}


@pytest.fixture
def fresh_probe_cache(monkeypatch):
    monkeypatch.setattr(_load, "_CUDA_DEVICE_RUNS", {})
    monkeypatch.setattr(_load, "CUDA_KERNELS", True)
    monkeypatch.setattr(_load, "EXTENSION", types.SimpleNamespace(module=object()))


def _cuda_tensor(index=0, dtype=torch.float16):
    """Enough of a CUDA tensor for supports(): its device and dtype (no GPU here)."""
    return types.SimpleNamespace(device=torch.device("cuda", index), dtype=dtype)


def test_a_gpu_without_a_kernel_image_gets_eager_ops_and_one_warning(fresh_probe_cache, monkeypatch):
    calls = []

    def probe(index):
        calls.append(index)
        raise RuntimeError("minibert: CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(_load, "_probe_cuda_kernels", probe)
    with pytest.warns(_load.NoKernelImageWarning, match=r"cuda:1 \(minibert: CUDA error: no kernel image"):
        assert not _load.supports(_cuda_tensor(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _load.supports(_cuda_tensor(1, torch.float32))  # cached: no second probe, no warning
    assert calls == [1]


def test_a_gpu_the_build_runs_on_takes_the_fused_path(fresh_probe_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(_load, "_probe_cuda_kernels", calls.append)
    assert _load.supports(_cuda_tensor(0)) and _load.supports(_cuda_tensor(0, torch.bfloat16))
    assert not _load.supports(_cuda_tensor(0, torch.float64))  # no float64 CUDA kernel, as before
    assert calls == [0]
