"""Assignment "losses_and_adamw": the pretraining loss, its gradient, and the optimizer step.

``reference/losses.py``: a stable log-softmax and the gradient of the (MLM or NSP) cross-entropy;
``reference/optim.py``: global-norm gradient clipping, the bias-corrected Adam move, AdamW's decoupled
weight decay; ``reference/schedules.py``: BERT's warmup-then-linear-decay learning rate. Checks compare
with the pristine functions in float64 on fresh random inputs (and central differences for the gradient).
"""
from __future__ import annotations

import numpy as np

from minibert.assignments.base import Assignment, Task, compare
from minibert.reference import losses as PL
from minibert.reference import optim as PO
from minibert.reference import schedules as PS

LOSSES, OPTIM, SCHEDULES = "reference/losses.py", "reference/optim.py", "reference/schedules.py"


def _check_log_softmax(t, gen):
    x = gen.standard_normal((4, 6)) * 3.0
    for axis in (-1, 0):
        want = PL.log_softmax(x, axis=axis)
        with t.variant(f"axis={axis}", ["log p"]) as v:
            v.close("log p", t.call(x, axis=axis), want)
    huge = x * 400.0  # exp(1000) overflows: only the max-subtracted form survives
    want = PL.log_softmax(huge)
    with t.variant("logits around +-1000", ["log p"]) as v:
        v.close("log p", t.call(huge), want)


def _check_cross_entropy_backward(t, gen):
    logits = gen.standard_normal((2, 5, 7)) * 2.0
    labels = gen.integers(0, 7, (2, 5))
    labels[gen.random((2, 5)) < 0.4] = PL.IGNORE_INDEX  # MLM: most positions are not predicted
    labels[0, 0] = 3  # at least one predicted position
    dloss = float(gen.uniform(0.5, 2.0))
    _, cache = PL.cross_entropy_forward(logits, labels)
    want = PL.cross_entropy_backward(dloss, cache)
    with t.variant("MLM labels with -100", ["dlogits"]) as v:
        v.gradient("dlogits", t.call(dloss, cache), want,
                   lambda: dloss * PL.cross_entropy_forward(logits, labels)[0], logits, gen)
    _, cache = PL.cross_entropy_forward(logits, np.full((2, 5), PL.IGNORE_INDEX))
    with t.variant("every label ignored", ["dlogits"]) as v:
        v.close("dlogits", t.call(dloss, cache), np.zeros_like(logits))


def _check_clip_grad_norm(t, gen):
    grads = {"a.weight": gen.standard_normal((3, 4)), "a.bias": gen.standard_normal(3)}
    norm = float(np.sqrt(sum((g ** 2).sum() for g in grads.values())))
    for max_norm, what in ((norm / 3.0, "clipped to a third of the norm"), (norm * 2.0, "left alone at twice it")):
        want, want_norm = PO.clip_grad_norm(grads, max_norm)
        with t.variant(what, ["the norm", *grads]) as v:
            got = t.call({k: g.copy() for k, g in grads.items()}, max_norm)
            if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict)):
                for output in ["the norm", *grads]:
                    v.check(output, False, f"must return (clipped grads dict, norm), got {type(got).__name__}")
                continue
            v.close("the norm", got[1], want_norm)
            for name in grads:
                v.close(name, got[0].get(name), want[name])
    with t.variant("max_norm=0", ["raises ValueError"]) as v:
        v.raises("raises ValueError", ValueError, grads, 0.0)


def _params(gen):
    return {"layer.dense.weight": gen.standard_normal((3, 4)), "layer.dense.bias": gen.standard_normal(3),
            "layer.LayerNorm.weight": 1.0 + gen.standard_normal(4)}


def _run_steps(t, gen, pristine, student, steps=5):
    """Run both optimizers ``steps`` times on the same random gradients (the pristine one first); after
    each step, params, m and v are a case each."""
    for step in range(steps):
        grads = {k: gen.standard_normal(p.shape) for k, p in pristine.params.items()}
        lr = float(gen.uniform(1e-3, 1e-1))
        pristine.step(grads, lr=lr)
        with t.variant(f"step {step + 1}", ["params", "m", "v"]) as v:
            student.step(grads, lr=lr)
            for part in ("params", "m", "v"):
                problems = [f"[{name!r}] {problem}" for name in pristine.params
                            if (problem := compare(getattr(student, part)[name], getattr(pristine, part)[name]))]
                v.check(part, not problems, "; ".join(problems))


