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


# ---------------------------------------------------------------------------------------------- float32 precision
# The float32 kernels approximate erf/tanh (csrc/math_cpu.h). Their error against float64 is measured on a
# dense sweep plus the extremes and compared with torch's own float32 GELU on the same points: ours must
# be no worse in absolute error, and far better in relative error (torch's 1 + erf(x / sqrt 2) cancels
# for negative x: its float32 GELU is -0.0 below x = -5.9, a relative error of 1).

_SQRT_2_OVER_PI = (2 / np.pi) ** 0.5


def _gelu_exact(x, approximate):
    """float64 GELU and its derivative, written without cancellation: x Phi(x) with Phi = erfc(-x / sqrt 2) / 2
    and x sigmoid(2u) for the tanh form (the two forms of csrc/math_cpu.h, in float64)."""
    if approximate == "none":
        cdf = 0.5 * torch.special.erfc(-x / 2 ** 0.5)
        return x * cdf, cdf + x * torch.exp(-0.5 * x * x) / (2 * np.pi) ** 0.5
    u = _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)
    s, one_minus = 1 / (1 + torch.exp(-2 * u)), 1 / (1 + torch.exp(2 * u))
    return x * s, s + x * 2 * s * one_minus * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)


def _errors(fn, x, approximate):
    """(max abs error, max rel error) of the forward and of the backward, against float64."""
    want_y, want_g = _gelu_exact(x.double(), approximate)
    xg = x.clone().requires_grad_()
    y = fn(xg)
    (g,) = torch.autograd.grad(y, xg, torch.ones_like(y))
    out = []
    for got, want in ((y, want_y), (g, want_g)):
        err = (got.detach().double() - want).abs()
        assert not torch.isnan(err).any()  # every point here has a finite float64 answer
        normal = want.abs() > 1e-37  # float32 normal range; below it absolute error is what counts
        out += [err.max().item(), (err[normal] / want[normal].abs()).max().item()]
    return out


@pytest.mark.parametrize("approximate", FORMS)
def test_float32_precision_no_worse_than_torch(approximate):
    x = torch.cat([torch.linspace(-10, 10, 2_000_001), torch.tensor([-13.0, -13.2, -20.0, -1e3, 13.2, 20.0, 1e3,
                                                                       1e-20, -1e-20, 1e-40, 0.0, -0.0])])
    ours = _errors(lambda t: ops.gelu(t, approximate), x, approximate)
    theirs = _errors(lambda t: F.gelu(t, approximate=approximate), x, approximate)
    fwd_abs, fwd_rel, bwd_abs, bwd_rel = ours
    assert fwd_abs <= theirs[0] and bwd_abs <= 1.01 * theirs[2], (ours, theirs)
    assert fwd_rel <= theirs[1] and bwd_rel <= theirs[3], (ours, theirs)
    # and in absolute terms: a few float32 ulp of the value forward, where torch loses everything
    assert fwd_abs < 6e-7 and fwd_rel < 2e-5 and theirs[1] > 0.5


def test_float32_extremes_and_special_values():
    """+-inf, NaN and huge inputs give what float64 gives, and +-inf the limits of x Phi(x): inf and 0."""
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 3e38, -3e38, -13.3, -50.0])
    for approximate in FORMS:
        want = ops.gelu(x.double(), approximate)
        got = ops.gelu(x, approximate)
        assert torch.equal(torch.isnan(got), torch.isnan(want)), approximate
        finite = ~torch.isnan(want)
        torch.testing.assert_close(got[finite].double(), want[finite], rtol=1e-6, atol=1e-37)
    for dtype in (torch.float32, torch.float64):
        for approximate in FORMS:
            got = ops.gelu(torch.tensor([float("inf"), -float("inf")], dtype=dtype), approximate).tolist()
            assert got == [float("inf"), 0.0], (dtype, approximate, got)


_WIDTH_CHECK = """
import numpy as np, torch
from minibert import ops
from minibert.reference import layers
gen = torch.Generator().manual_seed(0)
for approximate in ("none", "tanh"):
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-6)):
        for n in (1, 37, 3072):
            x = 4 * torch.randn(6, n, generator=gen, dtype=torch.float64)
            b, dy = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(6, n, generator=gen, dtype=torch.float64)
            want, cache = layers.bias_gelu_forward(x.numpy(), b.numpy(), approximate)
            dx, db = layers.bias_gelu_backward(dy.numpy(), cache)
            xt, bt = x.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
            y = ops.bias_gelu(xt, bt, approximate)
            y.backward(dy.to(dtype))
            for got, ref in ((y, want), (xt.grad, dx), (bt.grad, db)):
                err = np.abs(got.detach().double().numpy() - ref).max()
                assert err < tol * max(1.0, np.abs(ref).max()), (approximate, dtype, n, err)
print("ok")
"""


@pytest.mark.slow  # a subprocess per width: a few seconds each, mostly importing torch
@pytest.mark.parametrize("vector_bytes", ["64", "32", "16"])
def test_every_vector_width_build(vector_bytes, run_at_vector_width):
    """The CPU kernels are compiled for AVX-512, AVX2+FMA and SSE2 (csrc/math_cpu.h run_widest_vectors);
    MINIBERT_CPU_VECTOR_BYTES picks the narrower builds, read once per process: one subprocess each."""
    run_at_vector_width(_WIDTH_CHECK, vector_bytes)


def test_float32_constants_are_what_the_fit_script_gives():
    """csrc/fits/gelu_float32.py reproduces the polynomial coefficients of csrc/math_cpu.h, and its fits meet
    the accuracy the header's comments claim (so a reader can rerun where the numbers come from)."""
    import importlib.util
    import re
    from pathlib import Path

    csrc = Path(__file__).resolve().parent.parent / "csrc"
    spec = importlib.util.spec_from_file_location("gelu_float32_fit", csrc / "fits" / "gelu_float32.py")
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    header = (csrc / "math_cpu.h").read_text()

    def constants(function, pattern):
        body = header[header.index(f"MB_INLINE float {function}("):]
        body = body[:body.index("\n}\n")]
        return np.array([float(v) * (-1 if sign == "-" else 1) for sign, v in re.findall(pattern, body)])

    number = r"([+-]?)\s*(?:h \* )?(\d\.\d+e[+-]\d+)f"
    tail = constants("normal_tail_approx", r"(?:p = (?:p \* t )?|= h \* )" + number)
    exp2 = constants("exp2_nonpositive_or_zero", r"q = (?:q \* f \+ )?" + number)
    tail_fit, tail_err = fit.fit_tail()
    exp2_fit, exp2_err = fit.fit_exp2()
    np.testing.assert_allclose(tail, tail_fit, rtol=1e-5)
    np.testing.assert_allclose(exp2, exp2_fit, rtol=1e-5)
    assert tail_err["max_abs_of_tail"] < 6e-8 and tail_err["max_rel"] < 3e-6
    assert exp2_err["max_rel"] < 9.5e-8
