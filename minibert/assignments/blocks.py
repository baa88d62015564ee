"""Assignment "blocks": backward passes of BERT's sub-modules (``reference/blocks.py``).

Each block's backward composes the layers' backward passes (given, from ``reference/layers.py``) in the
reverse order of its forward, routes gradients through residual connections and shared weights, and adds
every parameter's gradient into a ``grads`` dict. Each check runs the pristine block forward in float64 on
random parameters (every tensor random, dropout on where the block has it), hands the cache and a random
upstream gradient to the student's backward, and compares the returned input gradient and every parameter
gradient with (1) the pristine backward to 1e-10 and (2) central differences to 1e-6.
"""
from __future__ import annotations

import numpy as np

from minibert import checkpoint
from minibert.assignments.base import Assignment, Task, assert_close, assert_finite_differences
from minibert.config import BertConfig
from minibert.reference import blocks as P

FILE = "reference/blocks.py"
CONFIG = BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12,
                    max_position_embeddings=6, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
B, S = 2, 5
# The key bias adds the same q.b_k to every score of a query's row, which softmax ignores: its true gradient
# is exactly 0, so its computed gradient is rounding noise that no relative error can judge.
ZERO_GRADIENT = "attention.self.key.bias"


def _params(gen, prefix_filter):
    """Every parameter whose name starts with one of ``prefix_filter``, all entries random."""
    return {name: gen.standard_normal(shape) * 0.7 + (1.0 if "LayerNorm.weight" in name else 0.0)
            for name, shape in checkpoint.expected_shapes(CONFIG).items() if name.startswith(prefix_filter)}


def _grade(what, student, pristine, forward, params, inputs, gen, returns_input_grad=True):
    """The student's ``backward(dy, cache, grads)`` against ``pristine`` and central differences of
    ``sum(forward() * dy)`` over every parameter and every array in ``inputs``."""
    y, cache = forward()
    dy = gen.standard_normal(y.shape)
    grads, want_grads = {}, {}
    got = student(dy, cache, grads)
    want = pristine(dy, cache, want_grads)
    if set(grads) != set(want_grads):
        raise AssertionError(f"{what}: gradients for {sorted(grads)}, expected {sorted(want_grads)}")
    for name in want_grads:
        if name.endswith(ZERO_GRADIENT):
            if np.shape(grads[name]) != np.shape(want_grads[name]) or not np.abs(grads[name]).max() < 1e-10:
                raise AssertionError(f"{what}: grads[{name!r}] must be 0 up to rounding (softmax ignores a "
                                     f"constant added to every score of a row), got max |g| "
                                     f"{np.abs(grads[name]).max():.1e}")
        else:
            assert_close(f"{what}: grads[{name!r}]", grads[name], want_grads[name])
    analytic = {name: g for name, g in grads.items() if not name.endswith(ZERO_GRADIENT)}
    if returns_input_grad:
        for name in inputs:
            assert_close(f"{what}: returned d{name}", got, want)
            analytic[name] = got
    checked = {name: x for name, x in {**params, **inputs}.items() if name in analytic}
    assert_finite_differences(what, lambda: float((forward()[0] * dy).sum()), checked, analytic, gen)


def _check_embeddings(student, modules, gen):
    params = _params(gen, ("bert.embeddings",))
    ids, types = gen.integers(0, CONFIG.vocab_size, (B, S)), gen.integers(0, 2, (B, S))
    seed = int(gen.integers(2 ** 31))
    _grade("embeddings_backward", student, P.embeddings_backward,
           lambda: P.embeddings_forward(params, "bert.embeddings", ids, types, 1e-12, 0.2, seed, 0), params, {}, gen,
           returns_input_grad=False)


def _check_self_attention(student, modules, gen):
    prefix = "bert.encoder.layer.0.attention"
    params = _params(gen, (prefix,))
    x = gen.standard_normal((B, S, CONFIG.hidden_size))
    mask = np.array([[1] * S, [1] * (S - 2) + [0, 0]])
    seed = int(gen.integers(2 ** 31))
    _grade("self_attention_backward", student, P.self_attention_backward,
           lambda: P.self_attention_forward(params, prefix, x, mask, 2, 1e-12, 0.2, 0.2, seed, 0, 1 << 40),
           params, {"x": x}, gen)


def _check_feed_forward(student, modules, gen):
    prefix = "bert.encoder.layer.0"
    params = _params(gen, (prefix + ".intermediate", prefix + ".output"))
    x = gen.standard_normal((B, S, CONFIG.hidden_size))
    seed = int(gen.integers(2 ** 31))
    _grade("feed_forward_backward", student, P.feed_forward_backward,
           lambda: P.feed_forward_forward(params, prefix, x, "none", 1e-12, 0.2, seed, 0), params, {"x": x}, gen)


def _check_pooler(student, modules, gen):
    params = _params(gen, ("bert.pooler",))
    # Two positions: the half of h that gets gradient (position 0) is always among the coordinates checked.
    h = gen.standard_normal((B, 2, CONFIG.hidden_size))
    _grade("pooler_backward", student, P.pooler_backward, lambda: P.pooler_forward(params, "bert.pooler", h),
           params, {"h": h}, gen)


def _check_mlm_head(student, modules, gen):
    word = "bert.embeddings.word_embeddings.weight"
    params = _params(gen, ("cls.predictions", word))
    h = gen.standard_normal((B, S, CONFIG.hidden_size))
    # The decoder is tied to the word embeddings: that gradient must be *added* to grads[word], which
    # here starts empty; in the model the embedding lookup's gradient is already there.
    _grade("mlm_head_backward", student, P.mlm_head_backward,
           lambda: P.mlm_head_forward(params, word, h, "none", 1e-12), params, {"h": h}, gen)


ASSIGNMENT = Assignment(
    name="blocks",
    title="Backpropagation through BERT's sub-modules",
    summary=("Write the backward pass of five blocks of the NumPy BERT from the layers' backward passes "
             "(given in minibert.reference.layers): the embeddings (three tables summed, then LayerNorm and "
             "dropout), multi-head self-attention with its post-LN residual, the feed-forward block, the "
             "pooler, and the masked-LM head whose decoder is tied to the word embeddings. Each backward "
             "receives dL/d(output), the cache of the forward and a dict `grads`; it adds the gradient of "
             "every parameter it used to `grads` (use `accumulate`) and returns dL/d(input)."),
    tasks=(
        Task(FILE, "embeddings_backward", 2, "grads of the three tables and the LayerNorm, dropout 0.2, ids [2, 5]",
             _check_embeddings),
        Task(FILE, "self_attention_backward", 4, "dx and the 10 parameter grads on x: [2, 5, 8], 2 heads, a padding "
             "mask, dropout 0.2 on probabilities and output", _check_self_attention),
        Task(FILE, "feed_forward_backward", 3, "dx and the 6 parameter grads on x: [2, 5, 8], intermediate 12, "
             "dropout 0.2", _check_feed_forward),
        Task(FILE, "pooler_backward", 1, "dh (only position 0 non-zero) and the dense grads", _check_pooler),
        Task(FILE, "mlm_head_backward", 2, "dh and the grads of the transform, the bias and the tied word "
             "embeddings", _check_mlm_head),
    ),
)
