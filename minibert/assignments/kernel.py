"""Assignment "kernel": the fused attention forward in C++ (``assignments/csrc/attention_kernel.cpp``).

The handout is a C++ file whose torch binding, argument checks and threading are written; the student
writes the body of ``attention_rows``, the online-softmax loop over key tiles for a block of query rows
(the algorithm of ``csrc/attention_cpu.cpp``, as plain loops). The grader compiles the file with
``torch.utils.cpp_extension.load`` in the student's process (compiler errors are shown; the build has its
own time limit) and checks, on random inputs:

* float64 against the NumPy reference (``minibert.reference.layers.attention_forward``) to 1e-10, without
  padding (with more keys than queries) and with padding (one sequence entirely padding);
* float32 to 1e-5 against the same float64 reference;
* memory: no [S, S] buffer. At S = 4096 the kernel's peak resident memory above what was resident
  before the call must stay under a quarter of one [S, S] float32 matrix (16 MB); eager attention's is
  shown beside it (about 3 such matrices). How it is measured: Linux's peak resident set size (VmHWM in
  /proc/self/status) is reset by writing 5 to /proc/self/clear_refs just before the call and read just
  after. Unlike ``tracemalloc`` (Python allocations only) or torch's profiler (torch's allocator only)
  this sees every page the call touches, a ``std::vector`` in the kernel included; resident pages are
  what a buffer costs, and a buffer of S^2 floats that is filled is all resident. Where clear_refs
  cannot be written, ``ru_maxrss`` of the process is used, which works because the kernel is measured
  before eager attention ever runs in that process;
* speed: faster than torch eager attention (``minibert.ops.eager.attention``: matmul, softmax, matmul)
  at B = 1, H = 12, S = 1024, D = 64 in float32, both with torch's threads, as the median of 7
  interleaved runs after a warm-up (a ratio measured in one process, as docs/design.md asks of
  benchmarks).

Memory and speed are measured only once the float32 output is right: a fast wrong kernel earns nothing.
A CUDA version (``attention_kernel_cuda.cu``) is graded the same way where a GPU is present, and
skipped elsewhere.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from minibert.assignments.base import Assignment, Task
from minibert.reference import layers as P

CPU_FILE, CUDA_FILE = "assignments/csrc/attention_kernel.cpp", "assignments/csrc/attention_kernel_cuda.cu"
MEMORY_S, SPEED_SHAPE = 4096, (1, 12, 1024, 64)
CXX_FLAGS = ["-O3", "-march=native"]
NOT_WRITTEN = "assignment kernel: write"


# ---- run in the student's process ------------------------------------------------------------------------

def build(path: Path):
    """Compile the student's C++/CUDA file into a Python module (cached by the source's hash under
    ``$MINIBERT_EXT_CACHE/assignments``, so grading the same file again does not rebuild it). A compiler
    error is raised as RuntimeError with the compiler's error lines."""
    from torch.utils import cpp_extension

    source = path.read_bytes()
    digest = hashlib.sha256(source + " ".join(CXX_FLAGS).encode() + _torch_version().encode()).hexdigest()[:16]
    root = Path(os.environ.get("MINIBERT_EXT_CACHE", Path.home() / ".cache" / "minibert")) / "assignments"
    build_dir = root / digest
    build_dir.mkdir(parents=True, exist_ok=True)
    copy = build_dir / path.name  # the same path for the same source, so ninja finds its earlier build
    if not copy.exists() or copy.read_bytes() != source:
        copy.write_bytes(source)
    name = f"assignment_{path.stem}_{digest}"
    os.environ.setdefault("MAX_JOBS", "1")
    try:
        return cpp_extension.load(name=name, sources=[str(copy)], extra_cflags=CXX_FLAGS,
                                  extra_cuda_cflags=["-O3"], build_directory=str(build_dir), verbose=False)
    except RuntimeError as exc:
        text = str(exc)
        errors = [line for line in text.splitlines() if "error" in line.lower() and path.name in line]
        raise RuntimeError("the compiler refused " + path.name + ":\n" + "\n".join(errors or text.splitlines()[-30:])) \
            from None


def _torch_version() -> str:
    import torch

    return torch.__version__


