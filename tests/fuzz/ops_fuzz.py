"""Fuzzing ``minibert.ops``: generated calls of every public op, each outcome classified.

Every call starts from a valid one (random shapes, dtypes, masks, dropout, seeds, non-contiguous views,
values from tame to extreme, meta and fake tensors, gradients on or off); a share of them is then broken in
exactly one way (a bad dtype, shape, device, probability, seed, mask value ...), so the fuzzer knows which
argument is at fault. Calls run in worker subprocesses, so a segfault or SIGFPE is seen, not suffered.
Each outcome is one of:

* ``ok``: a valid call whose output (and gradients) match an independent float64 reference written here
  (the dropout mask from the NumPy hash in ``minibert.rng``), with no NaN where the reference is finite;
* ``clear_error``: a broken call refused with an exception whose message names the argument at fault;
* ``unclear_error``: a broken call refused with a message that does not name that argument;
* ``accepted_invalid``: a broken call that returned instead of raising (a silent wrong answer);
* ``spurious_error``: a valid call that raised;
* ``wrong``: a valid call whose result or gradient differs from the reference;
* ``crash``: the worker process died (signal or abort).

Only ``ok`` and ``clear_error`` pass. Run it as

    python tests/fuzz/ops_fuzz.py --calls-per-op 1000 [--seed 0] [--json report.json]

``tests/fuzz/test_ops_fuzz.py`` runs a seeded slice of it in the test suite.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import re
import subprocess
import sys

OPS = ("attention", "gelu", "bias_gelu", "dropout", "dropout_scale_mask", "residual_dropout_layernorm",
       "cross_entropy")
PASSING = ("ok", "clear_error")
FLOAT_DTYPES = ("float32", "float64", "float32", "float64", "float16", "bfloat16")
BAD_SEEDS = (1.5, "7", None, float("nan"))
BAD_PS = (1.0, -0.1, 1.5, float("nan"), float("inf"), "0.1", None)


# ------------------------------------------------------------------------------------- call generation
# A spec is a JSON-able dict; the worker turns it into tensors. "expect_error" lists the argument names
# an error message may name (None: the call is valid).

def _valid_seed(rng):
    return rng.choice((0, 1, 7, 12345, 2**64 - 1, -1, 2**70 + 3, 2**63))


def _valid_p(rng):
    return rng.choice((0.0, 0.0, 0.1, 0.5, 0.9, 0.999, 1e-9, 5e-8, 2.0**-24, 2.0**-23))


def _values(rng, dtype):
    kinds = ["normal"] * 6 + ["tiny", "nan", "inf"]
    if dtype in ("float32", "float64"):
        kinds += ["large40", "large1000"]
    return rng.choice(kinds)


def _shape(rng, dims, allow_zero):
    return [rng.choice((0, 1, 2, 3, 7) if allow_zero and rng.random() < 0.15 else (1, 2, 3, 5, 8, 17))
            for _ in range(dims)]


def gen_attention(rng):
    B, H = rng.choice((1, 2)), rng.choice((1, 3))
    Sq, Sk = rng.choice((1, 2, 5, 17)), rng.choice((1, 3, 16, 33))
    D = rng.choice((1, 8, 40, 64, 300))
    if rng.random() < 0.05:  # zero-size dimensions have a defined (empty or zero) answer
        B, Sq, Sk, D = rng.choice(((0, Sq, Sk, D), (B, 0, Sk, D), (B, Sq, 0, D), (B, Sq, Sk, 0)))
    dtype = rng.choice(FLOAT_DTYPES)
    spec = dict(op="attention", q=[B, H, Sq, D], k=[B, H, Sk, D], v=[B, H, Sk, D], dtype=dtype,
                device=rng.choice(("cpu",) * 8 + ("meta", "fake")), values=_values(rng, dtype),
                mask=rng.choice((None, None, "bool", "int64", "float", "uint8", "all_pad_row", "all_pad")),
                scale=rng.choice((None, None, 0.125, 1.0, 0.0, -0.5)), dropout_p=_valid_p(rng),
                seed=_valid_seed(rng), offset=rng.choice((0, 3, 2**63, 2**64 - 5)),
                grad=rng.random() < 0.5, noncontig=rng.random() < 0.3, expect_error=None, seed_data=rng.getrandbits(32))
    if rng.random() < 0.4:
        spec.update(rng.choice(_ATTENTION_BREAKS)(rng, spec))
        if spec["mask"] in _MASK_VALUE_BREAKS and 0 in (B, Sk):  # an empty mask has no value to be wrong:
            spec["mask"] = "wrong_shape"                          # break its shape instead
    return spec


_MASK_VALUE_BREAKS = ("additive", "nan", "two")
_ATTENTION_BREAKS = [
    lambda rng, s: dict(q_kind="list", expect_error=["q"]),
    lambda rng, s: dict(k_dtype=rng.choice(("int64", "bool", "int32")), expect_error=["k"]),
    lambda rng, s: dict(q=s["q"][1:], expect_error=["q"]),
    lambda rng, s: dict(v=s["v"][:2] + [s["v"][2] + 1] + s["v"][3:], expect_error=["v", "k"]),
    lambda rng, s: dict(k=s["k"][:3] + [s["k"][3] + 1], v=s["v"][:3] + [s["v"][3] + 1], expect_error=["q", "k"]),
    lambda rng, s: dict(k_dtype="float64" if s["dtype"] != "float64" else "float32", expect_error=["k"]),
    lambda rng, s: dict(mask="wrong_shape", expect_error=["attention_mask"]),
    lambda rng, s: dict(mask="list", expect_error=["attention_mask"]),
    lambda rng, s: dict(mask="additive", expect_error=["attention_mask"]),
    lambda rng, s: dict(mask="nan", expect_error=["attention_mask"]),
    lambda rng, s: dict(mask="two", expect_error=["attention_mask"]),
    lambda rng, s: dict(mask={"cpu": "meta", "meta": "cpu_bool"}.get(s["device"], "two"), expect_error=["attention_mask"]),
    lambda rng, s: dict(dropout_p=rng.choice(BAD_PS), expect_error=["dropout_p"]),
    lambda rng, s: dict(seed=rng.choice(BAD_SEEDS), expect_error=["seed"]),
    lambda rng, s: dict(offset=rng.choice(BAD_SEEDS), expect_error=["offset"]),
    lambda rng, s: dict(scale=rng.choice((float("nan"), float("inf"), "0.5")), expect_error=["scale"]),
]


def gen_gelu(rng, bias=False):
    shape = _shape(rng, rng.choice((1, 2, 3)), allow_zero=True)
    dtype = rng.choice(FLOAT_DTYPES)
    spec = dict(op="bias_gelu" if bias else "gelu", x=shape, dtype=dtype, values=_values(rng, dtype),
                approximate=rng.choice(("none", "tanh")), device=rng.choice(("cpu",) * 8 + ("meta", "fake")),
                grad=rng.random() < 0.5, noncontig=rng.random() < 0.3, expect_error=None,
                seed_data=rng.getrandbits(32))
    if bias:
        spec["bias"] = shape[-1:]
    breaks = [lambda: dict(approximate=rng.choice(("erf", "TANH", None, "gelu"))) | {"expect_error": ["approximate"]},
              lambda: dict(x_kind="list", expect_error=["x"]),
              lambda: dict(x_dtype=rng.choice(("int64", "bool")), expect_error=["x"])]
    if bias:
        breaks += [lambda: dict(bias=[shape[-1] + 1], expect_error=["bias"]),
                   lambda: dict(bias=[1, shape[-1]], expect_error=["bias"]),
                   lambda: dict(bias_dtype="float64" if dtype != "float64" else "float32", expect_error=["bias"]),
                   lambda: dict(bias_dtype="int64", expect_error=["bias"]),
                   lambda: dict(bias_kind="list", expect_error=["bias"]),
                   lambda: dict(bias_device="meta" if spec["device"] == "cpu" else "cpu", expect_error=["bias"])]
    if rng.random() < 0.4:
        spec.update(rng.choice(breaks)())
    return spec


def gen_dropout(rng):
    shape = _shape(rng, rng.choice((1, 2, 3)), allow_zero=True)
    dtype = rng.choice(FLOAT_DTYPES)
    spec = dict(op="dropout", x=shape, dtype=dtype, values=_values(rng, dtype), p=_valid_p(rng),
                seed=_valid_seed(rng), offset=rng.choice((0, 5, 2**64 - 2)),
                device=rng.choice(("cpu",) * 8 + ("meta", "fake")), grad=rng.random() < 0.5,
                noncontig=rng.random() < 0.3, expect_error=None, seed_data=rng.getrandbits(32))
    breaks = [lambda: dict(p=rng.choice(BAD_PS), expect_error=["p"]),
              lambda: dict(seed=rng.choice(BAD_SEEDS), expect_error=["seed"]),
              lambda: dict(offset=rng.choice(BAD_SEEDS), expect_error=["offset"]),
              lambda: dict(x_kind="list", expect_error=["x"]),
              lambda: dict(x_dtype=rng.choice(("int64", "bool")), expect_error=["x"])]
    if rng.random() < 0.4:
        spec.update(rng.choice(breaks)())
    return spec


def gen_dropout_scale_mask(rng):
    spec = dict(op="dropout_scale_mask", shape=_shape(rng, rng.choice((0, 1, 2, 3)), allow_zero=True),
                p=_valid_p(rng), seed=_valid_seed(rng), offset=rng.choice((0, 5, 2**64 - 2)),
                dtype=rng.choice(FLOAT_DTYPES), device=rng.choice(("cpu",) * 9 + ("meta",)), expect_error=None)
    breaks = [lambda: dict(shape=spec["shape"] + [1.5], expect_error=["shape"]),
              lambda: dict(shape=spec["shape"] + [-2], expect_error=["shape"]),
              lambda: dict(shape="abc", expect_error=["shape"]),
              lambda: dict(dtype=rng.choice(("int64", "bool", "int32")), expect_error=["dtype"]),
              lambda: dict(p=rng.choice(BAD_PS), expect_error=["p"]),
              lambda: dict(seed=rng.choice(BAD_SEEDS), expect_error=["seed"]),
              lambda: dict(offset=rng.choice(BAD_SEEDS), expect_error=["offset"])]
    if rng.random() < 0.4:
        spec.update(rng.choice(breaks)())
    return spec


def gen_layernorm(rng):
    shape = _shape(rng, rng.choice((1, 2, 3)), allow_zero=True)
    shape[-1] = shape[-1] or 3  # leading sizes may be 0 (no rows); an empty last dimension is a break below
    dtype = rng.choice(FLOAT_DTYPES)
    spec = dict(op="residual_dropout_layernorm", x=shape, residual=shape if rng.random() < 0.8 else None,
                weight=shape[-1:], bias=shape[-1:], eps=rng.choice((1e-12, 1e-5, 0.1)), dtype=dtype,
                values=_values(rng, dtype), p=_valid_p(rng), seed=_valid_seed(rng),
                offset=rng.choice((0, 5, 2**64 - 2)), device=rng.choice(("cpu",) * 8 + ("meta", "fake")),
                grad=rng.random() < 0.5, noncontig=rng.random() < 0.3, expect_error=None,
                seed_data=rng.getrandbits(32))
    breaks = [lambda: dict(eps=rng.choice((-1e-5, float("nan"), float("inf"), "1e-5", None)), expect_error=["eps"]),
              lambda: dict(p=rng.choice(BAD_PS), expect_error=["p"]),
              lambda: dict(seed=rng.choice(BAD_SEEDS), expect_error=["seed"]),
              lambda: dict(offset=rng.choice(BAD_SEEDS), expect_error=["offset"]),
              lambda: dict(x_kind="list", expect_error=["x"]),
              lambda: dict(x_dtype=rng.choice(("int64", "bool")), expect_error=["x"]),
              lambda: dict(x=shape[:-1] + [0], residual=None, weight=[0], bias=[0], expect_error=["x"]),
              lambda: dict(weight=[shape[-1] + 1], expect_error=["weight"]),
              lambda: dict(weight=[1, shape[-1]], expect_error=["weight"]),
              lambda: dict(bias_dtype="float64" if dtype != "float64" else "float32", expect_error=["bias"]),
              lambda: dict(bias_kind="list", expect_error=["bias"]),
              lambda: dict(residual=shape[:-1] + [shape[-1] + 1], expect_error=["residual"]),
              lambda: dict(residual=shape, residual_device="meta" if spec["device"] == "cpu" else "cpu",
                           expect_error=["residual"])]
    if dtype == "float16":
        # float16 tops out at 65504: the gradient of a row that dropout left constant is about
        # 1 / sqrt(eps) / (1 - p), which overflows for eps 1e-12 or p near 1 (the float64 answer is finite).
        spec.update(eps=rng.choice((1e-5, 0.1)), p=rng.choice((0.0, 0.1, 0.5)))
    if rng.random() < 0.4:
        spec.update(rng.choice(breaks)())
    return spec


def gen_cross_entropy(rng):
    shape = _shape(rng, rng.choice((1, 2, 3)), allow_zero=True)  # logits [..., C]; labels [...]
    shape[-1] = shape[-1] or 3  # leading sizes may be 0 (no rows); no classes at all is a break below
    dtype = rng.choice(FLOAT_DTYPES)
    spec = dict(op="cross_entropy", x=shape, labels=shape[:-1], ignore_index=rng.choice((-100, -100, -1, 0, 2)),
                dtype=dtype, values=_values(rng, dtype), device=rng.choice(("cpu",) * 8 + ("meta", "fake")),
                grad=rng.random() < 0.5, noncontig=rng.random() < 0.3, expect_error=None,
                seed_data=rng.getrandbits(32))
    breaks = [lambda: dict(x_kind="list", expect_error=["logits"]),
              lambda: dict(x_dtype=rng.choice(("int64", "bool")), expect_error=["logits"]),
              lambda: dict(x=shape[:-1] + [0], expect_error=["logits"]),
              lambda: dict(labels=shape[:-1] + [2], expect_error=["labels"]),
              lambda: dict(labels_dtype=rng.choice(("float32", "bool")), expect_error=["labels"]),
              lambda: dict(labels_kind="list", expect_error=["labels"]),
              lambda: dict(labels_device="meta" if spec["device"] == "cpu" else "cpu", expect_error=["labels"]),
              lambda: dict(ignore_index=rng.choice((1.5, "-100", None, True)), expect_error=["ignore_index"])]
    if spec["device"] == "cpu" and 0 not in shape:  # values are read only on the CPU (a GPU gives NaN)
        out_of_range = [v for v in (shape[-1], shape[-1] + 1, -7, 10**6) if v != spec["ignore_index"]]
        breaks.append(lambda: dict(labels_value=rng.choice(out_of_range), expect_error=["labels"]))
    if rng.random() < 0.4:
        spec.update(rng.choice(breaks)())
    return spec


GENERATORS = {"attention": gen_attention, "gelu": gen_gelu, "bias_gelu": lambda rng: gen_gelu(rng, bias=True),
              "dropout": gen_dropout, "dropout_scale_mask": gen_dropout_scale_mask,
              "residual_dropout_layernorm": gen_layernorm, "cross_entropy": gen_cross_entropy}


def generate(op: str, n: int, seed: int) -> list[dict]:
    """``n`` seeded call specs for ``op``."""
    rng = random.Random(f"{op}-{seed}")
    return [GENERATORS[op](rng) for _ in range(n)]


# ----------------------------------------------------------------------------------- running one call

def _run_call(spec: dict) -> dict:
    """Build the inputs of ``spec``, call the op and the reference, and classify the outcome."""
    import torch

    from minibert import ops
    build = _Builder(spec, torch)
    try:
        args, kwargs = build.arguments()
    except _Skip as e:
        return {"outcome": "ok", "note": f"skipped: {e}"}
    fn = getattr(ops, spec["op"])
    expect = spec["expect_error"]
    try:
        with build.mode():
            out = fn(*args, **kwargs)
            grads = build.backward(out) if expect is None else None
    except Exception as e:  # noqa: BLE001 - classifying every exception is the point
        message = f"{type(e).__name__}: {e}"
        if expect is None:
            return {"outcome": "spurious_error", "message": message[:500]}
        named = any(re.search(rf"\b{name}\b", str(e)) for name in expect)
        return {"outcome": "clear_error" if named else "unclear_error", "message": message[:500]}
    if expect is not None:
        return {"outcome": "accepted_invalid", "message": f"no error; the fault was in {expect}"}
    problem = build.compare(out, grads)
    return {"outcome": "wrong", "message": problem} if problem else {"outcome": "ok"}


class _Skip(Exception):
    pass


class _Builder:
    """Inputs, the float64 reference and the comparison for one spec."""

    def __init__(self, spec, torch):
        self.s, self.torch = spec, torch
        self.gen = torch.Generator().manual_seed(spec.get("seed_data", 0))
        self.leaves = []  # (name, tensor the op saw, its float64 twin that the reference uses)
        self.fake_mode = None

    # -- inputs
    def tensor(self, name, shape, dtype=None, grad=False):
        torch, s = self.torch, self.s
        kind = s.get(f"{name}_kind")
        dtype = getattr(torch, s.get(f"{name}_dtype") or dtype or s["dtype"])
        if kind == "list":
            return [[1.0, 2.0]], None
        values = s.get("values", "normal")
        base = torch.randn(shape, generator=self.gen, dtype=torch.float64)
        if values == "tiny":
            base = base * 1e-30
        elif values.startswith("large"):
            base = torch.sign(base) * float(values[5:])
        elif values in ("nan", "inf") and base.numel():
            base.view(-1)[int(torch.randint(base.numel(), (1,), generator=self.gen))] = float(values)
        if not dtype.is_floating_point:
            t = (base.abs() * 3).to(dtype)
        else:
            t = base.to(dtype)
        if s.get("noncontig") and t.dim() >= 1:
            t = torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]  # a strided view of the same values
        twin = t.detach().to(torch.float64) if t.is_floating_point() else None
        if grad and t.is_floating_point():
            t = t.detach().requires_grad_(True)
            if twin is not None:
                twin = twin.clone().requires_grad_(True)
            self.leaves.append((name, t, twin))
        return self.place(t, s.get(f"{name}_device")), twin

    def place(self, t, device=None):
        device = device or self.s["device"]
        if device == "meta":
            return t.detach().to("meta") if isinstance(t, self.torch.Tensor) else t
        if device == "fake" and isinstance(t, self.torch.Tensor):
            from torch._subclasses.fake_tensor import FakeTensorMode
            self.fake_mode = self.fake_mode or FakeTensorMode()
            return self.fake_mode.from_tensor(t.detach())
        return t

    def mode(self):
        import contextlib
        return self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()

    def mask(self, B, Sk):
        torch, kind = self.torch, self.s["mask"]
        if kind is None:
            return None, None
        keep = torch.rand((B, Sk), generator=self.gen) < 0.7
        if Sk:
            keep[:, 0] = True
        if kind in ("all_pad_row", "all_pad"):
            keep[: (1 if kind == "all_pad_row" else B)] = False
        if kind == "list":
            return keep.tolist(), None
        if kind == "wrong_shape":
            return torch.ones(B, Sk + 1), None
        if kind == "additive":  # the HF convention: 0 keep, a large negative number pad
            return (~keep).float() * -10000.0 if Sk and (~keep).any() else torch.full((B, Sk), -1e4), None
        if kind == "nan":
            m = keep.float()
            m.view(-1)[0] = float("nan")
            return m, None
        if kind == "two":
            return keep.long() * 2, None
        if kind == "meta":
            return keep.to("meta"), None
        if kind == "cpu_bool":
            return keep, keep
        dtype = {"bool": torch.bool, "int64": torch.int64, "float": torch.float32, "uint8": torch.uint8,
                 "all_pad_row": torch.float32, "all_pad": torch.int64}[kind]
        return self.place(keep.to(dtype)), keep

    def arguments(self):
        s, op = self.s, self.s["op"]
        grad = s.get("grad", False) and s.get("device") == "cpu"
        if op == "attention":
            q, self.q = self.tensor("q", s["q"], grad=grad)
            k, self.k = self.tensor("k", s["k"], grad=grad)
            v, self.v = self.tensor("v", s["v"], grad=grad)
            mask, self.keep = self.mask(s["q"][0], s["k"][2] if len(s["k"]) > 2 else 1)
            return (q, k, v), dict(attention_mask=mask, scale=s["scale"], dropout_p=s["dropout_p"],
                                   seed=s["seed"], offset=s["offset"])
        if op in ("gelu", "bias_gelu"):
            x, self.x = self.tensor("x", s["x"], grad=grad)
            if op == "gelu":
                return (x,), dict(approximate=s["approximate"])
            bias, self.bias = self.tensor("bias", s["bias"], grad=grad)
            return (x, bias), dict(approximate=s["approximate"])
        if op == "dropout":
            x, self.x = self.tensor("x", s["x"], grad=grad)
            return (x, s["p"], s["seed"]), dict(offset=s["offset"])
        if op == "residual_dropout_layernorm":
            x, self.x = self.tensor("x", s["x"], grad=grad)
            residual, self.residual = (None, None) if s["residual"] is None else self.tensor(
                "residual", s["residual"], grad=grad)
            weight, self.weight = self.tensor("weight", s["weight"], grad=grad)
            bias, self.bias = self.tensor("bias", s["bias"], grad=grad)
            return (x, residual, weight, bias), dict(eps=s["eps"], p=s["p"], seed=s["seed"], offset=s["offset"])
        if op == "cross_entropy":
            x, self.x = self.tensor("x", s["x"], grad=grad)
            return (x, self.labels_tensor()), dict(ignore_index=s["ignore_index"])
        dtype = getattr(self.torch, s["dtype"])
        return (s["shape"], s["p"], s["seed"]), dict(offset=s["offset"], device=s["device"], dtype=dtype)

    def labels_tensor(self):
        """Class indices of the spec's labels shape, a third of them ignore_index; self.labels keeps them."""
        torch, s = self.torch, self.s
        n_classes = max(1, s["x"][-1])
        labels = torch.randint(0, n_classes, s["labels"], generator=self.gen)
        if isinstance(s["ignore_index"], int):
            labels[torch.rand(s["labels"], generator=self.gen) < 0.3] = s["ignore_index"]
        if s.get("labels_value") is not None and labels.numel():
            labels.view(-1)[0] = s["labels_value"]
        self.labels = labels
        if s.get("labels_kind") == "list":
            return labels.tolist()
        if s.get("labels_dtype"):
            labels = labels.to(getattr(torch, s["labels_dtype"]))
        return self.place(labels, s.get("labels_device"))

    # -- reference
    def reference(self, dtype=None):
        """The op's answer computed here with autograd-able torch ops on this builder's inputs: in float64
        (``dtype=None``, the reference), or in the op's own low precision (the "peer" that sets how much
        error that precision forces, FlashAttention's test rule). Returns (output, leaves to grad)."""
        import numpy as np

        from minibert import rng
        torch, s, op = self.torch, self.s, self.s["op"]
        leaves = []

        def cast(twin):
            if twin is None or dtype is None:
                return twin
            t = twin.detach().to(dtype).requires_grad_(twin.requires_grad)
            leaves.append(t)
            return t

        def scale_mask(shape, p):
            m = torch.from_numpy(rng.dropout_scale_mask(tuple(shape), p, s["seed"], s["offset"]))
            return m if dtype is None else m.to(dtype)

        if op == "attention":
            q, k, v = cast(self.q), cast(self.k), cast(self.v)
            D = s["q"][3]  # (with D = 0 every score is an empty sum, 0, whatever the scale: 0 ** -0.5 raises)
            scale = s["scale"] if s["scale"] is not None else D ** -0.5 if D else 1.0
            scores = torch.matmul(q, k.transpose(-2, -1)) * scale
            if self.keep is not None:
                scores = scores.masked_fill(~self.keep[:, None, None, :], -math.inf)
            top = scores.amax(-1, keepdim=True).detach() if scores.shape[-1] else scores.sum(-1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            e = torch.exp(scores - top)
            probs = e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
            if s["dropout_p"] > 0:
                probs = probs * scale_mask(probs.shape, s["dropout_p"])
            out = torch.matmul(probs, v)
        elif op in ("gelu", "bias_gelu"):
            x = cast(self.x) + cast(self.bias) if op == "bias_gelu" else cast(self.x)
            if s["approximate"] == "tanh":
                out = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
            else:
                out = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
        elif op == "dropout":
            x = cast(self.x)
            out = x if s["p"] == 0 else x * scale_mask(s["x"], s["p"])
        elif op == "residual_dropout_layernorm":
            x = cast(self.x)
            h = x if s["p"] == 0 else x * scale_mask(s["x"], s["p"])
            if self.residual is not None:
                h = h + cast(self.residual)
            centred = h - h.mean(-1, keepdim=True)
            rstd = 1 / torch.sqrt((centred * centred).mean(-1, keepdim=True) + s["eps"])
            out = centred * rstd * cast(self.weight) + cast(self.bias)
        elif op == "cross_entropy":
            x = cast(self.x)
            ignored = self.labels == s["ignore_index"]
            picked = x.gather(-1, self.labels.masked_fill(ignored, 0)[..., None])[..., 0]
            out = torch.where(ignored, torch.zeros_like(picked), torch.logsumexp(x, -1) - picked)
        else:
            out = torch.from_numpy(np.asarray(rng.dropout_scale_mask(tuple(s["shape"]), s["p"], s["seed"],
                                                                     s["offset"])))
        return out, leaves

    def backward(self, out):
        if not self.leaves or not isinstance(out, self.torch.Tensor) or not out.requires_grad:
            return None
        self.grad_out = self.torch.randn(out.shape, generator=self.gen, dtype=self.torch.float64)
        return self.torch.autograd.grad(out, [t for _, t, _ in self.leaves], self.grad_out.to(out.dtype),
                                        allow_unused=True)

    def _grads(self, out, leaves):
        grads = self.torch.autograd.grad(out, leaves, self.grad_out.to(out.dtype), allow_unused=True)
        return [self.torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]

    def compare(self, out, grads):
        torch, s = self.torch, self.s
        want, _ = self.reference()
        if s["device"] in ("meta", "fake"):
            expected_device = "meta" if s["device"] == "meta" else "cpu"
            if tuple(out.shape) != tuple(want.shape) or out.device.type != expected_device:
                return f"{s['device']} output {tuple(out.shape)} on {out.device}, want {tuple(want.shape)}"
            want_dtype = getattr(torch, s["dtype"])
            if s["op"] == "cross_entropy" and want_dtype in (torch.float16, torch.bfloat16):
                want_dtype = torch.float32  # the loss of half-precision logits is computed and kept in float32
            if out.dtype != want_dtype:
                return f"{s['device']} output dtype {out.dtype}, want {want_dtype}"
            return None
        peer = peer_grads = None
        if s["dtype"] != "float64" and s["op"] != "dropout_scale_mask":
            peer, peer_leaves = self.reference(getattr(torch, s["dtype"]))
            if grads is not None:
                peer_grads = self._grads(peer, peer_leaves)
        problem = _close("output", out, want, s["dtype"], peer)
        if problem or grads is None:
            return problem
        want_grads = self._grads(want, [twin for _, _, twin in self.leaves])
        for i, ((name, _, _), g, w) in enumerate(zip(self.leaves, grads, want_grads)):
            g = torch.zeros_like(w) if g is None else g
            problem = _close(f"grad of {name}", g, w, s["dtype"], None if peer_grads is None else peer_grads[i],
                             gradient=True)
            if problem:
                return problem
        return None


def _close(what, got, want, dtype, peer=None, gradient=False):
    """None when ``got`` matches the float64 ``want`` to the dtype's tolerance, else what is wrong.

    Below float64 the tolerance is also at least twice the error of ``peer``, the same formula computed in
    that dtype: badly conditioned inputs (logits of 10^4) lose digits in any float32 implementation."""
    import torch
    got = got.detach().to(torch.float64)
    want = want.detach()
    if peer is not None:
        peer = peer.detach().to(torch.float64)
    if tuple(got.shape) != tuple(want.shape):
        return f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    defined = torch.isfinite(want)
    if (defined & ~torch.isfinite(got)).any():
        return f"{what}: {int((defined & ~torch.isfinite(got)).sum())} non-finite values where the answer is finite"
    got, want = got[defined], want[defined]
    if not want.numel():
        return None
    rtol = {"float64": 1e-8 if gradient else 1e-10, "float32": 1e-4 if gradient else 1e-5}.get(dtype, 2e-2)
    size = max(float(want.norm()), 1e-300)
    if peer is not None:
        peer = peer[defined]
        peer_err = float(torch.where(torch.isfinite(peer), peer - want, torch.zeros_like(want)).norm()) / size
        rtol = max(rtol, 2 * peer_err)
    err = float((got - want).norm())
    if err > rtol * size and float((got - want).abs().max()) > rtol * max(1.0, float(want.abs().max())):
        worst = int((got - want).abs().argmax())
        return (f"{what}: relative error {err / size:.3g} > {rtol:g} (worst element {worst}: "
                f"{float(got[worst]):.6g} vs {float(want[worst]):.6g})")
    return None


# --------------------------------------------------------------------------------- workers and driver

def _worker() -> None:
    """Read specs (one JSON per line) from stdin; print one JSON result per call, flushed at once."""
    import warnings
    warnings.simplefilter("ignore")
    for line in sys.stdin:
        spec = json.loads(line)
        try:
            result = _run_call(spec)
        except BaseException as e:  # noqa: BLE001 - a harness error is reported, not swallowed
            result = {"outcome": "wrong", "message": f"harness: {type(e).__name__}: {e}"[:500]}
        print(json.dumps(result), flush=True)


def run_specs(specs: list[dict], chunk: int = 400) -> list[dict]:
    """Run the specs in worker subprocesses; a worker that dies marks its current call ``crash``."""
    results: list[dict] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "0"}
    while len(results) < len(specs):
        todo = specs[len(results):len(results) + chunk]
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"],
                              input="".join(json.dumps(s) + "\n" for s in todo), capture_output=True,
                              text=True, env=env)
        done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        results += done
        if len(done) < len(todo):  # the worker died on todo[len(done)]
            results.append({"outcome": "crash", "message": f"worker exited with {proc.returncode}: "
                            f"{proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else ''}"})
    for spec, result in zip(specs, results):
        result["spec"] = spec
    return results


