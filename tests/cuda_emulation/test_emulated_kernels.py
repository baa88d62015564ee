"""Every CUDA kernel of csrc/*.cu, run through the CPU emulator, against the CPU kernels and float64 NumPy.

No GPU is needed: the kernel bodies are compiled by g++ (tests/cuda_emulation/harness.py) and each CUDA
thread runs as a fiber. Outputs are prefilled with NaN and shared memory is NaN at the start of every
block, so an element never written, or read before it was written, fails the comparison.

Tolerances are docs/design.md's: float32 relative error < 1e-5 (max abs < 1e-4) against float64; float16
and bfloat16 relative error < 1e-2 and at most twice that of torch's own eager attention at the same
precision. Dropout masks must equal the CPU kernel's and NumPy's bit for bit.

The kernels: attention forward (SIMT and tensor-core) and backward, GELU and bias+GELU, dropout,
residual + dropout + LayerNorm (layernorm_cuda.cu) and cross-entropy (cross_entropy_cuda.cu). The default
slice is a few small shapes per kernel (under a minute on 2 cores once built), and the tensor-core backward
also built for sm_90 (its float4 dQ atomics); ``MINIBERT_EMU_FULL=1`` runs every head size 16-128 with
ragged S, both attention kernels, every dtype and wider LayerNorm rows. The sanitizer builds (slow) run a
small shape of each kernel under AddressSanitizer and ThreadSanitizer.
"""
import itertools
import os

import numpy as np
import pytest
import torch

from cuda_emulation import harness
from cuda_emulation import kernels as K
from minibert import ops, rng
from minibert.reference import layers as L

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no C++ compiler (g++) for the CUDA emulator")
FULL = os.environ.get("MINIBERT_EMU_FULL") == "1"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(scope="module")
def emu():
    return harness.Emulator()


def rel_err(out, ref):
    out, ref = out.double(), torch.as_tensor(ref, dtype=torch.float64)
    assert not torch.isnan(out).any(), "NaN in the output: an element was not written, or read too early"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item(), (out - ref).abs().max().item()


def make_inputs(B, H, Sq, Sk, D, dtype, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, S, D, generator=g).to(dtype) for S in (Sq, Sk, Sk))
    mask = None
    if mask_kind != "none":
        lengths = torch.randint(1, Sk + 1, (B,), generator=g)
        if mask_kind == "all-padding":
            lengths[-1] = 0  # the last sequence is padding only: its rows must come out 0, not NaN
        mask = torch.arange(Sk)[None, :] < lengths[:, None]
    return q, k, v, mask


def reference_forward(q, k, v, mask, scale, p, seed, offset):
    """float64 (out, lse) from the NumPy reference on the (already rounded) inputs."""
    a = [t.double().numpy() for t in (q, k, v)]
    m = None if mask is None else mask.numpy().astype(np.float64)
    out, _ = L.attention_forward(*a, m, scale, p, seed, offset)
    s = np.einsum("bhid,bhjd->bhij", a[0], a[1]) * scale
    if m is not None:
        s = np.where(m[:, None, None, :] > 0, s, -np.inf)
    top = s.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        lse = np.where(np.isfinite(top[..., 0]), np.log(np.exp(s - np.where(np.isfinite(top), top, 0)).sum(-1))
                       + top[..., 0], -np.inf)
    return torch.from_numpy(out), torch.from_numpy(lse)


def check_low_precision(out, ref, torch_out):
    err, _ = rel_err(out, ref)
    torch_err, _ = rel_err(torch_out, ref)
    assert err < 1e-2 and err <= 2 * torch_err + 1e-4, (err, torch_err)


# (dtype, path, B, H, S_q, S_k, D, mask, dropout p)
FORWARD = [
    (F32, K.SIMT, 2, 1, 17, 45, 33, "ragged", 0.0),
    (F32, K.SIMT, 2, 1, 5, 40, 64, "all-padding", 0.2),
    (F32, K.SIMT, 1, 1, 3, 130, 128, "none", 0.1),
    (F16, K.SIMT, 1, 2, 20, 33, 40, "ragged", 0.0),
    (BF16, K.SIMT, 2, 1, 9, 31, 48, "none", 0.3),
    (F16, K.TENSOR_CORE, 1, 2, 70, 65, 16, "ragged", 0.0),
    (BF16, K.TENSOR_CORE, 2, 1, 20, 40, 64, "all-padding", 0.1),
    (F16, K.TENSOR_CORE, 1, 1, 5, 100, 128, "none", 0.2),
    # 4 key tiles through the double buffer; key lengths 20 and 130: whole tiles of padding skipped between
    # issued ones, a last tile 38 keys long, D / 16 odd
    (F16, K.TENSOR_CORE, 2, 1, 16, 230, 48, "ragged", 0.1),
    (BF16, K.TENSOR_CORE, 1, 1, 33, 1, 32, "none", 0.0),
]
if FULL:
    FORWARD += [(dt, path, 2, 2, sq, sk, d, mk, p)
                for dt, path in [(F32, K.SIMT), (F16, K.SIMT), (BF16, K.SIMT), (F16, K.TENSOR_CORE),
                                 (BF16, K.TENSOR_CORE)]
                for d in (16, 32, 33, 40, 48, 64, 80, 96, 112, 128)
                if path == K.SIMT or d % 16 == 0
                for (sq, sk), mk, p in zip([(1, 1), (31, 64), (64, 65), (130, 7), (65, 130)],
                                           itertools.cycle(["ragged", "all-padding", "none"]),
                                           itertools.cycle([0.0, 0.1, 0.3]))]


def _id(case):
    dt, path, B, H, Sq, Sk, D, mk, p = case
    return f"{str(dt)[6:]}-{'simt' if path == K.SIMT else 'tc'}-B{B}H{H}-{Sq}x{Sk}-D{D}-{mk}-p{p}"


