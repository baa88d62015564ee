"""Optimizers and schedules of minibert.reference against torch.optim and closed forms."""
import math

import numpy as np
import pytest
import torch

from minibert.reference import optim, schedules

STEPS = 1000


def problem(seed):
    """A small least-squares fit with a weight, a bias and a LayerNorm-named gain (no weight decay)."""
    gen = np.random.default_rng(seed)
    x, y = gen.normal(size=(32, 5)), gen.normal(size=(32, 3))
    params = {"dense.weight": gen.normal(size=(3, 5)), "dense.bias": gen.normal(size=3),
              "LayerNorm.weight": 1 + 0.1 * gen.normal(size=3)}
    return x, y, params


def numpy_grads(x, y, p):
    """pred = (x W^T + b) * gamma; L = 0.5 * mean((pred - y)^2): gradients by hand."""
    z = x @ p["dense.weight"].T + p["dense.bias"]
    r = (z * p["LayerNorm.weight"] - y) / y.size  # dL/dpred
    dz = r * p["LayerNorm.weight"]
    return {"dense.weight": dz.T @ x, "dense.bias": dz.sum(0), "LayerNorm.weight": (r * z).sum(0)}


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_matches_torch_over_1000_steps(name):
    x, y, params = problem(int(np.random.default_rng().integers(1 << 30)))
    wd, lr = 0.05, 3e-2
    ours = getattr(optim, name)(params, lr=lr, weight_decay=wd)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    groups = [{"params": [tparams["dense.weight"]], "weight_decay": wd},
              {"params": [tparams["dense.bias"], tparams["LayerNorm.weight"]], "weight_decay": 0.0}]
    theirs = getattr(torch.optim, name)(groups, lr=lr)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for step in range(STEPS):
        rate = schedules.linear_warmup_decay(step, lr, warmup_steps=100, total_steps=STEPS)
        ours.step(numpy_grads(x, y, params), lr=rate)
        for g in theirs.param_groups:
            g["lr"] = rate
        theirs.zero_grad()
        pred = (tx @ tparams["dense.weight"].T + tparams["dense.bias"]) * tparams["LayerNorm.weight"]
        (0.5 * ((pred - ty) ** 2).mean()).backward()
        theirs.step()
    moved = np.abs(params["dense.weight"] - problem(0)[2]["dense.weight"]).max()
    assert moved > 0.1  # the fit actually went somewhere
    for k, v in params.items():
        assert np.abs(v - tparams[k].detach().numpy()).max() < 1e-6, k


def test_adam_weight_decay_closed_form():
    gen = np.random.default_rng()
    b1, b2, eps, lr = 0.9, 0.999, 1e-6, 1e-2
    # Constant gradient, no decay: m_t = (1 - b1^t) g, v_t = (1 - b2^t) g^2, so after T steps
    # p_T = p_0 - lr * sum_t (1 - b1^t) g / (sqrt(1 - b2^t) |g| + eps)   (no bias correction).
    p0, g = gen.normal(size=4), gen.normal(size=4)
    params = {"w.bias": p0.copy()}
    opt = optim.AdamWeightDecay(params, lr=lr, eps=eps, weight_decay=0.3)  # a bias: decay skipped
    T = 50
    for _ in range(T):
        opt.step({"w.bias": g})
    want = p0 - lr * sum((1 - b1 ** t) * g / (math.sqrt(1 - b2 ** t) * np.abs(g) + eps) for t in range(1, T + 1))
    np.testing.assert_allclose(params["w.bias"], want, rtol=1e-12)
    # One step with decay on a weight: p1 = p0 - lr * ((1 - b1) g / (sqrt(1 - b2) |g| + eps) + wd p0).
    params = {"w.weight": p0.copy()}
    optim.AdamWeightDecay(params, lr=lr, eps=eps, weight_decay=0.3).step({"w.weight": g})
    want = p0 - lr * ((1 - b1) * g / (math.sqrt(1 - b2) * np.abs(g) + eps) + 0.3 * p0)
    np.testing.assert_allclose(params["w.weight"], want, rtol=1e-12)