def _check_adam_move(t, gen):
    betas = (float(gen.uniform(0.8, 0.95)), float(gen.uniform(0.99, 0.999)))

    class StudentAdam(PO.Adam):
        def _adam(self, p, g, m, v, lr):  # the student's move inside the pristine step
            t.call(self, p, g, m, v, lr)

    params = _params(gen)
    _run_steps(t, gen, PO.Adam({k: p.copy() for k, p in params.items()}, betas=betas, eps=1e-8, weight_decay=0.01),
               StudentAdam({k: p.copy() for k, p in params.items()}, betas=betas, eps=1e-8, weight_decay=0.01))


def _check_adamw_update(t, gen):
    class StudentAdamW(PO.AdamW):
        def _update(self, p, g, m, v, lr, wd):  # the student's update; its self._adam is the pristine move
            t.call(self, p, g, m, v, lr, wd)

    params = _params(gen)
    _run_steps(t, gen, PO.AdamW({k: p.copy() for k, p in params.items()}, weight_decay=0.05),
               StudentAdamW({k: p.copy() for k, p in params.items()}, weight_decay=0.05))


def _check_linear_warmup_decay(t, gen):
    base_lr = float(gen.uniform(1e-4, 1e-3))
    for warmup, total in ((int(gen.integers(2, 10)), int(gen.integers(20, 40))), (0, 15)):
        name = f"warmup_steps={warmup}, total_steps={total}"
        want = [PS.linear_warmup_decay(step, base_lr, warmup, total) for step in range(total + 3)]
        with t.variant(name, ["every step"]) as v:
            got = [t.call(step, base_lr, warmup, total) for step in range(total + 3)]
            wrong = [step for step in range(total + 3) if compare(got[step], want[step]) is not None]
            v.check("every step", not wrong, f"wrong at steps {wrong}; at step {wrong[0]}: "
                    f"{compare(got[wrong[0]], want[wrong[0]])}" if wrong else "")
    with t.variant("step=-1", ["raises ValueError"]) as v:
        v.raises("raises ValueError", ValueError, -1, base_lr, 2, 10)


