"""Run the CUDA kernels of ``csrc/*.cu`` on the CPU: the driver of the emulator in ``csrc/emulation/``.

The kernel files are compiled unmodified by g++ against the emulator's stand-in CUDA headers, after two
mechanical rewrites of syntax that is not C++ (``kernel<<<grid, block, smem, stream>>>(args)`` and the
``__shared__`` declarations, see :func:`translate`). The result is cached under
``$MINIBERT_EXT_CACHE/emulation`` (default ``~/.cache/minibert``), keyed by a hash of every input, so a
test run rebuilds only what changed.

Three builds:

* ``Emulator()``: fibers, deterministic, loaded into this process with ctypes (fast; the default);
* ``Emulator(sanitizer="address")`` / ``Emulator(sanitizer="thread")``: one std::thread per CUDA thread,
  built with AddressSanitizer or ThreadSanitizer into an executable that runs each call in a child
  process (a sanitizer cannot be loaded into a running Python). A sanitizer report is a
  :class:`SanitizerReport` error.

Every call goes through one entry point, ``emu_op_NAME(buffers, ints, reals)`` (``csrc/emulation/ops.cpp``),
on CPU torch tensors. Adding a kernel file takes two steps: append it to ``KERNEL_SOURCES`` and write its
``emu_op_`` function in ops.cpp (``kernels.py`` then wraps it for the tests).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
EMULATION = CSRC / "emulation"
KERNEL_SOURCES = ("attention_cuda.cu", "attention_cuda_tc.cu", "attention_cuda_tc_bwd.cu", "gelu_cuda.cu",
                  "dropout_cuda.cu", "layernorm_cuda.cu",
                  "cross_entropy_cuda.cu")
DEFAULT_ARCH = 800  # __CUDA_ARCH__ the kernels are compiled for (sm_80, the oldest the build targets)
A100 = dict(major=8, minor=0, smem_optin=166912, images="80;90;90+PTX")
NULL = 0xFFFFFFFFFFFFFFFF


class EmulationBuildError(RuntimeError):
    """g++ refused an emulated source: a compile error, or CUDA the emulator does not emulate."""


class EmulatedCudaError(RuntimeError):
    """A launcher returned a CUDA error; ``code`` is the cudaError_t, the message says why."""

    def __init__(self, code: int, message: str):
        super().__init__(f"cudaError {code}: {message}")
        self.code = code


class SanitizerReport(RuntimeError):
    """AddressSanitizer or ThreadSanitizer reported a bug while a kernel ran."""


def compiler() -> str | None:
    """The C++ compiler the emulator uses (``$CXX`` or g++), or None where there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


# ---------------------------------------------------------------------------------------------- translation

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;(){}]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_ALIGN = r"(?:__align__\(\s*\d+\s*\)\s+)?"
_TYPE = r"([A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*?)"  # "float", "unsigned char", "::ns::T"
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+" + _ALIGN + _TYPE + r"\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"__shared__\s+" + _ALIGN + _TYPE + r"\s+(\w+)\s*((?:\[[^\]]+\])*)\s*;")


def translate(text: str, name: str) -> str:
    """The .cu source as host C++: launches become ``::emu::launch(kernel, cfg...)(args)``, shared arrays
    references into the emulated block's shared memory. Line numbers are kept, and ``#line`` makes
    ``__FILE__`` and compiler errors name the original file."""
    text = _LAUNCH.sub(lambda m: f"::emu::launch({m.group(1)}, {m.group(2)})(", text)
    text = _DYNAMIC_SHARED.sub(lambda m: f"{m.group(1)}* const {m.group(2)} = ::emu::dynamic_shared<{m.group(1)}>();",
                               text)
    counter = iter(range(1, 1 << 30))
    text = _STATIC_SHARED.sub(
        lambda m: f"auto& {m.group(2)} = ::emu::static_shared<{m.group(1)}{m.group(3)}>({next(counter)});", text)
    leftover = re.search(r"__shared__.*", text)
    if leftover:
        raise EmulationBuildError(f"{name}: the emulator cannot translate this __shared__ declaration: "
                                  f"{leftover.group(0).strip()}")
    return f'#line 1 "{name}"\n' + text


# ---------------------------------------------------------------------------------------------- building

_SANITIZER_FLAGS = {
    None: ["-O2", "-fPIC"],
    "address": ["-O1", "-g1", "-fsanitize=address", "-fno-omit-frame-pointer", "-DEMU_THREADS"],
    "thread": ["-O1", "-g1", "-fsanitize=thread", "-DEMU_THREADS"],
}


