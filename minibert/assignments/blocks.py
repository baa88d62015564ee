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
from minibert.assignments.base import Assignment, Task
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


def _grade(t, gen, pristine, forward, params, inputs, returns_input_grad=True):
    """The student's ``backward(dy, cache, grads)`` against ``pristine`` and central differences of
    ``sum(forward() * dy)``: one case for the returned input gradient and one per parameter gradient."""
    y, cache = forward()
    dy = gen.standard_normal(y.shape)
    want_grads = {}
    want = pristine(dy, cache, want_grads)
    loss = lambda: float((forward()[0] * dy).sum())  # noqa: E731
    cases = ([f"d{name}" for name in inputs] if returns_input_grad else []) + [f"grads[{n!r}]" for n in want_grads]
    with t.variant("", cases) as v:
        grads = {}
        got = t.call(dy, cache, grads)
        if returns_input_grad:
            for name in inputs:
                v.gradient(f"d{name}", got, want, loss, inputs[name], gen)
        for name in want_grads:
            case = f"grads[{name!r}]"
            if name not in grads:
                v.check(case, False, f"missing: add the gradient of {name} to grads (use accumulate)")
            elif name.endswith(ZERO_GRADIENT):
                size = np.abs(np.asarray(grads[name], dtype=np.float64)).max(initial=0.0)
                v.check(case, np.shape(grads[name]) == want_grads[name].shape and size < 1e-10,
                        f"must be 0 up to rounding (softmax ignores a constant added to every score of a row), "
                        f"got shape {np.shape(grads[name])} and max |g| {size:.1e}")
            else:
                v.gradient(case, grads[name], want_grads[name], loss, params[name], gen)
    extra = sorted(set(grads) - set(want_grads)) if "grads" in locals() else []
    if extra:
        t.notes.append(f"grads also holds {extra}, which this block does not use")


def _check_embeddings(t, gen):
    params = _params(gen, ("bert.embeddings",))
    ids, types = gen.integers(0, CONFIG.vocab_size, (B, S)), gen.integers(0, 2, (B, S))
    seed = int(gen.integers(2 ** 31))
    _grade(t, gen, P.embeddings_backward,
           lambda: P.embeddings_forward(params, "bert.embeddings", ids, types, 1e-12, 0.2, seed, 0), params, {},
           returns_input_grad=False)


def _check_self_attention(t, gen):
    prefix = "bert.encoder.layer.0.attention"
    params = _params(gen, (prefix,))
    x = gen.standard_normal((B, S, CONFIG.hidden_size))
    mask = np.array([[1] * S, [1] * (S - 2) + [0, 0]])
    seed = int(gen.integers(2 ** 31))
    _grade(t, gen, P.self_attention_backward,
           lambda: P.self_attention_forward(params, prefix, x, mask, 2, 1e-12, 0.2, 0.2, seed, 0, 1 << 40),
           params, {"x": x})


def _check_feed_forward(t, gen):
    prefix = "bert.encoder.layer.0"
    params = _params(gen, (prefix + ".intermediate", prefix + ".output"))
    x = gen.standard_normal((B, S, CONFIG.hidden_size))
    seed = int(gen.integers(2 ** 31))
    _grade(t, gen, P.feed_forward_backward,
           lambda: P.feed_forward_forward(params, prefix, x, "none", 1e-12, 0.2, seed, 0), params, {"x": x})


def _check_pooler(t, gen):
    params = _params(gen, ("bert.pooler",))
    # Two positions: the half of h that gets gradient (position 0) is always among the coordinates checked.
    h = gen.standard_normal((B, 2, CONFIG.hidden_size))
    _grade(t, gen, P.pooler_backward, lambda: P.pooler_forward(params, "bert.pooler", h), params, {"h": h})


