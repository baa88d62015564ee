"""Never a crash, never a silent wrong answer: the reproducers of issue #11 for minibert.ops, as tests.

Zero-size inputs of every op; finite answers where the answer is finite (float64 inputs whose padding
scores overflow exp, an inf in one row of a tile); fake (meta) kernels that check their arguments like
the real ones; double backward refused clearly; dropout with a tiny p still scaled; a mask that is not
0/1 refused; every argument type-checked by name; large heads on the eager path; torch.compile with
fullgraph=True. The fuzzer (tests/fuzz/) generates such calls at random; these are the named cases.
"""
import math

import numpy as np
import pytest
import torch

from minibert import ops, rng
from minibert.reference import layers

needs_ext = pytest.mark.skipif(not ops.is_available(), reason="minibert._C not built (MINIBERT_NO_EXT=1?)")
A = torch.ops.minibert if ops.is_available() else None


def reference_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, seed=0, offset=0):
    """The float64 NumPy reference (minibert.reference.layers): output and the backward of sum(out * dout)."""
    as_np = lambda t: t.detach().double().numpy()  # noqa: E731
    return layers.attention_forward(as_np(q), as_np(k), as_np(v), None if mask is None else as_np(mask),
                                    scale, dropout_p, seed, offset)


def attention_with_grads(q, k, v, dout, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = ops.attention(q, k, v, **kwargs)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


# ---------------------------------------------------------------------------------------------- 1. zero size

def test_bias_gelu_with_an_empty_last_dimension_backward():
    """Used to divide by zero (SIGFPE, the process died) in the backward's row count."""
    x = torch.randn(3, 0, requires_grad=True)
    bias = torch.randn(0, requires_grad=True)
    ops.bias_gelu(x, bias).sum().backward()
    assert x.grad.shape == (3, 0) and bias.grad.shape == (0,)


@pytest.mark.parametrize("shape", [(3, 0), (0, 5), (0,), (2, 0, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elementwise_ops_on_empty_tensors(shape, dtype):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    bias = torch.randn(shape[-1], dtype=dtype, requires_grad=True)
    total = ops.gelu(x).sum() + ops.bias_gelu(x, bias, "tanh").sum() + ops.dropout(x, 0.3, 1).sum()
    total.backward()
    assert x.grad.shape == shape and bias.grad.shape == (shape[-1],)
    assert bias.grad.abs().sum() == 0  # no rows: a zero bias gradient, not garbage
    assert ops.dropout_scale_mask(shape, 0.3, 1, dtype=dtype).shape == shape


@needs_ext
def test_raw_gelu_ops_on_empty_tensors():
    x, bias = torch.randn(3, 0), torch.randn(0)
    dx, dbias = A.bias_gelu_backward(torch.randn(3, 0), x, bias, "none")
    assert dx.shape == (3, 0) and dbias.shape == (0,)
    dx, dbias = A.bias_gelu_backward(torch.randn(0, 4), torch.randn(0, 4), torch.randn(4), "tanh")
    assert dx.shape == (0, 4) and torch.equal(dbias, torch.zeros(4))
    assert A.gelu_backward(torch.randn(0), torch.randn(0), "none").shape == (0,)


@pytest.mark.parametrize("B, Sq, Sk, D", [(0, 3, 4, 8), (2, 0, 4, 8), (2, 3, 0, 8), (2, 3, 4, 0)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_with_a_zero_dimension(B, Sq, Sk, D, masked):
    """Empty inputs have defined answers: an empty output, or zeros (and zero gradients) with no keys."""
    q = torch.randn(B, 2, Sq, D, dtype=torch.float64)
    k, v = (torch.randn(B, 2, Sk, D, dtype=torch.float64) for _ in range(2))
    mask = torch.ones(B, Sk, dtype=torch.bool) if masked else None
    dout = torch.randn(B, 2, Sq, D, dtype=torch.float64)
    out, dq, dk, dv = attention_with_grads(q, k, v, dout, attention_mask=mask, dropout_p=0.1, seed=3)
    assert out.shape == (B, 2, Sq, D) and dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    for t in (out, dq, dk, dv):
        assert torch.equal(t, torch.zeros_like(t))  # no keys, or nothing to compute: zeros


# ---------------------------------------------------------------------------------------------- 2. finite

@needs_ext
def test_float64_one_key_far_from_the_padding_scores_has_finite_gradients():
    """exp(s - lse) overflowed to inf for the zero-padded keys of a tile and met valid = 0: 0 * inf = NaN."""
    q = torch.full((1, 1, 1, 1), 40.0, dtype=torch.float64, requires_grad=True)
    k = -q.detach()
    ops.attention(q, k, torch.ones_like(k), scale=1.0).sum().backward()
    assert q.grad.item() == 0.0  # one key: softmax is constant


@needs_ext
def test_float64_masked_key_with_a_huge_score_has_finite_gradients():
    q, k, v, dout = (torch.randn(1, 1, 3, 4, dtype=torch.float64) for _ in range(4))
    k = torch.cat([k, torch.full((1, 1, 1, 4), 1000.0, dtype=torch.float64)], dim=2)
    v = torch.cat([v, torch.randn(1, 1, 1, 4, dtype=torch.float64)], dim=2)
    mask = torch.tensor([[1, 1, 1, 0]])
    got = attention_with_grads(q, k, v, dout, attention_mask=mask)
    out, cache = reference_attention(q, k, v, mask)
    want = (out, *layers.attention_backward(dout.numpy(), cache))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-10, atol=1e-12)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_padding_key_with_nan_in_v_gets_zero_gradient(dtype):
    """dS of a padding key is exactly 0, even where D = rowsum(dO * O) is NaN (O saw the NaN through v)."""
    q, k, v = (torch.randn(1, 1, 3, 4, dtype=dtype) for _ in range(3))
    v[0, 0, 1, 0] = float("nan")
    mask = torch.tensor([[1, 1, 0]])
    _, _, dk, _ = attention_with_grads(q, k, v, torch.randn(1, 1, 3, 4, dtype=dtype), attention_mask=mask)
    assert torch.equal(dk[0, 0, 2], torch.zeros(4, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_inf_in_one_query_row_leaves_the_other_rows_of_the_tile_alone(dtype):
    """A row whose scores are all -inf (an inf in its q) has no usable key: zeros, like a padding row; the
    other rows of the same kernel tile (and the bfloat16 eager path) give their finite answers."""
    q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64) for _ in range(3))
    k = k.abs() + 0.1
    q[0, 0, 2] = -math.inf  # every score of row 2 of head 0 is -inf
    out = ops.attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert torch.equal(out[0, 0, 2].float(), torch.zeros(8))
    keep = torch.ones(1, 2, 5, dtype=torch.bool)
    keep[0, 0, 2] = False
    want = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
    tol = 1e-10 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out[keep].double(), want[keep], rtol=tol, atol=tol)


@needs_ext
@pytest.mark.parametrize("vector_bytes", ["64", "32", "16"])
def test_one_hot_softmax_rows_have_zero_score_gradients(vector_bytes, run_at_vector_width):
    """With large scores every row is one-hot: dS = P (dP - D) is 0 for the one key (D and dP must round
    alike: a one-ulp difference times |k| = 1000 was 0.15 in float32), and at most float32's exp of a
    huge negative number (1e-38) for the others. Also with dropout, whose 1 / (1 - p) must not round D
    and dP apart. Run in a subprocess per vector width (the kernels read MINIBERT_CPU_VECTOR_BYTES once
    per process)."""
    code = ("import torch\nfrom minibert import ops\ntorch.manual_seed(0)\n"
            "for dtype in (torch.float32, torch.float64):\n"
            "    q = torch.randn(1, 1, 70, 41, dtype=dtype).sign().mul(1000).requires_grad_()\n"
            "    u = torch.randn(41, dtype=dtype).sign()  # keys (j + 1) * 1000 u: scores far apart, no ties\n"
            "    k = torch.stack([(j + 1) * 1000 * u for j in range(3)])[None, None]\n"
            "    v = torch.randn(1, 1, 3, 41, dtype=dtype).sign() * 1000\n"
            "    for p in (0.0, 0.3):\n"
            "        q.grad = None\n"
            "        out = ops.attention(q, k, v, dropout_p=p, seed=5)\n"
            "        out.backward(torch.randn_like(out))\n"
            "        assert q.grad.abs().max() < 1e-20, (dtype, p, q.grad.abs().max())\n"
            "print('ok')\n")
    run_at_vector_width(code, vector_bytes)


# ---------------------------------------------------------------------------------------------- 3. fake kernels

@needs_ext
@pytest.mark.parametrize("call, name", [
    (lambda q: A.attention_forward(q, q, q, torch.ones(1, 4, dtype=torch.bool, device="meta"), 0.5, 0.0, 0, 0),
     "key_mask"),
    (lambda q: A.attention_forward(q, q.to("meta"), q, None, 0.5, 0.0, 0, 0), "device"),
    (lambda q: A.bias_gelu_forward(torch.randn(3), torch.randn(3, device="meta"), "none"), "bias"),
    (lambda q: A.gelu_backward(torch.randn(3), torch.randn(3, device="meta"), "none"), "grad"),
    (lambda q: A.dropout(torch.randn(3, device="meta"), 1.5, 0, 0), "p"),
    (lambda q: A.bias_gelu_forward(torch.randn(3, 4, device="meta"), torch.randn(3, device="meta"), "none"),
     "bias"),
    (lambda q: A.attention_forward(*(t.to("meta") for t in (q, q, q[..., :4])), None, 0.5, 0.0, 0, 0), "same shape"),
])
def test_fake_kernels_refuse_what_the_real_ones_refuse(call, name):
    """A meta tensor among the arguments sends the call to the fake kernel; it used to return an
    uninitialised CPU tensor."""
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match=name):
        call(q)


@needs_ext
def test_fake_kernels_give_shapes_on_meta_tensors():
    q = torch.randn(2, 3, 5, 8, device="meta")
    k = torch.randn(2, 3, 7, 8, device="meta")
    out, lse = A.attention_forward(q, k, k, torch.ones(2, 7, dtype=torch.bool, device="meta"), 0.5, 0.1, 0, 0)
    assert out.device.type == "meta" and out.shape == q.shape and lse.shape == (2, 3, 5)
    assert A.bias_gelu_forward(torch.randn(4, 3, device="meta"), torch.randn(3, device="meta"),
                               "tanh").shape == (4, 3)


# ---------------------------------------------------------------------------------------------- 4. double backward

@needs_ext
@pytest.mark.parametrize("op, name", [
    (lambda x: ops.attention(x, x, x), "attention"),
    (lambda x: ops.gelu(x), "gelu"),
    (lambda x: ops.bias_gelu(x, torch.zeros(x.shape[-1], dtype=x.dtype)), "bias_gelu"),
])
def test_double_backward_is_refused_clearly(op, name):
    """It used to return zeros through attention (eager: nonzero) and fail obscurely through GELU."""
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(op(x).pow(2).sum(), x, create_graph=True)  # a first backward is fine
    with pytest.raises(RuntimeError, match=f"double backward through minibert.ops.{name} is not supported"):
        grad.sum().backward()


def test_double_backward_through_dropout_works():
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: ops.dropout(x, 0.3, 4, 1).pow(2), (x,))


# ---------------------------------------------------------------------------------------------- 5. tiny dropout

@pytest.mark.parametrize("p", [1e-9, 5e-8, 2.0 ** -25])
def test_dropout_below_one_in_2_to_the_24_still_scales(p):
    """floor(p * 2^24) = 0 keeps every element, but kept elements are still scaled by 1 / (1 - p)."""
    want = rng.dropout_scale_mask((2, 3, 5, 7), p, 11, 3)
    assert np.all(want == 1.0 / (1.0 - p))
    got = ops.dropout_scale_mask((2, 3, 5, 7), p, 11, 3, dtype=torch.float64)
    np.testing.assert_array_equal(got.numpy(), want)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    np.testing.assert_array_equal(ops.dropout(x, p, 11, 3).numpy(), x.numpy() * want)
    q, k, v, dout = (torch.randn(2, 3, 5, 7, dtype=torch.float64) for _ in range(4))
    got = attention_with_grads(q, k, v, dout, dropout_p=p, seed=11, offset=3)
    out, cache = reference_attention(q, k, v, None, None, p, 11, 3)
    for g, w in zip(got, (out, *layers.attention_backward(dout.numpy(), cache))):
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- 6. mask values

@pytest.mark.parametrize("mask", [
    torch.tensor([[0.0, 0.0, -1e4]]),            # HF's additive convention: would attend to the padding
    torch.tensor([[1.0, float("nan"), 1.0]]),
    torch.tensor([[1, 2, 0]]),
])
def test_masks_that_are_not_zero_one_are_refused(mask):
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match=r"attention_mask must hold 1 \(keep\) and 0 \(padding\).*== 0"):
        ops.attention(q, q, q, attention_mask=mask)


@pytest.mark.parametrize("mask", [torch.tensor([[True, False, True]]), torch.tensor([[1.0, 0.0, 1.0]]),
                                  torch.tensor([[1, 0, 1]], dtype=torch.uint8)])
def test_zero_one_masks_of_any_dtype_are_accepted(mask):
    q = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    out, _ = reference_attention(q, q, q, mask.double())
    np.testing.assert_allclose(ops.attention(q, q, q, attention_mask=mask).numpy(), out, atol=1e-12)


# ---------------------------------------------------------------------------------------------- 7. argument types

X = torch.randn(2, 3)
Q = torch.randn(1, 1, 3, 4)
BAD_CALLS = [
    (lambda: ops.dropout_scale_mask((2, 3), 0.1, 1, dtype=torch.int64), TypeError, "dtype"),
    (lambda: ops.dropout_scale_mask((2, 3), 0.1, 1, dtype=torch.bool), TypeError, "dtype"),
    (lambda: ops.dropout_scale_mask((2, 1.5), 0.1, 1), TypeError, "shape"),
    (lambda: ops.dropout_scale_mask((2, -2), 0.1, 1), ValueError, "shape"),
    (lambda: ops.dropout_scale_mask("abc", 0.1, 1), TypeError, "shape"),
    (lambda: ops.dropout_scale_mask((2,), 0.1, 1.5), TypeError, "seed"),
    (lambda: ops.dropout_scale_mask((2,), 0.1, 1, offset=None), TypeError, "offset"),
    (lambda: ops.dropout_scale_mask((2,), "0.1", 1), TypeError, "p"),
    (lambda: ops.dropout_scale_mask((2,), float("nan"), 1), ValueError, "p"),
    (lambda: ops.dropout(X, 0.1, "7"), TypeError, "seed"),
    (lambda: ops.dropout(X, 0.1, True), TypeError, "seed"),
    (lambda: ops.dropout(X, 0.1, float("nan")), TypeError, "seed"),
    (lambda: ops.dropout(X, 0.1, 1, offset=2.0), TypeError, "offset"),
    (lambda: ops.dropout(X, None, 1), TypeError, "p"),
    (lambda: ops.dropout(X, 1.0, 1), ValueError, "p"),
    (lambda: ops.attention(Q, Q, Q, dropout_p=1.5), ValueError, "dropout_p"),
    (lambda: ops.attention(Q, Q, Q, dropout_p=float("inf")), ValueError, "dropout_p"),
    (lambda: ops.attention(Q, Q, Q, seed=None), TypeError, "seed"),
    (lambda: ops.attention(Q, Q, Q, offset=1.5), TypeError, "offset"),
    (lambda: ops.attention(Q, Q, Q, scale=float("nan")), ValueError, "scale"),
    (lambda: ops.attention(Q, Q, Q, scale=float("inf")), ValueError, "scale"),
    (lambda: ops.attention(Q, Q, Q, scale="0.5"), TypeError, "scale"),
    (lambda: ops.attention(Q, Q, Q, attention_mask=[[1, 1, 1]]), TypeError, "attention_mask"),
    (lambda: ops.attention([[1.0]], Q, Q), TypeError, "q"),
    (lambda: ops.bias_gelu(X, X[:, 0]), ValueError, "bias"),
    (lambda: ops.gelu(X, None), ValueError, "approximate"),
]


@pytest.mark.parametrize("call, error, name", BAD_CALLS)
def test_every_bad_argument_is_named(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


def test_seeds_and_offsets_are_integers_of_any_size_taken_mod_2_to_the_64():
    want = ops.dropout_scale_mask((4, 5), 0.5, 3, 7, dtype=torch.float64)
    for seed, offset in ((np.int64(3), np.uint64(7)), (3 + 2**64, 7 - 2**64), (3 - 2**128, 7)):
        assert torch.equal(ops.dropout_scale_mask((4, 5), 0.5, seed, offset, dtype=torch.float64), want)
    assert torch.equal(ops.dropout_scale_mask(torch.Size([4, 5]), np.float32(0.5), 3, 7, dtype=torch.float64),
                       want)


def test_large_head_dim_falls_back_to_eager():
    """Above the kernels' head size limit (256 on the CPU) the op runs on the eager path, not an error."""
    q, k, v = (torch.randn(1, 2, 3, 300, dtype=torch.float64) for _ in range(3))
    out, _ = reference_attention(q, k, v, None, None, 0.2, 5, 0)
    np.testing.assert_allclose(ops.attention(q, k, v, dropout_p=0.2, seed=5).numpy(), out, rtol=1e-10,
                               atol=1e-12)


# ---------------------------------------------------------------------------------------------- 8. torch.compile

def _every_op(x, bias, q, k, v, mask):
    """One call of each public op (attention with a 0/1 float mask, so its value check is traced too).
    Not linear_cross_entropy: it finds its predicted rows with nonzero(), a data-dependent shape."""
    y = ops.gelu(x) + ops.bias_gelu(x, bias, "tanh") + ops.dropout(x, 0.2, 5, 1)
    y = y * ops.dropout_scale_mask(x.shape, 0.1, 6, dtype=x.dtype)
    y = y + ops.residual_dropout_layernorm(x, y, bias, bias, 1e-5, 0.1, 8, 2)
    a = ops.attention(q, k, v, attention_mask=mask, dropout_p=0.1, seed=7, offset=3)
    loss = ops.cross_entropy(y, torch.tensor([3, -100, 0, 7]))
    return y.sum() + a.sum() + loss.sum()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, from inductor's imports
def test_every_public_op_compiles_with_fullgraph():
    """torch.compile(fullgraph=True) with the default (inductor) backend: forward and backward of every
    public op in one graph, no graph break, the same values and gradients as without compiling."""
    torch.manual_seed(0)
    inputs = [torch.randn(4, 8), torch.randn(8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 6, 8),
              torch.randn(1, 2, 6, 8)]
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0, 1.0]])
    results = []
    for fn in (_every_op, torch.compile(_every_op, fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in inputs]
        total = fn(*leaves, mask)
        total.backward()
        results.append([total] + [t.grad for t in leaves])
    for eager_value, compiled_value in zip(*results):
        torch.testing.assert_close(compiled_value, eager_value, rtol=1e-5, atol=1e-5)
    bad = torch.compile(_every_op, fullgraph=True)
    with pytest.raises(RuntimeError, match="attention_mask"):  # the mask's value check survives compiling
        bad(*inputs, torch.tensor([[1.0, 1.0, -1e4, 1.0, 0.0, 1.0]]))
