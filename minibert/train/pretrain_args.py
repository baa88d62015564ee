"""``minibert pretrain``'s options: defaults, the command line, its checks, and the model config it names."""
from __future__ import annotations

import argparse
import math
import os

from minibert.config import BertConfig
from minibert.data.masking import DEFAULT_MASKED_LM_PROB, DEFAULT_MAX_PREDICTIONS_PER_SEQ

# Defaults chosen by a study, not a guess: `python benchmarks/pretrain_budget.py` trains recipe variants for
# the same 5-minute budget on 2 CPU cores (depth and width, sequence length, BERT's two phases, batch size,
# peak rate, dropout, masking rate, vocabulary size) and compares their held-out MLM and NSP accuracy
# (README, "What you should see", has the tables). In five minutes the number of updates matters most, so
# the default is a shallow model (2 layers of 256) that spends most of the budget on short sequences and
# the rest on 128 tokens, as BERT spent 90% of its steps at 128 tokens and the rest at 512: the position
# embeddings up to 128 are trained for fine-tuning. A higher peak rate did not help (post-LN BERT stalls
# on the unigram plateau when its steps are too large), nor did batches of 8 or 32.
# The second round of the study, on that model: a model this small and this briefly trained barely uses
# its context at a [MASK] (its attention stays close to uniform), so what helps is more signal per step.
# Masking 40% of the training tokens gives each step ~2.7x the predictions of BERT's 15% (Wettig et al.,
# 2023, "Should You Mask 15% in Masked Language Modeling?", found 40% better for BERT-large too); the
# held-out evaluation keeps 15%, so accuracies compare with BERT's. A 4,000-token vocabulary (1.12 tokens
# a word on held-out text, against 1.05 at 8,000) halves the embedding table, whose rows each see twice
# the updates. Together: 16.1% held-out MLM accuracy instead of 13.9%, most of it better copying of the
# tokens left unmasked (benchmarks/mlm_diagnosis.py), and 87.8% instead of 84.7% after fine-tuning.
# The third round varied the short phase. 32-token sequences instead of 64 (for 80% of the budget instead of
# 90%) gave the first model that predicts from its context: 18.8% held-out MLM, 10.1% where the input hides
# the answer (against 7.4%), and the right word in the top 5 of 12% of the held-out cloze prompts (against
# 0.5%). Half the length is about twice the steps, and it is the first default whose attention learned local
# word order: two first-layer heads put ~0.19 of their weight on the previous and on the next token
# (uniform: 0.013; benchmarks/mlm_diagnosis.py). Shorter still (16 tokens) was worse.
# The fourth round varied the learning-rate schedule: BERT's linear decay spends the whole run decaying (its
# mean rate is half the peak). Warm-up, the peak held through the 32-token phase, then a linear decay to zero
# over the 128-token phase ("WSD", warm-up/stable/decay) gave 20.5% instead of 17.5% in the same study run;
# with the decaying 128-token phase grown to 40% of the budget (the positions beyond 32 were the weak ones),
# 23.2% held-out MLM accuracy, 14.8% where the input hides the answer. 50% in that phase was no better.
# Later the step got faster (the last layer runs only where the losses read), so the same 5 minutes hold
# 3,800 steps instead of 3,245 and the recipe reaches 26.6%.
DEFAULT_VOCAB_SIZE = 4000
DEFAULT_MASKED_LM_PROB_TRAIN = 0.4
DEFAULT_LAYERS = 2
DEFAULT_SHORT_SEQ_LENGTH = 32
DEFAULT_SHORT_SEQ_RATIO = 0.6
DEFAULT_MINUTES = 5.0
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 5e-4
DEFAULT_WARMUP_RATIO = 0.06  # RoBERTa's 6%; BERT warmed up over 10k of 1M steps (1%)
DEFAULT_SCHEDULE = "wsd"
DEFAULT_DECAY_RATIO = 0.2    # --schedule wsd without a short phase; with one, the decay is the last phase
DEFAULT_WEIGHT_DECAY = 0.01  # Devlin et al., 2018, appendix A.2
DEFAULT_DUPE_FACTOR = 5      # copies of the corpus with different masks; the original code used 10
MAX_POSITION_EMBEDDINGS = 512  # as BERT-Base, so a checkpoint can later be fine-tuned on longer inputs
DEFAULT_EVAL_SEQUENCES = 512  # ~10k masked tokens: accuracy to about +-0.5%, in seconds
DEFAULT_OUT = os.path.join("runs", "pretrain")
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
SUMMARY_FILE = "summary.json"

