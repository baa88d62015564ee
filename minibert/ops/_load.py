"""Finding minibert's compiled ops, once, when ``minibert.ops`` is imported.

In order: the compiled ``minibert._C`` (``pip install --no-build-isolation -e .``); else a JIT build of
``csrc/`` with ``torch.utils.cpp_extension.load`` into a cache directory (``$MINIBERT_EXT_CACHE``, default
``~/.cache/minibert/``); else none, and ``minibert.ops`` runs its eager PyTorch forms, with ONE warning
saying why. ``MINIBERT_NO_EXT=1`` skips the extension on purpose (no warning). Importing the extension
registers its ops as ``torch.ops.minibert.*``; ``backend_info()`` reports what was found and why.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import sys
import warnings

import torch

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")
KERNEL_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float16, torch.bfloat16)}
MAX_HEAD_DIM = {"cpu": 256, "cuda": 128}  # csrc: kCpuMaxHeadDim, kCudaMaxHeadDim
MAX_LAYERNORM_COLS = {"cuda": 4000}  # csrc: kCudaMaxLayerNormCols (the CPU kernel takes any width)


class ExtensionFallbackWarning(UserWarning):
    """Warned once when minibert's compiled ops are unavailable and eager PyTorch ops are used instead."""


@dataclasses.dataclass(frozen=True)
class Extension:
    """What the search found: the loaded module (None = eager), how, why, and its file."""

    module: object | None
    how: str  # "prebuilt", "jit" or "eager"
    reason: str
    path: str | None


def _jit_build():
    """Compile csrc/ with torch's JIT extension loader (ninja) and import it; returns the module."""
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    flavour = f"cu{torch.version.cuda}" if with_cuda else "cpu"
    cache = os.environ.get("MINIBERT_EXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minibert")
    build_dir = os.path.join(cache, f"ext-torch{torch.__version__}-{flavour}")
    os.makedirs(build_dir, exist_ok=True)
    print(f"minibert: compiling the C++{'/CUDA' if with_cuda else ''} extension into {build_dir} "
          "(first use only; a minute or two)...", file=sys.stderr)
    # No -std flag: torch adds the standard its own headers need.
    cflags = ["-O3", "-fopenmp"] + (["-DMINIBERT_WITH_CUDA=1"] if with_cuda else [])
    return cpp_extension.load(
        name="minibert_C", sources=sources + (cuda_sources if with_cuda else []), extra_include_paths=[CSRC],
        extra_cflags=cflags, extra_cuda_cflags=["-O3", "--use_fast_math"],
        extra_ldflags=["-fopenmp"], build_directory=build_dir, with_cuda=with_cuda, verbose=False)


def find_extension() -> Extension:
    """Load the extension (prebuilt, else JIT-built), or say why eager ops will be used."""
    if os.environ.get("MINIBERT_NO_EXT", "0") == "1":
        return Extension(None, "eager", "disabled by MINIBERT_NO_EXT=1", None)
    try:
        from minibert import _C
        return Extension(_C, "prebuilt", "compiled minibert._C found", _C.__file__)
    except (ImportError, OSError) as e:
        prebuilt_error = f"{type(e).__name__}: {e}"
    try:
        module = _jit_build()
        reason = f"no usable compiled minibert._C ({prebuilt_error}); JIT-built from csrc/"
        return Extension(module, "jit", reason, module.__file__)
    except Exception as e:  # any build failure (no compiler, no ninja, compile error) means: eager
        last_line = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        reason = (f"no usable compiled minibert._C ({prebuilt_error}) and the JIT build failed "
                  f"({type(e).__name__}: {last_line})")
        warnings.warn(f"minibert: using PyTorch eager ops instead of the fused kernels: {reason}. "
                      "Build them with `pip install --no-build-isolation -e .`, or set MINIBERT_NO_EXT=1 "
                      "to choose eager on purpose.", ExtensionFallbackWarning, stacklevel=2)
        return Extension(None, "eager", reason, None)