def summarize(results: list[dict]) -> dict:
    """{op: {outcome: count}}, plus the failing calls."""
    counts = collections.defaultdict(collections.Counter)
    for r in results:
        counts[r["spec"]["op"]][r["outcome"]] += 1
    failures = [r for r in results if r["outcome"] not in PASSING]
    return {"counts": {op: dict(c) for op, c in counts.items()}, "failures": failures}


def fuzz(calls_per_op: int, seed: int = 0, ops=OPS) -> dict:
    """Generate, run and summarise ``calls_per_op`` calls of each op."""
    specs = [spec for op in ops for spec in generate(op, calls_per_op, seed)]
    return summarize(run_specs(specs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls-per-op", type=int, default=1000, help="generated calls of each op (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated calls")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--json", default=None, help="write the summary and every failing call here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return 0
    report = fuzz(args.calls_per_op, args.seed, args.ops)
    outcomes = ("ok", "clear_error", "unclear_error", "accepted_invalid", "spurious_error", "wrong", "crash")
    print(f"{'op':<20}" + "".join(f"{o:>17}" for o in outcomes))
    for op, c in report["counts"].items():
        print(f"{op:<20}" + "".join(f"{c.get(o, 0):>17}" for o in outcomes))
    for f in report["failures"][:20]:
        print(f"- {f['outcome']}: {f['message']}\n  {json.dumps(f['spec'])}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