# Settings that cannot change on --resume: those that shape the loss trajectory and the model itself (a
# resumed run would not continue the run it claims to continue). --out, --device, --num-workers, the
# evaluation and checkpoint intervals, --attn/--gelu/--layernorm/--loss, --quiet and --keep-checkpoints may change freely.
TRAJECTORY_ARGS = ("corpus", "shards", "held_out_every", "max_seq_length", "short_seq_length", "short_seq_ratio",
                   "dupe_factor", "masked_lm_prob", "whole_word_mask",
                   "dynamic_masking", "config", "layers", "hidden", "heads", "intermediate", "init_from",
                   "lr", "schedule", "warmup_steps", "warmup_ratio", "decay_ratio", "weight_decay", "clip_grad_norm",
                   "steps", "minutes", "seed", "backend", "dtype", "dropout")
SIZE_OPTIONS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                "intermediate": "intermediate_size"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``minibert pretrain``'s options to ``parser``."""
    g = parser.add_argument_group("data")
    g.add_argument("--corpus", nargs="+", default=["builtin"],
                   help="text files / folders (one sentence per line, blank line between documents), "
                        "or 'builtin' (default): the Python documentation that ships with Python")
    g.add_argument("--shards", default=None, metavar="DIR",
                   help="train on the instances of a shard directory (written by `python -m minibert.data --out "
                        "DIR` or minibert.data.write_shards) instead of --corpus; no held-out evaluation "
                        "(default: none, train on --corpus)")
    g.add_argument("--vocab", default=None,
                   help=f"directory holding vocab.txt (default: the --shards directory's, or a {DEFAULT_VOCAB_SIZE:,}-"
                        f"token vocabulary trained on the built-in corpus, cached on first use; see `minibert "
                        f"train-vocab`)")
    g.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence")
    g.add_argument("--short-seq-length", type=int, default=None,
                   help=f"train the first --short-seq-ratio of the run on sequences of at most this many tokens, "
                        f"the rest on --max-seq-length, as BERT trained 90%% of its steps at 128 tokens and the "
                        f"last 10%% at 512; 0: --max-seq-length throughout (default: {DEFAULT_SHORT_SEQ_LENGTH} "
                        f"when --max-seq-length is longer, else 0)")
    g.add_argument("--short-seq-ratio", type=float, default=DEFAULT_SHORT_SEQ_RATIO,
                   help="with --short-seq-length: the fraction of the run (of the steps, or of the time of a "
                        "--minutes run) trained on short sequences")
    g.add_argument("--dupe-factor", type=int, default=DEFAULT_DUPE_FACTOR,
                   help="copies of the corpus, each with different masks")
    g.add_argument("--masked-lm-prob", type=float, default=None,
                   help=f"fraction of the training tokens masked for the MLM loss (default: "
                        f"{DEFAULT_MASKED_LM_PROB_TRAIN}; shards written with masks keep theirs); BERT used "
                        f"{DEFAULT_MASKED_LM_PROB}. The held-out evaluation always masks {DEFAULT_MASKED_LM_PROB}, "
                        f"so accuracies stay comparable")
    g.add_argument("--whole-word-mask", action="store_true", help="mask all pieces of a word together")
    g.add_argument("--dynamic-masking", action="store_true",
                   help="draw new masks every time a sequence is batched (RoBERTa) instead of once")
    g.add_argument("--held-out-every", type=int, default=10,
                   help="hold out every N-th document for evaluation (10: 10%%; 0 = no evaluation)")
    g.add_argument("--eval-sequences", type=int, default=DEFAULT_EVAL_SEQUENCES,
                   help="held-out sequences scored per evaluation")
    g.add_argument("--num-workers", type=int, default=0, help="background processes building batches")

    g = parser.add_argument_group("model")
    g.add_argument("--config", default=None,
                   help="config.json to use instead of the size options below (default: the size options)")
    g.add_argument("--layers", type=int, default=DEFAULT_LAYERS, help="encoder layers")
    g.add_argument("--hidden", type=int, default=256, help="hidden size")
    g.add_argument("--heads", type=int, default=4, help="attention heads")
    g.add_argument("--intermediate", type=int, default=1024, help="feed-forward size")
    g.add_argument("--dropout", type=float, default=None,
                   help="override the config's hidden and attention dropout (default: the config's, 0.1)")
    g.add_argument("--init-from", default=None,
                   help="start from this checkpoint's weights and config: a checkpoint or run folder "
                        "(default: random initialisation)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="sequences per process per micro-step")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-steps accumulated per optimizer step")
    g.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak learning rate")
    g.add_argument("--schedule", choices=("wsd", "linear", "noam", "constant"), default=DEFAULT_SCHEDULE,
                   help="learning-rate schedule: wsd (warm-up, the peak held, then a linear decay to 0 over the "
                        "last --decay-ratio of the run), linear (BERT's warm-up, then a linear decay to 0 over "
                        "the whole run), noam (the Transformer's warm-up then 1/sqrt(step) decay, peak --lr) or "
                        "constant; noam and constant only for --steps runs. A --minutes run follows the time "
                        "spent instead of the steps")
    g.add_argument("--decay-ratio", type=float, default=None,
                   help=f"--schedule wsd: the final fraction of the run (of the steps, or of the time) over which "
                        f"the rate decays to 0 (default: the last phase, 1 - --short-seq-ratio, with a short "
                        f"phase; else {DEFAULT_DECAY_RATIO})")
    g.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps of a --steps run (default: --warmup-ratio of the steps)")
    g.add_argument("--warmup-ratio", type=float, default=DEFAULT_WARMUP_RATIO,
                   help="warm-up as a fraction of the steps (--steps) or of the time (--minutes)")
    g.add_argument("--weight-decay", type=float, default=DEFAULT_WEIGHT_DECAY,
                   help="AdamW weight decay, not applied to biases and LayerNorm")
    g.add_argument("--clip-grad-norm", type=float, default=1.0, help="max global gradient norm")
    g.add_argument("--steps", type=int, default=None,
                   help="optimizer steps to train: an exactly reproducible run (default: --minutes)")
    g.add_argument("--minutes", type=float, default=None,
                   help=f"time budget instead of --steps: the learning rate warms up and decays to 0 with the "
                        f"time spent, and the run ends, final evaluation and checkpoint included, within it "
                        f"whatever the load (default when neither is given: {DEFAULT_MINUTES:g})")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order, masks and dropout")

    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None,
                   help=f"output folder (default: {DEFAULT_OUT}); an existing run there is never replaced "
                        f"without --overwrite")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    g.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (given explicitly) with the same options; a --minutes "
                        "run continues with the budget it has left")
    g.add_argument("--eval-every", type=int, default=100,
                   help="--steps runs: evaluate every N steps (and at the end; 0: only at the end)")
    g.add_argument("--save-every", type=int, default=200,
                   help="--steps runs: checkpoint OUT/last every N steps (and at the end; 0: only at the end)")
    g.add_argument("--eval-every-minutes", type=float, default=None,
                   help="--minutes runs: evaluate every M minutes, once right after the first step, and at the "
                        "end (default: a fifth of the budget, at least 1)")
    g.add_argument("--save-every-minutes", type=float, default=None,
                   help="--minutes runs: checkpoint every M minutes, once right after the first step, and at "
                        "the end (default: a fifth of the budget, at least 1)")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="also keep a copy OUT/step-N of each checkpoint")
    g.add_argument("--backend", choices=("torch", "numpy"), default="torch",
                   help="torch (fast) or numpy (the readable reference, same loop)")
    g.add_argument("--attn", choices=("eager", "sdpa", "fused"), default="fused",
                   help="attention implementation of the torch model")
    g.add_argument("--gelu", choices=("eager", "fused"), default="fused",
                   help="GELU implementation of the torch model")
    g.add_argument("--layernorm", choices=("eager", "fused"), default="fused",
                   help="LayerNorm implementation of the torch model (fused: residual + dropout + LayerNorm)")
    g.add_argument("--loss", choices=("eager", "fused"), default="fused",
                   help="MLM/NSP loss implementation of the torch model (fused: cross-entropy kernel)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="parameter dtype (float64 for exact comparisons between backends)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored, with a note, on CPU)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--quiet", action="store_true", help="no progress bar (the summary is still printed)")


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone ``python -m minibert.train.pretrain`` parser."""
    from minibert.cli import HelpFormatter
    parser = argparse.ArgumentParser(prog="minibert pretrain", description="Pretrain a BERT from scratch "
                                     "on masked-LM + next-sentence prediction.", formatter_class=HelpFormatter)
    add_arguments(parser)
    return parser


def check_args(args, world_size: int) -> None:
    """Raise ValueError naming the option when a setting cannot work; default to ``--minutes 5``."""
    positive = {"--max-seq-length": args.max_seq_length, "--batch-size": args.batch_size,
                "--grad-accum": args.grad_accum, "--dupe-factor": args.dupe_factor,
                "--eval-sequences": args.eval_sequences}
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.short_seq_length is None:  # the default: BERT's two phases, when the sequences are long enough
        args.short_seq_length = (DEFAULT_SHORT_SEQ_LENGTH if args.max_seq_length > DEFAULT_SHORT_SEQ_LENGTH
                                 and not args.shards else 0)
    if args.short_seq_length == 0:
        args.short_seq_length = None
    if args.short_seq_length is not None:
        if not 5 <= args.short_seq_length < args.max_seq_length:
            raise ValueError(f"--short-seq-length must be at least 5 and below --max-seq-length "
                             f"({args.max_seq_length}), got {args.short_seq_length}")
        if not 0.0 < args.short_seq_ratio < 1.0:
            raise ValueError(f"--short-seq-ratio must be in (0, 1), got {args.short_seq_ratio}")
        if args.shards:
            raise ValueError("--short-seq-length builds its short instances from --corpus; it cannot be used with "
                             "--shards")
    if args.masked_lm_prob is None:  # the study's rate; masks already written into shards keep their own
        args.masked_lm_prob = (DEFAULT_MASKED_LM_PROB if args.shards and not args.dynamic_masking
                               else DEFAULT_MASKED_LM_PROB_TRAIN)
    if not 0.0 < args.masked_lm_prob <= 0.5:
        raise ValueError(f"--masked-lm-prob must be in (0, 0.5] (BERT uses 0.15), got {args.masked_lm_prob}")
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
    for flag, value in (("--eval-every-minutes", args.eval_every_minutes),
                        ("--save-every-minutes", args.save_every_minutes)):
        if value is not None and not value > 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.resume and args.overwrite:
        raise ValueError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out: name the folder of the run to continue (e.g. --out runs/pretrain)")
    if args.steps is None and args.minutes is None:
        args.minutes = DEFAULT_MINUTES
    if args.decay_ratio is None:  # the decay of a wsd run is its last, long phase, or a fixed share
        args.decay_ratio = (round(1.0 - args.short_seq_ratio, 6) if args.short_seq_length is not None
                            else DEFAULT_DECAY_RATIO)
    if not 0.0 < args.decay_ratio <= 1.0:
        raise ValueError(f"--decay-ratio must be in (0, 1], got {args.decay_ratio}")
    if args.schedule == "wsd" and args.warmup_steps is None and args.warmup_ratio + args.decay_ratio > 1.0:
        raise ValueError(f"--warmup-ratio {args.warmup_ratio} + --decay-ratio {args.decay_ratio} exceed the run: "
                         f"their sum must be at most 1")
    if args.minutes is not None:
        if args.schedule not in ("wsd", "linear"):
            raise ValueError(f"--schedule {args.schedule} is for --steps runs; a --minutes run warms up and "
                             f"decays to zero with the time spent (--schedule wsd or linear)")
        if args.warmup_steps is not None:
            raise ValueError("--warmup-steps is for --steps runs; a --minutes run warms up over --warmup-ratio "
                             "of its time")
    if args.steps is not None and args.schedule == "noam" and warmup_steps(args) < 1:
        raise ValueError("--schedule noam needs a warm-up of at least one step (--warmup-steps or --warmup-ratio)")
    if args.steps is not None and args.schedule == "wsd" and warmup_steps(args) + decay_steps(args) > args.steps:
        raise ValueError(f"--warmup-steps {warmup_steps(args)} + the {decay_steps(args)} decay steps (--decay-ratio) "
                         f"exceed --steps {args.steps}")
    if args.out is None:
        args.out = DEFAULT_OUT


def max_predictions_per_seq(args, max_seq_length: int | None = None) -> int:
    """Masked positions per training sequence: BERT's 20 at 128 tokens and 15%, more for a higher rate."""
    length = max_seq_length or args.max_seq_length
    return max(DEFAULT_MAX_PREDICTIONS_PER_SEQ, math.ceil(args.masked_lm_prob * length))


