"""Every primitive layer of minibert.reference.layers: forward against an independent computation
(torch or plain loops), backward against central differences in float64."""
import numpy as np
import pytest
import torch

from minibert import rng
from minibert.reference import layers as L
from minibert.reference.gradcheck import check_gradients

TOL = 1e-6  # relative error of a correct float64 backward against central differences


def weighted(out, w):
    """A scalar loss sum(out * w) with fixed random w: every output element matters, with its own weight."""
    return float((out * w).sum())


def assert_grads(loss, inputs, analytic):
    errors = check_gradients(loss, inputs, analytic)
    assert all(e < TOL for e in errors.values()), errors


@pytest.fixture
def gen():
    return np.random.default_rng()


def test_linear(gen):
    x, w, b = gen.normal(size=(2, 3, 5)), gen.normal(size=(4, 5)), gen.normal(size=4)
    y, cache = L.linear_forward(x, w, b)
    np.testing.assert_allclose(y, np.einsum("bsi,oi->bso", x, w) + b, rtol=1e-12)
    wy = gen.normal(size=y.shape)
    dx, dw, db = L.linear_backward(wy, cache)
    assert_grads(lambda: weighted(L.linear_forward(x, w, b)[0], wy), {"x": x, "w": w, "b": b},
                 {"x": dx, "w": dw, "b": db})


def test_embedding_repeated_ids_accumulate(gen):
    table = gen.normal(size=(7, 4))
    ids = np.array([[1, 3, 1], [6, 1, 0]])
    y, cache = L.embedding_forward(ids, table)
    np.testing.assert_array_equal(y[0, 2], table[1])
    wy = gen.normal(size=y.shape)
    dtable = L.embedding_backward(wy, cache)
    assert_grads(lambda: weighted(L.embedding_forward(ids, table)[0], wy), {"table": table},
                 {"table": dtable})
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        L.embedding_forward(np.array([[7]]), table)


def test_layernorm_matches_torch(gen):
    x = gen.normal(size=(2, 3, 6)) * 3 + 1
    gamma, beta = gen.normal(size=6), gen.normal(size=6)
    y, cache = L.layernorm_forward(x, gamma, beta, 1e-12)
    ref = torch.nn.functional.layer_norm(torch.tensor(x), (6,), torch.tensor(gamma), torch.tensor(beta), 1e-12)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-12)
    wy = gen.normal(size=y.shape)
    dx, dg, db = L.layernorm_backward(wy, cache)
    assert_grads(lambda: weighted(L.layernorm_forward(x, gamma, beta, 1e-12)[0], wy),
                 {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": dg, "beta": db})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(gen, approximate):
    x = gen.normal(size=(3, 8)) * 2
    y, cache = L.gelu_forward(x, approximate)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.gelu(xt, approximate=approximate)
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=0, atol=1e-14)
    wy = gen.normal(size=y.shape)
    dx = L.gelu_backward(wy, cache)
    ref.backward(torch.tensor(wy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-13)
    assert_grads(lambda: weighted(L.gelu_forward(x, approximate)[0], wy), {"x": x}, {"x": dx})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_without_scipy_is_the_same(gen, monkeypatch, dtype):
    x = (gen.normal(size=(4, 16)) * 3).astype(dtype)
    with_default = L.gelu_forward(x)[0]
    monkeypatch.setattr(L, "_erf", L.erf_elementwise)  # what runs where SciPy is not installed
    fallback = L.gelu_forward(x)[0]
    assert fallback.dtype == dtype
    ref = torch.nn.functional.gelu(torch.tensor(x, dtype=torch.float64)).numpy()
    rtol, atol = (1e-6, 1e-7) if dtype == np.float32 else (1e-14, 1e-15)
    np.testing.assert_allclose(fallback, ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(with_default, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu(gen, approximate):
    x, bias = gen.normal(size=(2, 3, 5)), gen.normal(size=5)
    y, cache = L.bias_gelu_forward(x, bias, approximate)
    np.testing.assert_array_equal(y, L.gelu_forward(x + bias, approximate)[0])
    wy = gen.normal(size=y.shape)
    dx, dbias = L.bias_gelu_backward(wy, cache)
    assert_grads(lambda: weighted(L.bias_gelu_forward(x, bias, approximate)[0], wy),
                 {"x": x, "bias": bias}, {"x": dx, "bias": dbias})


def test_gelu_rejects_unknown_form(gen):
    with pytest.raises(ValueError, match="approximate"):
        L.gelu_forward(gen.normal(size=3), "sigmoid")


def test_softmax(gen):
    x = gen.normal(size=(2, 4, 6)) * 5
    p, cache = L.softmax_forward(x)
    np.testing.assert_allclose(p, torch.softmax(torch.tensor(x), -1).numpy(), atol=1e-15)
    big, _ = L.softmax_forward(x + 1000.0)  # no overflow: the max is subtracted
    np.testing.assert_allclose(big, p, atol=1e-12)
    wy = gen.normal(size=p.shape)
    assert_grads(lambda: weighted(L.softmax_forward(x)[0], wy), {"x": x}, {"x": L.softmax_backward(wy, cache)})


def test_dropout_mask_comes_from_counter_rng(gen):
    x = gen.normal(size=(4, 50))
    p, seed, offset = 0.3, 11, 1234
    y, cache = L.dropout_forward(x, p, seed, offset)
    keep = rng.keep_mask(x.shape, p, seed, offset)
    np.testing.assert_array_equal(y, np.where(keep, x * (1.0 / (1 - p)), 0.0))
    assert 0 < keep.sum() < keep.size
    wy = gen.normal(size=y.shape)
    dx = L.dropout_backward(wy, cache)
    np.testing.assert_array_equal(dx, np.where(keep, wy * (1.0 / (1 - p)), 0.0))
    assert_grads(lambda: weighted(L.dropout_forward(x, p, seed, offset)[0], wy), {"x": x}, {"x": dx})
    y0, cache0 = L.dropout_forward(x, 0.0, seed)  # switched off: the identity both ways
    np.testing.assert_array_equal(y0, x)
    np.testing.assert_array_equal(L.dropout_backward(wy, cache0), wy)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="dropout probability"):
            L.dropout_forward(x, bad, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(gen, dtype):
    x = gen.normal(size=(2, 3, 8)).astype(dtype)
    b = gen.normal(size=8).astype(dtype)
    assert L.gelu_forward(x, "none")[0].dtype == dtype
    assert L.gelu_forward(x, "tanh")[0].dtype == dtype
    assert L.bias_gelu_forward(x, b, "none")[0].dtype == dtype
    assert L.dropout_forward(x, 0.2, 1)[0].dtype == dtype
    q = gen.normal(size=(2, 2, 3, 4)).astype(dtype)
    out, cache = L.attention_forward(q, q, q, np.ones((2, 3)), dropout_p=0.1)
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in L.attention_backward(out, cache))
    with pytest.raises(TypeError, match="float32 or float64"):
        L.gelu_forward(x.astype(np.float16))