EXTENSION = find_extension()
CUDA_KERNELS = bool(EXTENSION.module is not None and getattr(EXTENSION.module, "with_cuda", False))


def supports(t: torch.Tensor) -> bool:
    """True when the loaded extension has a kernel for this tensor's device and dtype (and, on a GPU, a
    kernel image this GPU can run: see ``cuda_device_runs_kernels``)."""
    if EXTENSION.module is None or t.device.type not in KERNEL_DTYPES:
        return False
    if t.device.type == "cuda" and not (CUDA_KERNELS and cuda_device_runs_kernels(t.device)):
        return False
    return t.dtype in KERNEL_DTYPES[t.device.type]


class NoKernelImageWarning(UserWarning):
    """Warned once per GPU whose architecture the extension was not compiled for (eager ops run there)."""


_CUDA_DEVICE_RUNS: dict[int, bool] = {}


def _probe_cuda_kernels(index: int) -> None:
    """Runs one CUDA kernel of the extension (dropout of one element) on GPU `index`; raises if it cannot."""
    torch.ops.minibert.dropout(torch.ones(1, device=f"cuda:{index}"), 0.5, 0, 0)


def cuda_device_runs_kernels(device) -> bool:
    """True when the extension holds a kernel image GPU `device` can run: machine code for its
    architecture family, or PTX the driver compiles for it (setup.py builds sm_80, sm_90 and compute_90
    PTX, so an sm_75 GPU has none). Probed once per GPU by launching one tiny kernel; a GPU without an
    image gets the eager PyTorch ops and ONE warning, instead of a "no kernel image" error from every op.
    While torch.compile traces, the probe (a real launch) is not run: the answer known so far is used,
    or True before any eager call."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _CUDA_DEVICE_RUNS:
        return _CUDA_DEVICE_RUNS[index]
    if torch.compiler.is_compiling():
        return True
    try:
        _probe_cuda_kernels(index)
        ok = True
    except RuntimeError as e:
        ok = False
        lines = str(e).strip().splitlines()
        warnings.warn(f"minibert: the CUDA kernels cannot run on cuda:{index} "
                      f"({lines[0] if lines else type(e).__name__}); using PyTorch eager ops there. The "
                      "extension was built for other GPU architectures: rebuild it with TORCH_CUDA_ARCH_LIST "
                      "naming this GPU's (pip install --no-build-isolation -e .).", NoKernelImageWarning,
                      stacklevel=3)
    _CUDA_DEVICE_RUNS[index] = ok
    return ok


def backend_info() -> dict:
    """What runs where, and why: the backend of each op on each device, the extension path and the reason.

    Keys: ``backend`` ("extension" or "eager"), ``how`` ("prebuilt", "jit" or "eager"), ``reason``,
    ``extension_path``, ``cuda_kernels`` (built with CUDA), ``cuda_device_present``, ``kernel_dtypes``
    (device -> dtypes with a fused kernel), and ``ops``: op name -> {device -> "fused" or "eager"} (for
    float32 inputs).
    """
    loaded = EXTENSION.module is not None
    devices = {"cpu": loaded, "cuda": CUDA_KERNELS}
    kernel_dtypes = {dev: [str(dt).replace("torch.", "") for dt in dts] if devices[dev] else []
                     for dev, dts in KERNEL_DTYPES.items()}
    per_device = {dev: "fused" if ok else "eager" for dev, ok in devices.items()}
    return {
        "backend": "extension" if loaded else "eager",
        "how": EXTENSION.how,
        "reason": EXTENSION.reason,
        "extension_path": EXTENSION.path,
        "cuda_kernels": CUDA_KERNELS,
        "cuda_device_present": torch.cuda.is_available(),
        "kernel_dtypes": kernel_dtypes,
        "ops": {name: dict(per_device) for name in ("attention", "gelu", "bias_gelu", "dropout",
                                                    "residual_dropout_layernorm", "cross_entropy",
                                                    "linear_cross_entropy")},
    }