def warmup_steps(args, total: int | None = None) -> int:
    """The warm-up of a --steps run: --warmup-steps, else --warmup-ratio of the steps."""
    total = args.steps if total is None else total
    return args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total)


def decay_steps(args, total: int | None = None) -> int:
    """The final decay of a --steps run under --schedule wsd: --decay-ratio of the steps, at least one."""
    total = args.steps if total is None else total
    return max(1, round(args.decay_ratio * total))


def check_size_options(args, config: BertConfig) -> None:
    """On --resume (of a run built from the size options) refuse size options that differ from the model's."""
    if args.config is not None or args.init_from is not None:
        return
    diffs = [f"--{name}: checkpoint {getattr(config, field)}, now {getattr(args, name)}"
             for name, field in SIZE_OPTIONS.items() if getattr(config, field) != getattr(args, name)]
    if diffs:
        raise ValueError("--resume: the model in the checkpoint has another size; a resumed run keeps its "
                         "architecture:\n  " + "\n  ".join(diffs)
                         + "\nRepeat the original command line with --resume (or start a fresh --out).")


def build_config(args, tokenizer, weights_dir: str | None) -> BertConfig:
    """The model's config: a checkpoint's (``--resume``, ``--init-from``), ``--config``, or the size options."""
    if weights_dir is not None:
        config = BertConfig.from_pretrained(weights_dir)
        source = weights_dir
    elif args.config is not None:
        config = BertConfig.from_pretrained(args.config)
        source = args.config
    else:
        config = BertConfig(vocab_size=len(tokenizer.vocab), hidden_size=args.hidden,
                            num_hidden_layers=args.layers, num_attention_heads=args.heads,
                            intermediate_size=args.intermediate,
                            max_position_embeddings=max(MAX_POSITION_EMBEDDINGS, args.max_seq_length))
        source = "the size options"
    if args.dropout is not None and not args.resume:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = args.dropout
        config.validate()
    if config.vocab_size != len(tokenizer.vocab):
        raise ValueError(
            f"vocabulary/config mismatch: the model config ({source}) has vocab_size={config.vocab_size} "
            f"but the vocabulary has {len(tokenizer.vocab)} tokens. Use the vocab.txt the config was made "
            f"for (--vocab), or a config whose vocab_size matches it.")
    if args.max_seq_length > config.max_position_embeddings:
        raise ValueError(f"--max-seq-length {args.max_seq_length} exceeds the config's "
                         f"max_position_embeddings={config.max_position_embeddings}")
    return config
