"""The residual + dropout + LayerNorm op (minibert.ops.residual_dropout_layernorm, csrc/layernorm_*) vs the
float64 NumPy reference (minibert.reference.layers: dropout, then add, then LayerNorm), forward and
backward, with and without a residual and dropout; gradcheck, opcheck, fake kernels, bad input, and the
AVX2 / SSE2 builds of the CPU kernel."""

import numpy as np
import pytest
import torch

from minibert import ops
from minibert.reference import layers

pytestmark = pytest.mark.skipif(not ops.is_available(), reason="minibert._C not built (MINIBERT_NO_EXT=1?)")
A = torch.ops.minibert
EPS = 1e-12  # BERT's layer_norm_eps


def reference(x, residual, weight, bias, dy, eps, p, seed, offset):
    """float64 NumPy: y and the gradients (dx, dresidual, dweight, dbias) of sum(y * dy)."""
    x, weight, bias, dy = (t.detach().double().numpy() for t in (x, weight, bias, dy))
    dropped, drop_cache = layers.dropout_forward(x, p, seed, offset)
    h = dropped if residual is None else dropped + residual.detach().double().numpy()
    y, ln_cache = layers.layernorm_forward(h, weight, bias, eps)
    dh, dweight, dbias = layers.layernorm_backward(dy, ln_cache)
    return y, layers.dropout_backward(dh, drop_cache), dh, dweight, dbias


