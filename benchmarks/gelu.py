"""GELU and bias + GELU: minibert's fused ops vs torch eager, with achieved GB/s against a plain copy.

    python benchmarks/gelu.py                 # 1M, 4M and 16M elements ([rows, 3072] like BERT-base's FFN)
    python benchmarks/gelu.py --quick         # 1M and 4M
    python benchmarks/gelu.py --fresh-pages   # outputs of 32 MB and more in fresh pages (page faults)
    python benchmarks/gelu.py --huge-pages    # fresh pages on 2 MB pages (THP_MEM_ALLOC_ENABLE=1)
    python benchmarks/gelu.py --device cuda   # the GPU only (float32 and bfloat16; 64M elements too)

GELU is memory bound, so the honest unit is bytes moved per second: forward reads x and writes y
(2 N elements; the bias is negligible), backward reads dy and x and writes dx (3 N). The ceiling is a
tensor copy (read N, write N) into a buffer that is already mapped, measured in the same run. Eager
bias+GELU moves 4 N (x + b is written and read back), which is what fusing removes.

Every op here allocates its output (as in a model). By default a freed output is handed to the next call
already mapped (``--reuse-memory``, the steady state of a training loop, as below 32 MB anyway), so the
numbers show the kernels; with ``--fresh-pages`` the 64 MB outputs are fresh pages, whose faults can cost
more than the arithmetic, the same for every op that allocates (benchmarks/_allocator.py). Results:
benchmarks/results/gelu-<machine>.{json,png}, and ``gelu-fresh-pages-<machine>.*`` /
``gelu-huge-pages-<machine>.*`` for the other modes.
"""
from __future__ import annotations

import argparse

import _allocator

ALLOCATOR = _allocator.restart_in_mode()  # before torch allocates anything

import _common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from minibert import ops  # noqa: E402

COLS = 3072  # BERT-base intermediate size
EAGER_PEER = {"gelu fused": "gelu eager", "bias+gelu fused": "bias+gelu eager",
              "bias+gelu fwd+bwd fused": "bias+gelu fwd+bwd eager"}


def cases(x, approximate):
    """name -> (callable, elements moved per element of x)."""
    bias, dy = torch.randn(x.shape[-1]).to(x), torch.randn_like(x)
    xg, bg = x.clone().requires_grad_(), bias.clone().requires_grad_()
    out = torch.empty_like(x)

    def eager_bwd():
        y = F.gelu(xg + bg, approximate=approximate)
        torch.autograd.grad(y, (xg, bg), dy)

    return {
        # The ceiling: a copy into memory that is already mapped. "clone" also allocates its output, as
        # every out-of-place op here does (with --fresh-pages, that costs page faults on the CPU).
        "copy": (lambda: out.copy_(x), 2),
        "clone": (lambda: x.clone(), 2),
        "gelu eager": (lambda: F.gelu(x, approximate=approximate), 2),
        "gelu fused": (lambda: ops.gelu(x, approximate), 2),
        "bias+gelu eager": (lambda: F.gelu(x + bias, approximate=approximate), 2),
        "bias+gelu fused": (lambda: ops.bias_gelu(x, bias, approximate), 2),
        # backward alone for the fused op; eager's includes its forward (autograd has no other entry)
        "bias+gelu bwd fused": (lambda: torch.ops.minibert.bias_gelu_backward(dy, x, bias, approximate), 3),
        "bias+gelu fwd+bwd eager": (eager_bwd, 5),
        "bias+gelu fwd+bwd fused": (lambda: (ops.bias_gelu(x, bias, approximate),
                                             torch.ops.minibert.bias_gelu_backward(dy, x, bias, approximate)), 5),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M and 4M elements only")
    _allocator.add_arguments(parser)
    _common.add_device_argument(parser)
    args = parser.parse_args()
    name = _allocator.result_name("gelu", ALLOCATOR)
    rows, key = _common.memory_bound_rows(cases, ("none", "tanh"), "form", COLS, EAGER_PEER, args.quick,
                                          copy_ops=("copy", "clone"), device=args.device)
    for device, dtype in sorted({(r["device"], r["dtype"]) for r in rows}):
        sizes = [r["elements"] for r in rows if (r["device"], r["dtype"], r["op"]) == (device, dtype, "copy")]
        smallest, numel = min(sizes), max(sizes)
        where = f"{device.upper()} {dtype}"
        for form in ("none", "tanh"):
            fused = key[(device, dtype, numel, form, "bias+gelu fused")]
            eager = key[(device, dtype, numel, form, "bias+gelu eager")]
            backward = key[(device, dtype, numel, form, "bias+gelu bwd fused")]
            print(f"{where} bias+GELU ({form}) on {numel} elements: forward fused {fused['median_ms']:.3f} ms "
                  f"({fused['of_copy_bw']:.2f} of copy bandwidth), eager add+gelu {eager['median_ms']:.3f} ms, "
                  f"speed-up {eager['median_ms'] / fused['median_ms']:.2f}x; backward "
                  f"{backward['of_copy_bw']:.2f} of copy bandwidth")
            # Small tensors: per-call and threading overheads, not bandwidth, decide; fused must not lose here.
            ratios = ", ".join(f"{op} {key[(device, dtype, smallest, form, op)]['speedup_vs_eager']:.2f}x"
                               for op in EAGER_PEER)
            print(f"{where} ({form}) at {smallest} elements, fused vs eager: {ratios}")
    path = _common.save_json(name, {"cols": COLS, "allocator": ALLOCATOR, "rows": rows})
    print("saved", path, "and", plot(rows, name))


def plot(rows, name: str) -> str:
    title = f"GELU and bias+GELU (erf form) vs a copy, {ALLOCATOR.replace('-', ' ')}"
    return _common.plot_gb_per_s(rows, name, title, lambda r: r["op"], keep=lambda r: r["form"] in ("-", "none"))


if __name__ == "__main__":
    main()
