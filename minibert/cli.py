"""The ``minibert`` command line: one subcommand ("verb") per job.

Each verb is two small functions: ``_add_<verb>(subparsers)`` declares its arguments and
``_run_<verb>(args)`` does the work and returns the exit status. Adding a verb means writing those two
and listing the first in ``VERBS``. A verb whose work is a module of its own (``pretrain``, ``fill-mask``,
``features``, ``finetune classify``, ``finetune squad``) takes that module's ``add_arguments(parser)`` and
``run(args)`` instead.

User errors (a missing file, a corpus that is not UTF-8, a vocabulary size that cannot work, an output
path that is a file, a run folder that already holds a run) are printed as ``minibert: error: ...`` with
exit status 2, like argparse's own usage errors, instead of a traceback. A training run stopped by Ctrl-C
or SIGTERM saves itself and prints one line, how to resume it, with exit status 130 (143 for SIGTERM).
Every ``--help`` shows every option's default (:class:`HelpFormatter`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from minibert.data import corpus
from minibert.tokenizer import train as vocab_trainer

DEMO_SENTENCE = "The tokenizer splits unaffable words like tokenization into pieces."


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with every default: "(default: X)" is added to each option whose help does not already
    say its default. On/off flags are off unless given, and say nothing."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default in (None, argparse.SUPPRESS) or action.nargs == 0
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return text + " (default: %(default)s)"


def _print_corpus_stats(stats: dict, label: str) -> None:
    print(f"{label}: {stats['documents']:,} documents, {stats['sentences']:,} sentences, "
          f"{stats['words']:,} words, {stats['megabytes']:.2f} MB")


def _print_merge(merges: list, a: str, b: str, count: int, score: float) -> None:
    merges.append((a, b))
    print(f"  merge {len(merges):>5}: {a!r} + {b!r} -> {a + b[len(vocab_trainer.CONTINUATION):]!r}  "
          f"count(ab)={count:,}  score={score:.3g}")


def _train_and_report(corpus_spec, vocab_size: int, out_dir: str, do_lower_case: bool, show_merges: int = 0,
                      criterion: str = vocab_trainer.DEFAULT_CRITERION):
    """Train a vocabulary (holding out every 10th document), print what happened, return the tokenizer.

    ``show_merges``: print the first that many merges with their counts and scores. ``criterion``: how
    merges are scored, see ``vocab_trainer.train_wordpiece``.
    """
    if corpus_spec == "builtin":
        _print_corpus_stats(corpus.corpus_stats(corpus.builtin_documents()), "corpus (built-in)")
    else:
        _print_corpus_stats(corpus.corpus_stats(corpus.load_corpus(corpus_spec)), "corpus")
    start = time.perf_counter()
    merges = []

    def on_merge(*merge):
        if len(merges) < show_merges:
            _print_merge(merges, *merge)

    tokenizer = vocab_trainer.train_vocab(corpus_spec, vocab_size, out_dir, do_lower_case=do_lower_case,
                                  on_merge=on_merge if show_merges else None, criterion=criterion)
    seconds = time.perf_counter() - start
    print(f"trained a {len(tokenizer):,}-token WordPiece vocabulary in {seconds:.1f} s -> {out_dir}")
    held_out = corpus.held_out_split(corpus.load_corpus(corpus_spec), held_out=True, every=vocab_trainer.HELD_OUT_EVERY)
    stats = vocab_trainer.tokenization_stats(tokenizer.tokenize, held_out, do_lower_case=do_lower_case)
    if stats["words"]:
        print(f"held-out text (every {vocab_trainer.HELD_OUT_EVERY}th document): {stats['words']:,} words -> "
              f"{stats['tokens']:,} tokens, {stats['tokens_per_word']:.3f} tokens/word, "
              f"[UNK] rate {stats['unk_rate']:.4%}")
    else:
        print(f"held-out text: none (the corpus has fewer than {vocab_trainer.HELD_OUT_EVERY} documents)")
    return tokenizer


# ----------------------------------------------------------------------------------------------------
# train-vocab

def _add_train_vocab(subparsers) -> None:
    p = subparsers.add_parser("train-vocab", help="learn a WordPiece vocabulary from text",
                              formatter_class=HelpFormatter,
                              description="Learn a WordPiece vocabulary from a corpus in BERT format: one "
                                          "sentence per line, blank line between documents.")
    p.add_argument("corpus", nargs="*", metavar="CORPUS",
                   help="text files or folders of *.txt (default: the built-in corpus)")
    p.add_argument("--vocab-size", type=int, default=vocab_trainer.DEFAULT_VOCAB_SIZE,
                   help="number of tokens, special tokens included (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder to write vocab.txt and tokenizer_config.json to")
    p.add_argument("--cased", action="store_true", help="keep upper case and accents (default: lower-case)")
    p.add_argument("--criterion", choices=vocab_trainer.CRITERIA, default=vocab_trainer.DEFAULT_CRITERION,
                   help="how a merge a + b is scored: ratio = count(ab) / (count(a) count(b)), or "
                        "likelihood = count(ab) log(N ratio), the gain in log-likelihood of the text of N "
                        "pieces (default: %(default)s)")
    p.add_argument("--show-merges", type=int, default=0, metavar="N",
                   help="print the first N merges with count(ab) and their --criterion score")
    p.set_defaults(run=_run_train_vocab)


def _run_train_vocab(args) -> int:
    _train_and_report(args.corpus or "builtin", args.vocab_size, args.out, do_lower_case=not args.cased,
                      show_merges=args.show_merges, criterion=args.criterion)
    return 0


# ----------------------------------------------------------------------------------------------------
# tokenize

def _add_tokenize(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="show, step by step, how a text is tokenized",
                              formatter_class=HelpFormatter,
                              description="Show every stage of BERT tokenization of a text (or a text pair).")
    p.add_argument("text", help="the text to tokenize")
    p.add_argument("--pair", help="a second text, for a [CLS] A [SEP] B [SEP] pair (default: none)")
    p.add_argument("--vocab", help="a folder with vocab.txt (default: the vocabulary trained on the "
                                   "built-in corpus, trained and cached on first use)")
    p.add_argument("--cased", action="store_true", help="keep case and accents (do_lower_case=False)")
    p.set_defaults(run=_run_tokenize)


def _run_tokenize(args) -> int:
    from minibert import tokenizer

    argv = [args.text, "--vocab", args.vocab or vocab_trainer.default_vocab_dir()]
    if args.pair is not None:
        argv += ["--pair", args.pair]
    if args.cased:
        argv.append("--cased")
    return tokenizer.main(argv) or 0


# ----------------------------------------------------------------------------------------------------
# corpus

def _add_corpus(subparsers) -> None:
    p = subparsers.add_parser("corpus", help="write the built-in corpus to a file in BERT format",
                              formatter_class=HelpFormatter,
                              description="Write the built-in corpus (Python's own documentation) as one "
                                          "sentence per line, a blank line between documents.")
    p.add_argument("--out", required=True, help="the file to write")
    p.set_defaults(run=_run_corpus)


def _run_corpus(args) -> int:
    stats = corpus.write_corpus(corpus.builtin_documents(), args.out)
    _print_corpus_stats(stats, f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------------
# demo

def _add_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train a vocabulary on the built-in corpus and tokenize a sentence",
                              formatter_class=HelpFormatter,
                              description="A one-minute first look: learn a WordPiece vocabulary from "
                                          "Python's documentation, then tokenize a sentence step by step.")
    p.add_argument("--out", default="runs/vocab", help="folder for the vocabulary (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=vocab_trainer.DEFAULT_VOCAB_SIZE,
                   help="number of tokens (default: %(default)s)")
    p.add_argument("--text", default=DEMO_SENTENCE, help="the sentence to tokenize")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from minibert import tokenizer

    _train_and_report("builtin", args.vocab_size, args.out, do_lower_case=True)
    print()
    return tokenizer.main([args.text, "--vocab", args.out]) or 0


# ----------------------------------------------------------------------------------------------------
# pretrain (the main job) and fill-mask: their options and work live beside their code, in modules that
# expose add_arguments(parser) and run(args)

def _add_module_verb(subparsers, verb: str, module_name: str, help: str, description: str) -> None:
    module = importlib.import_module(module_name)
    p = subparsers.add_parser(verb, help=help, description=description, formatter_class=HelpFormatter)
    module.add_arguments(p)
    for action in p._actions:  # sub-verbs the module declares (assignment make|grade) show defaults too
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.formatter_class = HelpFormatter

    def run(args) -> int:
        status = module.run(args)  # pretrain returns its summary dict; assignments its exit status
        return status if isinstance(status, int) else 0

    p.set_defaults(run=run)


def _add_pretrain(subparsers) -> None:
    _add_module_verb(subparsers, "pretrain", "minibert.train.pretrain",
                     help="pretrain a BERT on masked-LM + next-sentence prediction",
                     description="Pretrain a BERT from scratch on masked-LM + next-sentence prediction "
                                 "(default: the built-in corpus, about 5 minutes).")


def _add_fill_mask(subparsers) -> None:
    _add_module_verb(subparsers, "fill-mask", "minibert.fill_mask",
                     help="predict the words behind [MASK] with a trained model",
                     description="Print the top-k predictions, with probabilities, for every [MASK] in a text.")


def _add_features(subparsers) -> None:
    _add_module_verb(subparsers, "features", "minibert.features",
                     help="encode sentences (one per line) into vectors with a trained model",
                     description="BERT as a sentence encoder: one float32 vector per line of --input "
                                 "([CLS], pooled or mean pooling), written to an .npy file.")


def _add_finetune(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a BERT: classify (sentences) or squad (QA)",
                              description="Fine-tune a pretrained BERT on a downstream task.",
                              formatter_class=HelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    _add_module_verb(tasks, "classify", "minibert.train.finetune.classify",
                     help="sentence / sentence-pair classification or regression (TSV, CSV, JSONL)",
                     description="Fine-tune a classifier on the pooled [CLS] vector (default data: a built-in "
                                 "task, 'language reference or module docstring?').")
    _add_module_verb(tasks, "squad", "minibert.train.finetune.qa",
                     help="SQuAD v1.1 / v2.0 extractive question answering",
                     description="Fine-tune start/end span prediction on SQuAD-format JSON; prints EM and F1.")


def _add_assignment(subparsers) -> None:
    _add_module_verb(subparsers, "assignment", "minibert.assignments.__main__",
                     help="cut classroom assignments from the code and grade them function by function",
                     description="list the assignments, make a handout (function bodies cut, structure.md, a "
                                 "notebook), grade a student's folder, or grade a whole class (grade-all).")


# ----------------------------------------------------------------------------------------------------

VERBS = [_add_pretrain, _add_fill_mask, _add_features, _add_finetune, _add_assignment, _add_train_vocab,
         _add_tokenize, _add_corpus, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb in ``VERBS``."""
    parser = argparse.ArgumentParser(prog="minibert", description="BERT pretraining from scratch.",
                                     formatter_class=HelpFormatter)
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add_verb in VERBS:
        add_verb(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``minibert VERB ...``; return the exit status (0 ok, 2 usage or input error, 130 Ctrl-C)."""
    from minibert.train.signals import Interrupted

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line, for a stopped run's "resume with: ..." line
    try:
        return args.run(args)
    except (ValueError, UnicodeDecodeError, OSError) as e:  # OSError: missing files, permissions, full disk
        print(f"minibert: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # a training run stopped on a signal, after saving a checkpoint
        if str(e):
            print(e, file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # Ctrl-C before the run could save anything (or twice)
        print("\nminibert: interrupted", file=sys.stderr)
        return 130
