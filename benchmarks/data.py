"""How fast is the pretraining data path? Instances per second for each stage, on the built-in corpus.

    python benchmarks/data.py [--max-documents N] [--max-seq-length 128] [--repeats 3]

Stages (each the median of ``--repeats`` runs after a warm-up):

* ``tokenize``: documents -> ids (the BertTokenizer; per-second figures use the instance count of the
  dynamic run, which differs from the static run's by a fraction of a percent);
* ``create (dynamic)``: tokenize + NSP pairs, no masks;  ``create (static)``: the same plus masking;
* ``mask_tokens``: masking alone, on the unmasked instances;
* ``collate``: batches of 32 to padded arrays;  ``collate + dynamic masking``: masks drawn at batch time;
* ``HF DataCollatorForLanguageModeling``: the same dynamic masking by ``transformers`` (a peer, torch);
* ``write_shards`` / ``read shards``: to ``.npz`` shards in a temporary directory and back, shuffled.

Prints a table, saves ``benchmarks/results/data-<machine>.json`` and a PNG.
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import tempfile

from _common import print_table, save_figure, save_json, time_fn

from minibert.data.corpus import builtin_documents
from minibert.data import (MaskingSpec, PretrainingShards, collate, create_training_instances, mask_tokens,
                           write_shards)
from minibert.data.instances import tokenize_documents
from minibert.tokenizer import BertTokenizer
from minibert.tokenizer.train import default_vocab_dir

BATCH_SIZE = 32


def hf_collator(vocab_dir):
    """transformers' dynamic-masking collator on the same vocabulary, or None where it cannot be built."""
    try:
        from transformers import BertTokenizerFast, DataCollatorForLanguageModeling
    except ImportError:
        return None
    tok = BertTokenizerFast(os.path.join(vocab_dir, "vocab.txt"), do_lower_case=True)
    return DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15, return_tensors="np")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-documents", type=int, default=None, help="default: the whole built-in corpus")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    vocab_dir = default_vocab_dir()
    tokenizer = BertTokenizer.from_pretrained(vocab_dir)
    documents = list(itertools.islice(builtin_documents(), args.max_documents))
    spec = MaskingSpec.from_tokenizer(tokenizer)
    make = lambda dynamic: list(create_training_instances(  # noqa: E731
        documents, tokenizer, max_seq_length=args.max_seq_length, dupe_factor=1, dynamic_masking=dynamic))
    unmasked, static = make(True), make(False)
    n = len(unmasked)
    num_tokens = sum(len(i.tokens) for i in unmasked)
    batches = [unmasked[k:k + BATCH_SIZE] for k in range(0, n, BATCH_SIZE)]
    static_batches = [static[k:k + BATCH_SIZE] for k in range(0, len(static), BATCH_SIZE)]
    print(f"{len(documents)} documents -> {n} instances of <= {args.max_seq_length} tokens "
          f"({num_tokens / n:.1f} on average)\n")

    def mask_all():
        rng = random.Random(0)
        for instance in unmasked:
            mask_tokens(instance.tokens, spec, rng)

    def collate_dynamic():
        rng = random.Random(0)
        for batch in batches:
            collate(batch, tokenizer.pad_token_id, args.max_seq_length, masking=spec, rng=rng)

    stages = [
        ("tokenize", lambda: sum(1 for _ in tokenize_documents(documents, tokenizer))),
        ("create (dynamic)", lambda: make(True)),
        ("create (static)", lambda: make(False)),
        ("mask_tokens", mask_all),
        ("collate", lambda: [collate(b, tokenizer.pad_token_id, args.max_seq_length) for b in static_batches]),
        ("collate + dynamic masking", collate_dynamic),
    ]
    hf = hf_collator(vocab_dir)
    if hf is not None:
        features = [[{"input_ids": i.tokens, "token_type_ids": i.segment_ids} for i in b] for b in batches]
        stages.append(("HF DataCollatorForLanguageModeling", lambda: [hf(f) for f in features]))

    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = os.path.join(tmp, "shards")
        stages.append(("write_shards", lambda: write_shards(static, shard_dir, tokenizer, overwrite=True)))
        stages.append(("read shards", lambda: sum(1 for _ in PretrainingShards(shard_dir))))
        rows = []
        for name, fn in stages:
            t = time_fn(fn, warmup=1, repeats=args.repeats)["median_s"]
            rows.append({"stage": name, "seconds": t, "instances_per_s": n / t, "tokens_per_s": num_tokens / t})
        shard_bytes = sum(os.path.getsize(os.path.join(shard_dir, f)) for f in os.listdir(shard_dir)
                          if f.endswith(".npz"))

    print_table(rows, ["stage", "seconds", "instances_per_s", "tokens_per_s"],
                {"seconds": ".3f", "instances_per_s": ",.0f", "tokens_per_s": ",.0f"})
    print(f"\nshards: {shard_bytes / num_tokens:.2f} bytes per token on disk ({shard_bytes / 1e6:.2f} MB)")
    path = save_json("data", {"documents": len(documents), "instances": n, "tokens": num_tokens,
                              "max_seq_length": args.max_seq_length, "batch_size": BATCH_SIZE,
                              "shard_bytes_per_token": shard_bytes / num_tokens, "rows": rows})

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh([r["stage"] for r in rows][::-1], [r["instances_per_s"] for r in rows][::-1])
    ax.bar_label(bars, fmt="{:,.0f}", padding=3)
    ax.set_xlabel(f"instances / s (max_seq_length {args.max_seq_length}, higher is better)")
    ax.set_title("minibert.data: pretraining data pipeline throughput")
    print(f"saved {path} and {save_figure(fig, 'data')}")


if __name__ == "__main__":
    main()
