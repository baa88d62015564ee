"""The fine-tuning loop both tasks share: epochs of AdamW steps, evaluation, checkpoints, resume.

A task (``classify``, ``qa``) hands the loop three things and gets the run back:

* ``train_features``: a list of examples already tokenised, and ``collate(features) -> {name: tensor}``
  whose keys are the model's ``forward`` arguments (``input_ids``, ..., ``labels`` or
  ``start_positions``/``end_positions``);
* ``evaluate(model) -> {metric: value}``: scores the dev set with dropout off; ``main_metric`` names the
  value that decides which epoch is ``best``.

What happens, as in the BERT paper's fine-tuning recipe (Devlin et al., 2018, section 4 and appendix A.3):
AdamW (beta 0.9/0.999, weight decay 0.01 on everything but biases and LayerNorm: the very optimiser and
clipped step ``minibert pretrain`` uses, from ``minibert.train.common``), the learning rate warmed up
linearly over the first 10% of steps and decayed linearly to 0 at the last one, gradients clipped to
global norm 1.0. After every epoch the model is
evaluated and ``OUT/last`` is written; ``OUT/best`` too when the main metric improved. Both are written
atomically (``minibert.train.state``) and load in ``transformers`` unchanged. Every step appends a row to
``OUT/metrics.jsonl``, every evaluation another. A folder that already holds a run is replaced only with
``--overwrite``; Ctrl-C (or SIGTERM) finishes the step, saves ``OUT/last`` and prints the command that
resumes it (``minibert.train.signals``).

Reproducible: the head's initialisation, the shuffle of each epoch and the dropout masks of each step are
pure functions of ``--seed`` (and the epoch / step), so the same command gives the same numbers, and
``--resume`` continues a run from its last checkpoint (an epoch's end, or the step a signal stopped it
at) exactly as if it had never stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from minibert.files import atomic_write_text
from minibert.reference.schedules import linear_warmup_decay
from minibert.train import signals
from minibert.train import state as trainer_state
from minibert.train.common import append_metrics, clip_and_step, derived_seed, make_optimizer, read_metrics

# The BERT paper fine-tunes BERT-Base for 2-4 epochs at batch 16/32 and lr 5e-5/3e-5/2e-5. Those rates
# are for a 110M-parameter model pretrained for days. The small models trained here (2-4 layers, a few
# minutes of pretraining, or none) have a freshly initialised head and an encoder far from converged,
# and they learn too slowly at 2e-5: Turc et al. (2019, "Well-Read Students Learn Better") extend the grid
# to 1e-4 for small BERTs, which is the default here; epochs and batch size are the paper's.
DEFAULT_EPOCHS = 3
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 1e-4
DEFAULT_WARMUP_RATIO = 0.1   # BERT's run_classifier.py / run_squad.py: warmup_proportion 0.1
DEFAULT_WEIGHT_DECAY = 0.01  # Devlin et al., 2018, appendix A.2
DEFAULT_CLIP_GRAD_NORM = 1.0
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
BEST, LAST = trainer_state.BEST, trainer_state.LAST
# Settings that shape the trajectory: --resume refuses to continue a run with different values. (A task's
# data options are included where the task has them.)
TRAJECTORY_ARGS = ("model", "epochs", "batch_size", "lr", "warmup_ratio", "weight_decay", "clip_grad_norm",
                   "seed", "max_seq_length", "random_init", "train", "dev", "text_column", "text_pair_column",
                   "label_column", "no_header", "regression", "doc_stride", "max_query_length")


def add_training_arguments(parser: argparse.ArgumentParser, max_seq_length: int) -> None:
    """The options every fine-tuning task takes: model, output, optimisation, backends, device."""
    g = parser.add_argument_group("model and run")
    g.add_argument("--model", required=True,
                   help="an HF-format BERT folder (config.json, model.safetensors, vocab.txt) or a run folder "
                        "such as runs/pretrain (its best/, else its last/), or a real BERT")
    g.add_argument("--random-init", action="store_true",
                   help="use --model's config and vocabulary but random weights (what pretraining buys)")
    g.add_argument("--out", required=True, help="output directory (best/, last/, metrics.jsonl, summary.json)")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (repeat the same options)")
    g.add_argument("--max-seq-length", type=int, default=max_seq_length,
                   help="tokens per sequence, [CLS] and [SEP] included")
    g.add_argument("--attn", choices=("eager", "sdpa", "fused"), default="fused",
                   help="attention implementation")
    g.add_argument("--gelu", choices=("eager", "fused"), default="fused", help="GELU implementation")
    g.add_argument("--layernorm", choices=("eager", "fused"), default="fused",
                   help="LayerNorm implementation (fused: residual + dropout + LayerNorm in one kernel)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="passes over the training data")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="examples per step")
    g.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak learning rate")
    g.add_argument("--warmup-ratio", type=float, default=DEFAULT_WARMUP_RATIO,
                   help="linear warm-up over this fraction of the steps")
    g.add_argument("--weight-decay", type=float, default=DEFAULT_WEIGHT_DECAY,
                   help="AdamW weight decay, not on biases and LayerNorm")
    g.add_argument("--clip-grad-norm", type=float, default=DEFAULT_CLIP_GRAD_NORM,
                   help="max global gradient norm")
    g.add_argument("--seed", type=int, default=0, help="seed of the head's init, shuffling and dropout")


def check_training_arguments(args) -> None:
    """Raise ValueError naming the option when a training setting cannot work."""
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--max-seq-length", args.max_seq_length)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.clip_grad_norm <= 0:
        raise ValueError(f"--clip-grad-norm must be positive, got {args.clip_grad_norm}")
    if args.resume and args.overwrite:
        raise ValueError("give --resume (continue the run in --out) or --overwrite (replace it), not both")


model_directory = trainer_state.model_directory  # what --model means: one rule for every command


class Resume:
    """Where a run starts: the model directory to load and, for ``--resume``, the saved trainer state.

    A fresh run refuses an ``--out`` that holds a run unless ``--overwrite`` (the old outputs are removed
    when the new run first writes, in :func:`finetune`).
    """

    def __init__(self, args):
        self.state = None
        if args.resume:
            self.model_dir = trainer_state.find_checkpoint(args.out)
            self.state = trainer_state.load_trainer_state(self.model_dir)
            trainer_state.check_same_run(self.state["args"], run_args(args))
        else:
            trainer_state.check_new_run(args.out, args.overwrite)
            self.model_dir = model_directory(args.model)


def run_args(args) -> dict:
    """The trajectory-shaping settings of ``args`` (saved with every checkpoint)."""
    return {k: getattr(args, k, None) for k in TRAJECTORY_ARGS}


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` training features in ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng(derived_seed(seed, epoch)).permutation(n)


def finetune(model: torch.nn.Module, tokenizer, train_features: list, collate: Callable[[list], dict],
             evaluate: Callable[[torch.nn.Module], dict], main_metric: str, args, resume: Resume,
             device: torch.device) -> dict:
    """Train ``model`` on ``train_features`` for ``args.epochs`` epochs; returns the run's summary.

    The summary (also written to ``OUT/summary.json``) holds every epoch's evaluation, the best epoch and
    its metrics, the number of steps and the seconds spent.
    """
    if not train_features:
        raise ValueError("there is nothing to train on: the training set is empty")
    out = args.out
    steps_per_epoch = math.ceil(len(train_features) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_ratio * total_steps)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    metrics_path = os.path.join(out, METRICS_FILE)
    history: list[dict] = []
    start_epoch, start_step, best = 0, 0, None  # epochs evaluated, steps done
    if resume.state is not None:
        optimizer.load_state_dict(resume.state["optimizer"])
        start_epoch, best, history = (resume.state["epoch"], resume.state["best"],
                                      json.loads(resume.state["history"]))
        start_step = resume.state.get("step", start_epoch * steps_per_epoch)
        print(f"resuming {out} at step {start_step} of {total_steps} ({start_epoch} of {args.epochs} epochs "
              f"evaluated)")
    if getattr(args, "overwrite", False):
        trainer_state.clear_run(out)
    os.makedirs(out, exist_ok=True)
    rows = read_metrics(metrics_path, start_step) if resume.state is not None else []
    atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))  # drop steps after the checkpoint

    def save(name: str, epochs_evaluated: int, step_done: int) -> str:
        payload = {"epoch": epochs_evaluated, "step": step_done, "total_steps": total_steps,
                   "optimizer": optimizer.state_dict(), "best": best, "history": json.dumps(history),
                   "rng": trainer_state.capture_rng_state(), "args": run_args(args)}
        return trainer_state.save_checkpoint(out, lambda d: model.save_pretrained(d, tokenizer), payload, name)

    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=start_step, disable=args.quiet,
               dynamic_ncols=True, mininterval=1.0, desc="fine-tune")
    t_start = time.perf_counter()
    smooth = None
    with signals.StopRequest() as stop:  # Ctrl-C / SIGTERM: finish the step, save, say how to resume
        for epoch in range(start_epoch, args.epochs):
            model.train()
            order = epoch_order(len(train_features), args.seed, epoch)
            for i in range(max(0, start_step - epoch * steps_per_epoch), steps_per_epoch):
                step = epoch * steps_per_epoch + i
                batch = collate([train_features[j] for j in order[i * args.batch_size:(i + 1) * args.batch_size]])
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model(**batch, dropout_seed=derived_seed(args.seed, step, 1)).loss
                loss.backward()
                lr = linear_warmup_decay(step, args.lr, warmup, total_steps)
                grad_norm = clip_and_step(model, optimizer, lr, args.clip_grad_norm)
                value = float(loss.detach())
                append_metrics(metrics_path, {"split": "train", "epoch": epoch + 1, "step": step + 1,
                                              "loss": value, "lr": lr, "grad_norm": grad_norm})
                smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
                bar.set_postfix(epoch=epoch + 1, loss=f"{smooth:.4f}", refresh=False)
                bar.update(1)
                if stop.requested:
                    bar.close()
                    save(LAST, epoch, step + 1)
                    raise signals.Interrupted(
                        f"stopped at step {step + 1} of {total_steps} (epoch {epoch + 1}); resume with: "
                        f"{signals.resume_command(getattr(args, 'argv', None), 'finetune', out)}", stop.requested)
            model.eval()
            with torch.no_grad():
                result = {k: float(v) for k, v in evaluate(model).items()}
            row = {"split": "eval", "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, **result}
            history.append(row)
            append_metrics(metrics_path, row)
            bar.write(f"epoch {epoch + 1}/{args.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
            improved = best is None or result[main_metric] > best[main_metric]
            if improved:
                best = row
            save(LAST, epoch + 1, (epoch + 1) * steps_per_epoch)
            if improved:
                trainer_state.copy_checkpoint(out, os.path.join(out, LAST), BEST)
    bar.close()
    summary = {"epochs": args.epochs, "steps": total_steps, "train_examples": len(train_features),
               "seconds": time.perf_counter() - t_start, "main_metric": main_metric, "best": best,
               "final": history[-1] if history else None, "history": history,
               "best_checkpoint": os.path.join(out, BEST), "last_checkpoint": os.path.join(out, LAST)}
    atomic_write_text(os.path.join(out, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    return summary


def prepare_model(model_cls, args, resume: Resume, device: torch.device, **config_overrides):
    """Load (or, with ``--random-init``, build) the fine-tuning model; prints what was initialised.

    Seeds torch with ``--seed`` first, so the new head's initialisation is reproducible.
    """
    from minibert.config import BertConfig

    torch.manual_seed(args.seed)
    if args.random_init and resume.state is None:
        config = BertConfig.from_pretrained(resume.model_dir)
        config = BertConfig.from_dict({**config.to_dict(), **config_overrides})
        model = model_cls(config, attn_implementation=args.attn, gelu_implementation=args.gelu,
                          layernorm_implementation=args.layernorm)
        print(f"model: {model_cls.__name__} with random weights (config and vocabulary of {resume.model_dir})")
    else:
        model = model_cls.from_pretrained(resume.model_dir, attn_implementation=args.attn,
                                          gelu_implementation=args.gelu, layernorm_implementation=args.layernorm,
                                          **config_overrides)
        print(f"model: {model_cls.__name__} from {resume.model_dir}: {model.loading_report()}")
    return model.to(device)
