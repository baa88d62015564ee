"""The fused attention op (minibert.ops.attention, csrc/attention_*) against the float64 NumPy reference.

Forward and backward, with random key padding (including a batch whose keys are all padding), dropout on
and off (same seed/offset => same mask as NumPy), sequence lengths that are not multiples of the kernel
tiles, head sizes 16..128, gradcheck, opcheck, the saved log-sum-exp, and bad input. CUDA variants run
where a GPU exists (fp16/bf16 held to the FlashAttention rule: error at most ~2x torch's own).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from minibert import ops
from minibert.reference import layers

pytestmark = pytest.mark.skipif(not ops.is_available(), reason="minibert._C not built (MINIBERT_NO_EXT=1?)")

# (B, H, S_q, S_k, D): S not a multiple of the CPU tile (64) or CUDA tiles (16 rows / 32 keys).
SHAPES = [(2, 3, 37, 45, 32), (1, 2, 64, 64, 64), (2, 2, 70, 130, 128), (1, 1, 1, 1, 16),
          (2, 2, 65, 33, 48), (1, 3, 129, 200, 64)]


def as_np(t):
    """float64 NumPy copy of a tensor (any device/dtype) or array."""
    if isinstance(t, torch.Tensor):
        return t.detach().double().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def rel_err(a, ref):
    """||a - ref|| / ||ref||, after checking a is finite. The denominator is floored at 1 so a gradient that
    is exactly zero in theory (one key: softmax is constant) compares by absolute error instead."""
    a, ref = as_np(a), as_np(ref)
    assert np.isfinite(a).all(), "non-finite values (NaN never passes)"
    return np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1.0)


def make_inputs(shape, dtype=torch.float64, device="cpu", padding=True):
    """Fresh random q, k, v, dout and a [B, S_k] 0/1 mask: random padding, batch 0's keys all padding."""
    B, H, Sq, Sk, D = shape
    q = torch.randn(B, H, Sq, D, dtype=torch.float64)
    k = torch.randn(B, H, Sk, D, dtype=torch.float64)
    v = torch.randn(B, H, Sk, D, dtype=torch.float64)
    dout = torch.randn(B, H, Sq, D, dtype=torch.float64)
    mask = None
    if padding:
        mask = (torch.rand(B, Sk) > 0.3).to(torch.int64)
        mask[:, 0] = 1
        if B > 1:
            mask[0] = 0  # a whole sequence of padding: its rows must come out zero, never NaN
    to = dict(dtype=dtype, device=device)
    return (q.to(**to), k.to(**to), v.to(**to), dout.to(**to),
            None if mask is None else mask.to(device))


def reference(q, k, v, dout, mask, dropout_p, seed, offset):
    out, cache = layers.attention_forward(as_np(q), as_np(k), as_np(v), None if mask is None else as_np(mask),
                                          None, dropout_p, seed, offset)
    return (out, *layers.attention_backward(as_np(dout), cache))


def fused(q, k, v, dout, mask, dropout_p, seed, offset):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = ops.attention(q, k, v, attention_mask=mask, dropout_p=dropout_p, seed=seed, offset=offset)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_float64_matches_numpy_reference(shape, dropout_p):
    seed, offset = int(np.random.randint(0, 2**62)), int(np.random.randint(0, 2**40))
    inputs = make_inputs(shape)
    ref = reference(*inputs, dropout_p, seed, offset)
    got = fused(*inputs, dropout_p, seed, offset)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert rel_err(g, r) < 1e-10, name
        assert np.abs(as_np(g) - r).max() < 1e-10, name


@pytest.mark.parametrize("shape", SHAPES[:3] + SHAPES[4:])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_float32_matches_reference_and_torch_eager(shape, dropout_p):
    seed, offset = 1234, 99
    inputs = make_inputs(shape, dtype=torch.float32)
    ref = reference(*inputs, dropout_p, seed, offset)
    got = fused(*inputs, dropout_p, seed, offset)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert rel_err(g, r) < 1e-5, name
        assert np.abs(as_np(g) - r).max() < 1e-4, name
    # torch eager (matmul, softmax, matmul) with the same hash-dropout mask, through torch autograd
    q, k, v, dout, mask = inputs
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    eager = ops.eager.attention(q, k, v, None if mask is None else ops.eager.AttentionMask(mask),
                                shape[-1] ** -0.5, dropout_p, seed, offset)
    eager.backward(dout)
    for name, g, e in zip(("out", "dq", "dk", "dv"), got, (eager, q.grad, k.grad, v.grad)):
        assert rel_err(g, e) < 2e-5, name


def test_rows_with_all_padding_are_zero_with_zero_grads():
    q, k, v, dout, mask = make_inputs((3, 2, 20, 70, 32))
    mask[1] = 0
    out, dq, dk, dv = fused(q, k, v, dout, mask, 0.2, 5, 0)
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()
    for b in (0, 1):
        assert out[b].abs().max() == 0 and dq[b].abs().max() == 0 and dk[b].abs().max() == 0
    assert out[2].abs().max() > 0
    # padding keys of a live sequence get no gradient either
    pad = mask[2] == 0
    assert dk[2][:, pad].abs().max() == 0 and dv[2][:, pad].abs().max() == 0