ASSIGNMENT = Assignment(
    name="losses_and_adamw",
    title="The pretraining loss, its gradient, and AdamW",
    summary=("Write the pieces that turn logits into a parameter update: a numerically stable log-softmax, "
             "the gradient of the cross-entropy that both the masked-LM and the next-sentence losses use "
             "(positions labelled -100 are not predicted), global-norm gradient clipping, the bias-corrected "
             "Adam move, AdamW's decoupled weight decay, and BERT's warmup-then-linear-decay learning rate."),
    tasks=(
        Task(LOSSES, "log_softmax", 1, "float64 logits [4, 6] along both axes, and logits around +-1000",
             _check_log_softmax,
             notebook=('x = gen.standard_normal((4, 6)) * 3\n'
                       'naive = np.log(np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True))\n'
                       'assert np.allclose(losses.log_softmax(x), naive)\n'
                       'assert np.isfinite(losses.log_softmax(x * 400)).all(), "overflow: subtract the max first"\n'
                       'print(losses.log_softmax(np.array([1000.0, 0.0])))')),
        Task(LOSSES, "cross_entropy_backward", 3, "logits [2, 5, 7] with -100 labels, against the reference and "
             "central differences; all labels ignored gives zeros", _check_cross_entropy_backward,
             contract=("Backward of cross_entropy_forward. dloss: the gradient with respect to the scalar loss; "
                       "cache: (shape, predicted, labels, logp, count): the logits' shape, a boolean [N] of "
                       "the N = prod(shape[:-1]) rows that are predicted, their labels [count], their "
                       "log-probabilities [count, C] and count.\n\nReturns dlogits, shaped like the "
                       "logits; rows that are not predicted get 0."),
             notebook=('logits = gen.standard_normal((2, 5, 7))\n'
                       'labels = np.where(gen.random((2, 5)) < 0.4, -100, gen.integers(0, 7, (2, 5)))\n'
                       'labels[0, 0] = 3\n'
                       'loss, cache = losses.cross_entropy_forward(logits, labels)\n'
                       'dlogits = losses.cross_entropy_backward(1.0, cache)\n'
                       'errors = check_gradients(lambda: losses.cross_entropy_forward(logits, labels)[0],\n'
                       '                         {"logits": logits}, {"logits": dlogits})\n'
                       'print(errors)\n'
                       'assert errors["logits"] < 1e-6')),
        Task(OPTIM, "clip_grad_norm", 2, "two tensors clipped to a third of their norm and left alone at twice it; "
             "max_norm <= 0 raises ValueError", _check_clip_grad_norm, may_change=("grads",),
             notebook=('grads = {"w": gen.standard_normal((3, 4)), "b": gen.standard_normal(3)}\n'
                       'clipped, norm = optim.clip_grad_norm({k: g.copy() for k, g in grads.items()}, 1.0)\n'
                       'new_norm = np.sqrt(sum((g ** 2).sum() for g in clipped.values()))\n'
                       'print(f"norm {norm:.3f} -> {new_norm:.3f}")\n'
                       'assert abs(new_norm - min(norm, 1.0)) < 1e-12\n'
                       'ratio = clipped["b"][0] / grads["b"][0]\n'
                       'assert np.allclose(clipped["w"] / grads["w"], ratio)  # one direction, one scale')),
        Task(OPTIM, "Adam._adam", 2, "params, m and v after 5 Adam steps with random gradients and learning rates",
             _check_adam_move, in_place=("self", "p", "m", "v"),
             notebook=('# Adam minimises a badly scaled quadratic, f(p) = sum(c * (p - target)^2)\n'
                       'target, c = gen.standard_normal(5), np.array([1e-3, 1e-2, 1.0, 1e2, 1e3])\n'
                       'params = {"p": np.zeros(5)}\n'
                       'opt = optim.Adam(params, lr=0.05)\n'
                       'for step in range(2000):\n'
                       '    opt.step({"p": 2 * c * (params["p"] - target)})\n'
                       'print(params["p"] - target)\n'
                       'assert np.abs(params["p"] - target).max() < 1e-2')),
        Task(OPTIM, "AdamW._update", 2, "params, m and v after 5 AdamW steps (weight decay only where decays(name)); "
             "call self._adam for the Adam move", _check_adamw_update, in_place=("self", "p", "m", "v"),
             notebook=('# Zero gradients: only the decay acts, weights shrink by (1 - lr * wd) a step, biases stay\n'
                       'params = {"dense.weight": np.ones(3), "dense.bias": np.ones(3)}\n'
                       'opt = optim.AdamW(params, lr=0.1, weight_decay=0.5)\n'
                       'for step in range(3):\n'
                       '    opt.step({name: np.zeros(3) for name in params})\n'
                       'print(params)\n'
                       'assert np.allclose(params["dense.weight"], 0.95 ** 3)\n'
                       'assert np.allclose(params["dense.bias"], 1.0)')),
        Task(SCHEDULES, "linear_warmup_decay", 1, "every step of two schedules (with and without warmup); a "
             "negative step raises ValueError", _check_linear_warmup_decay,
             notebook=('lrs = [schedules.linear_warmup_decay(step, 1e-3, 10, 100) for step in range(105)]\n'
                       'print([f"{lr:.1e}" for lr in lrs[::10]])\n'
                       'assert lrs[0] == 0 and abs(lrs[5] - 5e-4) < 1e-15 and lrs[100:] == [0.0] * 5')),
    ),
    notebook_setup='''\
import numpy as np
from minibert.assignments.notebook import load
from minibert.reference.gradcheck import check_gradients

losses, optim, schedules = load("losses.py"), load("optim.py"), load("schedules.py")  # your files
gen = np.random.default_rng(0)
''',
    questions=(
        "Why does log_softmax subtract the maximum before exponentiating, and why can the result still be "
        "exactly right (not an approximation)?",
        "The cross-entropy gradient is softmax - onehot divided by the number of predicted positions. Why "
        "divide by that number and not by the number of positions?",
        "AdamW decays p by lr * wd outside the Adam move; Adam with weight_decay adds wd * p to the gradient. "
        "Why do the two differ once the gradient is divided by sqrt(v)?",
    ),
)