@pytest.mark.parametrize("case", FORWARD, ids=_id)
def test_attention_forward(emu, case):
    dt, path, B, H, Sq, Sk, D, mask_kind, p = case
    q, k, v, mask = make_inputs(B, H, Sq, Sk, D, dt, mask_kind)
    scale, seed, offset = D ** -0.5, 11, 5
    out, lse = K.attention_forward(emu, q, k, v, mask, scale, p, seed, offset, path)
    ref, ref_lse = reference_forward(q, k, v, mask, scale, p, seed, offset)
    if mask_kind == "all-padding":
        assert torch.equal(out[-1], torch.zeros_like(out[-1])) and torch.isneginf(lse[-1]).all()
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse.double()[finite] - ref_lse[finite]).abs().max().item() < 1e-4 if finite.any() else True
    if dt == F32:
        err, worst = rel_err(out, ref)
        assert err < 1e-5 and worst < 1e-4
        cpu, _ = torch.ops.minibert.attention_forward(q, k, v, mask, scale, p, seed, offset)
        assert (out - cpu).abs().max().item() < 1e-5  # the CPU kernel, same float32 algorithm
    else:
        check_low_precision(out, ref, ops.attention(q, k, v, mask, scale, p, seed, offset))


def test_attention_forward_picks_the_tensor_core_kernel_where_it_can(emu):
    q, k, v, mask = make_inputs(1, 1, 20, 24, 32, F16, "ragged")
    auto, _ = K.attention_forward(emu, q, k, v, mask, path=K.AUTO)
    tc, _ = K.attention_forward(emu, q, k, v, mask, path=K.TENSOR_CORE)
    simt, _ = K.attention_forward(emu, q, k, v, mask, path=K.SIMT)
    assert torch.equal(auto, tc) and not torch.equal(auto, simt)  # P is rounded to half only on tensor cores
    assert K.attention_forward_tc_supported(emu, F16, 64) and not K.attention_forward_tc_supported(emu, F32, 64)
    assert not K.attention_forward_tc_supported(emu, BF16, 40)


def test_the_result_does_not_depend_on_the_thread_order(emu):
    q, k, v, mask = make_inputs(1, 1, 20, 40, 32, BF16, "ragged", seed=3)
    outs = []
    for schedule in (0, 1, 5):
        emu.schedule = schedule
        outs.append(K.attention_forward(emu, q, k, v, mask, p=0.2, seed=1, path=K.TENSOR_CORE)[0])
    emu.schedule = 0
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# (dtype, B, H, S_q, S_k, D, mask, p, with grad_lse)
BACKWARD = [
    (F32, 1, 1, 20, 37, 33, "ragged", 0.0, False),
    (F16, 2, 1, 10, 20, 64, "all-padding", 0.2, False),
    (BF16, 1, 1, 40, 10, 128, "none", 0.1, True),
    (F32, 1, 1, 1, 1, 16, "none", 0.0, True),
]
if FULL:
    BACKWARD += [(dt, 2, 2, sq, sk, d, mk, p, gl)
                 for dt in (F32, F16, BF16) for d in (16, 33, 64, 128)
                 for (sq, sk), mk, p, gl in [((31, 64), "ragged", 0.1, False), ((65, 33), "all-padding", 0.0, True)]]


@pytest.mark.parametrize("case", BACKWARD, ids=lambda c: f"{str(c[0])[6:]}-B{c[1]}H{c[2]}-{c[3]}x{c[4]}-D{c[5]}-{c[6]}"
                         f"-p{c[7]}{'-lse' if c[8] else ''}")
def test_attention_backward(emu, case):
    dt, B, H, Sq, Sk, D, mask_kind, p, with_grad_lse = case
    q, k, v, mask = make_inputs(B, H, Sq, Sk, D, dt, mask_kind, seed=1)
    scale, seed, offset = D ** -0.5, 4, 9
    out, lse = K.attention_forward(emu, q, k, v, mask, scale, p, seed, offset, K.SIMT)
    g = torch.Generator().manual_seed(2)
    grad_out = torch.randn(out.shape, generator=g).to(dt)
    grad_lse = torch.randn(lse.shape, generator=g) if with_grad_lse else None
    dq, dk, dv = K.attention_backward(emu, grad_out, q, k, v, out, lse, mask, grad_lse, scale, p, seed, offset)

    # float64 autograd of the reference formula (out and lse both depend on q, k, v)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    out64 = ops.attention(q64, k64, v64, mask, scale, p, seed, offset)
    loss = (out64 * grad_out.double()).sum()
    if with_grad_lse:
        s = torch.einsum("bhid,bhjd->bhij", q64, k64) * scale
        if mask is not None:
            s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        lse64 = torch.logsumexp(s, dim=-1)
        loss = loss + (torch.where(torch.isfinite(lse64), lse64, 0.0) * grad_lse.double()).sum()
    loss.backward()
    for name, got, want in (("dq", dq, q64.grad), ("dk", dk, k64.grad), ("dv", dv, v64.grad)):
        err, worst = rel_err(got, want)
        if dt == F32:
            assert err < 1e-5 and worst < 1e-4, (name, err, worst)
        else:
            assert err < 1e-2, (name, err)
    if mask_kind == "all-padding":
        assert not dq[-1].any() and not dk[-1].any() and not dv[-1].any()
    if dt == F32 and not with_grad_lse:  # the CPU kernel's backward, same inputs
        qc, kc, vc = (t.clone().requires_grad_() for t in (q, k, v))
        ops.attention(qc, kc, vc, mask, scale, p, seed, offset).backward(grad_out)
        for got, want in ((dq, qc.grad), (dk, kc.grad), (dv, vc.grad)):
            assert (got - want).abs().max().item() < 1e-5


GELU = [(dt, shape, bias, approx) for dt in (F32, F16, BF16) for shape, bias, approx in
        [((7, 45), True, "none"), ((3, 5, 16), False, "tanh"), ((9, 33), True, "tanh"), ((1, 1), False, "none")]]
if FULL:
    GELU += [(dt, (2100, 3), True, a) for dt in (F32, BF16) for a in ("none", "tanh")]


@pytest.mark.parametrize("dt, shape, with_bias, approximate", GELU,
                         ids=lambda c: str(c).replace("torch.", "").replace(" ", ""))