def _cache_root() -> Path:
    return Path(os.environ.get("MINIBERT_EXT_CACHE", Path.home() / ".cache" / "minibert")) / "emulation"


def _inputs_digest(sources: list[Path], flags: list[str], cxx: str) -> str:
    h = hashlib.sha256(" ".join(flags).encode())
    h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    for path in sorted(set(CSRC.glob("*.h")) | set(CSRC.glob("*.cuh")) | set(EMULATION.rglob("*.h"))
                       | set(EMULATION.glob("*.cpp")) | set(sources)):
        h.update(str(path.name).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _not_emulated_hint(stderr: str) -> str:
    pattern = r"['‘](\w+)['’] (?:was not declared|is not a member|has not been declared)"
    names = sorted(set(re.findall(pattern, stderr)))
    if not names:
        return ""
    return ("\nnot emulated (or misspelt): " + ", ".join(names) +
            "; csrc/emulation/README.md lists what the emulator covers")


def _compile(cxx: str, args: list[str], what: str) -> None:
    proc = subprocess.run([cxx, *args], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line]
        raise EmulationBuildError(f"g++ could not build {what}:\n" + "\n".join(errors[:20] or
                                  proc.stderr.splitlines()[-20:]) + _not_emulated_hint(proc.stderr))


def build(sources=None, sanitizer: str | None = None, arch: int = DEFAULT_ARCH,
          extra_flags: tuple = ()) -> Path:
    """Compiles the emulator with the kernel files `sources` (paths; default: every file of
    KERNEL_SOURCES plus csrc/emulation/ops.cpp) and returns the shared library (no sanitizer) or the
    runner executable (``sanitizer`` "address" or "thread"). Cached; each file compiles in its own g++
    process, two at a time."""
    cxx = compiler()
    if cxx is None:
        raise EmulationBuildError("no C++ compiler (g++) found: the CUDA emulator needs one")
    if sources is None:
        sources = [CSRC / name for name in KERNEL_SOURCES] + [EMULATION / "ops.cpp"]
    sources = [Path(s) for s in sources]
    # -fno-strict-aliasing: kernels reinterpret half arrays as uint4 vectors, as nvcc allows
    flags = ["-std=c++17", "-pthread", "-fno-strict-aliasing", f"-D__CUDA_ARCH__={arch}",
             "-I", str(EMULATION / "include"),
             "-I", str(EMULATION), "-I", str(CSRC), *_SANITIZER_FLAGS[sanitizer], *extra_flags]
    units = [EMULATION / "runtime.cpp", *sources] + ([EMULATION / "runner.cpp"] if sanitizer else [])
    digest = _inputs_digest(units, flags, cxx)
    out_dir = _cache_root() / digest
    target = out_dir / ("runner" if sanitizer else "libcudaemu.so")
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir))
    objects, jobs = [], []
    for unit in units:
        src = unit
        if unit.suffix == ".cu":
            src = work / (unit.stem + "_cu.cpp")
            src.write_text(translate(unit.read_text(), str(unit.relative_to(ROOT)) if unit.is_relative_to(ROOT)
                                     else str(unit)))
        obj = work / (unit.stem + ".o")
        objects.append(obj)
        jobs.append((["-c", str(src), "-o", str(obj), *flags], unit.name))
    _run_two_at_a_time(cxx, jobs)
    link = work / target.name
    if sanitizer:
        _compile(cxx, [*map(str, objects), "-o", str(link), "-rdynamic", "-ldl", *flags], "the runner")
    else:
        _compile(cxx, [*map(str, objects), "-shared", "-o", str(link), *flags], "the library")
    os.replace(link, target)  # atomic: a concurrent build never sees half a file
    shutil.rmtree(work, ignore_errors=True)
    return target