def test_weight_decay_exclusions():
    assert optim.decays("bert.encoder.layer.0.attention.self.query.weight")
    assert optim.decays("bert.embeddings.word_embeddings.weight")
    assert not optim.decays("bert.encoder.layer.0.output.dense.bias")
    assert not optim.decays("bert.embeddings.LayerNorm.weight")
    assert not optim.decays("cls.predictions.bias")


def test_state_dict_resumes_exactly():
    x, y, params = problem(1)
    a = optim.AdamW(params, lr=1e-2)
    for _ in range(5):
        a.step(numpy_grads(x, y, params))
    saved_params = {k: v.copy() for k, v in params.items()}
    b = optim.AdamW(saved_params, lr=1e-2)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        a.step(numpy_grads(x, y, params))
        b.step(numpy_grads(x, y, saved_params))
    for k in params:
        np.testing.assert_array_equal(params[k], saved_params[k])


def test_clip_grad_norm_matches_torch():
    gen = np.random.default_rng()
    grads = {"a": gen.normal(size=(3, 4)), "b": gen.normal(size=5)}
    clipped, norm = optim.clip_grad_norm(grads, 1.0)
    tg = [torch.tensor(g) for g in grads.values()]
    for t in tg:
        t.grad = t.clone()
    tnorm = torch.nn.utils.clip_grad_norm_(tg, 1.0)
    assert abs(norm - tnorm.item()) < 1e-12 and norm > 1.0
    for c, t in zip(clipped.values(), tg):
        np.testing.assert_allclose(c, t.grad.numpy(), rtol=1e-5)  # torch divides by norm + 1e-6
    total = math.sqrt(sum((c ** 2).sum() for c in clipped.values()))
    assert abs(total - 1.0) < 1e-12
    same, _ = optim.clip_grad_norm(grads, 100.0)
    for k in grads:
        np.testing.assert_array_equal(same[k], grads[k])
    with pytest.raises(FloatingPointError, match="diverged"):
        optim.clip_grad_norm({"a": np.array([np.nan])}, 1.0)


def test_schedules_match_their_formulas():
    assert schedules.constant(123, 0.5) == 0.5
    lr, warm, total = 1e-4, 10, 100
    assert schedules.linear_warmup_decay(0, lr, warm, total) == 0.0
    assert schedules.linear_warmup_decay(5, lr, warm, total) == pytest.approx(lr * 0.5)
    assert schedules.linear_warmup_decay(10, lr, warm, total) == pytest.approx(lr * 0.9)
    assert schedules.linear_warmup_decay(55, lr, warm, total) == pytest.approx(lr * 0.45)
    assert schedules.linear_warmup_decay(100, lr, warm, total) == 0.0
    assert schedules.linear_warmup_decay(150, lr, warm, total) == 0.0
    # warm-up 10, the peak until step 80, then 20 steps of linear decay to 0 (also on fractions of a budget)
    wsd = [schedules.warmup_stable_decay(step, lr, warm, 20, total) for step in (0, 5, 10, 50, 80, 85, 95, 100, 120)]
    np.testing.assert_allclose(wsd, [0.0, 0.5 * lr, lr, lr, lr, 0.75 * lr, 0.25 * lr, 0.0, 0.0], rtol=1e-12, atol=0)
    assert schedules.warmup_stable_decay(0.9, lr, 0.06, 0.2, 1.0) == pytest.approx(0.5 * lr)
    for bad in ((5, lr, 10, 0, 100), (5, lr, 60, 50, 100), (-1, lr, 10, 20, 100)):
        with pytest.raises(ValueError):
            schedules.warmup_stable_decay(*bad)
    d, w = 512, 4000
    for step in (0, 1, 999, 3998, 3999, 4000, 20000):
        n = step + 1
        assert schedules.inverse_sqrt(step, d, w) == pytest.approx(d ** -0.5 * min(n ** -0.5, n * w ** -1.5))
    peak = max(schedules.inverse_sqrt(s, d, w) for s in range(3990, 4010))
    assert peak == pytest.approx((d * w) ** -0.5)
    with pytest.raises(ValueError, match="negative"):
        schedules.constant(-1, 0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.inverse_sqrt(3, 512, 0)
