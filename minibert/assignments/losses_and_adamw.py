"""Assignment "losses_and_adamw": the pretraining loss, its gradient, and the optimizer step.

``reference/losses.py``: a stable log-softmax and the gradient of the (MLM or NSP) cross-entropy;
``reference/optim.py``: global-norm gradient clipping, the bias-corrected Adam move, AdamW's decoupled
weight decay; ``reference/schedules.py``: BERT's warmup-then-linear-decay learning rate. Checks compare
with the pristine functions in float64 on fresh random inputs (and central differences for the gradient).
"""
from __future__ import annotations

import types

import numpy as np

from minibert.assignments.base import (Assignment, Task, assert_close, assert_finite_differences,
                                       assert_raises)
from minibert.reference import losses as PL
from minibert.reference import optim as PO
from minibert.reference import schedules as PS

LOSSES, OPTIM, SCHEDULES = "reference/losses.py", "reference/optim.py", "reference/schedules.py"


def _check_log_softmax(student, modules, gen):
    x = gen.standard_normal((4, 6)) * 3.0
    for axis in (-1, 0):
        assert_close(f"log_softmax(axis={axis})", student(x, axis=axis), PL.log_softmax(x, axis=axis))
    huge = x * 400.0  # exp(1000) overflows: only the max-subtracted form survives
    assert_close("log_softmax of logits around +-1000", student(huge), PL.log_softmax(huge))


def _check_cross_entropy_backward(student, modules, gen):
    logits = gen.standard_normal((2, 5, 7)) * 2.0
    labels = gen.integers(0, 7, (2, 5))
    labels[gen.random((2, 5)) < 0.4] = PL.IGNORE_INDEX  # MLM: most positions are not predicted
    labels[0, 0] = 3  # at least one predicted position
    dloss = float(gen.uniform(0.5, 2.0))
    _, cache = PL.cross_entropy_forward(logits, labels)
    got = student(dloss, cache)
    assert_close("cross_entropy_backward (MLM labels with -100)", got, PL.cross_entropy_backward(dloss, cache))
    assert_finite_differences("cross_entropy_backward", lambda: dloss * PL.cross_entropy_forward(logits, labels)[0],
                              {"logits": logits}, {"logits": got}, gen)
    _, cache = PL.cross_entropy_forward(logits, np.full((2, 5), PL.IGNORE_INDEX))
    assert_close("cross_entropy_backward with every label ignored", student(dloss, cache), np.zeros_like(logits))


def _check_clip_grad_norm(student, modules, gen):
    grads = {"a.weight": gen.standard_normal((3, 4)), "a.bias": gen.standard_normal(3)}
    norm = float(np.sqrt(sum((g ** 2).sum() for g in grads.values())))
    for max_norm in (norm / 3.0, norm * 2.0):  # clipped, then left alone
        got, got_norm = student({k: g.copy() for k, g in grads.items()}, max_norm)
        want, want_norm = PO.clip_grad_norm(grads, max_norm)
        assert_close(f"clip_grad_norm(max_norm={max_norm / norm:.2f} * norm): the norm", got_norm, want_norm)
        for name in grads:
            assert_close(f"clip_grad_norm(max_norm={max_norm / norm:.2f} * norm): {name}", got[name], want[name])
    assert_raises("clip_grad_norm(max_norm=0)", ValueError, lambda: student(grads, 0.0))


def _params(gen):
    return {"layer.dense.weight": gen.standard_normal((3, 4)), "layer.dense.bias": gen.standard_normal(3),
            "layer.LayerNorm.weight": 1.0 + gen.standard_normal(4)}


def _run_steps(what, make_pristine, make_student, gen, steps=5):
    """Run both optimizers ``steps`` times on the same random gradients; params, m and v must agree."""
    params = _params(gen)
    pristine = make_pristine({k: p.copy() for k, p in params.items()})
    student = make_student({k: p.copy() for k, p in params.items()})
    for step in range(steps):
        grads = {k: gen.standard_normal(p.shape) for k, p in params.items()}
        lr = float(gen.uniform(1e-3, 1e-1))
        pristine.step(grads, lr=lr)
        student.step(grads, lr=lr)
        for name in params:
            for part in ("params", "m", "v"):
                assert_close(f"{what}, step {step + 1}: {part}[{name!r}]", getattr(student, part)[name],
                             getattr(pristine, part)[name])


def _check_adam_move(student, modules, gen):
    betas = (float(gen.uniform(0.8, 0.95)), float(gen.uniform(0.99, 0.999)))

    def make_student(params):
        opt = PO.Adam(params, betas=betas, eps=1e-8, weight_decay=0.01)
        opt._adam = types.MethodType(student, opt)  # the student's move inside the pristine step
        return opt

    _run_steps("Adam._adam (with L2 weight decay 0.01)",
               lambda params: PO.Adam(params, betas=betas, eps=1e-8, weight_decay=0.01), make_student, gen)


def _check_adamw_update(student, modules, gen):
    def make_student(params):
        opt = PO.AdamW(params, weight_decay=0.05)
        opt._update = types.MethodType(student, opt)  # calls self._adam: the pristine move
        return opt

    _run_steps("AdamW._update (weight decay 0.05; none on biases and LayerNorm)",
               lambda params: PO.AdamW(params, weight_decay=0.05), make_student, gen)


def _check_linear_warmup_decay(student, modules, gen):
    base_lr = float(gen.uniform(1e-4, 1e-3))
    for warmup, total in ((int(gen.integers(2, 10)), int(gen.integers(20, 40))), (0, 15)):
        for step in range(total + 3):
            assert_close(f"linear_warmup_decay(step={step}, warmup_steps={warmup}, total_steps={total})",
                         student(step, base_lr, warmup, total), PS.linear_warmup_decay(step, base_lr, warmup, total))
    assert_raises("linear_warmup_decay(step=-1)", ValueError, lambda: student(-1, base_lr, 2, 10))


ASSIGNMENT = Assignment(
    name="losses_and_adamw",
    title="The pretraining loss, its gradient, and AdamW",
    summary=("Write the pieces that turn logits into a parameter update: a numerically stable log-softmax, "
             "the gradient of the cross-entropy that both the masked-LM and the next-sentence losses use "
             "(positions labelled -100 are not predicted), global-norm gradient clipping, the bias-corrected "
             "Adam move, AdamW's decoupled weight decay, and BERT's warmup-then-linear-decay learning rate."),
    tasks=(
        Task(LOSSES, "log_softmax", 1, "float64 logits [4, 6] along both axes, and logits around +-1000",
             _check_log_softmax),
        Task(LOSSES, "cross_entropy_backward", 3, "logits [2, 5, 7] with -100 labels, against the reference and "
             "central differences; all labels ignored gives zeros", _check_cross_entropy_backward),
        Task(OPTIM, "clip_grad_norm", 2, "two tensors clipped to a third of their norm and left alone at twice it; "
             "max_norm <= 0 raises ValueError", _check_clip_grad_norm),
        Task(OPTIM, "Adam._adam", 2, "params, m and v after 5 Adam steps with random gradients and learning rates",
             _check_adam_move),
        Task(OPTIM, "AdamW._update", 2, "params, m and v after 5 AdamW steps (weight decay only where decays(name)); "
             "call self._adam for the Adam move",
             _check_adamw_update),
        Task(SCHEDULES, "linear_warmup_decay", 1, "every step of two schedules (with and without warmup); a "
             "negative step raises ValueError", _check_linear_warmup_decay),
    ),
)