def test_gelu_forward_and_backward(emu, dt, shape, with_bias, approximate):
    g = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(shape, generator=g)).to(dt)
    bias = torch.randn(shape[-1], generator=g).to(dt) if with_bias else None
    dy = torch.randn(shape, generator=g).to(dt)
    y = K.gelu_forward(emu, x, bias, approximate)
    dx, dbias = K.gelu_backward(emu, dy, x, bias, approximate)

    xb = x.double().numpy() + (bias.double().numpy() if with_bias else 0.0)
    ref_y, cache = L.gelu_forward(xb, approximate)
    ref_dx = L.gelu_backward(dy.double().numpy(), cache)
    if dt == F32:
        for got, want in ((y, ref_y), (dx, ref_dx)):
            err, worst = rel_err(got, want)
            assert err < 1e-5 and worst < 1e-5
        cpu_y = ops.bias_gelu(x, bias, approximate) if with_bias else ops.gelu(x, approximate)
        assert (y - cpu_y).abs().max().item() < 1e-5
    else:  # float32 arithmetic rounded once to the storage type: within one unit in the last place, plus
        # float32's own error where the gradient crosses zero (terms of size ~10 cancel there)
        eps = torch.finfo(dt).eps
        torch.testing.assert_close(y.double(), torch.from_numpy(ref_y), rtol=eps, atol=1e-6)
        torch.testing.assert_close(dx.double(), torch.from_numpy(ref_dx), rtol=eps, atol=1e-5)
    if with_bias:
        ref_db = ref_dx.reshape(-1, shape[-1]).sum(axis=0)
        err, _ = rel_err(dbias, ref_db)
        assert err < (1e-5 if dt == F32 else 1e-2)
    else:
        assert dbias is None


def shifted_view(t):
    """A copy of t that starts one element into its storage: not 16-byte aligned, so the launchers must
    take their one-element path (a vector access there would fail the emulated launch)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)
    view = flat[1:].view(t.shape)
    view.copy_(t)
    assert view.data_ptr() % 16 != 0
    return view


# gelu_cuda.cu's paths: 16-byte vectors (rows a multiple of 8 elements), one element at a time (7, 100 for
# 16-bit types, 1), odd element counts (the vector path's tail without a bias); (200, 200) and (250, 100)
# outnumber the emulated GPU's threads (4 SMs x 8 blocks x 256), so the grid-stride loop wraps and the
# column it tracks without a division must stay right.
GELU_PATHS = [(dt, shape) for dt in (F32, F16, BF16)
              for shape in [(3, 768), (2, 3072), (5, 100), (9, 7), (13, 1), (3, 5, 11)]]
GELU_PATHS += [(F32, (200, 200)), (BF16, (250, 100)), (F16, (1, 70001))]


@pytest.mark.parametrize("dt, shape", GELU_PATHS, ids=lambda c: str(c).replace("torch.", "").replace(" ", ""))
def test_gelu_vector_and_scalar_paths(emu, dt, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = (3 * torch.randn(shape, generator=g)).to(dt)
    bias = torch.randn(shape[-1], generator=g).to(dt)
    dy = torch.randn(shape, generator=g).to(dt)
    big = x.numel() > 50000
    for with_bias, approximate in [(False, "none"), (True, "tanh")] if big else \
            itertools.product((False, True), ("none", "tanh")):
        b = bias if with_bias else None
        y = K.gelu_forward(emu, x, b, approximate)
        dx, dbias = K.gelu_backward(emu, dy, x, b, approximate)
        xb = x.double().numpy() + (bias.double().numpy() if with_bias else 0.0)
        ref_y, cache = L.gelu_forward(xb, approximate)
        ref_dx = L.gelu_backward(dy.double().numpy(), cache)
        eps = 1e-6 if dt == F32 else torch.finfo(dt).eps
        torch.testing.assert_close(y.double(), torch.from_numpy(ref_y), rtol=eps, atol=1e-5)
        torch.testing.assert_close(dx.double(), torch.from_numpy(ref_dx), rtol=eps, atol=1e-5)
        if with_bias:
            err, _ = rel_err(dbias, ref_dx.reshape(-1, shape[-1]).sum(axis=0))
            assert err < (1e-5 if dt == F32 else 1e-2)
        if big:
            continue
        # Unaligned views run the one-element kernels: the same arithmetic per element, so the same bits.
        xs, dys, bs = shifted_view(x), shifted_view(dy), (shifted_view(bias) if with_bias else None)
        assert torch.equal(K.gelu_forward(emu, xs, bs, approximate), y)
        dx_s, dbias_s = K.gelu_backward(emu, dys, xs, bs, approximate)
        assert torch.equal(dx_s, dx)
        if with_bias:  # summed in another order
            assert rel_err(dbias_s, dbias.double())[0] < (1e-6 if dt == F32 else 1e-2)
        if with_bias and dt == F32:  # only the bias unaligned: the one-element path too
            assert torch.equal(K.gelu_forward(emu, x, shifted_view(bias), approximate), y)


@pytest.mark.parametrize("dt", [F32, F16, BF16])
@pytest.mark.parametrize("n, p, seed, offset", [(1000, 0.1, 3, 7), (257, 0.5, 2 ** 40, 2 ** 41 + 3), (5, 1e-9, 0, 0)])
def test_dropout_masks_equal_the_cpu_kernel_and_numpy(emu, dt, n, p, seed, offset):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dt)
    y = K.dropout(emu, x, p, seed, offset)
    keep = torch.from_numpy(rng.keep_mask((n,), p, seed, offset))
    inv_keep = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)
    assert torch.equal(y, torch.where(keep, x.float() * inv_keep, 0.0).to(dt))
    if dt == F32:
        assert torch.equal(y, torch.ops.minibert.dropout(x, p, seed, offset))



# ---- the tensor-core backward (attention_cuda_tc_bwd.cu) --------------------------------------------------

def eager_low_precision_grads(q, k, v, mask, grad_out, grad_lse, scale, p, seed, offset):
    """dq, dk, dv of torch's own attention at the inputs' precision (the eager path on the CPU): the
    baseline of FlashAttention's "at most twice torch's error" rule."""
    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    loss = (ops.attention(qt, kt, vt, mask, scale, p, seed, offset) * grad_out).sum()
    if grad_lse is not None:
        s = torch.einsum("bhid,bhjd->bhij", qt, kt) * scale
        if mask is not None:
            s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        lse = torch.logsumexp(s.float(), dim=-1)
        loss = loss + (torch.where(torch.isfinite(lse), lse, 0.0) * grad_lse).sum()
    loss.backward()
    return qt.grad, kt.grad, vt.grad


