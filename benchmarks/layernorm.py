"""Residual + dropout + LayerNorm: minibert's fused op vs torch's ``x + r`` then ``layer_norm``, in GB/s
against a plain copy measured in the same run.

    python benchmarks/layernorm.py            # [rows, 768] (BERT-base hidden size): 1M, 4M and 16M elements
    python benchmarks/layernorm.py --quick    # 1M and 4M

LayerNorm is memory bound, so the honest unit is bytes that must move per second. Forward: read x and the
residual, write y (3 N elements; the parameters and per-row statistics are negligible). Backward alone:
read dy, x and the residual, write the gradients of x and of the residual (5 N). Forward + backward: 8 N.
The eager form is what ``layernorm_implementation="eager"`` runs (minibert's dropout kernel, then
``x + r``, then ``torch.nn.functional.layer_norm``); it moves more than that (the dropped x and the sum are written and read back, and layer_norm
reads its input twice); that surplus is what fusing removes. The ceiling is a tensor copy (read N, write N)
in the same run. Each case is timed with and without dropout (p = 0.1, BERT's hidden dropout), whose
hash mask costs arithmetic per element. Results: benchmarks/results/layernorm-<machine>.json and .png.
"""
from __future__ import annotations

import argparse

import _common
import torch

from minibert import ops

COLS = 768  # BERT-base hidden size
EPS = 1e-12
EAGER_PEER = {"fused fwd": "eager fwd", "fused fwd+bwd": "eager fwd+bwd"}


def eager(x, residual, weight, bias, eps, p, seed, offset):
    """What layernorm_implementation="eager" runs: the dropout kernel, then x + r, then torch's layer_norm."""
    return ops.eager.residual_dropout_layernorm(x, residual, weight, bias, eps, p, seed, offset, dropout=ops.dropout)


def cases(x, residual, weight, bias, dy, p):
    """name -> (callable, elements that must move per element of x)."""
    out = torch.empty_like(x)
    leaves = [t.clone().requires_grad_() for t in (x, residual, weight, bias)]
    _, mean, rstd = torch.ops.minibert.residual_dropout_layernorm_forward(x, residual, weight, bias, EPS, p, 3, 0)

    def fwd_bwd(fn):
        def run():
            y = fn(*leaves, EPS, p, 3, 0)
            torch.autograd.grad(y, leaves, dy)
        return run

    return {
        "copy": (lambda: out.copy_(x), 2),
        "eager fwd": (lambda: eager(x, residual, weight, bias, EPS, p, 3, 0), 3),
        "fused fwd": (lambda: ops.residual_dropout_layernorm(x, residual, weight, bias, EPS, p, 3, 0), 3),
        "fused bwd": (lambda: torch.ops.minibert.residual_dropout_layernorm_backward(
            dy, x, residual, weight, mean, rstd, p, 3, 0), 5),
        "eager fwd+bwd": (fwd_bwd(eager), 8),
        "fused fwd+bwd": (fwd_bwd(ops.residual_dropout_layernorm), 8),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [1 << 20, 1 << 22] + ([] if args.quick else [1 << 24])
    configs = [("cpu", torch.float32)] + ([("cuda", torch.float32), ("cuda", torch.bfloat16)]
                                         if torch.cuda.is_available() else [])
    if not ops.is_available():
        raise SystemExit(f"the minibert extension is not available: {ops.backend_info()['reason']}")
    rows = []
    for device, dtype in configs:
        sync = torch.cuda.synchronize if device == "cuda" else None
        dtype_name = str(dtype).replace("torch.", "")
        for n in sizes:
            x = torch.randn(n // COLS + 1, COLS).to(device, dtype)
            residual, dy = torch.randn_like(x), torch.randn_like(x)
            weight, bias = torch.rand(COLS).add(0.5).to(device, dtype), torch.randn(COLS).to(device, dtype)
            numel, itemsize = x.numel(), x.element_size()
            for p in (0.0, 0.1):
                for name, (fn, moved) in cases(x, residual, weight, bias, dy, p).items():
                    if name == "copy" and p > 0:
                        continue
                    t = _common.time_fn(fn, warmup=2, repeats=7, sync=sync, min_time=0.2)
                    rows.append({"device": device, "dtype": dtype_name, "elements": numel,
                                 "p": "-" if name == "copy" else p, "op": name, "median_ms": 1e3 * t["median_s"],
                                 "gb_per_s": moved * numel * itemsize / t["median_s"] / 1e9})
    key = {(r["device"], r["dtype"], r["elements"], r["p"], r["op"]): r for r in rows}
    for r in rows:
        copy = key[(r["device"], r["dtype"], r["elements"], "-", "copy")]
        r["of_copy_bw"] = r["gb_per_s"] / copy["gb_per_s"]
        peer = key.get((r["device"], r["dtype"], r["elements"], r["p"], EAGER_PEER.get(r["op"])))
        r["speedup_vs_eager"] = peer["median_ms"] / r["median_ms"] if peer else None
    _common.print_table(rows, ["device", "dtype", "elements", "p", "op", "median_ms", "gb_per_s", "of_copy_bw",
                               "speedup_vs_eager"],
                        {"median_ms": ".2f", "gb_per_s": ".1f", "of_copy_bw": ".2f", "speedup_vs_eager": ".2f"})
    for n in sorted({r["elements"] for r in rows}):
        for p in (0.0, 0.1):
            fwd, both = key[("cpu", "float32", n, p, "fused fwd")], key[("cpu", "float32", n, p, "fused fwd+bwd")]
            print(f"CPU {n} elements, p={p}: fused forward {fwd['of_copy_bw']:.2f} of copy bandwidth, "
                  f"{fwd['speedup_vs_eager']:.2f}x eager; forward+backward {both['speedup_vs_eager']:.2f}x eager")
    path = _common.save_json("layernorm", {"cols": COLS, "eps": EPS, "rows": rows})
    print("saved", path, "and", plot(rows))


def plot(rows) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["device"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(8 * len(groups), 5), squeeze=False)
    for ax, (device, dtype) in zip(axes[0], groups):
        largest = max(r["elements"] for r in rows if r["device"] == device and r["dtype"] == dtype)
        sel = [r for r in rows if r["device"] == device and r["dtype"] == dtype and r["elements"] == largest]
        ax.barh([f"{r['op']} (p={r['p']})" for r in sel], [r["gb_per_s"] for r in sel])
        ax.set_xlabel("GB/s (bytes that must move / time)")
        ax.set_title(f"{device} {dtype}, [rows, {COLS}], {largest} elements")
    fig.suptitle(f"residual + dropout + LayerNorm vs a copy ({_common.machine_name()})")
    fig.tight_layout()
    return _common.save_figure(fig, "layernorm")


if __name__ == "__main__":
    main()