def test_log_sum_exp_and_its_gradient():
    """lse is returned by the raw op; a gradient flowing into it is folded into D = rowsum(dO O) - g."""
    q, k, v, dout, _ = make_inputs((2, 2, 33, 50, 16), padding=False)
    mask = torch.rand(2, 50) > 0.4
    mask[:, :3] = True
    scale = 0.3
    q1, k1, v1 = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = torch.ops.minibert.attention_forward(q1, k1, v1, mask, scale, 0.0, 0, 0)
    g_lse = torch.randn_like(lse)
    ((out * dout).sum() + (lse * g_lse).sum()).backward()

    q2, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v))
    scores = (q2 @ k2.transpose(-1, -2) * scale).masked_fill(~mask[:, None, None, :], float("-inf"))
    lse_ref = torch.logsumexp(scores, dim=-1)
    out_ref = torch.softmax(scores, dim=-1) @ v2
    ((out_ref * dout).sum() + (lse_ref * g_lse).sum()).backward()
    assert rel_err(lse, lse_ref) < 1e-12
    for a, b in ((q1, q2), (k1, k2), (v1, v2)):
        assert rel_err(a.grad, b.grad) < 1e-10


def test_gradcheck_float64_with_padding_and_dropout():
    q, k, v, _, mask = make_inputs((2, 2, 9, 7, 8))
    args = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: ops.attention(q, k, v, attention_mask=mask, scale=0.7, dropout_p=0.2, seed=3, offset=11),
        args)


def test_opcheck():
    q, k, v, _, mask = make_inputs((2, 2, 9, 7, 16))
    for t in (q, k, v):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.minibert.attention_forward.default, (q, k, v, mask != 0, 0.25, 0.1, 7, 3))


def test_non_contiguous_inputs_and_default_scale():
    B, S, H, D = 2, 40, 3, 32
    x = torch.randn(3, B, S, H, D, dtype=torch.float64)
    q, k, v = (t.transpose(1, 2) for t in x)  # [B, H, S, D] views, not contiguous
    assert not q.is_contiguous()
    got = ops.attention(q, k, v)
    ref, _ = layers.attention_forward(*(t.contiguous().numpy() for t in (q, k, v)))
    assert rel_err(got, ref) < 1e-10


def test_same_seed_same_mask_different_offset_different_mask():
    q, k, v, _, mask = make_inputs((1, 2, 30, 30, 16), padding=False)
    a = ops.attention(q, k, v, dropout_p=0.5, seed=1, offset=0)
    b = ops.attention(q, k, v, dropout_p=0.5, seed=1, offset=0)
    c = ops.attention(q, k, v, dropout_p=0.5, seed=1, offset=1)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v: ops.attention(q[0], k, v), "shape"),
    (lambda q, k, v: ops.attention(q, k[:, :, :5], v), "same shape"),
    (lambda q, k, v: ops.attention(q, k[..., :8], v[..., :8]), "head_dim"),
    (lambda q, k, v: ops.attention(q, k.float(), v), "dtype"),
    (lambda q, k, v: ops.attention(q.long(), k, v), "floating-point"),
    (lambda q, k, v: ops.attention(q, k, v, attention_mask=torch.ones(2, 11)), "attention_mask"),
    (lambda q, k, v: ops.attention(q, k, v, dropout_p=1.0), r"\[0, 1\)"),
    (lambda q, k, v: ops.attention(q, k, v, dropout_p=-0.1), r"\[0, 1\)"),
    (lambda q, k, v: ops.attention(q, k, v, attention_mask=torch.full((2, 10), 2.0)), "attention_mask"),
    (lambda q, k, v: ops.attention(q, k, v, seed=0.5), "seed"),
])
def test_bad_input_raises_clear_error(bad, match):
    q, k, v = (torch.randn(2, 2, 10, 16, dtype=torch.float64) for _ in range(3))
    with pytest.raises((ValueError, TypeError), match=match):
        bad(q, k, v)


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v, m: (q, k[:, :1], v[:, :1], m), "agree"),
    (lambda q, k, v, m: (q, k, v, m[:, :3]), "key_mask"),
    (lambda q, k, v, m: (q, k, v, m.long()), "bool"),
    (lambda q, k, v, m: (q.half(), k.half(), v.half(), m), "float32 or float64"),
    (lambda q, k, v, m: (q[0], k[0], v[0], m), "ranks"),
])
def test_native_checks_before_touching_memory(bad, match):
    """The raw op validates on its own (callers may bypass ops.py): a clear RuntimeError, no segfault."""
    q, k, v = (torch.randn(2, 2, 10, 16) for _ in range(3))
    m = torch.ones(2, 10, dtype=torch.bool)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.minibert.attention_forward(*bad(q, k, v, m), 0.25, 0.0, 0, 0)


