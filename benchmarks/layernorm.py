"""Residual + dropout + LayerNorm: minibert's fused op vs torch's ``x + r`` then ``layer_norm``, in GB/s
against a plain copy measured in the same run.

    python benchmarks/layernorm.py                 # [rows, 768] (BERT-base hidden size): 1M, 4M and 16M elements
    python benchmarks/layernorm.py --quick         # 1M and 4M
    python benchmarks/layernorm.py --fresh-pages   # outputs of 32 MB and more in fresh pages (page faults)
    python benchmarks/layernorm.py --device cuda   # the GPU only (float32 and bfloat16; 64M elements too)

LayerNorm is memory bound, so the honest unit is bytes that must move per second. Forward: read x and the
residual, write y (3 N elements; the parameters and per-row statistics are negligible). Backward alone:
read dy, x and the residual, write the gradients of x and of the residual (5 N). Forward + backward: 8 N.
The eager form is what ``layernorm_implementation="eager"`` runs (minibert's dropout kernel, then
``x + r``, then ``torch.nn.functional.layer_norm``); it moves more than that (the dropped x and the sum are written and read back, and layer_norm
reads its input twice); that surplus is what fusing removes. The ceiling is a tensor copy (read N, write N)
in the same run. Each case is timed with and without dropout (p = 0.1, BERT's hidden dropout), whose
hash mask costs arithmetic per element. Outputs reuse freed memory by default, as in a training loop
(``--fresh-pages`` and ``--huge-pages``: see benchmarks/_allocator.py). Results:
benchmarks/results/layernorm-<machine>.{json,png}, and ``layernorm-<mode>-<machine>.*`` for the other modes.
"""
from __future__ import annotations

import argparse

import _allocator

ALLOCATOR = _allocator.restart_in_mode()  # before torch allocates anything

import _common  # noqa: E402
import torch  # noqa: E402

from minibert import ops  # noqa: E402

COLS = 768  # BERT-base hidden size
EPS = 1e-12
EAGER_PEER = {"fused fwd": "eager fwd", "fused fwd+bwd": "eager fwd+bwd"}


def eager(x, residual, weight, bias, eps, p, seed, offset):
    """What layernorm_implementation="eager" runs: the dropout kernel, then x + r, then torch's layer_norm."""
    return ops.eager.residual_dropout_layernorm(x, residual, weight, bias, eps, p, seed, offset, dropout=ops.dropout)


def cases(x, p):
    """name -> (callable, elements that must move per element of x)."""
    residual, dy = torch.randn_like(x), torch.randn_like(x)
    weight, bias = torch.rand(COLS).add(0.5).to(x), torch.randn(COLS).to(x)
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
    _allocator.add_arguments(parser)
    _common.add_device_argument(parser)
    args = parser.parse_args()
    name = _allocator.result_name("layernorm", ALLOCATOR)
    rows, key = _common.memory_bound_rows(cases, (0.0, 0.1), "p", COLS, EAGER_PEER, args.quick, device=args.device)
    for device, dtype, n in sorted({(r["device"], r["dtype"], r["elements"]) for r in rows}):
        for p in (0.0, 0.1):
            fwd, both = key[(device, dtype, n, p, "fused fwd")], key[(device, dtype, n, p, "fused fwd+bwd")]
            print(f"{device.upper()} {dtype} {n} elements, p={p}: fused forward {fwd['of_copy_bw']:.2f} of copy "
                  f"bandwidth, {fwd['speedup_vs_eager']:.2f}x eager; forward+backward "
                  f"{both['speedup_vs_eager']:.2f}x eager")
    path = _common.save_json(name, {"cols": COLS, "eps": EPS, "allocator": ALLOCATOR, "rows": rows})
    print("saved", path, "and", plot(rows, name))


def plot(rows, name: str) -> str:
    title = f"residual + dropout + LayerNorm vs a copy, rows of {COLS}, {ALLOCATOR.replace('-', ' ')}"
    return _common.plot_gb_per_s(rows, name, title,
                                 lambda r: f"{r['op']} (p={r['p']})")


if __name__ == "__main__":
    main()
