"""attention_forward/backward: the contract other backends are tested against (docs/design.md, "attention op").

The independent reference is a loop over (b, h, i) written from the definition, with the dropout mask
read from minibert.rng at the documented element index ((b*H + h)*S_q + i)*S_k + j.
"""
import math

import numpy as np
import pytest
import torch

from minibert import rng
from minibert.reference import layers as L
from minibert.reference.gradcheck import check_gradients


def loop_attention(q, k, v, mask, scale, p, seed, offset):
    B, H, S_q, D = q.shape
    S_k = k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        keys = [j for j in range(S_k) if mask is None or mask[b, j]]
        for h in range(H):
            for i in range(S_q):
                if not keys:
                    continue  # nothing to attend to: the row stays zero
                s = [sum(q[b, h, i, d] * k[b, h, j, d] for d in range(D)) * scale for j in keys]
                m = max(s)
                e = [math.exp(x - m) for x in s]
                for j, ej in zip(keys, e):
                    prob = ej / sum(e)
                    if p > 0:
                        idx = ((b * H + h) * S_q + i) * S_k + j
                        bits = int(rng.random_bits(seed, offset, np.array([idx], dtype=np.uint64))[0])
                        prob = prob / (1 - p) if bits >= rng.dropout_threshold(p) else 0.0
                    out[b, h, i] += prob * v[b, h, j]
    return out


@pytest.fixture
def gen():
    return np.random.default_rng()


@pytest.mark.parametrize("with_mask,p", [(False, 0.0), (True, 0.0), (True, 0.25)])
def test_forward_matches_loop_definition(gen, with_mask, p):
    B, H, S, D = 2, 3, 5, 4
    q, k, v = gen.normal(size=(3, B, H, S, D))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]) if with_mask else None
    out, _ = L.attention_forward(q, k, v, mask, dropout_p=p, seed=7, offset=99)
    ref = loop_attention(q, k, v, mask, D ** -0.5, p, 7, 99)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-13)


def test_matches_torch_sdpa_with_explicit_scale_and_cross_lengths(gen):
    B, H, S_q, S_k, D = 2, 2, 3, 6, 8
    q = gen.normal(size=(B, H, S_q, D))
    k, v = gen.normal(size=(2, B, H, S_k, D))
    mask = np.ones((B, S_k), dtype=int)
    mask[0, 4:] = 0
    out, _ = L.attention_forward(q, k, v, mask, scale=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(
        torch.tensor(q), torch.tensor(k), torch.tensor(v), attn_mask=torch.tensor(mask[:, None, None, :] == 1),
        scale=0.3)
    np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_backward_central_differences(gen, p):
    B, H, S, D = 2, 2, 4, 3
    q, k, v = gen.normal(size=(3, B, H, S, D))
    mask = np.array([[1, 1, 0, 1], [1, 1, 1, 1]])
    w = gen.normal(size=(B, H, S, D))

    def loss():
        return float((L.attention_forward(q, k, v, mask, dropout_p=p, seed=3, offset=5)[0] * w).sum())

    out, cache = L.attention_forward(q, k, v, mask, dropout_p=p, seed=3, offset=5)
    dq, dk, dv = L.attention_backward(w, cache)
    errors = check_gradients(loss, {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv})
    assert all(e < 1e-6 for e in errors.values()), errors
    np.testing.assert_array_equal(dk[0, :, 2], 0.0)  # a padding key gets no gradient
    np.testing.assert_array_equal(dv[0, :, 2], 0.0)


def test_fully_padded_row_is_zero_with_zero_gradients(gen):
    B, H, S, D = 2, 2, 4, 3
    q, k, v = gen.normal(size=(3, B, H, S, D))
    mask = np.array([[0, 0, 0, 0], [1, 1, 0, 1]])
    out, cache = L.attention_forward(q, k, v, mask, dropout_p=0.2, seed=1)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.abs(out[1]).min() > 0
    dq, dk, dv = L.attention_backward(gen.normal(size=out.shape), cache)
    for g in (dq, dk, dv):
        assert np.isfinite(g).all()
        np.testing.assert_array_equal(g[0], 0.0)
        assert np.abs(g[1]).max() > 0


def test_bad_inputs_raise_clear_errors(gen):
    q = gen.normal(size=(2, 2, 4, 3))
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, S_k\]"):
        L.attention_forward(q, q, q, np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"\[B, H, S, D\]"):
        L.attention_forward(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="share a dtype"):
        L.attention_forward(q, q.astype(np.float32), q)
    with pytest.raises(ValueError, match="k and v"):
        L.attention_forward(q, q, q[:, :, :, :2])
    with pytest.raises(ValueError, match="dropout probability"):
        L.attention_forward(q, q, q, dropout_p=1.0)
