"""Attention: NumPy reference vs torch eager vs torch SDPA vs minibert's fused op, forward and forward+backward.

    python benchmarks/attention.py                 # S = 128 .. 4096, H = 12, D = 64, batch 1
    python benchmarks/attention.py --quick         # S = 128 .. 512, fewer repeats
    python benchmarks/attention.py --max-seq 2048 --max-ref-seq 1024
    python benchmarks/attention.py --device cuda --batch 8   # the GPU only, float32 and bfloat16

For every sequence length S it reports the median time, GFLOP/s (forward 4 B H S^2 D: the two matmuls;
forward+backward 12 B H S^2 D: two more matmuls for dV, dP and two for dQ, dK; recomputation not
counted), the peak extra memory of one call, and speed-ups against torch eager and SDPA. On a GPU, for
bfloat16, "flash" is SDPA held to its FlashAttention-2 backend (whatever else SDPA would pick). Because the
machine may be shared, the fused/SDPA ratio is also measured paired: the two ops run alternately and
the median of the per-pair time ratios is reported (load that comes and goes hits both alike). On the
CPU it is measured a second time on one thread by that thread's CPU time (time.thread_time), which
other processes cannot inflate: on a crowded machine a 2-thread op waits whole scheduler ticks (4 ms)
for its second thread, and then only this column still compares the kernels.
Peak memory on the CPU is the growth of the process's resident set during one call (the kernel's
high-water mark is reset through /proc/self/clear_refs first), so it sees torch's and NumPy's own
allocations alike. The script re-executes itself with MALLOC_MMAP_THRESHOLD_=65536 so that every
large buffer is freshly mapped and returned on free: otherwise glibc recycles already-resident heap
and an op's allocations can look free. On CUDA it is torch.cuda.max_memory_allocated. The fused op is checked against
eager before anything is timed. Results: benchmarks/results/attention-<machine>.json and .png.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import _common
import torch
import torch.nn.functional as F

from minibert import ops
from minibert.reference import layers

HEADS, HEAD_DIM, BATCH = 12, 64, 1  # BATCH and HEAD_DIM are set from --batch and --head-dim
IMPLS = ["numpy", "eager", "sdpa", "flash", "fused"]


def flops(seq: int, mode: str) -> float:
    per_matmul = 2 * BATCH * HEADS * seq * seq * HEAD_DIM
    return per_matmul * (2 if mode == "fwd" else 6)


# ---------------------------------------------------------------------------------------------- memory

def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_mb(fn, device: str) -> float | None:
    """Peak memory one call of ``fn`` adds on top of what is already allocated (MB), or None if unknown."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak resident set) to the current resident set
    except OSError:
        return None
    base = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    return None if base is None or peak is None else (peak - base) / 1024


# ---------------------------------------------------------------------------------------------- the contenders

def make_case(impl: str, mode: str, seq: int, device: str, dtype: torch.dtype):
    """A zero-argument callable running one forward (or forward+backward) of ``impl``."""
    gen = torch.Generator().manual_seed(seq)
    q, k, v, dout = (torch.randn(BATCH, HEADS, seq, HEAD_DIM, generator=gen).to(device, dtype) for _ in range(4))
    scale = HEAD_DIM ** -0.5
    if impl == "flash" and (device != "cuda" or dtype not in (torch.float16, torch.bfloat16)):
        return None
    if impl == "numpy":
        qn, kn, vn, dn = (t.float().numpy() for t in (q, k, v, dout))
        if mode == "fwd":
            return lambda: layers.attention_forward(qn, kn, vn, scale=scale)
        return lambda: layers.attention_backward(dn, layers.attention_forward(qn, kn, vn, scale=scale)[1])

    forward = {
        "eager": lambda q, k, v: ops.eager.attention(q, k, v, None, scale),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=scale),
        "flash": lambda q, k, v: _flash(q, k, v, scale),
        "fused": lambda q, k, v: ops.attention(q, k, v, scale=scale),
    }[impl]
    if mode == "fwd":
        def run():
            with torch.no_grad():
                forward(q, k, v)
        return run
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def run_fwd_bwd():
        out = forward(*leaves)
        torch.autograd.grad(out, leaves, dout)
    return run_fwd_bwd


def _flash(q, k, v, scale):
    """SDPA restricted to its FlashAttention-2 kernel (an error, not a silent fallback, if it cannot run)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def paired_speedup(fn, peer, pairs: int, sync=None, clock=time.perf_counter) -> float:
    """Median over ``pairs`` alternating runs of time(peer) / time(fn): fn's speed-up over peer."""
    def once(f):
        t0 = clock()
        f()
        if sync:
            sync()
        return clock() - t0
    once(fn), once(peer)  # warm-up
    return statistics.median(once(peer) / once(fn) for _ in range(pairs))


