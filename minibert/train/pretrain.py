"""``minibert pretrain``: train a BERT from scratch on masked-LM + next-sentence prediction.

The loop, in the order it happens (options and defaults: ``minibert.train.pretrain_args``):

1. **Data** (``minibert.train.data``). Read the corpus, hold out every ``--held-out-every``-th document for
   evaluation *before* any instance is built (so no sentence of the evaluation text is ever trained on),
   then build the pretraining instances (``[CLS] A [SEP] B [SEP]`` with masks) once; or read the
   instances of ``--shards DIR`` from disk. Step ``s``'s batch is a pure function of ``(--seed, s)``.
2. **Model** (``minibert.train.backends``). ``minibert.modeling.BertForPreTraining`` with
   ``torch.optim.AdamW`` (``--backend torch``), or the NumPy reference with its hand-written backward and
   AdamW (``--backend numpy``) driven by the very same loop: same batches, schedule, logging, checkpoints.
3. **Steps.** Gradients accumulate over ``--grad-accum`` micro-batches, the loss normalised by the whole
   global batch; then the global gradient norm is clipped and AdamW steps at BERT's linear warm-up then
   linear decay of the learning rate (``minibert.reference.schedules``).
4. **Watching** (``minibert.train.report``). A progress bar (loss, MLM / NSP accuracy, tokens/s); every
   step appended to ``OUT/metrics.jsonl``; evaluation on the held-out documents every ``--eval-every``
   steps; loss and accuracy curves in ``OUT/curves.png``.
5. **Checkpoints** (``minibert.train.state``). ``OUT/last`` every ``--save-every`` steps and at the end:
   loads in ``transformers`` unchanged, and ``--resume`` continues it with the same loss trajectory.
6. **Summary.** Final train / eval loss, MLM and NSP accuracy, and the *unigram baseline*: the MLM
   accuracy of always guessing the most frequent masked token, the score to beat.

Try it: ``python -m minibert.train.pretrain`` (five minutes on two CPU cores), then
``python -m minibert.fill_mask --model runs/pretrain/last "The [MASK] statement exits a loop."``.

Several processes: ``torchrun --nproc_per_node N -m minibert pretrain ...`` runs data parallel
(DistributedDataParallel, gloo on CPU, nccl on GPU). Each rank trains on a disjoint part of every global
batch (``global batch = --batch-size x N x --grad-accum``); rank 0 logs and saves.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time

import torch

from minibert.files import atomic_write_text
from minibert.reference.schedules import linear_warmup_decay
from minibert.train import budget, distributed, report, state
from minibert.train.backends import STAT_KEYS, build_backend, count_batch
from minibert.train.common import append_metrics, derived_seed, read_metrics
from minibert.train.data import StepBatches, prepare_data
from minibert.train.pretrain_args import (CURVES_FILE, METRICS_FILE, SUMMARY_FILE, TRAJECTORY_ARGS,  # noqa: F401
                                          add_arguments, build_config, build_parser, check_args)  # (cli: add_arguments)


def main(argv=None) -> dict:
    """Parse ``argv`` and pretrain; returns the summary dictionary (also written to OUT/summary.json)."""
    return run(build_parser().parse_args(argv))


def run(args) -> dict:
    """Pretrain as ``args`` (from :func:`add_arguments`) say; returns the summary dictionary."""
    rank, world_size, device, created_group = distributed.setup(args.device)
    try:
        return train(args, rank, world_size, device)
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def train_step(backend, micro_batches: list[dict], step: int, lr: float, *, seed: int, rank: int, world_size: int,
               device) -> tuple[dict, float]:
    """One optimizer step over this rank's micro-batches; returns the stats summed over all ranks and the
    pre-clip gradient norm. Dropout seeds are a pure function of ``(seed, step, micro-step, rank)``."""
    # Normalise by the whole global batch (every rank's masked tokens and sequences), so splitting it over
    # processes or accumulation steps does not change the gradient.
    counts = {k: sum(count_batch(b)[k] for b in micro_batches) for k in ("n_masked", "n_examples")}
    norm = distributed.all_reduce_sum(counts, world_size, device)
    seeds = [derived_seed(seed, step, a, rank) for a in range(len(micro_batches))]
    stats = backend.forward_backward(micro_batches, norm, seeds)  # gradients accumulate over the micro-batches
    grad_norm = backend.optimizer_step(lr)                        # clip the global norm, then AdamW
    return distributed.all_reduce_sum(stats, world_size, device), grad_norm


def evaluate(backend, batches: list[dict], *, rank: int, world_size: int, device) -> dict:
    """Loss and accuracies on ``batches`` with dropout off, split over the ranks and summed."""
    totals = dict.fromkeys(STAT_KEYS, 0.0)
    for i in range(rank, len(batches), world_size):
        for k, v in backend.evaluate(batches[i]).items():
            totals[k] += v
    return report.metrics(distributed.all_reduce_sum(totals, world_size, device))


def train(args, rank: int, world_size: int, device) -> dict:
    """The run: data, model, optimizer, the loop, the summary (rank 0 writes files and prints)."""
    from minibert.tokenizer import BertTokenizer
    from minibert.tokenizer.train import default_vocab_dir

    check_args(args, world_size)
    if args.amp and device.type != "cuda" and rank == 0:
        print("note: --amp (bf16 autocast) only applies on CUDA; training in float32 on the CPU")
    out, metrics_path, curves_path = args.out, os.path.join(args.out, METRICS_FILE), os.path.join(args.out, CURVES_FILE)
    resume_dir = state.find_checkpoint(out) if args.resume else None
    saved = state.load_trainer_state(resume_dir) if resume_dir else None
    weights_dir = resume_dir or args.init_from

    # -- data: the same instances give the same batches, from memory or from shards
    tokenizer = BertTokenizer.from_pretrained(weights_dir or args.vocab or args.shards or default_vocab_dir())
    config = build_config(args, tokenizer, weights_dir)
    d = prepare_data(args, tokenizer, config)
    global_batch = args.batch_size * world_size * args.grad_accum
    run_args = {**{k: getattr(args, k) for k in TRAJECTORY_ARGS}, "global_batch_size": global_batch,
                "corpus_fingerprint": d.fingerprint}
    if saved is not None:
        state.check_same_run(saved["args"], run_args)
    batches = StepBatches(d.instances, micro_batch_size=args.batch_size, grad_accum=args.grad_accum, rank=rank,
                          world_size=world_size, seed=args.seed, pad_id=config.pad_token_id,
                          max_seq_length=args.max_seq_length, num_steps=0, masking=d.masking)

    # -- model and optimizer (DDP-wrapped under torchrun)
    backend = build_backend(args, config, device, world_size, weights_dir)
    step_fn = functools.partial(train_step, backend, seed=args.seed, rank=rank, world_size=world_size, device=device)
    eval_fn = functools.partial(evaluate, backend, rank=rank, world_size=world_size, device=device)

    # -- how many steps, and where to start
    start_step = 0
    if saved is not None:
        backend.load_optimizer_state(saved["optimizer"])
        state.restore_rng_state(saved["rng"])
        start_step, total_steps = saved["step"], saved["total_steps"]
    elif args.steps:
        total_steps = args.steps
    else:  # --minutes: time real steps (at lr 0, moving no weight) and plan the count
        alone = functools.partial(evaluate, backend, rank=0, world_size=1, device=device)
        total_steps = budget.plan_steps(args, backend, batches, d, tokenizer, step_fn, alone, rank, world_size,
                                        device)
    batches.num_steps = total_steps
    warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total_steps)
    run_state = {"total_steps": total_steps, "args": run_args,
                 "scheduler": {"kind": "linear_warmup_decay", "peak_lr": args.lr, "warmup_steps": warmup,
                               "total_steps": total_steps},
                 "data": {"n_instances": len(d.instances), "global_batch_size": global_batch,
                          "corpus_fingerprint": d.fingerprint}}

    rows: list[dict] = []
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        rows = read_metrics(metrics_path, start_step) if saved is not None else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"pretraining a {config.num_hidden_layers}-layer, {config.hidden_size}-wide BERT "
              f"({args.backend}, {device}, {world_size} process{'es' if world_size > 1 else ''}) on "
              f"{len(d.instances)} instances from {d.source}; global batch {global_batch}; {total_steps} steps"
              + (f" planned for {args.minutes:g} min" if args.minutes and saved is None else ""))

    # -- the loop; worker processes (--num-workers) build the next steps' batches in the background
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start_step, total_steps),
                                         num_workers=args.num_workers, collate_fn=_identity)
    progress = report.Progress(total_steps, start_step, enabled=rank == 0 and not args.quiet)
    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60.0 if args.minutes and saved is None else None
    step_done, train_seconds, tokens_seen = start_step, 0.0, 0.0
    t_step = time.perf_counter()
    for step, micro_batches in zip(range(start_step, total_steps), loader):
        lr = linear_warmup_decay(step, args.lr, warmup, total_steps)
        stats, grad_norm = step_fn(micro_batches, step, lr)
        step_done, seconds = step + 1, time.perf_counter() - t_step  # seconds include waiting for the batch
        train_seconds += seconds
        tokens_seen += stats["n_tokens"]
        row = report.train_row(step_done, stats, lr, grad_norm, seconds)
        if rank == 0:
            rows.append(row)
            append_metrics(metrics_path, row)
            progress.update(row)
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"the loss became {row['loss']} at step {step_done}; lower --lr "
                                     f"(now {args.lr}) or raise --warmup-steps")
        if d.eval_batches and args.eval_every and step_done % args.eval_every == 0 and step_done < total_steps:
            result = eval_fn(d.eval_batches)
            if rank == 0:
                rows.append({"split": "eval", "step": step_done, **result})
                append_metrics(metrics_path, rows[-1])
                report.save_curves(rows, curves_path, d.unigram_accuracy)
        if args.save_every and step_done % args.save_every == 0 and step_done < total_steps and rank == 0:
            state.save_pretraining(out, backend, tokenizer, step_done, run_state, args.keep_checkpoints)
        # Every rank stops at the same step: one late rank stops them all.
        if deadline is not None and distributed.all_reduce_sum(
                {"late": float(time.perf_counter() > deadline)}, world_size, device)["late"]:
            if rank == 0:
                progress.bar.write(f"time budget of {args.minutes:g} min reached at step {step_done}")
            break
        t_step = time.perf_counter()
    progress.bar.close()
    wall_seconds = time.perf_counter() - t_start

    # -- the end: a last evaluation and checkpoint, the summary
    final_eval = eval_fn(d.eval_batches) if d.eval_batches else None
    if rank != 0:
        return {}
    if final_eval is not None:
        rows.append({"split": "eval", "step": step_done, **final_eval})
        append_metrics(metrics_path, rows[-1])
    path = state.save_pretraining(out, backend, tokenizer, step_done, run_state, args.keep_checkpoints)
    summary = report.summarize(rows, final_eval, timing={
        "steps": step_done, "seconds": wall_seconds, "train_seconds": train_seconds,
        "tokens_per_s": tokens_seen / train_seconds if train_seconds else 0.0}, facts={
        "unigram_baseline_mlm_acc": d.unigram_accuracy,
        "unigram_token": tokenizer.convert_ids_to_tokens([d.unigram_token])[0],
        "nsp_majority_baseline_acc": d.nsp_majority_accuracy, "checkpoint": path,
        "global_batch_size": global_batch, "world_size": world_size, "backend": args.backend,
        "device": str(device)})
    atomic_write_text(os.path.join(out, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    report.save_curves(rows, curves_path, d.unigram_accuracy)
    report.print_summary(summary)
    return summary


def _identity(x):
    return x  # DataLoader must not turn our NumPy batches into tensors (the numpy backend wants arrays)


if __name__ == "__main__":
    main()