def _check_mlm_head(t, gen):
    word = "bert.embeddings.word_embeddings.weight"
    params = _params(gen, ("cls.predictions", word))
    h = gen.standard_normal((B, S, CONFIG.hidden_size))
    # The decoder is tied to the word embeddings: that gradient must be *added* to grads[word], which
    # here starts empty; in the model the embedding lookup's gradient is already there.
    _grade(t, gen, P.mlm_head_backward, lambda: P.mlm_head_forward(params, word, h, "none", 1e-12), params,
           {"h": h})


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
             _check_embeddings, in_place=("grads",), may_change=("dh",),
             contract=("Backward of embeddings_forward. dh: [B, S, E]; cache: (prefix, c_word, c_pos, c_typ, c_ln, "
                       "c_drop), the caches of the three lookups, the LayerNorm and the dropout.\n\n"
                       "Adds to grads (with accumulate) the gradients of the three tables and of the LayerNorm's "
                       "weight and bias, under their HF names; returns nothing (ids get no gradient)."),
             notebook='check_block("embeddings_backward", "bert.embeddings", lambda p: blocks.embeddings_forward(\n'
                      '    p, "bert.embeddings", ids, types, 1e-12, 0.2, 7, 0), {})'),
        Task(FILE, "self_attention_backward", 4, "dx and the 10 parameter grads on x: [2, 5, 8], 2 heads, a padding "
             "mask, dropout 0.2 on probabilities and output", _check_self_attention, in_place=("grads",),
             may_change=("dy",),
             contract=("Backward of self_attention_forward. dy: [B, S, E]; cache: (prefix, num_heads, c_q, c_k, c_v, "
                       "c_att, c_out, c_drop, c_ln), the caches of the q/k/v projections, the attention, the "
                       "output projection, the dropout and the LayerNorm.\n\n"
                       "Adds to grads the gradients of the ten parameters under their HF names; returns dx [B, S, E]."),
             notebook='check_block("self_attention_backward", "bert.encoder.layer.0.attention", lambda p: (\n'
                      '    blocks.self_attention_forward(p, "bert.encoder.layer.0.attention", x, mask, 2, 1e-12, 0.2,\n'
                      '                                  0.2, 7, 0, 1 << 40)), {"x": x})'),
        Task(FILE, "feed_forward_backward", 3, "dx and the 6 parameter grads on x: [2, 5, 8], intermediate 12, "
             "dropout 0.2", _check_feed_forward, in_place=("grads",), may_change=("dy",),
             contract=("Backward of feed_forward_forward. dy: [B, S, E]; cache: (prefix, x, w1, c_gelu, c_out, c_drop, "
                       "c_ln): the block's input, the first dense weight [F, E], and the caches of bias+GELU, the "
                       "output dense, the dropout and the LayerNorm.\n\n"
                       "Adds to grads the gradients of the six parameters under their HF names; returns dx [B, S, E]."),
             notebook='check_block("feed_forward_backward", "bert.encoder.layer.0.", lambda p: (\n'
                      '    blocks.feed_forward_forward(p, "bert.encoder.layer.0", x, "none", 1e-12, 0.2, 7, 0)),\n'
                      '    {"x": x},\n'
                      '    skip=("bert.encoder.layer.0.attention",))'),
        Task(FILE, "pooler_backward", 1, "dh (only position 0 non-zero) and the dense grads", _check_pooler,
             in_place=("grads",), may_change=("dpooled",),
             contract=("Backward of pooler_forward. dpooled: [B, E]; cache: (prefix, h_shape, c_dense, pooled): the "
                       "shape of h, the dense layer's cache and the output.\n\n"
                       "Adds to grads the dense layer's gradients; returns dh, shaped h_shape."),
             notebook=('check_block("pooler_backward", "bert.pooler",\n'
                       '            lambda p: blocks.pooler_forward(p, "bert.pooler", h), {"h": h})')),
        Task(FILE, "mlm_head_backward", 2, "dh and the grads of the transform, the bias and the tied word "
             "embeddings", _check_mlm_head, in_place=("grads",), may_change=("dlogits",),
             contract=("Backward of mlm_head_forward. dlogits: [B, S, V]; cache: (word_embeddings_name, c_dense, "
                       "c_gelu, c_ln, c_dec): the name of the tied word-embedding table and the caches of the "
                       "transform dense, the GELU, the LayerNorm and the decoder.\n\n"
                       "Adds to grads the gradients of the transform, of cls.predictions.bias and of the word "
                       "embeddings (the decoder's weight: add, since the embedding lookup adds its own); returns "
                       "dh [B, S, E]."),
             notebook='word = "bert.embeddings.word_embeddings.weight"\n'
                      'check_block("mlm_head_backward", ("cls.predictions", word), lambda p: blocks.mlm_head_forward(\n'
                      '    p, word, h, "none", 1e-12), {"h": h})'),
    ),
    notebook_setup='''\
import numpy as np
from minibert import checkpoint
from minibert.assignments.notebook import load
from minibert.config import BertConfig
from minibert.reference.gradcheck import check_gradients

blocks = load("blocks.py")  # your file, imported fresh on every run of this cell
config = BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=12, max_position_embeddings=6)
gen = np.random.default_rng(0)
params = {name: gen.standard_normal(shape) * 0.7 for name, shape in checkpoint.expected_shapes(config).items()}
ids, types = gen.integers(0, 11, (2, 5)), gen.integers(0, 2, (2, 5))
x, h = gen.standard_normal((2, 5, 8)), gen.standard_normal((2, 5, 8))
mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def check_block(name, prefix, forward, inputs, skip=()):
    """Gradient check of your blocks.<name> on every parameter under `prefix` and every array in `inputs`
    (the key bias, whose true gradient is 0, only has to be ~0)."""
    used = {n: p for n, p in params.items() if n.startswith(prefix) and not n.startswith(skip)}
    y, cache = forward(params)
    dy = gen.standard_normal(y.shape)
    grads = {}
    dinput = getattr(blocks, name)(dy.copy(), cache, grads)
    zero = [n for n in grads if n.endswith("key.bias")]
    assert all(np.abs(grads.pop(n)).max() < 1e-10 for n in zero), "the key bias gradient must be 0"
    analytic = {**grads, **{n: dinput for n in inputs}}
    errors = check_gradients(lambda: float((forward(params)[0] * dy).sum()),
                             {**{n: used[n] for n in grads}, **inputs}, analytic, max_coords=12)
    print({n: f"{e:.1e}" for n, e in errors.items()})
    assert set(grads) | set(zero) == set(used), f"gradients for {sorted(grads)}, parameters {sorted(used)}"
    assert max(errors.values()) < 1e-6
''',
    questions=(
        "Why is the gradient of the key bias exactly zero, whatever the input? (Hint: what does softmax do with "
        "a constant added to every score of a row?)",
        "The residual connection y = LN(x + f(x)): where does the `+` show up in the backward pass?",
        "The MLM decoder shares its weight with the word embeddings. Why must its gradient be added to "
        "grads[word] and not stored there?",
    ),
)