def validate(device: str, dtype: torch.dtype) -> float:
    """Relative error of the fused op against eager (forward) on a small case; raises if it disagrees."""
    q, k, v = (torch.randn(1, HEADS, 200, HEAD_DIM).to(device, dtype) for _ in range(3))
    fused = ops.attention(q, k, v).float()
    eager = ops.eager.attention(q.float(), k.float(), v.float(), None, HEAD_DIM ** -0.5)
    err = float((fused - eager).norm() / eager.norm())
    if not err < (1e-5 if dtype == torch.float32 else 1e-2):
        raise RuntimeError(f"fused attention disagrees with eager on {device} {dtype}: rel err {err:.2e}")
    return err


def main():
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S up to 512 and fewer repeats")
    parser.add_argument("--max-seq", type=int, default=4096, help="largest sequence length (default 4096)")
    parser.add_argument("--max-ref-seq", type=int, default=2048,
                        help="largest S for the NumPy reference (slow, O(S^2) memory); default 2048")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1; a GPU wants 8 or more)")
    parser.add_argument("--head-dim", type=int, default=64, help="head size D (default 64, as in BERT)")
    _common.add_device_argument(parser)
    args = parser.parse_args()
    global BATCH, HEAD_DIM
    BATCH, HEAD_DIM = args.batch, args.head_dim
    max_seq = min(args.max_seq, 512) if args.quick else args.max_seq
    repeats = 3 if args.quick else args.repeats
    seqs = [s for s in (128, 256, 512, 1024, 2048, 4096, 8192) if s <= max_seq]

    configs = _common.device_configs(args.device)
    print(f"machine: {_common.machine_name()}, torch threads: {torch.get_num_threads()}, "
          f"backend: {ops.backend_info()['backend']} ({ops.backend_info()['reason']})")

    rows = []
    for device, dtype in configs:
        dtype_name = str(dtype).replace("torch.", "")
        print(f"validated fused vs eager on {device} {dtype_name}: rel err {validate(device, dtype):.1e}")
        sync = torch.cuda.synchronize if device == "cuda" else None
        for seq in seqs:
            for mode in ("fwd", "fwd+bwd"):
                for impl in IMPLS:
                    if impl == "numpy" and (device != "cpu" or seq > args.max_ref_seq):
                        continue
                    fn = make_case(impl, mode, seq, device, dtype)
                    if fn is None:
                        continue
                    big = seq >= 2048 and device == "cpu"  # a GPU runs even these in milliseconds
                    # small cases repeat for at least 0.5 s: on a shared machine one sample is noise
                    t = _common.time_fn(fn, warmup=1 if device == "cpu" else 3, repeats=2 if big else repeats,
                                        sync=sync, min_time=0.0 if big else (0.5 if device == "cpu" else 0.2))
                    rows.append({"device": device, "dtype": dtype_name, "seq": seq, "mode": mode, "impl": impl,
                                 "median_ms": 1e3 * t["median_s"],
                                 "gflops": flops(seq, mode) / t["median_s"] / 1e9,
                                 "peak_mb": peak_extra_mb(fn, device)})
                    print(f"  {device} {dtype_name} S={seq} {mode} {impl}: {rows[-1]['median_ms']:.1f} ms",
                          flush=True)
                    if impl == "fused":
                        sdpa = make_case("sdpa", mode, seq, device, dtype)
                        rows[-1]["paired_speedup_vs_sdpa"] = paired_speedup(fn, sdpa, 3 if big else 9, sync)
                        if device == "cpu":
                            threads = torch.get_num_threads()
                            torch.set_num_threads(1)
                            rows[-1]["paired_speedup_vs_sdpa_1thread_cpu_time"] = paired_speedup(
                                fn, sdpa, 3 if big else 9, clock=time.thread_time)
                            torch.set_num_threads(threads)
                        del sdpa
                    del fn
                    gc.collect()
    by_key = {(r["device"], r["dtype"], r["seq"], r["mode"], r["impl"]): r for r in rows}
    for r in rows:
        for peer in ("eager", "sdpa"):
            other = by_key.get((r["device"], r["dtype"], r["seq"], r["mode"], peer))
            r[f"speedup_vs_{peer}"] = other["median_ms"] / r["median_ms"] if other else None

    _common.print_table(rows, ["device", "dtype", "seq", "mode", "impl", "median_ms", "gflops", "peak_mb",
                               "speedup_vs_eager", "speedup_vs_sdpa", "paired_speedup_vs_sdpa",
                               "paired_speedup_vs_sdpa_1thread_cpu_time"],
                        {"median_ms": ".2f", "gflops": ".1f", "peak_mb": ".1f", "speedup_vs_eager": ".2f",
                         "speedup_vs_sdpa": ".2f", "paired_speedup_vs_sdpa": ".2f",
                         "paired_speedup_vs_sdpa_1thread_cpu_time": ".2f"})
    summary = summarise(by_key, seqs)
    for line in summary:
        print(line)
    name = "attention" + ("" if (BATCH, HEAD_DIM) == (1, 64) else f"-b{BATCH}-d{HEAD_DIM}")
    path = _common.save_json(name, {"heads": HEADS, "head_dim": HEAD_DIM, "batch": BATCH, "rows": rows,
                                    "summary": summary})
    print("saved", path, "and", plot(rows, configs, name))


