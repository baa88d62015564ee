"""Hash dropout (op and pure-torch fallback) vs minibert.rng / the NumPy reference, backend_info, and the
eager fallback when the extension is missing or disabled."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from minibert import ops, rng
from minibert.reference import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_ext = pytest.mark.skipif(not ops.is_available(), reason="minibert._C not built (MINIBERT_NO_EXT=1?)")
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def fresh_seed():
    return int(np.random.randint(0, 2**63 - 1)) * 2 + 1  # spans the full 64-bit range, wraps in the hash


def test_torch_fallback_hash_is_bit_identical_to_numpy():
    for seed, offset in ((0, 0), (fresh_seed(), 12345), (2**64 - 1, 2**64 - 7)):
        got = ops.eager.hash_bits(seed, offset, 5000, "cpu").numpy().astype(np.uint64)
        assert np.array_equal(got, rng.random_bits(seed, offset, np.arange(5000, dtype=np.uint64)))
        assert got.max() < 2**24 and len(np.unique(got)) > 4900  # 24 bits, not degenerate


@needs_ext
@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropout_op_matches_reference(device, dtype):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels take float32/16/bf16")
    p, seed, offset = 0.3, fresh_seed(), 777
    x = torch.randn(4, 33, 65, dtype=torch.float64)
    y_ref, cache = layers.dropout_forward(x.numpy(), p, seed, offset)
    dy = torch.randn_like(x)
    dx_ref = layers.dropout_backward(dy.numpy(), cache)
    xt = x.to(device, dtype).requires_grad_()
    y = ops.dropout(xt, p, seed, offset)
    y.backward(dy.to(device, dtype))
    tol = 1e-15 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(y.detach().double().cpu().numpy(), y_ref, rtol=tol, atol=0)
    np.testing.assert_allclose(xt.grad.double().cpu().numpy(), dx_ref, rtol=tol, atol=0)
    assert 0.25 < float((y == 0).double().mean()) < 0.35  # about p of the elements dropped


@pytest.mark.parametrize("device", devices)
def test_dropout_scale_mask_matches_rng_with_and_without_extension(device):
    p, seed, offset = 0.1, fresh_seed(), 3
    want = rng.dropout_scale_mask((3, 7, 11), p, seed, offset)
    got = ops.dropout_scale_mask((3, 7, 11), p, seed, offset, device=device, dtype=torch.float64)
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    ones = torch.ones(3, 7, 11, dtype=torch.float64, device=device)
    eager = ones * (ops.eager.hash_bits(seed, offset, ones.numel(), device) >= rng.dropout_threshold(p)
                    ).reshape(ones.shape) / (1 - p)
    np.testing.assert_array_equal(eager.cpu().numpy(), want)


@needs_ext
def test_dropout_gradcheck_and_opcheck():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.dropout(x, 0.4, 9, 2), (x,))
    torch.library.opcheck(torch.ops.minibert.dropout.default, (x, 0.4, 9, 2))


def test_dropout_p_zero_is_identity_and_bad_p_raises():
    x = torch.randn(3, 4)
    assert ops.dropout(x, 0.0, 1) is x
    for bad in (1.0, -0.01, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            ops.dropout(x, bad, 1)
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            ops.dropout_scale_mask((2,), bad, 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.dropout(np.ones(3), 0.1, 1)


@needs_ext
def test_native_dropout_checks_p():
    with pytest.raises(RuntimeError, match=r"\[0, 1\)"):
        torch.ops.minibert.dropout(torch.randn(3), 1.0, 0, 0)


def test_backend_info_describes_the_active_backend():
    info = ops.backend_info()
    assert set(info) >= {"backend", "how", "reason", "extension_path", "cuda_kernels", "kernel_dtypes", "ops"}
    assert set(info["ops"]) == {"attention", "gelu", "bias_gelu", "dropout", "residual_dropout_layernorm",
                                 "cross_entropy", "linear_cross_entropy"}
    assert info["backend"] == ("extension" if ops.is_available() else "eager")
    if ops.is_available():
        assert os.path.exists(info["extension_path"])
        assert info["ops"]["attention"]["cpu"] == "fused" and "float32" in info["kernel_dtypes"]["cpu"]
    json.dumps(info)  # printable as JSON (python -m minibert.ops)


def run_python(code, env_extra, cwd):
    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


FALLBACK_CHECK = """
    import json, warnings
    import numpy as np, torch
    from minibert.reference import layers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from minibert import ops  # the extension is looked for (and its absence warned about) on import
        q, k, v = (torch.randn(2, 2, 9, 16, dtype=torch.float64) for _ in range(3))
        mask = torch.ones(2, 9); mask[0] = 0; mask[1, 4:] = 0
        out = ops.attention(q, k, v, attention_mask=mask, dropout_p=0.3, seed=5, offset=1)
        out = ops.attention(q, k, v, attention_mask=mask, dropout_p=0.3, seed=5, offset=1)
        ref, _ = layers.attention_forward(q.numpy(), k.numpy(), v.numpy(), mask.numpy(), None, 0.3, 5, 1)
        assert np.abs(out.numpy() - ref).max() < 1e-12
        x, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
        y, _ = layers.bias_gelu_forward(x.numpy(), b.numpy(), "tanh")
        assert np.abs(ops.bias_gelu(x, b, "tanh").numpy() - y).max() < 1e-12
        y, _ = layers.dropout_forward(x.numpy(), 0.5, 3, 4)
        assert np.array_equal(ops.dropout(x, 0.5, 3, 4).numpy(), y)
    fallback = [w for w in caught if issubclass(w.category, ops.ExtensionFallbackWarning)]
    print(json.dumps({"info": ops.backend_info(), "warnings": [str(w.message) for w in fallback]}))
"""


def test_eager_fallback_when_disabled():
    out = json.loads(run_python(FALLBACK_CHECK, {"MINIBERT_NO_EXT": "1"}, ROOT).stdout.splitlines()[-1])
    assert out["info"]["backend"] == "eager" and "MINIBERT_NO_EXT" in out["info"]["reason"]
    assert out["info"]["ops"]["attention"] == {"cpu": "eager", "cuda": "eager"}
    assert out["warnings"] == []  # chosen on purpose: no warning


def test_eager_fallback_warns_once_when_extension_cannot_be_built(tmp_path):
    """A copy of the package without csrc/ and with the import of minibert._C blocked (an editable install
    could still find the real one): the JIT build has no sources and fails, one warning, eager."""
    shutil.copytree(os.path.join(ROOT, "minibert"), tmp_path / "minibert",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    env = {"MINIBERT_EXT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}
    block = 'import sys\nsys.modules["minibert._C"] = None  # makes `from minibert import _C` fail\n'
    out = json.loads(run_python(block + textwrap.dedent(FALLBACK_CHECK), env, tmp_path).stdout.splitlines()[-1])
    assert out["info"]["backend"] == "eager" and "JIT build failed" in out["info"]["reason"]
    assert len(out["warnings"]) == 1 and "eager" in out["warnings"][0]
