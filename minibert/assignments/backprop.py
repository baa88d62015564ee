"""Assignment "backprop": the hand-written backward passes of BERT's layers (``reference/layers.py``).

Each check runs the pristine forward in float64 on fresh random inputs, hands its cache and a random
upstream gradient ``dy`` to the student's backward, and compares every returned gradient with (1) the
pristine backward to 1e-10 and (2) central differences of the scalar ``sum(forward(...) * dy)`` to 1e-6.
"""
from __future__ import annotations

import numpy as np

from minibert.assignments.base import Assignment, Task, assert_close, assert_finite_differences
from minibert.reference import layers as P

FILE = "reference/layers.py"


def _grade(what, student, pristine, forward, inputs, gen):
    """Shared by every check: ``y, cache = forward(**inputs)``; the student's backward of (dy, cache) must
    match ``pristine`` (the library's backward) and central differences for every array in ``inputs``,
    returned in the order of ``inputs``."""
    names = list(inputs)
    y, cache = forward(**inputs)
    dy = gen.standard_normal(np.shape(y))
    got = student(dy, cache)
    got = got if isinstance(got, tuple) else (got,)
    want = pristine(dy, cache)
    want = want if isinstance(want, tuple) else (want,)
    if len(got) != len(want):
        raise AssertionError(f"{what}: returned {len(got)} gradient(s), expected {len(want)} ({', '.join(names)})")
    for name, g, w in zip(names, got, want):
        assert_close(f"{what}: d{name}", g, w)
    assert_finite_differences(what, lambda: float((forward(**inputs)[0] * dy).sum()), inputs,
                              dict(zip(names, got)), gen)


def _check_linear_backward(student, modules, gen):
    inputs = {"x": gen.standard_normal((2, 3, 5)), "weight": gen.standard_normal((4, 5)),
              "bias": gen.standard_normal(4)}
    _grade("linear_backward", student, P.linear_backward, P.linear_forward, inputs, gen)


def _check_layernorm_backward(student, modules, gen):
    inputs = {"x": gen.standard_normal((3, 4, 6)) * 2.0 + 0.5, "gamma": 1.0 + gen.standard_normal(6),
              "beta": gen.standard_normal(6)}
    _grade("layernorm_backward", student, P.layernorm_backward,
           lambda x, gamma, beta: P.layernorm_forward(x, gamma, beta, 1e-12), inputs, gen)


def _check_gelu_backward(student, modules, gen):
    for approximate in ("none", "tanh"):
        _grade(f"gelu_backward(approximate={approximate!r})", student, P.gelu_backward,
               lambda x: P.gelu_forward(x, approximate), {"x": gen.standard_normal((4, 7)) * 2.0}, gen)


def _check_softmax_backward(student, modules, gen):
    for axis in (-1, 1):
        _grade(f"softmax_backward(axis={axis})", student, P.softmax_backward,
               lambda x: P.softmax_forward(x, axis), {"x": gen.standard_normal((3, 5, 4)) * 3.0}, gen)


def _check_attention_backward(student, modules, gen):
    B, H, S, D = 2, 2, 5, 3
    inputs = {name: gen.standard_normal((B, H, S, D)) for name in ("q", "k", "v")}
    seed = int(gen.integers(2 ** 31))
    padded = np.array([[1] * S, [1] * (S - 2) + [0, 0]])  # sequence 1: its last two keys get probability 0
    # Dropout 0.2 makes the regenerated mask part of the backward pass.
    for mask, p in ((None, 0.0), (padded, 0.0), (padded, 0.2)):
        _grade(f"attention_backward(mask={'none' if mask is None else 'padding'}, dropout_p={p})", student,
               P.attention_backward, lambda q, k, v: P.attention_forward(q, k, v, mask, None, p, seed), inputs, gen)


ASSIGNMENT = Assignment(
    name="backprop",
    title="Backpropagation through BERT's layers",
    summary=("Write the backward pass of five layers of the NumPy BERT: Linear, LayerNorm, GELU (both forms), "
             "softmax and scaled dot-product attention (with a padding mask and dropout). Each forward is "
             "given and returns a cache; your backward receives dL/d(output) and that cache and returns "
             "dL/d(each input and parameter), shaped like them. Derive each formula on paper first, then "
             "check it with minibert.reference.gradcheck."),
    tasks=(
        Task(FILE, "linear_backward", 2, "dx, dweight, dbias on x: [2, 3, 5], weight: [4, 5]", _check_linear_backward),
        Task(FILE, "layernorm_backward", 3, "dx, dgamma, dbeta on x: [3, 4, 6]", _check_layernorm_backward),
        Task(FILE, "gelu_backward", 2, "dx for approximate='none' and 'tanh' on x: [4, 7]", _check_gelu_backward),
        Task(FILE, "softmax_backward", 1, "dx along axis -1 and axis 1 of x: [3, 5, 4]", _check_softmax_backward),
        Task(FILE, "attention_backward", 4, "dq, dk, dv on [2, 2, 5, 3] with no mask, a padding mask, and "
             "padding + dropout 0.2", _check_attention_backward),
    ),
)