@pytest.mark.parametrize("vector_bytes", ["32", "16"])
def test_narrower_cpu_builds_match_reference(vector_bytes):
    """The AVX2 (32-byte) and SSE2 (16-byte) builds of the CPU kernels, which an AVX-512 machine never
    picks by itself: the forward/backward, padding and dropout tests above, rerun in a process where
    MINIBERT_CPU_VECTOR_BYTES caps the vector width (the kernels read it once per process)."""
    env = dict(os.environ, MINIBERT_CPU_VECTOR_BYTES=vector_bytes)
    chosen = "float64_matches or float32_matches or all_padding or log_sum_exp or gradcheck or same_seed"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                             "-k", chosen], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


# ---------------------------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_cuda_float32_matches_reference(shape, dropout_p):
    inputs = make_inputs(shape, dtype=torch.float32, device="cuda")
    ref = reference(*inputs, dropout_p, 77, 5)
    got = fused(*inputs, dropout_p, 77, 5)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert rel_err(g, r) < 1e-5, name


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("kernel", ["default", "simt"])  # default: tensor cores where D % 16 == 0
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 4, 200, 200, 64), (1, 2, 77, 130, 128), (2, 3, 37, 45, 48),
                                   (1, 2, 33, 70, 40), (3, 1, 1, 5, 16)])
def test_cuda_low_precision_within_twice_torch_error(shape, dtype, dropout_p, kernel, monkeypatch):
    """FlashAttention's rule: error vs float64 at most ~2x that of torch's own attention at this dtype.

    Both CUDA kernel pairs (the tensor-core forward and backward for float16/bfloat16 with D a multiple of
    16, and the SIMT ones, forced by MINIBERT_CUDA_ATTENTION=simt) with the same dropout mask as NumPy."""
    if kernel == "simt":
        monkeypatch.setenv("MINIBERT_CUDA_ATTENTION", "simt")
    inputs = make_inputs(shape, dtype=dtype, device="cuda")
    q, k, v, dout, mask = inputs
    ref = reference(*inputs, dropout_p, 13, 2)
    got = fused(*inputs, dropout_p, 13, 2)
    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    eager = ops.eager.attention(qt, kt, vt, ops.eager.AttentionMask(mask), shape[-1] ** -0.5, dropout_p, 13, 2)
    eager.backward(dout)
    for name, g, e, r in zip(("out", "dq", "dk", "dv"), got, (eager, qt.grad, kt.grad, vt.grad), ref):
        torch_err = rel_err(e, r)
        assert rel_err(g, r) <= 2 * torch_err + 1e-3, name
        assert rel_err(g, r) < 1e-2, name


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 300, 260, 64), (1, 2, 150, 333, 128), (2, 2, 129, 65, 48),
                                   (1, 1, 17, 3, 16)])
def test_cuda_tensor_core_backward_matches_simt_with_grad_lse_and_dropout(shape, dtype, monkeypatch):
    """The raw backward op with grad_lse and dropout, on the tensor-core and on the SIMT kernels: both close
    to the float64 CPU kernel on the same (rounded) inputs, the tensor cores within ~2x the SIMT kernel's
    error (they round P and dS to the storage type, as FlashAttention does). Several query and key blocks,
    S_q != S_k both ways, three keys, and (B > 1) a sequence of padding only, whose gradients are exactly 0."""
    B, H, Sq, Sk, D = shape
    q, k, v, dout, mask = make_inputs(shape, dtype=torch.float64)
    mask = mask.bool()
    grad_lse = torch.randn(B, H, Sq, dtype=torch.float64)
    scale, p, seed, offset = D ** -0.5, 0.1, 21, 8
    q, k, v, dout = (t.to(dtype).double() for t in (q, k, v, dout))  # exactly the low-precision values
    out, lse = torch.ops.minibert.attention_forward(q, k, v, mask, scale, p, seed, offset)
    want = torch.ops.minibert.attention_backward(dout, q, k, v, out, lse, grad_lse, mask, scale, p, seed, offset)
    dev = [t.to(dtype).cuda() for t in (q, k, v, dout)]
    got = {}
    for kernel in ("default", "simt"):
        if kernel == "simt":
            monkeypatch.setenv("MINIBERT_CUDA_ATTENTION", "simt")
        o, l = torch.ops.minibert.attention_forward(*dev[:3], mask.cuda(), scale, p, seed, offset)
        got[kernel] = torch.ops.minibert.attention_backward(dev[3], *dev[:3], o, l, grad_lse.float().cuda(),
                                                            mask.cuda(), scale, p, seed, offset)
    for name, tc, simt, ref in zip(("dq", "dk", "dv"), got["default"], got["simt"], want):
        tc_err, simt_err = rel_err(tc.cpu(), ref), rel_err(simt.cpu(), ref)
        assert tc_err < 1e-2 and tc_err <= 2 * simt_err + 1e-3, (name, tc_err, simt_err)
        if B > 1:
            assert not tc[0].any(), name