def summarise(by_key, seqs) -> list[str]:
    """The figures the README quotes, from the measured numbers: the CPU's, then each GPU dtype's."""
    lines = []
    for dtype in ("float32", "bfloat16"):
        for mode in ("fwd", "fwd+bwd"):
            fused = {s: by_key.get(("cuda", dtype, s, mode, "fused")) for s in seqs}
            if not all(fused.values()):
                continue
            for peer in ("eager", "sdpa", "flash"):
                if by_key.get(("cuda", dtype, seqs[0], mode, peer)):
                    lines.append(f"CUDA {dtype} fused {mode} speed-up over {peer}: " + ", ".join(
                        f"S={s}: {by_key[('cuda', dtype, s, mode, peer)]['median_ms'] / r['median_ms']:.2f}"
                        for s, r in fused.items()))
            lines.append(f"CUDA {dtype} fused {mode} TFLOP/s: "
                         + ", ".join(f"S={s}: {r['gflops'] / 1e3:.1f}" for s, r in fused.items()))
    if ("cpu", "float32", seqs[0], "fwd", "fused") not in by_key:
        return lines
    fwd = lambda impl, s: by_key.get(("cpu", "float32", s, "fwd", impl))
    beats = [s for s in seqs if s >= 256 and fwd("fused", s)["median_ms"] < fwd("eager", s)["median_ms"]]
    lines.append(f"CPU fused forward faster than eager at S = {beats} of {[s for s in seqs if s >= 256]}")
    ratios = {s: fwd("fused", s)["gflops"] / fwd("sdpa", s)["gflops"] for s in seqs}
    lines.append("CPU fused forward throughput / SDPA: " + ", ".join(f"S={s}: {r:.2f}" for s, r in ratios.items()))
    for key, how in (("paired_speedup_vs_sdpa", "paired runs"),
                     ("paired_speedup_vs_sdpa_1thread_cpu_time", "paired runs on 1 thread, CPU time")):
        for mode in ("fwd", "fwd+bwd"):
            paired = {s: by_key[("cpu", "float32", s, mode, "fused")][key] for s in seqs}
            lines.append(f"CPU fused {mode} speed-up over SDPA, {how}: "
                         + ", ".join(f"S={s}: {r:.2f}" for s, r in paired.items()))
    top = seqs[-1]
    f_mem, e_mem = fwd("fused", top)["peak_mb"], fwd("eager", top)["peak_mb"]
    if f_mem is not None and e_mem:
        lines.append(f"CPU forward peak extra memory at S={top}: fused {f_mem:.1f} MB, eager {e_mem:.1f} MB "
                     f"(ratio {f_mem / e_mem:.3f})")
    return lines


def plot(rows, configs, name: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(configs), 3, figsize=(15, 4 * len(configs)), squeeze=False)
    for (device, dtype), ax_row in zip(configs, axes):
        dtype_name = str(dtype).replace("torch.", "")
        for ax, (metric, mode, label) in zip(ax_row, [("median_ms", "fwd", "forward time (ms)"),
                                                      ("median_ms", "fwd+bwd", "forward+backward time (ms)"),
                                                      ("peak_mb", "fwd", "forward peak extra memory (MB)")]):
            for impl in IMPLS:
                pts = [(r["seq"], r[metric]) for r in rows if r["device"] == device and r["dtype"] == dtype_name
                       and r["mode"] == mode and r["impl"] == impl and r[metric] is not None and r[metric] > 0]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length S")
            ax.set_title(f"{device} {dtype_name}: {label}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(f"attention, batch {BATCH}, {HEADS} heads, head_dim {HEAD_DIM} ({_common.machine_name()})")
    return _common.save_figure(fig, name)


if __name__ == "__main__":
    main()