def float64_grads(q, k, v, mask, grad_out, grad_lse, scale, p, seed, offset):
    """dq, dk, dv by float64 autograd of the reference formula (out and lse both depend on q, k, v)."""
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    loss = (ops.attention(q64, k64, v64, mask, scale, p, seed, offset) * grad_out.double()).sum()
    if grad_lse is not None:
        s = torch.einsum("bhid,bhjd->bhij", q64, k64) * scale
        if mask is not None:
            s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        lse64 = torch.logsumexp(s, dim=-1)
        loss = loss + (torch.where(torch.isfinite(lse64), lse64, 0.0) * grad_lse.double()).sum()
    loss.backward()
    return q64.grad, k64.grad, v64.grad


# (dtype, B, H, S_q, S_k, D, mask, dropout p, with grad_lse). S in {1, 17, 64, 100, 130}: one query block
# and several (64 rows per block for D <= 64, 32 above), key blocks of 64 cut short, S_q != S_k both ways,
# D / 16 odd (48); "all-padding": the last sequence's keys are all padding (its rows have no key).
TC_BACKWARD = [
    (F16, 1, 1, 1, 1, 16, "none", 0.0, False),
    (BF16, 1, 2, 17, 64, 16, "ragged", 0.1, True),
    (F16, 2, 1, 64, 17, 48, "all-padding", 0.1, False),
    (BF16, 1, 1, 100, 130, 48, "ragged", 0.0, True),
    (F16, 1, 1, 130, 100, 64, "none", 0.1, True),
    (BF16, 2, 1, 64, 64, 64, "all-padding", 0.0, False),
    (F16, 1, 1, 17, 130, 128, "ragged", 0.1, False),
    (BF16, 2, 1, 100, 17, 128, "all-padding", 0.1, True),
]
if FULL:
    TC_BACKWARD += [(dt, 2, 2, sq, sk, d, mk, p, gl)
                    for dt in (F16, BF16) for d in (16, 32, 48, 64, 80, 96, 112, 128)
                    for (sq, sk), mk, p, gl in [((31, 64), "ragged", 0.1, False), ((65, 33), "all-padding", 0.0, True),
                                                ((130, 1), "none", 0.0, True), ((100, 130), "ragged", 0.3, True)]]
# Not here: one key with dropout and grad_lse. Then dS = grad_lse exactly, but both kernels (as
# FlashAttention) compute it as P (dP Z - D) with D = rowsum(dO O) - grad_lse from the STORED output O,
# rounded to float16/bfloat16: dP Z - rowsum(dO O) cancels to the rounding error of O, which is far larger
# than torch's error on this degenerate case (about 1e-3 in float16, 2e-2 in bfloat16, the same for the
# SIMT backward).


@pytest.mark.parametrize("case", TC_BACKWARD, ids=lambda c: f"{str(c[0])[6:]}-B{c[1]}H{c[2]}-{c[3]}x{c[4]}-D{c[5]}"
                         f"-{c[6]}-p{c[7]}{'-lse' if c[8] else ''}")
def test_tensor_core_attention_backward(emu, case):
    """The tensor-core backward against float64 autograd (FlashAttention's rule: relative error < 1e-2 and at
    most twice that of torch's own attention at the same precision, + 1e-4) and against the SIMT backward
    (the same dropout mask: a disagreement on one element of P moves the result by far more than rounding)."""
    dt, B, H, Sq, Sk, D, mask_kind, p, with_grad_lse = case
    q, k, v, mask = make_inputs(B, H, Sq, Sk, D, dt, mask_kind, seed=1)
    scale, seed, offset = D ** -0.5, 4, 9
    out, lse = K.attention_forward(emu, q, k, v, mask, scale, p, seed, offset, K.TENSOR_CORE)
    g = torch.Generator().manual_seed(2)
    grad_out = torch.randn(out.shape, generator=g).to(dt)
    grad_lse = torch.randn(lse.shape, generator=g) if with_grad_lse else None
    args = (grad_out, q, k, v, out, lse, mask, grad_lse, scale, p, seed, offset)
    tc = K.attention_backward(emu, *args, path=K.TENSOR_CORE)
    simt = K.attention_backward(emu, *args, path=K.SIMT)
    want = float64_grads(q, k, v, mask, grad_out, grad_lse, scale, p, seed, offset)
    eager = eager_low_precision_grads(q, k, v, mask, grad_out, grad_lse, scale, p, seed, offset)
    for name, got, ref, base, ours in zip(("dq", "dk", "dv"), tc, want, eager, simt):
        if not ref.any():  # dQ with a single key: exactly 0 (softmax of one score), rounding aside
            assert rel_err(got, ref)[1] < 1e-3 and rel_err(ours, ref)[1] < 1e-3, name
            continue
        err, torch_err = rel_err(got, ref)[0], rel_err(base, ref)[0]
        assert err < 1e-2 and err <= 2 * torch_err + 1e-4, (name, err, torch_err)
        assert rel_err(got, ours.double())[0] < 1e-2, name
    if mask_kind == "all-padding":  # the rows without keys, and the padding keys, get exactly 0
        assert all(torch.equal(t[-1], torch.zeros_like(t[-1])) for t in tc)
    if mask is not None:
        padded = ~mask[:, None, :, None].expand(B, H, Sk, D)
        assert not tc[1][padded].any() and not tc[2][padded].any()


@pytest.mark.parametrize("dt, H, Sq, Sk, D", [(F16, 2, 64, 100, 64), (BF16, 1, 100, 70, 128)])
def test_tensor_core_backward_drops_exactly_the_forwards_elements(emu, dt, H, Sq, Sk, D):
    """With dO = identity ([S_q, D], S_q <= D), dV[j, i] = P_ij Z_ij: zero exactly where NumPy's mask drops
    element (b, h, i, j) of P, for every i and j (several query blocks, two heads)."""
    q, k, v, _ = make_inputs(1, H, Sq, Sk, D, dt, "none", seed=5)
    p, seed, offset = 0.3, 7, 3
    out, lse = K.attention_forward(emu, q, k, v, None, D ** -0.5, p, seed, offset, K.TENSOR_CORE)
    grad_out = torch.eye(Sq, D, dtype=dt).expand(1, H, Sq, D).contiguous()
    _, _, dv = K.attention_backward(emu, grad_out, q, k, v, out, lse, None, None, D ** -0.5, p, seed, offset,
                                    path=K.TENSOR_CORE)
    keep = torch.from_numpy(rng.keep_mask((1, H, Sq, Sk), p, seed, offset))
    assert torch.equal(dv[..., :Sq] != 0, keep.transpose(-1, -2))


