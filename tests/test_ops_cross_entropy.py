"""The cross-entropy ops (minibert.ops.cross_entropy and linear_cross_entropy, csrc/cross_entropy_*) vs a
float64 NumPy reference written here from the formula, forward and backward, with ignored rows; gradcheck,
opcheck, fake kernels, bad input (labels out of range included), and the AVX2 / SSE2 builds of the CPU
kernel."""

import numpy as np
import pytest
import torch

from minibert import ops

pytestmark = pytest.mark.skipif(not ops.is_available(), reason="minibert._C not built (MINIBERT_NO_EXT=1?)")
A = torch.ops.minibert
IGNORE = -100


def reference(logits, labels, grad_loss, ignore_index=IGNORE):
    """float64 NumPy: per-row loss, lse and d logits of sum(loss * grad_loss)."""
    x = logits.detach().double().numpy()
    y = labels.numpy()
    g = grad_loss.detach().double().numpy()
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    kept = y != ignore_index
    rows = np.arange(len(y))
    loss = np.where(kept, lse - x[rows, np.where(kept, y, 0)], 0.0)
    d = np.exp(x - lse[:, None])
    d[rows[kept], y[kept]] -= 1.0
    d *= np.where(kept, g, 0.0)[:, None]
    return loss, lse, d


def inputs(rows, n_classes, dtype, ignored=0.5, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(rows, n_classes, generator=gen, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, n_classes, (rows,), generator=gen)
    labels[torch.rand(rows, generator=gen) < ignored] = IGNORE
    grad_loss = torch.rand(rows, generator=gen, dtype=torch.float64).to(dtype) + 0.5
    return logits, labels, grad_loss


@pytest.mark.parametrize("rows, n_classes", [(7, 1), (5, 3), (33, 37), (16, 8000), (3, 1025)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_numpy_reference(rows, n_classes, dtype, tol):
    logits, labels, grad_loss = inputs(rows, n_classes, dtype)
    want_loss, want_lse, want_d = reference(logits, labels, grad_loss)
    loss, lse = A.cross_entropy_forward(logits, labels, IGNORE)
    d = A.cross_entropy_backward(grad_loss, logits, labels, lse, IGNORE)
    assert lse.dtype == torch.float64  # on the CPU for every dtype (see csrc/cross_entropy_cpu.cpp)
    for name, got, want in (("loss", loss, want_loss), ("lse", lse, want_lse), ("d_logits", d, want_d)):
        assert got.dtype == (torch.float64 if name == "lse" else dtype), name
        got = got.double().numpy()
        assert np.isfinite(got).all(), name
        assert np.abs(got - want).max() < tol * max(1.0, np.abs(want).max()), (name, np.abs(got - want).max())
    ignored = (labels == IGNORE).numpy()
    assert (loss.numpy()[ignored] == 0).all() and (d.numpy()[ignored] == 0).all()


def test_python_api_matches_torch_and_differentiates():
    logits, labels, _ = inputs(24, 50, torch.float64, seed=1)
    logits = logits.reshape(4, 6, 50).requires_grad_()
    labels = labels.reshape(4, 6)
    got = ops.cross_entropy(logits, labels)
    want = torch.nn.functional.cross_entropy(logits.detach().reshape(-1, 50), labels.reshape(-1),
                                             reduction="none").reshape(4, 6)
    assert got.shape == (4, 6)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: ops.cross_entropy(x, labels), (logits,))


def test_large_logits_do_not_overflow():
    """exp is taken of x - max(row), so logits around 1e4 (where exp overflows) are fine. In float32 an
    ulp of lse ~ 1e4 is 1e-3, which exp(x - lse) turns into a relative error of that size in float32
    softmax, torch's as much as ours: the float32 kernel is held to at most twice torch's own error
    against float64 on the same rounded inputs (FlashAttention's rule)."""
    logits, labels, grad_loss = inputs(6, 40, torch.float64, ignored=0.0, seed=2)
    logits = logits + 1e4
    for dtype in (torch.float64, torch.float32):
        x = logits.to(dtype)
        want_loss, _, want_d = reference(x, labels, grad_loss)
        loss, lse = A.cross_entropy_forward(x, labels, IGNORE)
        d = A.cross_entropy_backward(grad_loss.to(dtype), x, labels, lse, IGNORE)
        xr = x.detach().clone().requires_grad_()
        torch_loss = torch.nn.functional.cross_entropy(xr, labels, reduction="none")
        (torch_d,) = torch.autograd.grad((torch_loss * grad_loss.to(dtype)).sum(), xr)
        for got, theirs, want in ((loss, torch_loss, want_loss), (d, torch_d, want_d)):
            err = np.abs(got.double().numpy() - want).max()
            torch_err = np.abs(theirs.detach().double().numpy() - want).max()
            assert np.isfinite(got.numpy()).all()
            assert err <= 2 * torch_err + 1e-12 * max(1.0, np.abs(want).max()), (dtype, err, torch_err)


def test_custom_ignore_index_and_minus_inf_logits():
    logits = torch.tensor([[0.0, -float("inf"), 1.0], [2.0, 0.5, -1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0, 7])
    loss, lse = A.cross_entropy_forward(logits, labels, 7)
    want = torch.nn.functional.cross_entropy(logits, labels, ignore_index=7, reduction="none")
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    assert lse[2].item() == pytest.approx(1.0 + np.log(3.0), abs=1e-12)
    d = A.cross_entropy_backward(torch.ones(3, dtype=torch.float64), logits, labels, lse, 7)
    assert d[0, 1].item() == 0.0 and torch.equal(d[2], torch.zeros(3, dtype=torch.float64))


def test_gradcheck_and_opcheck():
    logits, labels, grad_loss = inputs(6, 9, torch.float64, seed=3)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: A.cross_entropy_forward(x, labels, IGNORE)[0], (logits,))
    torch.library.opcheck(A.cross_entropy_forward.default, (logits, labels, IGNORE))
    x32 = logits.detach().float().requires_grad_()
    torch.library.opcheck(A.cross_entropy_forward.default, (x32, labels, IGNORE))
    _, lse = A.cross_entropy_forward(x32.detach(), labels, IGNORE)
    torch.library.opcheck(A.cross_entropy_backward.default, (grad_loss.float(), x32.detach(), labels, lse, IGNORE))


def test_double_backward_raises():
    logits, labels, _ = inputs(4, 5, torch.float64, ignored=0.0)
    logits.requires_grad_()
    (g,) = torch.autograd.grad(ops.cross_entropy(logits, labels).sum(), logits, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.pow(2).sum().backward()


def test_empty_rows_and_eager_fallback():
    loss = ops.cross_entropy(torch.randn(0, 5, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert loss.shape == (0,)
    logits, labels, _ = inputs(5, 7, torch.float64, seed=4)
    half = logits.to(torch.bfloat16)  # no CPU kernel for bfloat16: the eager form, computed in float32
    got = ops.cross_entropy(half, labels)
    assert got.dtype == torch.float32
    assert torch.equal(got, ops.eager.cross_entropy(half, labels))


@pytest.mark.parametrize("call, error, match", [
    (lambda x, y: ops.cross_entropy(x.numpy(), y), TypeError, "logits must be a torch.Tensor"),
    (lambda x, y: ops.cross_entropy(x.long(), y), TypeError, "floating-point"),
    (lambda x, y: ops.cross_entropy(x, y.float()), TypeError, "labels must hold integer"),
    (lambda x, y: ops.cross_entropy(x, y[:2]), ValueError, "labels must have shape"),
    (lambda x, y: ops.cross_entropy(x[:, :0], y), ValueError, "non-empty last dimension"),
    (lambda x, y: ops.cross_entropy(x, y, ignore_index=1.5), TypeError, "ignore_index"),
    (lambda x, y: ops.cross_entropy(x, y + 6), RuntimeError, "is not a class index in \\[0, 6\\)"),
    (lambda x, y: ops.cross_entropy(x, y - 50), RuntimeError, "nor ignore_index \\(-100\\)"),
    (lambda x, y: ops.linear_cross_entropy(x, x[:, :2], None, y), ValueError, "x must be \\[N, E\\]"),
    (lambda x, y: ops.linear_cross_entropy(x, x.double(), None, y), ValueError, "share dtype"),
    (lambda x, y: ops.linear_cross_entropy(x, x, x[0, :2], y), ValueError, "bias must be"),
    (lambda x, y: ops.linear_cross_entropy(x, x, None, y[:1]), ValueError, "labels must have shape"),
])
def test_bad_input_raises_clear_error(call, error, match):
    x, y = torch.randn(4, 6), torch.tensor([0, 5, -100, 2])
    with pytest.raises(error, match=match):
        call(x, y)


@pytest.mark.parametrize("call, match", [
    (lambda x, y: A.cross_entropy_forward(x[0], y, IGNORE), "logits must have shape"),
    (lambda x, y: A.cross_entropy_forward(x, y.int(), IGNORE), "labels must be an int64"),
    (lambda x, y: A.cross_entropy_forward(x, y[:2], IGNORE), "labels must have shape"),
    (lambda x, y: A.cross_entropy_forward(x.long(), y, IGNORE), "logits has dtype"),
    (lambda x, y: A.cross_entropy_backward(x[:, 0], x, y, x[:2, 0], IGNORE), "lse must be"),
    (lambda x, y: A.cross_entropy_backward(x[:, 0].double(), x, y, x[:, 0], IGNORE), "grad_loss must be"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_native_and_fake_kernels_refuse_bad_arguments(call, match, device):
    """The C++ checks, and the fake kernels (meta tensors) that must refuse the same calls."""
    x, y = torch.randn(4, 6, device=device), torch.tensor([0, 5, -100, 2], device=device)
    with pytest.raises(RuntimeError, match=match):
        call(x, y)


def test_cpu_kernel_refuses_half_and_fake_kernel_shapes():
    with pytest.raises(RuntimeError, match="logits has dtype"):
        A.cross_entropy_forward(torch.randn(3, 4).half(), torch.zeros(3, dtype=torch.long), IGNORE)
    loss, lse = A.cross_entropy_forward(torch.empty(5, 9, device="meta"), torch.empty(5, dtype=torch.long,
                                                                                      device="meta"), IGNORE)
    assert loss.shape == lse.shape == (5,) and loss.dtype == torch.float32


# --- linear_cross_entropy: the projection and the loss, backward only at the predicted rows -----------
def _linear_inputs(n, e, v, ignored, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, e, generator=gen, dtype=dtype, requires_grad=True)
    w = (0.5 * torch.randn(v, e, generator=gen, dtype=dtype)).requires_grad_()
    b = (0.5 * torch.randn(v, generator=gen, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < ignored] = IGNORE
    return x, w, b, labels


@pytest.mark.parametrize("ignored", [0.0, 0.85, 1.0])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_linear_cross_entropy_matches_eager(ignored, dtype, tol):
    x, w, b, labels = _linear_inputs(40, 16, 300, ignored, seed=5, dtype=dtype)
    leaves = (x, w, b)
    want_logits, want_loss = ops.eager.linear_cross_entropy(x, w, b, labels)
    want = torch.autograd.grad(want_loss.sum() / 7, leaves)
    got_logits, got_loss = ops.linear_cross_entropy(x, w, b, labels)
    got = torch.autograd.grad(got_loss.sum() / 7, leaves)
    assert torch.equal(got_logits, want_logits)  # the same F.linear
    torch.testing.assert_close(got_loss, want_loss, rtol=tol, atol=tol)
    for name, g, ref in zip(("dx", "dweight", "dbias"), got, want):
        assert (g - ref).abs().max() < tol * max(1.0, ref.abs().max().item()), name
    if ignored == 1.0:  # no predicted row: every gradient is exactly zero
        assert all(torch.equal(g, torch.zeros_like(g)) for g in got)


@pytest.mark.parametrize("ignored", [0.0, 0.5])  # 0.0: every row predicted, the path without row copies
def test_linear_cross_entropy_gradcheck_with_and_without_logits_gradient(ignored):
    x, w, b, labels = _linear_inputs(7, 4, 6, ignored, seed=6)
    assert ignored > 0 or bool((labels != IGNORE).all())
    assert torch.autograd.gradcheck(lambda *t: ops.linear_cross_entropy(*t, labels)[1], (x, w, b))
    # a loss on the logits too: their gradient is added to the cross-entropy's, and all rows take part
    assert torch.autograd.gradcheck(lambda *t: [o.sin().sum() for o in ops.linear_cross_entropy(*t, labels)],
                                    (x, w, b))
    assert torch.autograd.gradcheck(lambda x_, w_: ops.linear_cross_entropy(x_, w_, None, labels)[1], (x, w))


def test_linear_cross_entropy_eager_fallback_for_bfloat16():
    """No CPU kernel for bfloat16: the same autograd function runs the cross-entropy in torch ops (float32)."""
    x, w, b, labels = _linear_inputs(12, 8, 40, 0.5, seed=8)
    got = ops.linear_cross_entropy(*(t.detach().bfloat16().requires_grad_() for t in (x, w, b)), labels)
    want_logits, want_loss = ops.eager.linear_cross_entropy(x, w, b, labels)
    assert got[1].dtype == torch.float32
    assert (got[0].double() - want_logits).abs().max() < 5e-2 * want_logits.abs().max()
    assert (got[1].double() - want_loss).abs().max() < 5e-2 * want_loss.abs().max()


_WIDTH_CHECK = """
import numpy as np, torch
from minibert import ops
gen = torch.Generator().manual_seed(0)
A = torch.ops.minibert
for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
    for n in (1, 37, 8000):  # vector remainders and a BERT vocabulary row
        x = 3 * torch.randn(5, n, generator=gen, dtype=torch.float64)
        y = torch.randint(0, n, (5,), generator=gen)
        y[1] = -100
        g = torch.rand(5, generator=gen, dtype=torch.float64)
        xr = x.clone().requires_grad_()
        want = torch.nn.functional.cross_entropy(xr, y, reduction="none")
        want_d, = torch.autograd.grad((want * g).sum(), xr)
        loss, lse = A.cross_entropy_forward(x.to(dtype), y, -100)
        d = A.cross_entropy_backward(g.to(dtype), x.to(dtype), y, lse, -100)
        for got, ref in ((loss, want), (d, want_d)):
            err = (got.double() - ref.detach()).abs().max().item()
            assert err < tol * max(1.0, ref.abs().max().item()), (dtype, n, err)
print("ok")
"""


@pytest.mark.slow  # a subprocess per width: a few seconds each, mostly importing torch
@pytest.mark.parametrize("vector_bytes", ["64", "32", "16"])
def test_every_vector_width_build(vector_bytes, run_at_vector_width):
    """The CPU kernel is compiled for AVX-512, AVX2+FMA and SSE2; MINIBERT_CPU_VECTOR_BYTES picks the
    narrower builds (read once per process, so each runs in a subprocess)."""
    run_at_vector_width(_WIDTH_CHECK, vector_bytes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_cuda_matches_float64_reference(dtype, tol):
    logits, labels, grad_loss = inputs(65, 8000, torch.float64, seed=7)
    x = logits.to(dtype)
    want_loss, _, want_d = reference(x, labels, grad_loss)
    loss, lse = A.cross_entropy_forward(x.cuda(), labels.cuda(), IGNORE)
    d = A.cross_entropy_backward(grad_loss.float().cuda(), x.cuda(), labels.cuda(), lse, IGNORE)
    assert loss.dtype == lse.dtype == torch.float32 and d.dtype == dtype
    assert np.abs(loss.double().cpu().numpy() - want_loss).max() < tol * max(1.0, np.abs(want_loss).max())
    assert np.abs(d.double().cpu().numpy() - want_d).max() < tol
