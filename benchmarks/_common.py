"""Shared helpers for the benchmarks: timing, machine naming, and saving JSON + PNG results.

Rules every benchmark follows (docs/design.md, "Benchmarks"): compare implementations inside one run
(the machines are shared and noisy), warm up first, report the median of several repeats, never assert a
time in a test, and save ``benchmarks/results/<name>-<machine>.json`` plus a PNG plot.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from minibert.files import atomic_open, atomic_write_text  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_TIMES_GPU: bool | None = None  # set by device_configs(); None: name the machine by its GPU if it has one


def add_device_argument(parser) -> None:
    """``--device all|cpu|cuda``: which processors a benchmark times (default: the CPU, and the GPU if any)."""
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="time on the CPU, on the GPU, or on both (default 'all': the CPU, plus the GPU "
                             "where torch sees one)")


def device_configs(device: str = "all") -> list:
    """The ``(device, dtype)`` pairs to time for a ``--device`` choice: float32 on the CPU, float32 and
    bfloat16 on CUDA. Also decides the results' machine name: a run that times no GPU is named after the CPU."""
    import torch

    global _TIMES_GPU
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here")
    configs = [("cpu", torch.float32)] if device in ("all", "cpu") else []
    if device in ("all", "cuda") and torch.cuda.is_available():
        configs += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
    _TIMES_GPU = any(d == "cuda" for d, _ in configs)
    return configs


def machine_name() -> str:
    """A short, file-name-safe description of where this ran: ``cpu-2c`` or ``cuda-nvidia-h100``."""
    try:
        import torch
        if _TIMES_GPU is not False and torch.cuda.is_available():
            name = torch.cuda.get_device_name(0).lower()
            return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    except ImportError:
        pass
    return f"cpu-{os.cpu_count()}c"


def machine_info() -> dict:
    """What the numbers were measured on, stored in every results file."""
    info = {"machine": machine_name(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    return info


def time_fn(fn, *, warmup: int = 2, repeats: int = 7, sync=None, min_time: float = 0.0) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (more while under ``min_time``).

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before reading the clock, so asynchronous GPU
    work is counted. Returns the median, min and all samples in seconds.
    """
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    start_all = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 10 * repeats:
            break
    return {"median_s": statistics.median(samples), "min_s": min(samples), "samples_s": samples}


def results_path(name: str, ext: str, machine: str | None = None) -> str:
    """``benchmarks/results/<name>-<machine>.<ext>``."""
    return os.path.join(RESULTS_DIR, f"{name}-{machine or machine_name()}.{ext}")


def save_json(name: str, payload: dict) -> str:
    """Save ``payload`` (plus machine info) atomically as JSON; returns the path."""
    payload = {"benchmark": name, "machine_info": machine_info(), **payload}
    path = results_path(name, "json")
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def save_figure(fig, name: str) -> str:
    """Save a matplotlib figure atomically as PNG; returns the path."""
    path = results_path(name, "png")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    return path


def print_table(rows: list[dict], columns: list[str], formats: dict | None = None) -> None:
    """Print ``rows`` as an aligned text table with the given ``columns`` (and per-column formats)."""
    formats = formats or {}

    def fmt(col, v):
        if v is None:
            return "-"
        f = formats.get(col)
        return format(v, f) if f else str(v)

    cells = [[fmt(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def memory_bound_rows(make_cases, variants: tuple, variant_key: str, cols: int, eager_peer: dict,
                      quick: bool, copy_ops: tuple = ("copy",), device: str = "all") -> tuple[list[dict], dict]:
    """Time memory-bound ops the way ``gelu.py`` and ``layernorm.py`` do, and relate them to a copy.

    For the :func:`device_configs` of ``device`` (float32 on the CPU; float32 and bfloat16 on CUDA), for
    ``[rows, cols]`` inputs of 1M, 4M and (without ``quick``) 16M elements, plus 64M on a GPU, whose 16M
    would still sit largely in its L2 cache, and for each of ``variants`` (e.g. the GELU form or the
    dropout probability), ``make_cases(x, variant)`` returns ``name -> (callable, elements that must move per
    element of x)``; each callable is timed (median of at least 7, after 2 warm-ups). The ``copy_ops`` are
    timed once per size, under the variant "-". Each row gets its GB/s, ``of_copy_bw`` (the fraction of
    the "copy" bandwidth of the same size, same run) and ``speedup_vs_eager`` (over ``eager_peer[op]``).
    Returns the rows and a dict ``(device, dtype, elements, variant, op) -> row``.
    """
    import torch

    from minibert import ops

    if not ops.is_available():
        raise SystemExit(f"the minibert extension is not available: {ops.backend_info()['reason']}")
    rows = []
    for device, dtype in device_configs(device):
        sync = torch.cuda.synchronize if device == "cuda" else None
        sizes = [1 << 20, 1 << 22] + ([] if quick else [1 << 24] + ([1 << 26] if device == "cuda" else []))
        for n in sizes:
            x = torch.randn(n // cols + 1, cols).to(device, dtype)
            for variant in variants:
                for name, (fn, moved) in make_cases(x, variant).items():
                    if name in copy_ops and variant != variants[0]:
                        continue
                    t = time_fn(fn, warmup=2, repeats=7, sync=sync, min_time=0.2)
                    rows.append({"device": device, "dtype": str(dtype).replace("torch.", ""),
                                 "elements": x.numel(), variant_key: "-" if name in copy_ops else variant,
                                 "op": name, "median_ms": 1e3 * t["median_s"],
                                 "gb_per_s": moved * x.numel() * x.element_size() / t["median_s"] / 1e9})
    key = {(r["device"], r["dtype"], r["elements"], r[variant_key], r["op"]): r for r in rows}
    for r in rows:
        copy = key[(r["device"], r["dtype"], r["elements"], "-", "copy")]
        r["of_copy_bw"] = r["gb_per_s"] / copy["gb_per_s"]
        peer = key.get((r["device"], r["dtype"], r["elements"], r[variant_key], eager_peer.get(r["op"])))
        r["speedup_vs_eager"] = peer["median_ms"] / r["median_ms"] if peer else None
    print_table(rows, ["device", "dtype", "elements", variant_key, "op", "median_ms", "gb_per_s", "of_copy_bw",
                       "speedup_vs_eager"],
                {"median_ms": ".2f", "gb_per_s": ".1f", "of_copy_bw": ".2f", "speedup_vs_eager": ".2f"})
    return rows, key


def plot_gb_per_s(rows: list[dict], name: str, title: str, label, keep=lambda r: True) -> str:
    """One bar chart of GB/s per (device, dtype) at the largest size of ``rows`` (from
    :func:`memory_bound_rows`), the bars named by ``label(row)`` and filtered by ``keep(row)``; saved as
    ``name``'s PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["device"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(8 * len(groups), 5), squeeze=False)
    for ax, (device, dtype) in zip(axes[0], groups):
        largest = max(r["elements"] for r in rows if r["device"] == device and r["dtype"] == dtype)
        sel = [r for r in rows if r["device"] == device and r["dtype"] == dtype and r["elements"] == largest
               and keep(r)]
        ax.barh([label(r) for r in sel], [r["gb_per_s"] for r in sel])
        ax.set_xlabel("GB/s (bytes that must move / time)")
        ax.set_title(f"{device} {dtype}, {largest} elements")
    fig.suptitle(f"{title} ({machine_name()})")
    fig.tight_layout()
    return save_figure(fig, name)