def test_attention_backward_picks_the_tensor_core_kernel_where_it_can(emu):
    q, k, v, mask = make_inputs(1, 1, 20, 24, 32, F16, "ragged")
    out, lse = K.attention_forward(emu, q, k, v, mask)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(F16)
    auto, tc, simt = (K.attention_backward(emu, grad_out, q, k, v, out, lse, mask, path=path)
                      for path in (K.AUTO, K.TENSOR_CORE, K.SIMT))
    assert all(torch.equal(a, b) for a, b in zip(auto, tc))
    assert not all(torch.equal(a, b) for a, b in zip(auto, simt))  # dS is rounded to half only on tensor cores
    assert K.attention_backward_tc_supported(emu, BF16, 128) and not K.attention_backward_tc_supported(emu, F32, 64)
    assert not K.attention_backward_tc_supported(emu, F16, 40)
    qf, kf, vf = (t.float() for t in (q, k, v))
    out, lse = K.attention_forward(emu, qf, kf, vf, mask)
    gf = grad_out.float()
    assert all(torch.equal(a, b) for a, b in zip(K.attention_backward(emu, gf, qf, kf, vf, out, lse, mask),
                                                 K.attention_backward(emu, gf, qf, kf, vf, out, lse, mask,
                                                                      path=K.SIMT)))


def test_tensor_core_backward_does_not_depend_on_the_thread_order_or_alignment(emu):
    """The same bits whatever order the fibers run in (a missing barrier would show), and when the inputs
    are not 16-byte aligned (rows staged element by element instead of with cp.async)."""
    q, k, v, mask = make_inputs(1, 2, 40, 70, 48, BF16, "ragged", seed=3)
    out, lse = K.attention_forward(emu, q, k, v, mask, p=0.2, seed=1)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(BF16)

    def shifted(t):
        flat = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = flat[1:].view(t.shape)
        view.copy_(t)
        return view

    results = []
    for schedule in (0, 1, 5):
        emu.schedule = schedule
        results.append(K.attention_backward(emu, grad_out, q, k, v, out, lse, mask, p=0.2, seed=1,
                                            path=K.TENSOR_CORE))
    emu.schedule = 0
    results.append(K.attention_backward(emu, shifted(grad_out), shifted(q), shifted(k), shifted(v), out, lse, mask,
                                        p=0.2, seed=1, path=K.TENSOR_CORE))
    assert shifted(q).data_ptr() % 16 != 0
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("dt, Sq, Sk, D", [(BF16, 100, 130, 64), (F16, 33, 70, 48), (BF16, 40, 17, 128)])
def test_sm90_adds_dq_four_floats_at_a_time_with_the_same_result(emu, dt, Sq, Sk, D):
    """Built for sm_90, the tensor-core backward adds dQ with float4 atomics (lanes swapping half rows);
    with the accumulator 4 bytes off 16-byte alignment it takes the scalar atomics. Either way every element
    receives the same additions in the same order as the sm_80 build (the emulator runs blocks in order),
    so the bits agree, and dQ agrees with float64 autograd."""
    sm90 = harness.Emulator(arch=900)
    q, k, v, mask = make_inputs(2, 2, Sq, Sk, D, dt, "ragged", seed=6)
    out, lse = K.attention_forward(emu, q, k, v, mask, p=0.1, seed=2)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(dt)
    args = (grad_out, q, k, v, out, lse, mask)
    sm80 = K.attention_backward(emu, *args, p=0.1, seed=2, path=K.TENSOR_CORE)
    vector = K.attention_backward(sm90, *args, p=0.1, seed=2, path=K.TENSOR_CORE)
    scalar = K.attention_backward(sm90, *args, p=0.1, seed=2, path=K.TENSOR_CORE, dq_shift=1)
    for got in (vector, scalar):
        assert all(torch.equal(a, b) for a, b in zip(got, sm80))
    want = float64_grads(q, k, v, mask, grad_out, None, D ** -0.5, 0.1, 2, 0)
    assert rel_err(vector[0], want[0])[0] < 1e-2


@pytest.mark.parametrize("dt", [F16, BF16])
def test_tensor_core_backward_falls_back_where_its_shared_memory_does_not_fit(dt):
    """75,264 bytes at D = 128 (32 query rows per block), 65,536 at D = 64: every head size fits an sm_86
    GPU; on a made-up device with 56 KiB, D = 128 goes to the SIMT backward, which agrees closely."""
    sm86, small = harness.Emulator(device=SM86), harness.Emulator(device=SMALL)
    assert K.attention_backward_tc_supported(sm86, dt, 128) and K.attention_backward_tc_supported(small, dt, 48)
    assert not K.attention_backward_tc_supported(small, dt, 64)
    q, k, v, mask = make_inputs(1, 1, 9, 70, 128, dt, "ragged")
    out, lse = K.attention_forward(sm86, q, k, v, mask, path=K.SIMT)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(dt)
    args = (grad_out, q, k, v, out, lse, mask)
    tc86 = K.attention_backward(sm86, *args)
    assert all(torch.equal(a, b) for a, b in zip(tc86, K.attention_backward(sm86, *args, path=K.TENSOR_CORE)))
    fallback = K.attention_backward(small, *args)
    assert all(torch.equal(a, b) for a, b in zip(fallback, K.attention_backward(small, *args, path=K.SIMT)))
    assert all(rel_err(a, b.double())[0] < 1e-2 for a, b in zip(tc86, fallback))
    with pytest.raises(harness.EmulatedCudaError, match="cudaError 1"):
        K.attention_backward(small, *args, path=K.TENSOR_CORE)


def test_the_tensor_core_backward_traps_when_compiled_below_sm80():
    emu = harness.Emulator(arch=750)
    q, k, v, _ = make_inputs(1, 1, 3, 5, 16, F16, "none")
    out, lse = K.attention_forward(emu, q, k, v, path=K.SIMT)
    with pytest.raises(harness.EmulatedCudaError, match="__trap"):
        K.attention_backward(emu, torch.ones_like(out), q, k, v, out, lse, path=K.TENSOR_CORE)