def fused(x, residual, weight, bias, dy, eps, p, seed, offset):
    """The op through autograd: y and the gradients of sum(y * dy) (dresidual None without a residual)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, residual, weight, bias)]
    y = ops.residual_dropout_layernorm(*leaves, eps=eps, p=p, seed=seed, offset=offset)
    y.backward(dy)
    return (y,) + tuple(None if t is None else t.grad for t in leaves)


def inputs(shape, dtype, with_residual=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(shape, generator=gen, dtype=torch.float64) + 0.5
    residual = torch.randn(shape, generator=gen, dtype=torch.float64) if with_residual else None
    weight = 1 + 0.3 * torch.randn(shape[-1], generator=gen, dtype=torch.float64)
    bias = 0.3 * torch.randn(shape[-1], generator=gen, dtype=torch.float64)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    to = (lambda t: None if t is None else t.to(dtype))
    return to(x), to(residual), to(weight), to(bias), to(dy)


@pytest.mark.parametrize("shape", [(3, 5, 37), (64, 96), (2, 1), (1, 769)])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "no_residual"])
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_numpy_reference(shape, with_residual, p, dtype, tol):
    x, residual, weight, bias, dy = inputs(shape, dtype, with_residual)
    want = reference(x, residual, weight, bias, dy, EPS, p, 7, 1 << 40)
    y, dx, dres, dw, db = fused(x, residual, weight, bias, dy, EPS, p, 7, 1 << 40)
    got = (y, dx, dres, dw, db)
    for name, g, w in zip(("y", "dx", "dresidual", "dweight", "dbias"), got, want):
        if name == "dresidual" and residual is None:
            assert g is None
            continue
        assert g.dtype == dtype, name
        g = g.detach().double().numpy()
        assert np.isfinite(g).all(), name
        scale = max(1.0, np.abs(w).max())
        assert np.abs(g - w).max() < tol * scale, (name, np.abs(g - w).max())
    if p > 0:  # the mask is the dropout op's: dx is 0 exactly where ops.dropout drops x
        dropped = ops.dropout(torch.ones(shape, dtype=dtype), p, 7, 1 << 40) == 0
        assert dropped.any() or dropped.numel() < 10
        assert torch.equal(dx[dropped], torch.zeros_like(dx[dropped]))


def test_saved_statistics_are_mean_and_rstd():
    x, residual, weight, bias, _ = inputs((6, 40), torch.float64)
    y, mean, rstd = A.residual_dropout_layernorm_forward(x, residual, weight, bias, 1e-5, 0.0, 0, 0)
    h = x + residual
    torch.testing.assert_close(mean, h.mean(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rstd, (h.var(-1, unbiased=False) + 1e-5).rsqrt(), rtol=1e-12, atol=1e-12)
    assert mean.dtype == rstd.dtype == torch.float64 and mean.shape == (6,)


def test_matches_torch_layer_norm_in_float32():
    x, residual, weight, bias, _ = inputs((50, 768), torch.float32)
    want = torch.nn.functional.layer_norm(x + residual, (768,), weight, bias, 1e-12)
    got = ops.residual_dropout_layernorm(x, residual, weight, bias, 1e-12)
    assert (got - want).abs().max() < 1e-5


def test_constant_row_gives_bias_and_finite_gradients():
    """A row with no spread (var = 0) normalises to 0 (output = bias), as torch does with eps > 0."""
    x = torch.full((2, 16), 3.0, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.rand(16, dtype=torch.float64) + 0.5, torch.randn(16, dtype=torch.float64)
    y = ops.residual_dropout_layernorm(x, None, weight, bias, 1e-5)
    torch.testing.assert_close(y, bias.expand(2, 16), rtol=0, atol=1e-12)
    y.backward(torch.randn_like(y))
    assert torch.isfinite(x.grad).all()


def test_gradcheck_float64():
    for with_residual in (True, False):
        x, residual, weight, bias, _ = inputs((3, 7), torch.float64, with_residual, seed=3)
        leaves = [t.requires_grad_() for t in (x, residual, weight, bias) if t is not None]

        def f(*ts):
            x_, *rest = ts
            r_ = rest.pop(0) if with_residual else None
            return ops.residual_dropout_layernorm(x_, r_, rest[0], rest[1], 1e-5, 0.25, 9, 4)
        assert torch.autograd.gradcheck(f, leaves)


def test_opcheck():
    x, residual, weight, bias, dy = inputs((5, 12), torch.float32)
    for t in (x, residual, weight, bias):
        t.requires_grad_()
    torch.library.opcheck(A.residual_dropout_layernorm_forward.default, (x, residual, weight, bias, 1e-5, 0.2, 3, 1))
    torch.library.opcheck(A.residual_dropout_layernorm_forward.default, (x, None, weight, bias, 1e-5, 0.0, 0, 0))
    _, mean, rstd = A.residual_dropout_layernorm_forward(x, residual, weight, bias, 1e-5, 0.2, 3, 1)
    torch.library.opcheck(A.residual_dropout_layernorm_backward.default,
                          (dy, x.detach(), residual.detach(), weight.detach(), mean.detach(), rstd.detach(), 0.2, 3, 1))
    _, mean, rstd = A.residual_dropout_layernorm_forward(x, None, weight, bias, 1e-5, 0.0, 0, 0)
    torch.library.opcheck(A.residual_dropout_layernorm_backward.default,
                          (dy, x.detach(), None, weight.detach(), mean.detach(), rstd.detach(), 0.0, 0, 0))


def test_backward_without_dropout_returns_no_separate_grad_x():
    """Without dropout the gradient of x equals that of the sum: the op returns an empty d_x instead of a
    copy, and autograd hands d_sum to both x and the residual."""
    x, residual, weight, bias, dy = inputs((4, 10), torch.float64)
    _, mean, rstd = A.residual_dropout_layernorm_forward(x, residual, weight, bias, 1e-5, 0.0, 0, 0)
    d_sum, d_x, _, _ = A.residual_dropout_layernorm_backward(dy, x, residual, weight, mean, rstd, 0.0, 0, 0)
    assert d_x.shape == (0,) and d_sum.shape == x.shape
    _, d_x, _, _ = A.residual_dropout_layernorm_backward(dy, x, residual, weight, mean, rstd, 0.1, 0, 0)
    assert d_x.shape == x.shape


def test_empty_rows():
    x = torch.randn(0, 8, requires_grad=True)
    weight, bias = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    y = ops.residual_dropout_layernorm(x, torch.randn(0, 8), weight, bias, 1e-5, 0.1, 1, 0)
    assert y.shape == (0, 8)
    y.sum().backward()
    assert torch.equal(weight.grad, torch.zeros(8)) and torch.equal(bias.grad, torch.zeros(8))


def test_double_backward_raises():
    x, residual, weight, bias, _ = inputs((2, 5), torch.float64)
    x.requires_grad_()
    y = ops.residual_dropout_layernorm(x, residual, weight, bias, 1e-5)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_eager_fallback_for_unsupported_dtype_matches():
    x, residual, weight, bias, _ = inputs((4, 9), torch.float64)
    args = (1e-5, 0.3, 2, 5)
    half = [t.to(torch.bfloat16) for t in (x, residual, weight, bias)]  # no CPU kernel for bf16: eager
    got = ops.residual_dropout_layernorm(*half, *args)
    want = ops.eager.residual_dropout_layernorm(*half, *args)
    assert torch.equal(got, want)


@pytest.mark.parametrize("call, match", [
    (lambda x, w: ops.residual_dropout_layernorm(x.numpy(), None, w, w), "x must be a torch.Tensor"),
    (lambda x, w: ops.residual_dropout_layernorm(x, x[:, :3], w, w), "residual must have the shape"),
    (lambda x, w: ops.residual_dropout_layernorm(x, None, w[:3], w), "weight must be 1-D"),
    (lambda x, w: ops.residual_dropout_layernorm(x, None, w, w.double()), "x and bias must share dtype"),
    (lambda x, w: ops.residual_dropout_layernorm(x, x.double(), w, w), "x and residual must share dtype"),
    (lambda x, w: ops.residual_dropout_layernorm(x, None, w, w, eps=-1.0), "eps"),
    (lambda x, w: ops.residual_dropout_layernorm(x, None, w, w, eps=float("nan")), "eps"),
    (lambda x, w: ops.residual_dropout_layernorm(x, None, w, w, p=1.0), "p \\(the dropout probability\\)"),
    (lambda x, w: ops.residual_dropout_layernorm(x, None, w, w, p=0.1, seed=1.5), "seed must be an integer"),
    (lambda x, w: ops.residual_dropout_layernorm(x[:, :0], None, w[:0], w[:0]), "non-empty last dimension"),
    (lambda x, w: ops.residual_dropout_layernorm(x.long(), None, w, w), "floating-point"),
])
def test_bad_input_raises_clear_error(call, match):
    x, w = torch.randn(3, 6), torch.randn(6)
    with pytest.raises((TypeError, ValueError), match=match):
        call(x, w)


@pytest.mark.parametrize("call, match", [
    (lambda x, w: A.residual_dropout_layernorm_forward(x, None, w[:3], w[:3], 1e-5, 0.0, 0, 0), "weight and bias"),
    (lambda x, w: A.residual_dropout_layernorm_forward(x, x[:1], w, w, 1e-5, 0.0, 0, 0), "residual"),
    (lambda x, w: A.residual_dropout_layernorm_forward(x, None, w, w, -1.0, 0.0, 0, 0), "eps"),
    (lambda x, w: A.residual_dropout_layernorm_forward(x, None, w, w, 1e-5, 1.0, 0, 0), "p \\(the dropout"),
    (lambda x, w: A.residual_dropout_layernorm_backward(x, x, None, w, x[:, 0], x[:, :1], 0.0, 0, 0), "rstd"),
    (lambda x, w: A.residual_dropout_layernorm_backward(x, x, None, w, x[:, 0].double(), x[:, 0], 0.0, 0, 0),
     "mean"),
    (lambda x, w: A.residual_dropout_layernorm_backward(x[:2], x, None, w, x[:, 0], x[:, 0], 0.0, 0, 0), "grad"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_native_and_fake_kernels_refuse_bad_arguments(call, match, device):
    """The C++ checks, and the fake kernels (meta tensors) that must refuse the same calls."""
    x, w = torch.randn(3, 6, device=device), torch.randn(6, device=device)
    with pytest.raises(RuntimeError, match=match):
        call(x, w)


def test_cpu_kernel_refuses_half():
    x, w = torch.randn(3, 6).half(), torch.randn(6).half()
    with pytest.raises(RuntimeError, match="x has dtype"):
        A.residual_dropout_layernorm_forward(x, None, w, w, 1e-5, 0.0, 0, 0)


def test_fake_kernel_shapes():
    x = torch.empty(2, 3, 8, device="meta")
    w = torch.empty(8, device="meta")
    y, mean, rstd = A.residual_dropout_layernorm_forward(x, x, w, w, 1e-5, 0.1, 0, 0)
    assert y.shape == x.shape and mean.shape == rstd.shape == (2, 3) and mean.dtype == torch.float32


_WIDTH_CHECK = """
import numpy as np, torch
from minibert import ops
from minibert.reference import layers
gen = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
    for n in (1, 37, 768):  # vector remainders and a full BERT row
        x = torch.randn(5, n, generator=gen, dtype=torch.float64)
        r = torch.randn(5, n, generator=gen, dtype=torch.float64)
        w, b = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
        dy = torch.randn(5, n, generator=gen, dtype=torch.float64)
        d, dc = layers.dropout_forward(x.numpy(), 0.2, 3, 11)
        want, cache = layers.layernorm_forward(d + r.numpy(), w.numpy(), b.numpy(), 1e-12)
        dh, dw, db = layers.layernorm_backward(dy.numpy(), cache)
        leaves = [t.to(dtype).requires_grad_() for t in (x, r, w, b)]
        y = ops.residual_dropout_layernorm(*leaves, 1e-12, 0.2, 3, 11)
        y.backward(dy.to(dtype))
        for got, ref in zip([y] + [t.grad for t in leaves], (want, layers.dropout_backward(dh, dc), dh, dw, db)):
            err = np.abs(got.detach().double().numpy() - ref).max()
            assert err < tol * max(1.0, np.abs(ref).max()), (dtype, n, err)
print("ok")
"""


@pytest.mark.slow  # a subprocess per width: a few seconds each, mostly importing torch
@pytest.mark.parametrize("vector_bytes", ["64", "32", "16"])
def test_every_vector_width_build(vector_bytes, run_at_vector_width):
    """The CPU kernel is compiled for AVX-512, AVX2+FMA and SSE2; MINIBERT_CPU_VECTOR_BYTES picks the
    narrower builds (read once per process, so each runs in a subprocess). On a CPU without AVX-512 the
    "64" case runs the widest build the CPU has."""
    run_at_vector_width(_WIDTH_CHECK, vector_bytes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_cuda_matches_cpu_float64(dtype, tol, with_residual):
    x, residual, weight, bias, dy = inputs((33, 768), torch.float64, with_residual)
    want = fused(x, residual, weight, bias, dy, 1e-12, 0.1, 5, 3)
    to = (lambda t: None if t is None else t.to("cuda", dtype))
    got = fused(to(x), to(residual), to(weight), to(bias), to(dy), 1e-12, 0.1, 5, 3)
    for g, w in zip(got, want):
        if w is None:
            continue
        assert g.dtype == dtype
        assert (g.double().cpu() - w).abs().max() < tol * max(1.0, w.abs().max().item())
