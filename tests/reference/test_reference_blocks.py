"""Central-difference checks (float64, dropout on) for every BERT sub-module in minibert.reference.blocks
and for the losses: each backward is checked against its own forward, every parameter tensor covered."""
import numpy as np
import pytest
import torch

from minibert.config import BertConfig
from minibert.reference import blocks, losses
from minibert.reference.gradcheck import check_gradients
from minibert.reference.model import init_params

CFG = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=12, max_position_embeddings=10, hidden_dropout_prob=0.25,
                 attention_probs_dropout_prob=0.25, initializer_range=0.5)
B, S, E = 2, 5, 8


@pytest.fixture
def setup():
    gen = np.random.default_rng()
    params = init_params(CFG, np.float64, seed=int(gen.integers(1 << 30)))
    for k in params:  # non-trivial biases and LayerNorm parameters, so their gradients are exercised
        if k.endswith(".bias") or "LayerNorm" in k:
            params[k] = params[k] + gen.normal(scale=0.3, size=params[k].shape)
    return gen, params


def check(loss, inputs, grads, skip_zero=()):
    errors = check_gradients(loss, {k: v for k, v in inputs.items() if k not in skip_zero}, grads)
    assert max(errors.values()) < 1e-6, errors


def subset(params, prefix):
    return {k: v for k, v in params.items() if k.startswith(prefix)}


def test_embeddings(setup):
    gen, params = setup
    ids, tt = gen.integers(0, 30, (B, S)), gen.integers(0, 2, (B, S))
    ids[0, :2] = 7  # a repeated id accumulates
    w = gen.normal(size=(B, S, E))

    def run():
        return blocks.embeddings_forward(params, "bert.embeddings", ids, tt, 1e-12, 0.25, 3, 17)

    grads = {}
    blocks.embeddings_backward(w, run()[1], grads)
    check(lambda: (run()[0] * w).sum(), subset(params, "bert.embeddings"), grads)


def test_self_attention_with_padding(setup):
    gen, params = setup
    x, w = gen.normal(size=(2, B, S, E))
    mask = np.ones((B, S), dtype=int)
    mask[0, 3:] = 0
    prefix = "bert.encoder.layer.0.attention"

    def run():
        return blocks.self_attention_forward(params, prefix, x, mask, 2, 1e-12, 0.25, 0.25, 3, 0, 1 << 40)

    grads = {}
    dx = blocks.self_attention_backward(w, run()[1], grads)
    assert np.abs(grads[prefix + ".self.key.bias"]).max() < 1e-12  # softmax ignores a per-row shift
    check(lambda: (run()[0] * w).sum(), {"x": x, **subset(params, prefix)}, {"x": dx, **grads},
          skip_zero=(prefix + ".self.key.bias",))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_feed_forward(setup, approximate):
    gen, params = setup
    x, w = gen.normal(size=(2, B, S, E))
    prefix = "bert.encoder.layer.0"

    def run():
        return blocks.feed_forward_forward(params, prefix, x, approximate, 1e-12, 0.25, 3, 99)

    grads = {}
    dx = blocks.feed_forward_backward(w, run()[1], grads)
    inputs = {k: v for k, v in subset(params, prefix).items() if "attention" not in k}
    assert sorted(grads) == sorted(inputs)
    check(lambda: (run()[0] * w).sum(), {"x": x, **inputs}, {"x": dx, **grads})


def test_encoder_layer(setup):
    gen, params = setup
    x, w = gen.normal(size=(2, B, S, E))
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    prefix = "bert.encoder.layer.0"

    def run():
        return blocks.encoder_layer_forward(params, prefix, x, mask, CFG, True, 9, (0, 1 << 40, 2 << 40))

    grads = {}
    dx = blocks.encoder_layer_backward(w, run()[1], grads)
    key_bias = prefix + ".attention.self.key.bias"
    check(lambda: (run()[0] * w).sum(), {"x": x, **subset(params, prefix)}, {"x": dx, **grads},
          skip_zero=(key_bias,))


def test_pooler(setup):
    gen, params = setup
    h, w = gen.normal(size=(B, S, E)), gen.normal(size=(B, E))

    def run():
        return blocks.pooler_forward(params, "bert.pooler", h)

    pooled, cache = run()
    np.testing.assert_allclose(pooled, np.tanh(h[:, 0] @ params["bert.pooler.dense.weight"].T
                                               + params["bert.pooler.dense.bias"]))
    grads = {}
    dh = blocks.pooler_backward(w, cache, grads)
    check(lambda: (run()[0] * w).sum(), {"h": h, **subset(params, "bert.pooler")}, {"h": dh, **grads})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_mlm_head_tied_decoder(setup, approximate):
    gen, params = setup
    h, w = gen.normal(size=(B, S, E)), gen.normal(size=(B, S, CFG.vocab_size))
    word = "bert.embeddings.word_embeddings.weight"

    def run():
        return blocks.mlm_head_forward(params, word, h, approximate, 1e-12)

    grads = {}
    dh = blocks.mlm_head_backward(w, run()[1], grads)
    inputs = {"h": h, word: params[word], **subset(params, "cls.predictions")}
    assert sorted(grads) == sorted(set(inputs) - {"h"})
    check(lambda: (run()[0] * w).sum(), inputs, {"h": dh, **grads})


def test_nsp_head(setup):
    gen, params = setup
    pooled, w = gen.normal(size=(B, E)), gen.normal(size=(B, 2))

    def run():
        return blocks.nsp_head_forward(params, pooled)

    grads = {}
    dp = blocks.nsp_head_backward(w, run()[1], grads)
    check(lambda: (run()[0] * w).sum(), {"pooled": pooled, **subset(params, "cls.seq_relationship")},
          {"pooled": dp, **grads})


def test_log_softmax_is_stable_and_exact():
    gen = np.random.default_rng()
    x = gen.normal(size=(4, 7)) * 10
    ref = torch.log_softmax(torch.tensor(x), -1).numpy()
    np.testing.assert_allclose(losses.log_softmax(x), ref, atol=1e-13)
    np.testing.assert_allclose(losses.log_softmax(x + 1e4), ref, atol=1e-10)
    assert np.isfinite(losses.log_softmax(np.array([[0.0, -1e4, 1e4]]))).all()


def test_cross_entropy_matches_torch_and_central_differences():
    gen = np.random.default_rng()
    logits = gen.normal(size=(3, 4, 9)) * 2
    labels = gen.integers(0, 9, (3, 4))
    labels[0, 1:] = losses.IGNORE_INDEX
    labels[2, 0] = losses.IGNORE_INDEX
    loss, cache = losses.cross_entropy_forward(logits, labels)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt.reshape(-1, 9), torch.tensor(labels).reshape(-1))
    ref.backward()
    assert abs(loss - ref.item()) < 1e-13
    dlogits = losses.cross_entropy_backward(1.0, cache)
    np.testing.assert_allclose(dlogits, lt.grad.numpy(), atol=1e-15)
    check(lambda: losses.cross_entropy_forward(logits, labels)[0], {"logits": logits}, {"logits": dlogits})


def test_cross_entropy_edge_cases():
    logits = np.random.default_rng().normal(size=(2, 5))
    loss, cache = losses.cross_entropy_forward(logits, np.array([-100, -100]))
    assert loss == 0.0 and not losses.cross_entropy_backward(1.0, cache).any()
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        losses.cross_entropy_forward(logits, np.array([0, 5]))
    with pytest.raises(ValueError, match="labels shape"):
        losses.cross_entropy_forward(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integers"):
        losses.cross_entropy_forward(logits, np.array([0.0, 1.0]))