# ---- sanitizer builds (std::threads): every kernel once, small ---------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_every_kernel_under_a_sanitizer(sanitizer):
    emu = harness.Emulator(sanitizer=sanitizer)
    q, k, v, mask = make_inputs(2, 1, 6, 9, 16, F16, "all-padding")
    ref, _ = reference_forward(q, k, v, mask, 0.25, 0.1, 1, 2)
    for path in (K.SIMT, K.TENSOR_CORE):
        out, lse = K.attention_forward(emu, q, k, v, mask, 0.25, 0.1, 1, 2, path)
        assert rel_err(out, ref)[0] < 1e-2
    qf, kf, vf = (t.float() for t in (q, k, v))
    out, lse = K.attention_forward(emu, qf, kf, vf, mask, 0.25, 0.1, 1, 2, K.SIMT)
    dq, dk, dv = K.attention_backward(emu, torch.ones_like(out), qf, kf, vf, out, lse, mask, None, 0.25, 0.1, 1, 2)
    q64, k64, v64 = (t.double().requires_grad_() for t in (qf, kf, vf))
    ops.attention(q64, k64, v64, mask, 0.25, 0.1, 1, 2).sum().backward()
    assert max(rel_err(a, b)[0] for a, b in ((dq, q64.grad), (dk, k64.grad), (dv, v64.grad))) < 1e-5
    out, lse = K.attention_forward(emu, q, k, v, mask, 0.25, 0.1, 1, 2, K.TENSOR_CORE)  # the tensor-core backward
    grads = K.attention_backward(emu, torch.ones_like(out), q, k, v, out, lse, mask, None, 0.25, 0.1, 1, 2,
                                 path=K.TENSOR_CORE)
    assert max(rel_err(a, b)[0] for a, b in zip(grads, (q64.grad, k64.grad, v64.grad))) < 1e-2
    x, bias = torch.randn(4, 40), torch.randn(40)
    assert rel_err(K.gelu_forward(emu, x, bias), ops.bias_gelu(x, bias))[0] < 1e-6
    dx, db = K.gelu_backward(emu, torch.ones_like(x), x, bias)
    assert rel_err(db, dx.sum(0))[0] < 1e-6
    assert torch.equal(K.dropout(emu, x, 0.3, 1, 0), torch.ops.minibert.dropout(x, 0.3, 1, 0))
    r, w = torch.randn(4, 40), torch.randn(40)
    y, mean, rstd = K.layernorm_forward(emu, x, r, w, bias, 1e-12, 0.1, 2, 0)
    assert rel_err(y, ops.residual_dropout_layernorm(x, r, w, bias, 1e-12, 0.1, 2, 0))[0] < 1e-5
    d_sum, d_x, dw, db = K.layernorm_backward(emu, torch.ones_like(x), x, r, w, mean, rstd, 0.1, 2, 0)
    assert rel_err(db, torch.full((40,), 4.0))[0] < 1e-6  # dbias: the column sums of grad (ones, 4 rows)
    assert not torch.isnan(d_sum).any() and not torch.isnan(d_x).any() and not torch.isnan(dw).any()
    labels = torch.tensor([3, -100, 0, 39])
    loss, lse = K.cross_entropy_forward(emu, x, labels)
    assert rel_err(loss, ops.cross_entropy(x, labels))[0] < 1e-5
    d = K.cross_entropy_backward(emu, torch.ones(4), x, labels, lse)
    assert not torch.isnan(d).any() and torch.equal(d[1], torch.zeros(40))


# ---- the bugs issue 14 found, each fixed and held here ---------------------------------------------------

SM86 = dict(harness.A100, major=8, minor=6, smem_optin=101376)  # A10, A40, RTX 30xx: 99 KiB of opt-in
SMALL = dict(harness.A100, smem_optin=56 * 1024)  # a made-up sm_80 with 56 KiB: less than D >= 112 needs


@pytest.mark.parametrize("dt", [F16, BF16])
def test_tensor_cores_run_where_the_shared_memory_fits_and_simt_elsewhere(dt):
    """The first tensor-core kernel needed 106,496 bytes at D = 128, more than an sm_86 GPU's 101,376, and
    attention failed there with "invalid argument". Now the support check compares with the device's
    opt-in limit and sends what does not fit to the SIMT kernel. The register kernel keeps only two
    stages of K and V in shared memory (69,632 bytes at D = 128, 53,248 at D = 96, 61,440 at D = 112), so
    every head size fits sm_86; the fallback is shown on a made-up device with 56 KiB."""
    a100, sm86, small = harness.Emulator(), harness.Emulator(device=SM86), harness.Emulator(device=SMALL)
    assert K.attention_forward_tc_supported(a100, dt, 128) and K.attention_forward_tc_supported(sm86, dt, 128)
    assert K.attention_forward_tc_supported(small, dt, 96) and not K.attention_forward_tc_supported(small, dt, 112)
    q, k, v, mask = make_inputs(1, 1, 4, 70, 128, dt, "ragged")
    ref, _ = reference_forward(q, k, v, mask, 128 ** -0.5, 0.0, 0, 0)
    tc86, _ = K.attention_forward(sm86, q, k, v, mask, path=K.AUTO)
    assert torch.equal(tc86, K.attention_forward(sm86, q, k, v, mask, path=K.TENSOR_CORE)[0])
    assert rel_err(tc86, ref)[0] < 1e-2
    out, lse = K.attention_forward(small, q, k, v, mask, path=K.AUTO)  # falls back, and agrees
    assert torch.equal(out, K.attention_forward(small, q, k, v, mask, path=K.SIMT)[0])
    assert rel_err(out, ref)[0] < 1e-2
    # the tensor-core kernel itself, launched anyway, fails cleanly where its shared memory does not fit
    with pytest.raises(harness.EmulatedCudaError, match="cudaError 1"):
        K.attention_forward(small, q, k, v, mask, path=K.TENSOR_CORE)


def test_every_head_size_after_another_on_one_device(emu):
    """The shared-memory opt-in happens once per device, for the largest head size: launching D = 128
    after D = 16 (and back) needs no new cudaFuncSetAttribute."""
    for D in (16, 128, 64):
        q, k, v, _ = make_inputs(1, 1, 3, 5, D, F16, "none")
        out, _ = K.attention_forward(emu, q, k, v, path=K.TENSOR_CORE)
        assert rel_err(out, reference_forward(q, k, v, None, D ** -0.5, 0.0, 0, 0)[0])[0] < 1e-2