def _run_two_at_a_time(cxx: str, jobs) -> None:
    pending = list(jobs)
    running = []
    while pending or running:
        while pending and len(running) < 2:
            args, what = pending.pop(0)
            running.append((subprocess.Popen([cxx, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True), what, args))
        proc, what, args = running.pop(0)
        _, stderr = proc.communicate(timeout=900)
        if proc.returncode != 0:
            for other, _, _ in running:
                other.kill()
                other.wait()
            errors = [line for line in stderr.splitlines() if "error" in line]
            raise EmulationBuildError(f"g++ could not build {what}:\n" + "\n".join(errors[:20] or
                                      stderr.splitlines()[-20:]) + _not_emulated_hint(stderr))


# ---------------------------------------------------------------------------------------------- calling

class Emulator:
    """An emulated GPU with the kernels of `sources` built in. ``device`` is the emulated device (compute
    capability, cudaDevAttrMaxSharedMemoryPerBlockOptin, and the kernel images of the build: "80;90;90+PTX"
    means machine code for sm_80 and sm_90 and PTX for compute_90). ``schedule`` orders the fibers:
    0 highest thread index first (the default), 1 lowest first, >= 2 a permutation seeded by it."""

    def __init__(self, sources=None, sanitizer: str | None = None, arch: int = DEFAULT_ARCH,
                 extra_flags: tuple = (), device: dict | None = None, schedule: int = 0):
        self.path = build(sources, sanitizer, arch, extra_flags)
        self.sanitizer = sanitizer
        self.device = dict(device or A100)
        self.schedule = schedule
        self._lib = None
        if sanitizer is None:
            self._lib = ctypes.CDLL(str(self.path))
            self._lib.emu_set_device.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
            self._lib.emu_last_error_message.restype = ctypes.c_char_p

    def call(self, op: str, buffers, ints=(), reals=()) -> None:
        """Runs ``emu_op_<op>`` on `buffers` (contiguous CPU tensors, written in place, or None for a null
        pointer); raises EmulatedCudaError for a CUDA error, SanitizerReport for a sanitizer's report."""
        for t in buffers:
            if t is not None and (t.device.type != "cpu" or not t.is_contiguous()):
                raise ValueError("emulated kernels take contiguous CPU tensors")
        ints, reals = [int(i) for i in ints] + [0], [float(r) for r in reals] + [0.0]
        if self._lib is None:
            return self._call_runner(op, buffers, ints, reals)
        d = self.device
        self._lib.emu_clear_error()  # each call starts clean, as the runner's fresh process does
        self._lib.emu_set_device(d["major"], d["minor"], d["smem_optin"], d["images"].encode())
        self._lib.emu_set_schedule(self.schedule)
        fn = getattr(self._lib, "emu_op_" + op)
        fn.restype = ctypes.c_int
        ptrs = (ctypes.c_void_p * max(1, len(buffers)))(*[None if t is None else t.data_ptr() for t in buffers])
        rc = fn(ptrs, (ctypes.c_int64 * len(ints))(*ints), (ctypes.c_double * len(reals))(*reals))
        if rc != 0:
            raise EmulatedCudaError(rc, self._lib.emu_last_error_message().decode())

    def _call_runner(self, op, buffers, ints, reals):
        d = self.device
        with tempfile.TemporaryDirectory() as tmp:
            request, response = Path(tmp) / "request", Path(tmp) / "response"
            with open(request, "wb") as f:
                _write_str(f, op)
                f.write(struct.pack("<I", len(buffers)))
                for t in buffers:
                    if t is None:
                        f.write(struct.pack("<Q", NULL))
                        continue
                    raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
                    f.write(struct.pack("<Q", len(raw)) + raw)
                f.write(struct.pack(f"<I{len(ints)}q", len(ints), *ints))
                f.write(struct.pack(f"<I{len(reals)}d", len(reals), *reals))
                f.write(struct.pack("<4i", d["major"], d["minor"], d["smem_optin"], self.schedule))
                _write_str(f, d["images"])
            env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86",
                       TSAN_OPTIONS="halt_on_error=1:exitcode=86:report_signal_unsafe=0")
            proc = subprocess.run([str(self.path), str(request), str(response)], capture_output=True, text=True,
                                  env=env, timeout=600)
            if proc.returncode != 0 or "Sanitizer" in proc.stderr:
                lines = proc.stderr.splitlines()
                summary = [line for line in lines if "SUMMARY" in line or "ERROR" in line or "WARNING" in line]
                raise SanitizerReport(f"{self.sanitizer} sanitizer, exit {proc.returncode}:\n" +
                                      "\n".join(summary[:5] + lines[:40]))
            data = response.read_bytes()
            rc, length = struct.unpack_from("<iI", data, 0)
            message = data[8:8 + length].decode()
            pos = 8 + length
            for t in buffers:
                if t is None or t.numel() == 0:
                    continue
                raw = t.view(torch.uint8).reshape(-1)  # a view: writes land in t
                n = raw.numel()
                raw.copy_(torch.frombuffer(bytearray(data[pos:pos + n]), dtype=torch.uint8))
                pos += n
            if rc != 0:
                raise EmulatedCudaError(rc, message)


def _write_str(f, s: str) -> None:
    raw = s.encode()
    f.write(struct.pack("<I", len(raw)) + raw)
