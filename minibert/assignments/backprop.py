"""Assignment "backprop": the hand-written backward passes of BERT's layers (``reference/layers.py``).

Each check runs the pristine forward in float64 on random inputs, computes the pristine backward of a
random upstream gradient ``dy`` (the reference), then hands copies of ``dy`` and the cache to the
student's backward. Each returned gradient is a case, judged against the reference to 1e-10 and
against central differences of the scalar ``sum(forward(...) * dy)`` to 1e-6.
"""
from __future__ import annotations

import numpy as np

from minibert.assignments.base import Assignment, Task
from minibert.reference import layers as P

FILE = "reference/layers.py"


def _grade(t, gen, variant, pristine, forward, inputs):
    """Shared by every check: ``y, cache = forward(**inputs)``; the student's backward of (dy, cache) must
    return the gradient of every array in ``inputs``, in the order of ``inputs``."""
    names = list(inputs)
    y, cache = forward(**inputs)
    dy = gen.standard_normal(np.shape(y))
    want = pristine(dy, cache)
    want = want if isinstance(want, tuple) else (want,)
    with t.variant(variant, [f"d{name}" for name in names]) as v:
        got = t.call(dy, cache)
        got = tuple(got) if isinstance(got, (tuple, list)) else (got,)
        if len(got) != len(want):
            message = f"returned {len(got)} gradient(s), expected {len(want)} (d{', d'.join(names)})"
            for name in names:
                v.check(f"d{name}", False, message)
            return
        for name, g, w in zip(names, got, want):
            v.gradient(f"d{name}", g, w, lambda: float((forward(**inputs)[0] * dy).sum()), inputs[name], gen)


def _check_linear_backward(t, gen):
    inputs = {"x": gen.standard_normal((2, 3, 5)), "weight": gen.standard_normal((4, 5)),
              "bias": gen.standard_normal(4)}
    _grade(t, gen, "x: [2, 3, 5]", P.linear_backward, P.linear_forward, inputs)


def _check_layernorm_backward(t, gen):
    inputs = {"x": gen.standard_normal((3, 4, 6)) * 2.0 + 0.5, "gamma": 1.0 + gen.standard_normal(6),
              "beta": gen.standard_normal(6)}
    _grade(t, gen, "x: [3, 4, 6]", P.layernorm_backward,
           lambda x, gamma, beta: P.layernorm_forward(x, gamma, beta, 1e-12), inputs)


def _check_gelu_backward(t, gen):
    for approximate in ("none", "tanh"):
        _grade(t, gen, f"approximate={approximate!r}", P.gelu_backward,
               lambda x: P.gelu_forward(x, approximate), {"x": gen.standard_normal((4, 7)) * 2.0})


def _check_softmax_backward(t, gen):
    for axis in (-1, 1):
        _grade(t, gen, f"axis={axis}", P.softmax_backward, lambda x: P.softmax_forward(x, axis),
               {"x": gen.standard_normal((3, 5, 4)) * 3.0})


def _check_attention_backward(t, gen):
    B, H, S, D = 2, 2, 5, 3
    seed = int(gen.integers(2 ** 31))
    padded = np.array([[1] * S, [1] * (S - 2) + [0, 0]])  # sequence 1: its last two keys get probability 0
    # Dropout 0.2 makes the regenerated mask part of the backward pass.
    for mask, p in ((None, 0.0), (padded, 0.0), (padded, 0.2)):
        inputs = {name: gen.standard_normal((B, H, S, D)) for name in ("q", "k", "v")}
        _grade(t, gen, f"mask={'none' if mask is None else 'padding'}, dropout_p={p}", P.attention_backward,
               lambda q, k, v: P.attention_forward(q, k, v, mask, None, p, seed), inputs)


SETUP = '''\
import numpy as np
from minibert.assignments.notebook import load
from minibert.reference.gradcheck import check_gradients

layers = load("layers.py")  # your file (not the library's), imported fresh on every run of this cell
gen = np.random.default_rng(0)


def gradient_errors(forward, backward, inputs):
    """Relative error of each gradient your backward returns, against central differences of
    sum(forward(**inputs) * dy) (minibert.reference.gradcheck). Below 1e-6 is right; O(1) is wrong."""
    y, cache = forward(**inputs)
    dy = gen.standard_normal(np.shape(y))
    grads = backward(dy.copy(), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    loss = lambda: float((forward(**inputs)[0] * dy).sum())
    errors = check_gradients(loss, inputs, dict(zip(inputs, grads)))
    print({name: f"{error:.1e}" for name, error in errors.items()})
    return max(errors.values())
'''

