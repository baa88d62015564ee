"""GELU and bias + GELU ops (minibert.ops.gelu / bias_gelu, csrc/gelu_*) vs the float64 NumPy reference
and torch eager, forward and backward (bias gradient reduced in the kernel), erf and tanh forms."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minibert import ops
from minibert.reference import layers

pytestmark = pytest.mark.skipif(not ops.is_available(), reason="minibert._C not built (MINIBERT_NO_EXT=1?)")
FORMS = ["none", "tanh"]
SHAPES = [(3, 5, 37), (1000, 64), (7, 1), (2, 3, 4, 129)]


def as_np(t):
    return t.detach().double().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)


def rel_err(a, ref):
    """||a - ref|| / ||ref|| after checking a is finite (NaN never passes)."""
    a, ref = as_np(a), as_np(ref)
    assert np.isfinite(a).all()
    return np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-300)


def bias_gelu_both(x, bias, dy, approximate):
    """Fused forward + backward through autograd: (y, dx, dbias)."""
    x, bias = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    y = ops.bias_gelu(x, bias, approximate)
    y.backward(dy)
    return y, x.grad, bias.grad


@pytest.mark.parametrize("approximate", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_bias_gelu_matches_reference(approximate, shape, dtype, tol):
    x = 3 * torch.randn(shape, dtype=torch.float64)  # wide range: both tails of erf/tanh
    bias, dy = torch.randn(shape[-1], dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    y_ref, cache = layers.bias_gelu_forward(x.numpy(), bias.numpy(), approximate)
    dx_ref, db_ref = layers.bias_gelu_backward(dy.numpy(), cache)
    y, dx, db = bias_gelu_both(x.to(dtype), bias.to(dtype), dy.to(dtype), approximate)
    assert y.dtype == dx.dtype == db.dtype == dtype
    for name, got, ref in (("y", y, y_ref), ("dx", dx, dx_ref), ("dbias", db, db_ref)):
        assert rel_err(got, ref) < tol, name
        assert np.abs(as_np(got) - ref).max() < 10 * tol * max(1.0, np.abs(ref).max()), name


@pytest.mark.parametrize("approximate", FORMS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_gelu_matches_reference_and_torch(approximate, dtype, tol):
    x = 3 * torch.randn(4, 33, 17, dtype=torch.float64)
    dy = torch.randn_like(x)
    y_ref, cache = layers.gelu_forward(x.numpy(), approximate)
    dx_ref = layers.gelu_backward(dy.numpy(), cache)
    xt = x.to(dtype).requires_grad_()
    y = ops.gelu(xt, approximate)
    y.backward(dy.to(dtype))
    assert rel_err(y, y_ref) < tol and rel_err(xt.grad, dx_ref) < tol
    xe = x.to(dtype).requires_grad_()
    ye = F.gelu(xe, approximate=approximate)
    ye.backward(dy.to(dtype))
    assert rel_err(y, ye) < 2 * tol and rel_err(xt.grad, xe.grad) < 2 * tol


def test_gradcheck_float64():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    for approximate in FORMS:
        assert torch.autograd.gradcheck(lambda x, b: ops.bias_gelu(x, b, approximate), (x, b))
        assert torch.autograd.gradcheck(lambda x: ops.gelu(x, approximate), (x,))


def test_opcheck():
    x = torch.randn(6, 10, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    torch.library.opcheck(torch.ops.minibert.bias_gelu_forward.default, (x, b, "none"))
    torch.library.opcheck(torch.ops.minibert.gelu_forward.default, (x, "tanh"))
    torch.library.opcheck(torch.ops.minibert.bias_gelu_backward.default,
                          (torch.randn(6, 10), x.detach(), b.detach(), "tanh"))


def test_non_contiguous_input():
    x = torch.randn(16, 8, dtype=torch.float64).t()  # [8, 16] view
    b = torch.randn(16, dtype=torch.float64)
    assert rel_err(ops.bias_gelu(x, b), F.gelu(x + b)) < 1e-12


@pytest.mark.parametrize("call, match", [
    (lambda x, b: ops.bias_gelu(x, b[:-1]), "last dimension"),
    (lambda x, b: ops.bias_gelu(x, b.float()), "dtype"),
    (lambda x, b: ops.gelu(x, "erf"), "approximate"),
    (lambda x, b: ops.gelu(x.long()), "floating-point"),
    (lambda x, b: ops.bias_gelu(x, b[None]), "1-D"),
])
def test_bad_input_raises_clear_error(call, match):
    x, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        call(x, b)


def test_native_checks():
    x, b = torch.randn(3, 4), torch.randn(4)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.minibert.bias_gelu_forward(x, b[:3], "none")
    with pytest.raises(RuntimeError, match="approximate"):
        torch.ops.minibert.gelu_forward(x, "sigmoid")
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.minibert.gelu_forward(x.half(), "none")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("approximate", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_bias_gelu(approximate, dtype):
    x, dy = 3 * torch.randn(300, 97, dtype=torch.float64), torch.randn(300, 97, dtype=torch.float64)
    bias = torch.randn(97, dtype=torch.float64)
    y_ref, cache = layers.bias_gelu_forward(x.numpy(), bias.numpy(), approximate)
    dx_ref, db_ref = layers.bias_gelu_backward(dy.numpy(), cache)
    got = bias_gelu_both(*(t.to("cuda", dtype) for t in (x, bias, dy)), approximate)
    xe, be = (t.to("cuda", dtype).requires_grad_() for t in (x, bias))
    F.gelu(xe + be, approximate=approximate).backward(dy.to("cuda", dtype))
    for g, e, r in zip(got, (F.gelu(xe + be, approximate=approximate), xe.grad, be.grad), (y_ref, dx_ref, db_ref)):
        tol = 1e-5 if dtype == torch.float32 else 2 * rel_err(e, r) + 1e-3
        assert rel_err(g, r) < tol
