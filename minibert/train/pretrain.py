"""``minibert pretrain``: train a BERT from scratch on masked-LM + next-sentence prediction.

The loop, in the order it happens:

1. **Data** (``minibert.pretrain_data``). Read the corpus, hold out every ``--held-out-every``-th
   document for evaluation *before* any instance is built (so no sentence of the evaluation text is ever
   trained on), then build the pretraining instances (``[CLS] A [SEP] B [SEP]`` with masks) once.
2. **Model** (``minibert.pretrain_backends``). ``minibert.modeling.BertForPreTraining`` with
   ``torch.optim.AdamW`` (``--backend torch``), or the NumPy reference with its hand-written backward and
   AdamW (``--backend numpy``) driven by the very same loop: same batches, schedule, logging, checkpoints.
3. **Steps.** Step ``s`` trains on a global batch and dropout seeds that are pure functions of
   ``(--seed, s)``, BERT's linear warm-up then linear decay of the learning rate
   (``minibert.reference.schedules``), gradient clipping and weight decay on everything but biases and
   LayerNorm.
4. **Watching** (``minibert.pretrain_report``). A progress bar (loss, MLM / NSP accuracy, tokens/s);
   every step appended to ``OUT/metrics.jsonl``; evaluation on the held-out documents every
   ``--eval-every`` steps; loss and accuracy curves in ``OUT/curves.png``.
5. **Checkpoints.** ``OUT/last`` every ``--save-every`` steps and at the end (``minibert.trainer_state``):
   loads in ``transformers`` unchanged, and ``--resume`` continues it with the same loss trajectory.
6. **Summary.** Final train / eval loss, MLM and NSP accuracy, and the *unigram baseline*: the MLM
   accuracy of always guessing the most frequent masked token, the score to beat.

Try it: ``python -m minibert.pretrain`` (five minutes on two CPU cores), then
``python -m minibert.fill_mask --model runs/pretrain/last "The [MASK] statement exits a loop."``.

Several processes: ``torchrun --nproc_per_node N -m minibert pretrain ...`` runs data parallel
(DistributedDataParallel, gloo on CPU, nccl on GPU). Each rank trains on a disjoint part of every global
batch (``global batch = --batch-size x N x --grad-accum``); rank 0 logs and saves.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

from minibert.train import state as trainer_state
from minibert.config import BertConfig
from minibert.files import atomic_write_text
from minibert.train.backends import STAT_KEYS, NumpyBackend, TorchBackend, count_batch
from minibert.train.data import StepBatches, derived_seed, prepare_data
from minibert.train.report import append_metrics, print_summary, read_metrics, save_curves
from minibert.reference.schedules import linear_warmup_decay

# Defaults chosen so that, on the built-in corpus and 2 CPU cores, a 4-layer, 256-wide BERT trains in
# about five minutes to an MLM accuracy above the unigram baseline (README gives the figures). A short run
# is a few hundred steps, so small batches (more updates) and a moderate peak rate win. Measured on the
# built-in corpus, 300 steps of batch 16, held-out MLM accuracy: 9.1% at lr 5e-4, 7.1% (200 steps) at
# 2.5e-4, 6.1% at 1e-3 (6.3% with dropout off), and stuck at the 6.1% unigram level at 3e-3 (post-LN BERT stalls on that
# plateau when its steps are too large).
DEFAULT_MINUTES = 5.0
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 5e-4
DEFAULT_WARMUP_RATIO = 0.06  # RoBERTa's 6%; BERT warmed up over 10k of 1M steps (1%)
DEFAULT_WEIGHT_DECAY = 0.01  # Devlin et al., 2018, appendix A.2
DEFAULT_DUPE_FACTOR = 5      # copies of the corpus with different masks; the original code used 10
MAX_POSITION_EMBEDDINGS = 512  # as BERT-Base, so a checkpoint can later be fine-tuned on longer inputs
DEFAULT_EVAL_SEQUENCES = 512  # ~10k masked tokens: accuracy to about +-0.5%, in seconds
FINAL_WINDOW = 20  # the summary's "final train loss" averages the last this-many steps
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
SUMMARY_FILE = "summary.json"

# Arguments that shape the loss trajectory: a resumed run must use the same values, or it would not
# continue the run it claims to continue. (--out, --resume, --device, --num-workers, --eval-every,
# --save-every may change freely.)
TRAJECTORY_ARGS = ("corpus", "held_out_every", "max_seq_length", "dupe_factor", "whole_word_mask",
                   "dynamic_masking", "lr", "warmup_steps", "warmup_ratio", "weight_decay",
                   "clip_grad_norm", "steps", "minutes", "seed", "backend", "dtype", "dropout")


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``minibert pretrain``'s options to ``parser``."""
    g = parser.add_argument_group("data")
    g.add_argument("--corpus", nargs="+", default=["builtin"],
                   help="text files / folders (one sentence per line, blank line between documents), "
                        "or 'builtin' (default): the Python documentation that ships with Python")
    g.add_argument("--vocab", default=None, help="directory holding vocab.txt (default: the vocabulary trained on "
                                                 "the built-in corpus, cached on first use; see `minibert train-vocab`)")
    g.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence (default 128)")
    g.add_argument("--dupe-factor", type=int, default=DEFAULT_DUPE_FACTOR,
                   help=f"copies of the corpus, each with different masks (default {DEFAULT_DUPE_FACTOR})")
    g.add_argument("--whole-word-mask", action="store_true", help="mask all pieces of a word together")
    g.add_argument("--dynamic-masking", action="store_true",
                   help="draw new masks every time a sequence is batched (RoBERTa) instead of once")
    g.add_argument("--held-out-every", type=int, default=10,
                   help="hold out every N-th document for evaluation (default 10: 10%%; 0 = no evaluation)")
    g.add_argument("--eval-sequences", type=int, default=DEFAULT_EVAL_SEQUENCES,
                   help=f"held-out sequences scored per evaluation (default {DEFAULT_EVAL_SEQUENCES})")
    g.add_argument("--num-workers", type=int, default=0, help="background processes building batches")

    g = parser.add_argument_group("model")
    g.add_argument("--config", default=None, help="config.json to use instead of the size options below")
    g.add_argument("--layers", type=int, default=4, help="encoder layers (default 4)")
    g.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    g.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    g.add_argument("--intermediate", type=int, default=1024, help="feed-forward size (default 1024)")
    g.add_argument("--dropout", type=float, default=None,
                   help="override the config's hidden and attention dropout (default: config's, 0.1)")
    g.add_argument("--init-from", default=None, help="start from this checkpoint's weights (and config)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"sequences per process per micro-step (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-steps accumulated per optimizer step")
    g.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"peak learning rate (default {DEFAULT_LR})")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps")
    g.add_argument("--warmup-ratio", type=float, default=DEFAULT_WARMUP_RATIO,
                   help=f"warm-up as a fraction of all steps, when --warmup-steps is not given "
                        f"(default {DEFAULT_WARMUP_RATIO})")
    g.add_argument("--weight-decay", type=float, default=DEFAULT_WEIGHT_DECAY,
                   help=f"AdamW weight decay, not applied to biases and LayerNorm "
                        f"(default {DEFAULT_WEIGHT_DECAY})")
    g.add_argument("--clip-grad-norm", type=float, default=1.0, help="max global gradient norm (default 1.0)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps to train")
    g.add_argument("--minutes", type=float, default=None,
                   help=f"time budget instead of --steps: the step count is planned from the measured speed "
                        f"(default when neither is given: {DEFAULT_MINUTES:g})")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order, masks and dropout")

    g = parser.add_argument_group("run")
    g.add_argument("--out", default=os.path.join("runs", "pretrain"), help="output directory")
    g.add_argument("--resume", action="store_true", help="continue the run saved in OUT/last")
    g.add_argument("--eval-every", type=int, default=100, help="evaluate every N steps (and at the end)")
    g.add_argument("--save-every", type=int, default=200,
                   help="checkpoint OUT/last every N steps (and at the end)")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="also keep a copy OUT/step-N of each checkpoint")
    g.add_argument("--backend", choices=("torch", "numpy"), default="torch",
                   help="torch (fast) or numpy (the readable reference, same loop)")
    g.add_argument("--attn", choices=("eager", "sdpa", "fused"), default="fused",
                   help="attention implementation of the torch model (default fused)")
    g.add_argument("--gelu", choices=("eager", "fused"), default="fused",
                   help="GELU implementation of the torch model (default fused)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="parameter dtype (float64 for exact comparisons between backends)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored, with a note, on CPU)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--quiet", action="store_true", help="no progress bar (the summary is still printed)")


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone ``python -m minibert.pretrain`` parser."""
    parser = argparse.ArgumentParser(prog="minibert pretrain", description="Pretrain a BERT from scratch "
                                     "on masked-LM + next-sentence prediction.")
    add_arguments(parser)
    return parser


def main(argv=None) -> dict:
    """Parse ``argv`` and pretrain; returns the summary dictionary (also written to OUT/summary.json)."""
    return run(build_parser().parse_args(argv))


def _check_args(args, world_size: int) -> None:
    positive = {"--max-seq-length": args.max_seq_length, "--batch-size": args.batch_size,
                "--grad-accum": args.grad_accum, "--dupe-factor": args.dupe_factor,
                "--eval-sequences": args.eval_sequences}
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.steps is not None and args.minutes is not None:
        raise ValueError("give --steps or --minutes, not both")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.minutes is not None and not args.minutes > 0:
        raise ValueError(f"--minutes must be positive, got {args.minutes}")
    if args.lr <= 0 or not math.isfinite(args.lr):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.held_out_every == 1 or args.held_out_every < 0:
        raise ValueError("--held-out-every must be 0 (no evaluation) or at least 2")
    if args.backend == "numpy" and world_size > 1:
        raise ValueError("--backend numpy runs in one process; use --backend torch under torchrun")
    if args.steps is None and args.minutes is None:
        args.minutes = DEFAULT_MINUTES


# ------------------------------------------------------------------------------------------------------
# Processes and devices
# ------------------------------------------------------------------------------------------------------
def _setup_distributed(args) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, created_group): join torchrun's process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if args.device is not None:
        device = torch.device(args.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} asks for a GPU but this torch sees none "
                         f"(torch {torch.__version__}); use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world_size > 1 else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return rank, world_size, device, created


def _all_reduce(values: dict, world_size: int, device) -> dict:
    """Sum each value over the ranks (a no-op for one process)."""
    if world_size == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _broadcast_int(value: int, world_size: int, device) -> int:
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return int(t.item())


# ------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------
def _identity(x):
    return x  # DataLoader must not turn our NumPy batches into tensors (the numpy backend wants arrays)


# ------------------------------------------------------------------------------------------------------
# Model, backend and schedule
# ------------------------------------------------------------------------------------------------------
def _vocab_size(tokenizer) -> int:
    return len(tokenizer.vocab)


def _build_config(args, tokenizer, weights_dir: str | None) -> BertConfig:
    if weights_dir is not None:
        config = BertConfig.from_pretrained(weights_dir)
        source = weights_dir
    elif args.config is not None:
        config = BertConfig.from_pretrained(args.config)
        source = args.config
    else:
        config = BertConfig(vocab_size=_vocab_size(tokenizer), hidden_size=args.hidden,
                            num_hidden_layers=args.layers, num_attention_heads=args.heads,
                            intermediate_size=args.intermediate,
                            max_position_embeddings=max(MAX_POSITION_EMBEDDINGS, args.max_seq_length))
        source = "the size options"
    if args.dropout is not None and not args.resume:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = args.dropout
        config.validate()
    if config.vocab_size != _vocab_size(tokenizer):
        raise ValueError(
            f"vocabulary/config mismatch: the model config ({source}) has vocab_size={config.vocab_size} "
            f"but the vocabulary has {_vocab_size(tokenizer)} tokens. Use the vocab.txt the config was made "
            f"for (--vocab), or a config whose vocab_size matches it.")
    if args.max_seq_length > config.max_position_embeddings:
        raise ValueError(f"--max-seq-length {args.max_seq_length} exceeds the config's "
                         f"max_position_embeddings={config.max_position_embeddings}")
    return config


def _build_backend(args, config, device, world_size: int, weights_dir: str | None):
    dtype = getattr(torch, args.dtype)
    if args.backend == "numpy":
        return NumpyBackend(config, dtype=np.dtype(args.dtype), seed=args.seed, weights_dir=weights_dir,
                            lr=args.lr, weight_decay=args.weight_decay, clip_grad_norm=args.clip_grad_norm)
    from minibert.modeling import BertForPreTraining
    if weights_dir is not None:
        model = BertForPreTraining.from_pretrained(weights_dir, attn_implementation=args.attn,
                                                   gelu_implementation=args.gelu, dtype=dtype, device=device)
    else:
        torch.manual_seed(args.seed)  # every rank builds the same initial weights
        model = BertForPreTraining(config, attn_implementation=args.attn, gelu_implementation=args.gelu)
        model.to(device=device, dtype=dtype)
    amp = args.amp and device.type == "cuda"
    return TorchBackend(model, device=device, lr=args.lr, weight_decay=args.weight_decay,
                        clip_grad_norm=args.clip_grad_norm, amp=amp, ddp=world_size > 1)


def _metrics(stats: dict) -> dict:
    """Per-token / per-example averages from summed statistics."""
    mlm_loss = stats["mlm_loss_sum"] / max(stats["n_masked"], 1)
    nsp_loss = stats["nsp_loss_sum"] / max(stats["n_examples"], 1)
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_acc": stats["mlm_correct"] / max(stats["n_masked"], 1),
            "nsp_acc": stats["nsp_correct"] / max(stats["n_examples"], 1)}


def evaluate(backend, batches: list[dict], rank: int, world_size: int, device) -> dict:
    """Loss and accuracies on ``batches`` with dropout off, split over the ranks and summed."""
    totals = dict.fromkeys(STAT_KEYS, 0.0)
    for i in range(rank, len(batches), world_size):
        for k, v in backend.evaluate(batches[i]).items():
            totals[k] += v
    return _metrics(_all_reduce(totals, world_size, device))


def _train_step(backend, micro_batches: list[dict], step: int, lr: float, seed: int, rank: int,
                world_size: int, device) -> tuple[dict, float]:
    """One optimizer step: forward and backward over this rank's micro-batches, then clip and AdamW at ``lr``.

    Returns the step's statistics summed over all ranks and the pre-clip gradient norm. The dropout seeds
    are a pure function of ``(seed, step, micro-step, rank)``, so the step can be replayed exactly.
    """
    counts = {k: sum(count_batch(b)[k] for b in micro_batches) for k in ("n_masked", "n_examples")}
    norm = _all_reduce(counts, world_size, device)
    seeds = [derived_seed(seed, step, a, rank) for a in range(len(micro_batches))]
    stats = backend.forward_backward(micro_batches, norm, seeds)
    grad_norm = backend.optimizer_step(lr)
    return _all_reduce(stats, world_size, device), grad_norm


def _train_row(step_done: int, stats: dict, lr: float, grad_norm: float, seconds: float) -> dict:
    """The metrics line of one training step."""
    return {"split": "train", "step": step_done, **_metrics(stats), "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": stats["n_tokens"] / seconds}


def _plan_steps(backend, batches: StepBatches, d, tokenizer, args, rank: int, world_size: int, device) -> int:
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
            stats, grad_norm = _train_step(backend, micro_batches, step, lr, args.seed, rank, world_size,
                                           device)
            rows.append(_train_row(step + 1, stats, lr, grad_norm, time.perf_counter() - t0))
            append_metrics(metrics_path, rows[-1])
            times.append(time.perf_counter() - t0)
        if d.eval_batches:
            t0 = time.perf_counter()
            # Every rank evaluates alone here: no collective, the same estimate.
            rows.append({"split": "eval", "step": 7, **evaluate(backend, d.eval_batches, 0, 1, device)})
            eval_s = time.perf_counter() - t0
            if rank == 0:
                curves = os.path.join(scratch, CURVES_FILE)
                save_curves(rows, curves, d.unigram_accuracy)  # the first plot imports matplotlib, once a run
                t0 = time.perf_counter()
                save_curves(rows, curves, d.unigram_accuracy)
                eval_s += time.perf_counter() - t0
        if rank == 0:  # the optimizer holds its full moments now, as it will at every save
            t0 = time.perf_counter()
            trainer_state.save_checkpoint(scratch, lambda directory: backend.save_model(directory, tokenizer),
                                          {"optimizer": backend.optimizer_state()})
            save_s = time.perf_counter() - t0
    backend.load_optimizer_state(fresh_optimizer)
    step_s = float(np.median(times[2:]))
    # N steps take N * step_s, plus an evaluation every E steps and at the end, plus a checkpoint every
    # C steps and at the end: solve  budget = N * (step_s + eval_s / E + save_s / C) + eval_s + save_s.
    per_step = step_s + (eval_s / args.eval_every if args.eval_every else 0.0)
    per_step += save_s / args.save_every if args.save_every else 0.0
    steps = int((args.minutes * 60.0 - eval_s - save_s) / per_step)
    return _broadcast_int(max(1, steps), world_size, device)


# ------------------------------------------------------------------------------------------------------
# Logging, curves and summary (rank 0 only)
# ------------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------
def run(args) -> dict:
    """Pretrain as ``args`` (from :func:`add_arguments`) say; returns the summary dictionary."""
    rank, world_size, device, created_group = _setup_distributed(args)
    try:
        return _train(args, rank, world_size, device)
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(args, rank: int, world_size: int, device) -> dict:
    from minibert.tokenizer import BertTokenizer
    from minibert.tokenizer.train import default_vocab_dir

    _check_args(args, world_size)
    if args.amp and device.type != "cuda" and rank == 0:
        print("note: --amp (bf16 autocast) only applies on CUDA; training in float32 on the CPU")
    out = args.out
    resume_dir = trainer_state.find_checkpoint(out) if args.resume else None
    state = trainer_state.load_trainer_state(resume_dir) if resume_dir else None
    weights_dir = resume_dir or args.init_from
    tokenizer = BertTokenizer.from_pretrained(weights_dir or args.vocab or default_vocab_dir())
    config = _build_config(args, tokenizer, weights_dir)

    d = prepare_data(args, tokenizer, config)
    global_batch = args.batch_size * world_size * args.grad_accum
    run_args = {k: getattr(args, k) for k in TRAJECTORY_ARGS}
    run_args["global_batch_size"] = global_batch
    run_args["corpus_fingerprint"] = d.fingerprint
    if state is not None:
        trainer_state.check_same_run(state["args"], run_args)

    backend = _build_backend(args, config, device, world_size, weights_dir)
    start_step = 0
    if state is not None:
        backend.load_optimizer_state(state["optimizer"])
        trainer_state.restore_rng_state(state["rng"])
        start_step, total_steps = state["step"], state["total_steps"]
    batches = StepBatches(d.instances, micro_batch_size=args.batch_size, grad_accum=args.grad_accum, rank=rank,
                          world_size=world_size, seed=args.seed, pad_id=config.pad_token_id,
                          max_seq_length=args.max_seq_length, num_steps=0, masking=d.masking)
    if state is None:
        total_steps = args.steps or _plan_steps(backend, batches, d, tokenizer, args, rank, world_size, device)
    batches.num_steps = total_steps
    warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total_steps)

    metrics_path = os.path.join(out, METRICS_FILE)
    rows: list[dict] = []
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        rows = read_metrics(metrics_path, start_step) if state is not None else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"pretraining a {config.num_hidden_layers}-layer, {config.hidden_size}-wide BERT "
              f"({args.backend}, {device}, {world_size} process{'es' if world_size > 1 else ''}) on "
              f"{len(d.instances)} instances from {d.n_train_documents} documents; "
              f"{d.n_eval_documents} documents held out; global batch {global_batch}; {total_steps} steps"
              + (f" planned for {args.minutes:g} min" if args.minutes and state is None else ""))

    def save(step_done: int) -> str:
        payload = {"step": step_done, "total_steps": total_steps, "optimizer": backend.optimizer_state(),
                   "scheduler": {"kind": "linear_warmup_decay", "peak_lr": args.lr,
                                 "warmup_steps": warmup, "total_steps": total_steps},
                   "rng": trainer_state.capture_rng_state(),
                   "data": {"next_step": step_done, "n_instances": len(d.instances),
                            "global_batch_size": global_batch, "corpus_fingerprint": d.fingerprint},
                   "args": run_args}
        path = ""
        if rank == 0:
            path = trainer_state.save_checkpoint(out, lambda d: backend.save_model(d, tokenizer), payload)
            if args.keep_checkpoints:
                trainer_state.copy_checkpoint(out, path, f"step-{step_done}")
        return path

    def log_eval(step_done: int, plot: bool = True) -> dict | None:
        if not d.eval_batches:
            return None
        result = evaluate(backend, d.eval_batches, rank, world_size, device)
        if rank == 0:
            row = {"split": "eval", "step": step_done, **result}
            rows.append(row)
            append_metrics(metrics_path, row)
            if plot:
                save_curves(rows, os.path.join(out, CURVES_FILE), d.unigram_accuracy)
        return result

    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start_step, total_steps),
                                         num_workers=args.num_workers, collate_fn=_identity)
    from tqdm import tqdm
    t_start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_step, disable=rank != 0 or args.quiet, dynamic_ncols=True,
               mininterval=1.0, desc="pretrain")
    deadline = time.perf_counter() + args.minutes * 60.0 if args.minutes and state is None else None
    step_done = start_step
    train_seconds = tokens_seen = 0.0
    smooth: dict = {}
    t_step = time.perf_counter()
    for step, micro_batches in zip(range(start_step, total_steps), loader):
        lr = linear_warmup_decay(step, args.lr, warmup, total_steps)
        stats, grad_norm = _train_step(backend, micro_batches, step, lr, args.seed, rank, world_size, device)
        step_done = step + 1
        seconds = time.perf_counter() - t_step  # includes waiting for this step's batch
        train_seconds += seconds
        tokens_seen += stats["n_tokens"]
        row = _train_row(step_done, stats, lr, grad_norm, seconds)
        if rank == 0:
            rows.append(row)
            append_metrics(metrics_path, row)
            for k in ("loss", "mlm_acc", "nsp_acc", "tokens_per_s"):
                smooth[k] = row[k] if k not in smooth else 0.9 * smooth[k] + 0.1 * row[k]
            bar.set_postfix(loss=f"{smooth['loss']:.3f}", mlm=f"{smooth['mlm_acc']:.3f}",
                            nsp=f"{smooth['nsp_acc']:.3f}", tok_s=f"{smooth['tokens_per_s']:.0f}",
                            refresh=False)
            bar.update(1)
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"the loss became {row['loss']} at step {step_done}; lower --lr "
                                     f"(now {args.lr}) or raise --warmup-steps")
        if args.eval_every and step_done % args.eval_every == 0 and step_done < total_steps:
            log_eval(step_done)
        if args.save_every and step_done % args.save_every == 0 and step_done < total_steps:
            save(step_done)
        if deadline is not None:
            late = _all_reduce({"late": float(time.perf_counter() > deadline)}, world_size, device)["late"]
            if late:
                if rank == 0:
                    bar.write(f"time budget of {args.minutes:g} min reached at step {step_done}")
                break
        t_step = time.perf_counter()
    bar.close()
    wall_seconds = time.perf_counter() - t_start

    final_eval = log_eval(step_done, plot=False)  # the curves are drawn once, below
    path = save(step_done)
    summary = {}
    if rank == 0:
        train_rows = [r for r in rows if r["split"] == "train"]
        last = train_rows[-FINAL_WINDOW:]
        summary = {
            "steps": step_done, "seconds": wall_seconds, "train_seconds": train_seconds,
            "tokens_per_s": tokens_seen / train_seconds if train_seconds else 0.0,
            "final_window": len(last),
            "train_loss": float(np.mean([r["loss"] for r in last])),
            "train_mlm_acc": float(np.mean([r["mlm_acc"] for r in last])),
            "train_nsp_acc": float(np.mean([r["nsp_acc"] for r in last])),
            "eval_loss": final_eval["loss"] if final_eval else None,
            "eval_mlm_acc": final_eval["mlm_acc"] if final_eval else None,
            "eval_nsp_acc": final_eval["nsp_acc"] if final_eval else None,
            "unigram_baseline_mlm_acc": d.unigram_accuracy,
            "unigram_token": tokenizer.convert_ids_to_tokens([d.unigram_token])[0],
            "nsp_majority_baseline_acc": d.nsp_majority_accuracy,
            "checkpoint": path, "global_batch_size": global_batch, "world_size": world_size,
            "backend": args.backend, "device": str(device),
        }
        atomic_write_text(os.path.join(out, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
        save_curves(rows, os.path.join(out, CURVES_FILE), d.unigram_accuracy)
        print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