ASSIGNMENT = Assignment(
    name="backprop",
    title="Backpropagation through BERT's layers",
    summary=("Write the backward pass of five layers of the NumPy BERT: Linear, LayerNorm, GELU (both forms), "
             "softmax and scaled dot-product attention (with a padding mask and dropout). Each forward is "
             "given and returns a cache; your backward receives dL/d(output) and that cache and returns "
             "dL/d(each input and parameter), shaped like them. Derive each formula on paper first, then "
             "check it with minibert.reference.gradcheck (the notebook does)."),
    tasks=(
        Task(FILE, "linear_backward", 2, "dx, dweight, dbias on x: [2, 3, 5], weight: [4, 5]",
             _check_linear_backward,
             contract=("Backward of linear_forward. dy: [..., out], the gradient of the loss with respect to y; "
                       "cache: (x, weight) as saved by the forward.\n\nReturns (dx [..., in], dweight "
                       "[out, in], dbias [out]), the gradients of the loss with respect to x, weight and bias."),
             may_change=("dy",),
             notebook=('x, w, b = gen.standard_normal((2, 3, 5)), gen.standard_normal((4, 5)), '
                       'gen.standard_normal(4)\n'
                       'assert gradient_errors(layers.linear_forward, layers.linear_backward,\n'
                       '                       {"x": x, "weight": w, "bias": b}) < 1e-6')),
        Task(FILE, "layernorm_backward", 3, "dx, dgamma, dbeta on x: [3, 4, 6]", _check_layernorm_backward,
             contract=("Backward of layernorm_forward. dy: [..., E]; cache: (xhat, rstd, gamma) with xhat the "
                       "normalised input [..., E], rstd = 1 / sqrt(var + eps) [..., 1] and gamma [E].\n\n"
                       "Returns (dx [..., E], dgamma [E], dbeta [E]); dgamma and dbeta sum over every "
                       "leading dim."),
             may_change=("dy",),
             notebook=('x = gen.standard_normal((3, 4, 6)) * 2 + 0.5\n'
                       'gamma, beta = 1 + gen.standard_normal(6), gen.standard_normal(6)\n'
                       'forward = lambda x, gamma, beta: layers.layernorm_forward(x, gamma, beta, 1e-12)\n'
                       'assert gradient_errors(forward, layers.layernorm_backward,\n'
                       '                       {"x": x, "gamma": gamma, "beta": beta}) < 1e-6')),
        Task(FILE, "gelu_backward", 2, "dx for approximate='none' and 'tanh' on x: [4, 7]", _check_gelu_backward,
             contract=("Backward of gelu_forward. dy: shaped like x; cache: (x, cdf, th, approximate): cdf = "
                       "Phi(x) for the exact form (th None), th = tanh(u) for the tanh form (cdf None), "
                       "with u as in gelu_forward.\n\nReturns dx, shaped like x."),
             may_change=("dy",),
             notebook=('for approximate in ("none", "tanh"):\n'
                       '    forward = lambda x: layers.gelu_forward(x, approximate)\n'
                       '    assert gradient_errors(forward, layers.gelu_backward,\n'
                       '                           {"x": gen.standard_normal((4, 7)) * 2}) < 1e-6, approximate')),
        Task(FILE, "softmax_backward", 1, "dx along axis -1 and axis 1 of x: [3, 5, 4]", _check_softmax_backward,
             contract=("Backward of softmax_forward. dp: the gradient with respect to the probabilities p, "
                       "shaped like them; cache: (p, axis).\n\nReturns dx, shaped like x."),
             may_change=("dp",),
             notebook=('for axis in (-1, 1):\n'
                       '    forward = lambda x: layers.softmax_forward(x, axis)\n'
                       '    assert gradient_errors(forward, layers.softmax_backward,\n'
                       '                           {"x": gen.standard_normal((3, 5, 4)) * 3}) < 1e-6, axis')),
        Task(FILE, "attention_backward", 4, "dq, dk, dv on [2, 2, 5, 3] with no mask, a padding mask, and "
             "padding + dropout 0.2", _check_attention_backward,
             contract=("Gradients of attention_forward. dout: [B, H, S_q, D]; cache: (q, k, v, probs, dropped, "
                       "scale, dropout_p, seed, offset) with probs the softmax probabilities [B, H, S_q, S_k] "
                       "and dropped = probs after dropout (the matrix multiplied by v). The dropout mask is "
                       "not stored: rng.dropout_scale_mask(probs.shape, dropout_p, seed, offset, dtype) "
                       "regenerates it.\n\nReturns (dq, dk, dv), shaped like q, k, v."),
             may_change=("dout",),
             notebook=('mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])\n'
                       'for mask_, p in ((None, 0.0), (mask, 0.0), (mask, 0.2)):\n'
                       '    forward = lambda q, k, v: layers.attention_forward(q, k, v, mask_, None, p, 7)\n'
                       '    qkv = {name: gen.standard_normal((2, 2, 5, 3)) for name in "qkv"}\n'
                       '    assert gradient_errors(forward, layers.attention_backward, qkv) < 1e-6, (mask_, p)')),
    ),
    notebook_setup=SETUP,
    questions=(
        "LayerNorm: why does dx sum to zero over the last dimension for every row, whatever dy is?",
        "Softmax: the Jacobian is diag(p) - p p^T. Why is it cheaper to apply it as p * (dp - sum(dp * p)) than "
        "to build it, and what does that cost for a row of S scores?",
        "Attention: why do padding keys get dk = dv = 0 (not merely small), and why does the backward pass not "
        "need to store the dropout mask?",
    ),
)