def test_the_tensor_core_kernel_traps_when_compiled_below_sm80():
    """Compiled for __CUDA_ARCH__ 750 (a PTX JIT for an older GPU), the kernel must fail loudly rather than
    leave its outputs unwritten."""
    emu = harness.Emulator(arch=750)
    q, k, v, _ = make_inputs(1, 1, 3, 5, 16, F16, "none")
    with pytest.raises(harness.EmulatedCudaError, match="__trap"):
        K.attention_forward(emu, q, k, v, path=K.TENSOR_CORE)


def test_the_readme_example_runs(capsys):
    """The README's "Running the CUDA kernels without a GPU" snippet, executed as written."""
    import re
    readme = (harness.ROOT / "README.md").read_text(encoding="utf-8")
    snippet, = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "harness.Emulator()" in b]
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert float(re.search(r"tensor\(([0-9.e-]+)\)", printed).group(1)) < 1e-5


def test_tensor_core_kernel_reads_inputs_that_are_not_16_byte_aligned(emu):
    """Rows are staged with 16-byte cp.async copies where the data allows, element by element where it does
    not (a view that starts 2 bytes into its storage)."""
    q, k, v, mask = make_inputs(1, 2, 9, 70, 48, F16, "ragged", seed=4)

    def shifted(t):
        flat = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = flat[1:].view(t.shape)
        view.copy_(t)
        return view

    ref, _ = K.attention_forward(emu, q, k, v, mask, path=K.TENSOR_CORE)
    out, _ = K.attention_forward(emu, shifted(q), shifted(k), shifted(v), mask, path=K.TENSOR_CORE)
    assert shifted(q).data_ptr() % 16 != 0 and torch.equal(out, ref)
    assert rel_err(ref, reference_forward(q, k, v, mask, 48 ** -0.5, 0.0, 0, 0)[0])[0] < 1e-2


# (dtype, shape, with residual, dropout p): layernorm_cuda.cu (see LAYERNORM_PATHS below for its paths)
LAYERNORM = [(dt, shape, res, p) for dt in (F32, F16, BF16)
             for shape, res, p in [((3, 40), True, 0.1), ((2, 300), False, 0.0), ((1, 1), True, 0.0)]]
if FULL:
    LAYERNORM += [(dt, (5, 768), True, 0.1) for dt in (F32, BF16)] + [(F32, (2, 4000), False, 0.3)]


@pytest.mark.parametrize("dt, shape, with_residual, p", LAYERNORM,
                         ids=lambda c: str(c).replace("torch.", "").replace(" ", ""))
def test_residual_dropout_layernorm_forward_and_backward(emu, dt, shape, with_residual, p):
    g = torch.Generator().manual_seed(6)
    x, residual, grad = ((2 * torch.randn(shape, generator=g) + 1).to(dt) for _ in range(3))
    residual = residual if with_residual else None
    weight, bias = (torch.randn(shape[-1], generator=g).to(dt) for _ in range(2))
    seed, offset, eps = 3, 17, 1e-12
    y, mean, rstd = K.layernorm_forward(emu, x, residual, weight, bias, eps, p, seed, offset)
    d_sum, d_x, dweight, dbias = K.layernorm_backward(emu, grad, x, residual, weight, mean, rstd, p, seed, offset)

    # float64 autograd of LayerNorm(residual + dropout(x)), the mask from minibert.rng
    keep = torch.from_numpy(rng.keep_mask(shape, p, seed, offset)) if p > 0 else torch.ones(shape, dtype=torch.bool)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    h64 = (torch.zeros(shape, dtype=torch.float64) if residual is None else residual.double()).requires_grad_()
    h = h64 + torch.where(keep, x64 / (1 - p), 0.0)
    y64 = torch.nn.functional.layer_norm(h, shape[-1:], w64, b64, eps)
    (y64 * grad.double()).sum().backward()
    tol = 1e-5 if dt == F32 else 1e-2
    checks = [("y", y, y64.detach()), ("mean", mean, h.detach().mean(-1).reshape(-1)),
              ("rstd", rstd, (h.detach().var(-1, unbiased=False) + eps).rsqrt().reshape(-1)),
              ("d_sum", d_sum, h64.grad), ("dweight", dweight, w64.grad), ("dbias", dbias, b64.grad)]
    if p > 0:
        checks.append(("d_x", d_x, x64.grad))
    else:
        assert d_x is None
    for name, got, want in checks:
        if shape[-1] == 1 and name in ("d_sum", "dweight", "rstd"):  # one column: h - mean = 0 exactly
            continue
        err, _ = rel_err(got, want)
        assert err < tol, (name, err)
    if dt == F32 and hasattr(ops, "residual_dropout_layernorm"):  # the CPU kernel, same inputs
        cpu = ops.residual_dropout_layernorm(x, residual, weight, bias, eps, p, seed, offset)
        assert (y - cpu).abs().max().item() < 1e-5


# layernorm_cuda.cu's paths: rows of up to 1024 columns run one warp per row with 16-byte vectors (768,
# 1024, 40 for float32; 768, 1024 for 16-bit types) or single elements (100 and 40 for 16-bit types, 7,
# 1); 1030 runs the block-per-row kernel. (300, 40) has more rows than the emulated GPU's backward warps
# (4 SMs x 4 blocks x 8 warps): warps walk several rows and add up their columns across them.
LAYERNORM_PATHS = [(dt, shape, res, p) for dt in (F32, F16, BF16)
                   for shape, res, p in [((3, 768), True, 0.1), ((2, 1024), False, 0.0), ((5, 100), True, 0.0),
                                         ((4, 7), False, 0.1), ((3, 1), False, 0.1), ((2, 1030), True, 0.1)]]
LAYERNORM_PATHS += [(F32, (300, 40), True, 0.1), (BF16, (300, 40), False, 0.0), (F16, (2, 768), False, 0.1)]


