"""The ``--minutes`` planner: how many optimizer steps fit in a time budget, measured on this machine."""
from __future__ import annotations

import copy
import os
import tempfile
import time

import numpy as np

from minibert.train import report, state
from minibert.train.common import append_metrics
from minibert.train.distributed import broadcast_int
from minibert.train.pretrain_args import CURVES_FILE, METRICS_FILE


def plan_steps(args, backend, batches, d, tokenizer, train_step, evaluate, rank: int, world_size: int,
               device) -> int:
    """Steps that fit in ``--minutes``: time whole training steps and the periodic work, then divide.

    A timed step is everything a step of the loop does: build the batch (unless worker processes build
    it in the background), forward, backward, clip, AdamW and the metrics line. Timing only forward and
    backward planned ~10% too many steps, so the time budget stopped runs before the learning rate had
    decayed to 0. Two untimed steps come first (the first calls allocate and warm caches), then the
    median of five timed ones. The periodic work is timed once each and counted as often as it will run,
    the final round included: an evaluation with its curves plot (every --eval-every steps) and a
    checkpoint (every --save-every steps), both written to a scratch folder here.

    The steps run at learning rate 0, which leaves every weight bit for bit unchanged (AdamW's move and
    its decoupled weight decay are both multiplied by the rate), and the optimizer's moments are put back
    afterwards; dropout seeds are counter-based and the data order is a function of the step. So a
    --minutes run that planned N steps trains exactly as a --steps N run would. Rank 0's plan is
    broadcast so all ranks agree.

    ``train_step(micro_batches, step, lr) -> (stats, grad_norm)`` and ``evaluate(batches) -> metrics``
    are the loop's own (``minibert.train.pretrain``), so what is timed is what will run.
    """
    fresh_optimizer = copy.deepcopy(backend.optimizer_state())
    times, rows = [], []
    eval_s = save_s = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        metrics_path = os.path.join(scratch, METRICS_FILE)
        for step in range(7):
            # With --num-workers, background processes build the batches while the model trains.
            micro_batches = batches[step] if args.num_workers else None
            t0 = time.perf_counter()
            if micro_batches is None:
                micro_batches = batches[step]
            lr = 0.0  # (the schedule is one formula per step: nothing worth timing)
            stats, grad_norm = train_step(micro_batches, step, lr)
            rows.append(report.train_row(step + 1, stats, lr, grad_norm, time.perf_counter() - t0))
            append_metrics(metrics_path, rows[-1])
            times.append(time.perf_counter() - t0)
        if d.eval_batches:
            t0 = time.perf_counter()
            # Every rank evaluates alone here: no collective, the same estimate.
            rows.append({"split": "eval", "step": 7, **evaluate(d.eval_batches)})
            eval_s = time.perf_counter() - t0
            if rank == 0:
                curves = os.path.join(scratch, CURVES_FILE)
                report.save_curves(rows, curves, d.unigram_accuracy)  # the first plot imports matplotlib, once a run
                t0 = time.perf_counter()
                report.save_curves(rows, curves, d.unigram_accuracy)
                eval_s += time.perf_counter() - t0
        if rank == 0:  # the optimizer holds its full moments now, as it will at every save
            t0 = time.perf_counter()
            state.save_checkpoint(scratch, lambda directory: backend.save_model(directory, tokenizer),
                                  {"optimizer": backend.optimizer_state()})
            save_s = time.perf_counter() - t0
    backend.load_optimizer_state(fresh_optimizer)
    step_s = float(np.median(times[2:]))
    # N steps take N * step_s, plus an evaluation every E steps and at the end, plus a checkpoint every
    # C steps and at the end: solve  budget = N * (step_s + eval_s / E + save_s / C) + eval_s + save_s.
    per_step = step_s + (eval_s / args.eval_every if args.eval_every else 0.0)
    per_step += save_s / args.save_every if args.save_every else 0.0
    steps = int((args.minutes * 60.0 - eval_s - save_s) / per_step)
    return broadcast_int(max(1, steps), world_size, device)