def _call(module, q, k, v, mask, device="cpu"):
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (q, k, v)]
    mask_t = None if mask is None else torch.from_numpy(np.asarray(mask)).to(device)
    try:
        out = module.attention_forward(*tensors, mask_t, float(q.shape[-1]) ** -0.5)
    except RuntimeError as exc:
        if NOT_WRITTEN in str(exc):
            raise NotImplementedError(str(exc).splitlines()[0]) from None
        raise
    return out.cpu().numpy()


def run_forward(module, q, k, v, mask):
    """The student's kernel on NumPy arrays (CPU)."""
    return _call(module, q, k, v, mask)


def run_forward_cuda(module, q, k, v, mask):
    """The student's CUDA kernel on NumPy arrays (copied to the GPU and back)."""
    return _call(module, q, k, v, mask, device="cuda")


def _resident_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_extra_bytes(fn) -> tuple[int, str]:
    """(peak resident bytes ``fn()`` added, how it was measured): VmHWM after a reset, else ru_maxrss."""
    import resource

    before = _resident_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        fn()
        return max(0, (_resident_kb("VmHWM") - before)) * 1024, "VmHWM reset through /proc/self/clear_refs"
    except OSError:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) * 1024, "ru_maxrss"


def measure_memory(module, S):
    """Peak extra resident memory of the kernel, then of eager attention, on [1, 1, S, 64] float32."""
    import torch

    from minibert.ops import eager

    torch.set_num_threads(1)  # no thread stacks appear during the measurement
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, S, 64, generator=gen) for _ in range(3))
    kernel, how = _peak_extra_bytes(lambda: module.attention_forward(q, k, v, None, 0.125))
    reference, _ = _peak_extra_bytes(lambda: eager.attention(q, k, v, None, 0.125))
    return kernel, reference, how


def measure_speed(module, shape):
    """(kernel seconds, eager seconds, kernel / eager) on float32 ``shape``: medians of 7 paired rounds.

    Each round times the kernel and eager attention back to back, so a burst of load from other processes
    hits both; the ratio is the median of the per-round ratios, which such bursts move least.
    """
    import torch

    from minibert.ops import eager

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
    scale = shape[-1] ** -0.5
    runs = {"kernel": lambda: module.attention_forward(q, k, v, None, scale),
            "eager": lambda: eager.attention(q, k, v, None, scale)}
    times = {name: [] for name in runs}
    for repeat in range(9):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if repeat >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    ratio = float(np.median(np.array(times["kernel"]) / np.array(times["eager"])))
    return float(np.median(times["kernel"])), float(np.median(times["eager"])), ratio


# ---- the checks ---------------------------------------------------------------------------------------

def _inputs(gen):
    B, H, S_q, S_k, D = 3, 2, 70, 130, 24  # S_q spans two query blocks, S_k three key tiles
    q = gen.standard_normal((B, H, S_q, D))
    k, v = gen.standard_normal((B, H, S_k, D)), gen.standard_normal((B, H, S_k, D))
    mask = np.ones((B, S_k), dtype=np.int64)
    mask[1, int(gen.integers(60, 120)):] = 0  # a padded sequence, its padding across a tile boundary
    mask[2, :] = 0  # a sequence that is all padding: its rows must be zeros
    return q, k, v, mask


def _correctness(t, gen, driver):
    """The three correctness variants; returns whether the float32 one passed."""
    q, k, v, mask = _inputs(gen)
    for name, m, dtype, rtol in (("float64, no padding", None, np.float64, 1e-10),
                                 ("float64, padding", mask, np.float64, 1e-10),
                                 ("float32, padding", mask, np.float32, 1e-5)):
        want = P.attention_forward(q, k, v, m)[0]
        with t.variant(name, ["out"]) as v_:
            v_.close("out", t.call_driver(driver, q.astype(dtype), k.astype(dtype), v.astype(dtype), m), want,
                     rtol=rtol)
    return t.cases[-1].passed