def layernorm_reference(x, residual, weight, bias, grad, eps, p, seed, offset):
    """float64 autograd of LayerNorm(residual + dropout(x)), the mask from minibert.rng."""
    shape = x.shape
    keep = torch.from_numpy(rng.keep_mask(shape, p, seed, offset)) if p > 0 else torch.ones(shape, dtype=torch.bool)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    h64 = (torch.zeros(shape, dtype=torch.float64) if residual is None else residual.double()).requires_grad_()
    h = h64 + torch.where(keep, x64 / (1 - p), 0.0)
    y64 = torch.nn.functional.layer_norm(h, shape[-1:], w64, b64, eps)
    (y64 * grad.double()).sum().backward()
    return dict(y=y64.detach(), mean=h.detach().mean(-1).reshape(-1),
                rstd=(h.detach().var(-1, unbiased=False) + eps).rsqrt().reshape(-1), d_sum=h64.grad,
                dweight=w64.grad, dbias=b64.grad, d_x=x64.grad)


@pytest.mark.parametrize("dt, shape, with_residual, p", LAYERNORM_PATHS,
                         ids=lambda c: str(c).replace("torch.", "").replace(" ", ""))
def test_layernorm_vector_and_scalar_paths(emu, dt, shape, with_residual, p):
    g = torch.Generator().manual_seed(shape[-1])
    x, residual, grad = ((2 * torch.randn(shape, generator=g) + 1).to(dt) for _ in range(3))
    residual = residual if with_residual else None
    weight, bias = (torch.randn(shape[-1], generator=g).to(dt) for _ in range(2))
    seed, offset, eps = 11, 5, 1e-5
    y, mean, rstd = K.layernorm_forward(emu, x, residual, weight, bias, eps, p, seed, offset)
    d_sum, d_x, dweight, dbias = K.layernorm_backward(emu, grad, x, residual, weight, mean, rstd, p, seed, offset)
    ref = layernorm_reference(x, residual, weight, bias, grad, eps, p, seed, offset)
    got = dict(y=y, mean=mean, rstd=rstd, d_sum=d_sum, dweight=dweight, dbias=dbias, d_x=d_x)
    tol = 1e-5 if dt == F32 else 1e-2
    for name, want in ref.items():
        if name == "d_x" and p == 0:
            assert d_x is None
            continue
        if shape[-1] == 1 and name in ("d_sum", "d_x", "dweight"):  # one column: xhat = 0, gradients ~0
            assert not torch.isnan(got[name]).any()
            continue
        err, _ = rel_err(got[name], want)
        assert err < tol, (name, err)
    if p > 0:  # the mask, bit for bit: d_x is zero exactly where dropout dropped
        keep = torch.from_numpy(rng.keep_mask(shape, p, seed, offset))
        assert torch.equal(d_x == 0, ~keep | (d_sum == 0))
    if dt == F32 and hasattr(ops, "residual_dropout_layernorm"):  # the CPU kernel, same inputs
        cpu = ops.residual_dropout_layernorm(x, residual, weight, bias, eps, p, seed, offset)
        assert (y - cpu).abs().max().item() < 1e-5
    if shape[0] * shape[-1] > 5000:
        return
    # Unaligned views run the one-element kernels: the same sums in another order, so close, not equal.
    xs, gs = shifted_view(x), shifted_view(grad)
    rs = None if residual is None else shifted_view(residual)
    y2, mean2, rstd2 = K.layernorm_forward(emu, xs, rs, shifted_view(weight), bias, eps, p, seed, offset)
    d_sum2, d_x2, dweight2, dbias2 = K.layernorm_backward(emu, gs, xs, rs, weight, mean2, rstd2, p, seed, offset)
    for name, a, b in [("y", y2, y), ("d_sum", d_sum2, d_sum), ("dweight", dweight2, dweight),
                       ("dbias", dbias2, dbias)] + ([("d_x", d_x2, d_x)] if p > 0 else []):
        if shape[-1] == 1 and name != "y" and name != "dbias":
            continue
        assert rel_err(a, b.double())[0] < (1e-5 if dt == F32 else 1e-2), name


# (dtype, rows, classes): cross_entropy_cuda.cu, one block of 256 threads per row
CROSS_ENTROPY = [(dt, rows, n) for dt in (F32, F16, BF16) for rows, n in [(5, 1), (6, 37), (3, 1000)]]
if FULL:
    CROSS_ENTROPY += [(dt, 8, 8000) for dt in (F32, BF16)]


@pytest.mark.parametrize("dt, rows, n_classes", CROSS_ENTROPY,
                         ids=lambda c: str(c).replace("torch.", "").replace(" ", ""))
def test_cross_entropy_forward_and_backward(emu, dt, rows, n_classes):
    g = torch.Generator().manual_seed(7)
    logits = (3 * torch.randn(rows, n_classes, generator=g) + 2).to(dt)
    if n_classes > 1:
        logits[0, -1] = float("-inf")  # a class with no mass at all: exp gives 0, never NaN
    labels = torch.randint(0, max(1, n_classes - 1), (rows,), generator=g)  # never the -inf class
    labels[1] = -100
    grad_loss = torch.rand(rows, generator=g) + 0.5
    loss, lse = K.cross_entropy_forward(emu, logits, labels)
    d = K.cross_entropy_backward(emu, grad_loss, logits, labels, lse)

    # float64 autograd of torch's cross-entropy on the same (rounded) logits
    x64 = logits.double().requires_grad_()
    want = torch.nn.functional.cross_entropy(x64, labels, reduction="none")
    (want * grad_loss.double()).sum().backward()
    tol = 1e-5 if dt == F32 else 1e-2
    if n_classes > 1:  # one class: loss and gradient are exactly 0, no norm to be relative to
        assert rel_err(loss, want.detach())[0] < tol
        assert rel_err(d, x64.grad)[0] < tol
    else:
        assert torch.equal(loss, torch.zeros(rows)) and not torch.isnan(d).any()
    assert rel_err(lse, torch.logsumexp(logits.double(), -1))[0] < 1e-6
    assert loss[1].item() == 0.0 and torch.equal(d[1].float(), torch.zeros(n_classes))
    if dt == F32:  # the CPU kernel, same inputs
        assert (loss - ops.cross_entropy(logits, labels)).abs().max().item() < 1e-5


def test_cross_entropy_label_out_of_range_gives_nan_not_a_wild_read(emu):
    loss, _ = K.cross_entropy_forward(emu, torch.randn(3, 5), torch.tensor([5, -1, 2]))
    assert torch.isnan(loss[:2]).all() and torch.isfinite(loss[2])
