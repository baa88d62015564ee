"""Show your work: build pretraining instances from a corpus, print a few, and measure them all.

    python -m minibert.data                           # the built-in corpus, the default vocabulary
    python -m minibert.data --whole-word-mask --show 2 --max-seq-length 64
    python -m minibert.data --corpus my_text/ --vocab runs/vocab --out runs/shards
    minibert pretrain --shards runs/shards            # then train on them

In the printed instances a predicted position reads ``[shown→label]``: ``[[MASK]→cat]`` (80%),
``[dog→cat]`` (a random token, 10%) or ``[cat→cat]`` (unchanged, 10%).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

from minibert.data.instances import (DEFAULT_DUPE_FACTOR, DEFAULT_MAX_SEQ_LENGTH, DEFAULT_SEED,
                                     DEFAULT_SHORT_SEQ_PROB, create_training_instances)
from minibert.data.masking import DEFAULT_MASKED_LM_PROB, DEFAULT_MAX_PREDICTIONS_PER_SEQ
from minibert.data.shards import write_shards
from minibert.data.statistics import data_statistics


def format_instance(instance, tokenizer) -> str:
    """One instance as text: segments, NSP label, and every predicted position as ``[shown→label]``."""
    tokens = tokenizer.convert_ids_to_tokens(instance.tokens)
    labels = dict(zip(instance.masked_lm_positions, tokenizer.convert_ids_to_tokens(instance.masked_lm_labels)))
    shown = [f"[{t}→{labels[i]}]" if i in labels else t for i, t in enumerate(tokens)]
    b_start = instance.segment_ids.index(1)
    nsp = "NotNext (B from another document, label 1)" if instance.is_random_next else "IsNext (label 0)"
    return (f"  A: {' '.join(shown[:b_start])}\n  B: {' '.join(shown[b_start:])}\n"
            f"  {len(tokens)} tokens, {len(labels)} predicted, {nsp}")


def main(argv=None) -> dict:
    """Parse ``argv``, build the instances, print examples and statistics; returns the statistics."""
    p = argparse.ArgumentParser(prog="python -m minibert.data", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", nargs="*", help="BERT-format text files or folders (default: built-in corpus)")
    p.add_argument("--vocab", help="directory with vocab.txt (default: the vocabulary trained on the built-in corpus)")
    p.add_argument("--max-seq-length", type=int, default=DEFAULT_MAX_SEQ_LENGTH)
    p.add_argument("--dupe-factor", type=int, default=1, help=f"copies of the corpus (library default "
                   f"{DEFAULT_DUPE_FACTOR}; 1 here to keep the demo quick)")
    p.add_argument("--short-seq-prob", type=float, default=DEFAULT_SHORT_SEQ_PROB)
    p.add_argument("--masked-lm-prob", type=float, default=DEFAULT_MASKED_LM_PROB)
    p.add_argument("--max-predictions-per-seq", type=int, default=DEFAULT_MAX_PREDICTIONS_PER_SEQ)
    p.add_argument("--whole-word-mask", action="store_true")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--max-documents", type=int, help="use only the first N documents")
    p.add_argument("--show", type=int, default=3, help="instances to print")
    p.add_argument("--out", help="also write the instances as shards to this (new) directory, for "
                                 "`minibert pretrain --shards OUT`")
    args = p.parse_args(argv)

    from minibert.data.corpus import builtin_documents, read_documents
    from minibert.tokenizer import BertTokenizer
    if args.vocab:
        tokenizer = BertTokenizer.from_pretrained(args.vocab)
    else:
        from minibert.tokenizer.train import default_vocab_dir
        tokenizer = BertTokenizer.from_pretrained(default_vocab_dir())
    documents = read_documents(args.corpus) if args.corpus else builtin_documents()
    if args.max_documents:
        documents = itertools.islice(documents, args.max_documents)

    start = time.perf_counter()
    instances = list(create_training_instances(
        documents, tokenizer, max_seq_length=args.max_seq_length, dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob, masked_lm_prob=args.masked_lm_prob,
        max_predictions_per_seq=args.max_predictions_per_seq, whole_word_mask=args.whole_word_mask,
        seed=args.seed))
    seconds = time.perf_counter() - start
    print(f"{len(instances)} instances in {seconds:.1f} s ({len(instances) / seconds:.0f} instances/s, "
          f"tokenization included)\n")
    for n, instance in enumerate(instances[:args.show]):
        print(f"instance {n}:\n{format_instance(instance, tokenizer)}\n")

    stats = data_statistics(instances, tokenizer)
    print("statistics (BERT's recipe in brackets):")
    rows = [
        ("masking rate", f"{stats['masking_rate']:.4f}", f"[{args.masked_lm_prob} of maskable tokens]"),
        ("[MASK] / random / kept", f"{stats['mask_fraction']:.3f} / {stats['random_fraction']:.3f} / "
         f"{stats['kept_fraction']:.3f}", "[0.8 / 0.1 / 0.1]"),
        ("predictions per instance", f"{stats['predictions_per_instance']:.2f}",
         f"[<= {args.max_predictions_per_seq}]"),
        ("NotNext fraction", f"{stats['random_next_fraction']:.3f}",
         "[0.5, plus one-sentence chunks, which are always NotNext]"),
        ("special tokens predicted", str(stats["special_masked"]), "[0]"),
        ("whole words predicted whole", "n/a" if stats["whole_word_fraction"] is None
         else f"{stats['whole_word_fraction']:.3f}", "[1.0 with --whole-word-mask]"),
        ("mean length / max", f"{stats['mean_length']:.1f} / {stats['max_length']}", f"[<= {args.max_seq_length}]"),
        ("mean tokens in A / B", f"{stats['segment_a_mean']:.1f} / {stats['segment_b_mean']:.1f}", ""),
    ]
    for name, value, expected in rows:
        print(f"  {name:<28} {value:<24} {expected}")
    hist = stats["length_histogram"]
    print("  length histogram:")
    peak = max(hist["counts"])
    for lo, hi, count in zip(hist["edges"], hist["edges"][1:], hist["counts"]):
        print(f"    {lo:5.0f}-{hi:<5.0f} {count:7d} {'#' * round(40 * count / peak)}")
    if args.out:
        paths = write_shards(instances, args.out, tokenizer)
        print(f"\nwrote {len(paths)} shard(s) to {args.out}")
    return stats


if __name__ == "__main__":
    main(sys.argv[1:])