def _check_cpu(t, gen):
    correct = _correctness(t, gen, "minibert.assignments.kernel:run_forward")
    if t.hidden:
        return  # memory and speed do not depend on the inputs: measured once
    gate = "not measured: the float32 output must be right first"
    S = MEMORY_S
    with t.variant(f"memory at S={S}", ["no [S, S] buffer"]) as v:
        if not correct:
            v.check("no [S, S] buffer", False, gate)
        else:
            kernel, eager, how = t.call_driver("minibert.assignments.kernel:measure_memory", S)
            square = S * S * 4
            measured = (f"peak extra memory {kernel / 2 ** 20:.1f} MB at S={S} (eager attention: "
                        f"{eager / 2 ** 20:.1f} MB; one [S, S] float32 matrix is {square / 2 ** 20:.0f} MB; limit "
                        f"{square / 4 / 2 ** 20:.0f} MB; measured by {how})")
            t.notes.append(measured)
            v.check("no [S, S] buffer", kernel < square / 4,
                    f"{measured}: keep per-row state and one tile of scores, not a row of S")
    shape = "x".join(map(str, SPEED_SHAPE))
    with t.variant(f"speed at [B, H, S, D] = {shape}", ["faster than torch eager"]) as v:
        if not correct:
            v.check("faster than torch eager", False, gate)
        else:
            kernel, eager, ratio = t.call_driver("minibert.assignments.kernel:measure_speed", SPEED_SHAPE)
            measured = (f"{kernel * 1e3:.1f} ms, torch eager {eager * 1e3:.1f} ms (medians of 7 paired runs; "
                        f"kernel / eager {ratio:.2f})")
            t.notes.append(f"speed: {measured}")
            v.check("faster than torch eager", ratio < 1.0,
                    f"{measured}: stream over key tiles so the scores stay in cache, and make the inner loops "
                    f"run over contiguous memory")


def _check_cuda(t, gen):
    _correctness(t, gen, "minibert.assignments.kernel:run_forward_cuda")


ASSIGNMENT = Assignment(
    name="kernel",
    title="Fused attention in C++: the online softmax",
    summary=("Write the heart of a fused attention kernel: for a block of query rows, stream over the keys "
             "in tiles, keeping for every row a running max, a running sum of exponentials and an "
             "unnormalised output, rescaled whenever the max grows, so that no [S, S] score matrix is ever "
             "stored. The torch binding, the argument checks and the threading are written; the grader "
             "compiles your file and checks it against the float64 NumPy reference, measures its memory at "
             "S = 4096 and its speed against torch eager attention."),
    tasks=(
        Task(CPU_FILE, "attention_rows", 10, "float64 (1e-10) with and without padding, float32 (1e-5); peak memory "
             "at S=4096 under a quarter of an [S, S] matrix; faster than torch eager at S=1024 (memory and "
             "speed only once float32 is right)", _check_cpu,
             notebook=('q, k, v = (torch.randn(2, 3, 100, 32, dtype=torch.float64) for _ in range(3))\n'
                       'mask = torch.ones(2, 100, dtype=torch.int64)\n'
                       'mask[1, 70:] = 0\n'
                       'out = kernel.attention_forward(q, k, v, mask, 32 ** -0.5)\n'
                       'want = attention_forward(q.numpy(), k.numpy(), v.numpy(), mask.numpy())[0]\n'
                       'error = np.linalg.norm(out.numpy() - want) / np.linalg.norm(want)\n'
                       'print(f"relative error {error:.1e}")\n'
                       'assert error < 1e-10')),
        Task(CUDA_FILE, "attention_rows_cuda", 4, "the same correctness checks in float32 on the GPU", _check_cuda,
             needs="cuda",
             notebook=('if torch.cuda.is_available():\n'
                       '    kernel_cuda = build(Path("attention_kernel_cuda.cu"))\n'
                       '    q, k, v = (torch.randn(2, 3, 100, 32) for _ in range(3))\n'
                       '    out = kernel_cuda.attention_forward(q.cuda(), k.cuda(), v.cuda(), None, 32 ** -0.5).cpu()\n'
                       '    want = attention_forward(q.double().numpy(), k.double().numpy(), v.double().numpy())[0]\n'
                       '    assert np.linalg.norm(out.numpy() - want) / np.linalg.norm(want) < 1e-5')),
    ),
    notebook_setup='''\
from pathlib import Path

import numpy as np
import torch

from minibert.assignments.kernel import build
from minibert.reference.layers import attention_forward

kernel = build(Path("attention_kernel.cpp"))  # compiles your file (about a minute; cached by its contents)
''',
    questions=(
        "When a tile raises a row's max from m_old to m_new, why must both the running sum and the partial "
        "output be multiplied by exp(m_old - m_new), and what goes wrong if only one of them is?",
        "How much memory does your kernel need per query block, as a function of S and D? And eager attention?",
        "A query row whose keys are all padding: what do your loops compute for it, and why is that not NaN?",
    ),
    loaders={".cpp": "minibert.assignments.kernel:build", ".cu": "minibert.assignments.kernel:build"},
)
