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
   global batch; then the global gradient norm is clipped and AdamW steps at the learning rate the plan
   gives (``minibert.train.budget``): warm-up, the peak held, then a linear decay to zero over the last,
   128-token phase (``--schedule wsd``; ``linear`` is BERT's decay over the whole run). With ``--steps N``
   it is a function of the step, exactly reproducible; with ``--minutes M`` a function of the fraction of
   the time budget spent, and the run stops stepping when what is left is what the final evaluation and
   checkpoint need.
4. **Watching** (``minibert.train.report``). A progress bar (loss, MLM / NSP accuracy, tokens/s, lr); every
   step appended to ``OUT/metrics.jsonl`` with its ``lr`` and ``elapsed`` seconds; evaluation on the
   held-out documents (every ``--eval-every`` steps, or ``--eval-every-minutes``); loss and accuracy curves
   in ``OUT/curves.png``.
5. **Checkpoints** (``minibert.train.state``). ``OUT/last`` every ``--save-every`` steps (or
   ``--save-every-minutes``) and at the end: loads in ``transformers`` unchanged, and ``--resume``
   continues it with the same loss trajectory. A fresh run never replaces one already in ``OUT`` unless
   ``--overwrite``; Ctrl-C finishes the step, saves, and says how to resume (``minibert.train.signals``).
6. **Summary.** Final train / eval loss, MLM and NSP accuracy (MLM also where the input hides the answer:
   BERT leaves 10% of the predicted tokens unchanged, and a model learns to copy those long before it
   learns to read the context), the *unigram baseline* (the MLM accuracy of always guessing the most
   frequent masked token, the score to beat), why the run stopped, and the model's guesses for a masked
   word in a few held-out sentences.

Try it: ``python -m minibert.train.pretrain`` (five minutes on two CPU cores), then
``python -m minibert fill-mask --model runs/pretrain "The [MASK] statement exits a loop."``.

Several processes: ``torchrun --nproc_per_node N -m minibert pretrain ...`` runs data parallel
(DistributedDataParallel, gloo on CPU, nccl on GPU). Each rank trains on a disjoint part of every global
batch (``global batch = --batch-size x N x --grad-accum``); rank 0 logs and saves.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import os
import sys

import torch

from minibert.files import atomic_write_text
from minibert.train import budget, distributed, report, signals, state
from minibert.train.backends import STAT_KEYS, build_backend, count_batch
from minibert.train.common import append_metrics, derived_seed, read_metrics
from minibert.train.data import StepBatches, prepare_data
from minibert.train.pretrain_args import (CURVES_FILE, DEFAULT_VOCAB_SIZE, METRICS_FILE,  # noqa: F401
                                          SUMMARY_FILE, TRAJECTORY_ARGS, add_arguments, build_config,
                                          build_parser, check_args, check_size_options)  # (cli: add_arguments)


def main(argv=None) -> dict:
    """Parse ``argv`` and pretrain; returns the summary dictionary (also written to OUT/summary.json).

    Raises ``signals.Interrupted`` when a signal stopped the run (after saving it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = ["pretrain", *argv]  # for the "resume with:" line
    return run(args)


def run(args) -> dict:
    """Pretrain as ``args`` (from :func:`add_arguments`) say; returns the summary dictionary."""
    rank, world_size, device, created_group = distributed.setup(args.device)
    try:
        summary = train(args, rank, world_size, device)
        if created_group:  # leave together: gloo torn down on one rank while another still works can abort it
            torch.distributed.barrier()
        return summary
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
    global_batch = args.batch_size * world_size * args.grad_accum
    run_args = {**{k: getattr(args, k) for k in TRAJECTORY_ARGS}, "global_batch_size": global_batch}

    # -- where the run starts: a new folder (an existing run is replaced only with --overwrite) or --resume
    saved = resume_dir = None
    if args.resume:
        resume_dir = state.find_checkpoint(out)
        saved = state.load_trainer_state(resume_dir)
        state.check_same_run(saved["args"], run_args)  # before the data is built: refuse fast
        if saved.get("finished"):
            raise ValueError(f"--resume: the run in {out} already finished (step {saved['step']}); there is "
                             f"nothing left to train. Start a new run (another --out, or --overwrite).")
    elif rank == 0:
        state.check_new_run(out, args.overwrite)
    weights_dir = resume_dir or (state.model_directory(args.init_from) if args.init_from else None)

    # -- data: the same instances give the same batches, from memory or from shards
    tokenizer = BertTokenizer.from_pretrained(weights_dir or args.vocab or args.shards
                                               or default_vocab_dir(DEFAULT_VOCAB_SIZE))
    config = build_config(args, tokenizer, weights_dir)
    if saved is not None:
        check_size_options(args, config)
    d = prepare_data(args, tokenizer, config)
    run_args["corpus_fingerprint"] = d.fingerprint
    if saved is not None:
        state.check_same_run(saved["args"], run_args)  # and the same text
    step_batches = functools.partial(StepBatches, micro_batch_size=args.batch_size, grad_accum=args.grad_accum,
                                     rank=rank, world_size=world_size, seed=args.seed, pad_id=config.pad_token_id,
                                     num_steps=0, masking=d.masking)
    batches = step_batches(d.instances, max_seq_length=args.max_seq_length)
    # --short-seq-length: a first phase on shorter sequences, then --max-seq-length from the step
    # `long_phase_from` on (recorded in checkpoints, so a resumed run switches where the original did)
    short_batches = (step_batches(d.short_instances, max_seq_length=args.short_seq_length)
                     if d.short_instances is not None else None)
    phase = {"long_from": saved.get("long_phase_from") if saved is not None else None}

    # -- model and optimizer (DDP-wrapped under torchrun)
    backend = build_backend(args, config, device, world_size, weights_dir)
    step_fn = functools.partial(train_step, backend, seed=args.seed, rank=rank, world_size=world_size, device=device)
    eval_fn = functools.partial(evaluate, backend, rank=rank, world_size=world_size, device=device)

    # -- the plan (a step count, or a time budget: budget.py) and where to start
    start_step = 0
    if saved is not None:
        backend.load_optimizer_state(saved["optimizer"])
        state.restore_rng_state(saved["rng"])
        start_step = saved["step"]
    plan = budget.make_plan(args, saved, start_step, evaluates=bool(d.eval_batches))
    run_state = {"args": run_args, "scheduler": {"kind": args.schedule, "peak_lr": args.lr},
                 "data": {"n_instances": len(d.instances), "global_batch_size": global_batch,
                          "corpus_fingerprint": d.fingerprint}}

    rows: list[dict] = []  # rank 0's metrics: the train and eval lines of this run

    def save(step: int, finished: bool = False) -> str:
        trainer = {**run_state, **plan.state(), "finished": finished, "long_phase_from": phase["long_from"]}
        return state.save_pretraining(out, backend, tokenizer, step, trainer, args.keep_checkpoints)

    def evaluate_and_log(step: int) -> dict:
        result = eval_fn(d.eval_batches)
        if rank == 0:
            rows.append({"split": "eval", "step": step, **result, "elapsed": plan.elapsed()})
            append_metrics(metrics_path, rows[-1])
            report.save_curves(rows, curves_path, d.unigram_accuracy)
        return result

    if rank == 0:
        if args.overwrite:
            state.clear_run(out)
        os.makedirs(out, exist_ok=True)
        rows = read_metrics(metrics_path, start_step) if saved is not None else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"pretraining a {config.num_hidden_layers}-layer, {config.hidden_size}-wide BERT "
              f"({args.backend}, {device}, {world_size} process{'es' if world_size > 1 else ''}) on "
              f"{len(d.instances)} instances from {d.source}; global batch {global_batch}; {plan.describe()}")
        if saved is not None:
            print(f"resuming {out} at {plan.describe_position(start_step)}")

    # -- the loop; worker processes (--num-workers) build the next steps' batches in the background
    def batches_from(source: StepBatches, first: int):
        order = range(first, plan.total_steps) if plan.total_steps is not None else itertools.count(first)
        return iter(torch.utils.data.DataLoader(source, batch_size=None, sampler=order,
                                                num_workers=args.num_workers, collate_fn=_identity))

    short_phase = short_batches is not None and phase["long_from"] is None
    loader = batches_from(short_batches if short_phase else batches, start_step)
    progress = report.Progress(plan.total_steps, start_step, enabled=rank == 0 and not args.quiet)
    step, train_seconds, tokens_seen = start_step, 0.0, 0.0
    last_eval = (None, None)  # (step, result) of the latest evaluation
    plan.start()
    with signals.StopRequest() as stop:  # Ctrl-C / SIGTERM: finish the step, save, say how to resume
        while True:
            # Rank 0's clock decides for all ranks: is the run over, and the step's learning rate.
            now = budget.agree({**plan.before_step(step), "interrupted": stop.requested is not None},
                               rank, world_size, device)
            if now["finished"] or now["interrupted"]:
                break
            if short_phase and now["progress"] >= args.short_seq_ratio:  # the short phase is over
                short_phase, phase["long_from"] = False, step
                loader = batches_from(batches, step)
            t_step = budget.clock()
            stats, grad_norm = step_fn(next(loader), step, now["lr"])
            step, seconds = step + 1, budget.clock() - t_step  # seconds include waiting for the batch
            plan.measured("step", seconds)
            train_seconds += seconds
            tokens_seen += stats["n_tokens"]
            row = report.train_row(step, stats, now["lr"], grad_norm, seconds, plan.elapsed())
            if rank == 0:
                rows.append(row)
                append_metrics(metrics_path, row)
                progress.update(row, plan)
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"the loss became {row['loss']} at step {step}; lower --lr "
                                         f"(now {args.lr}) or raise --warmup-steps")
            due = budget.agree(plan.after_step(step), rank, world_size, device)
            if due["eval"]:
                t0 = budget.clock()
                last_eval = (step, evaluate_and_log(step))
                plan.measured("eval", budget.clock() - t0)
            if due["save"]:
                t0 = budget.clock()
                if rank == 0:
                    save(step)
                plan.measured("save", budget.clock() - t0)
        progress.close()

        if now["interrupted"]:
            if rank == 0:
                save(step)
            raise signals.Interrupted(
                f"stopped at step {step}{plan.describe_stop()}; resume with: "
                f"{signals.resume_command(getattr(args, 'argv', None), 'pretrain', out)}" if rank == 0 else "",
                stop.requested or "SIGINT")

        # -- the end: a last evaluation and checkpoint, the summary
        final_eval = None
        if d.eval_batches:
            final_eval = last_eval[1] if last_eval[0] == step else evaluate_and_log(step)
        if rank != 0:
            return {}
        path = save(step, finished=True)
        summary = report.summarize(rows, final_eval, timing={
            "steps": step, "seconds": plan.elapsed(), "train_seconds": train_seconds,
            "tokens_per_s": tokens_seen / train_seconds if train_seconds else 0.0, **plan.summary(step)}, facts={
            "unigram_baseline_mlm_acc": d.unigram_accuracy,
            "unigram_token": tokenizer.convert_ids_to_tokens([d.unigram_token])[0],
            "nsp_majority_baseline_acc": d.nsp_majority_accuracy, "checkpoint": path,
            "global_batch_size": global_batch, "world_size": world_size, "backend": args.backend,
            "device": str(device)})
        summary["examples"] = report.fill_mask_examples(path, d.held_out_sentences)
        atomic_write_text(os.path.join(out, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
        report.save_curves(rows, curves_path, d.unigram_accuracy)
        report.print_summary(summary)
        return summary


def _identity(x):
    return x  # DataLoader must not turn our NumPy batches into tensors (the numpy backend wants arrays)


if __name__ == "__main__":  # the same as `minibert pretrain ...`: one-line errors, exit status 130 on Ctrl-C
    from minibert.cli import main as cli_main
    sys.exit(cli_main(["pretrain", *sys.argv[1:]]))
