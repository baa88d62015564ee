"""Tokenizer throughput: minibert's pure-Python BertTokenizer vs transformers' Python and Rust tokenizers.

All three tokenize the same sentences of minibert's built-in corpus (Python's own documentation) with the
same vocabulary (the one ``minibert.tokenizer.train.default_vocab_dir()`` trains on that corpus), as one batch call
``tokenizer(texts)`` that returns ids with [CLS]/[SEP]. Before timing, the ids and the offsets are
checked identical, so the speed compares equal work.

minibert is timed twice: "warm" reuses one tokenizer (as a training job does: its character and word
caches are filled after the first sentences) and "cold" builds a new tokenizer for every call, which
includes filling those caches. ``BertTokenizerFast`` is Rust and uses every core; it is here for scale,
once through transformers' ``__call__`` and once as the bare ``tokenizers`` ``encode_batch``.

    python benchmarks/tokenizer.py [--n-texts 6000] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics

from _common import print_table, save_figure, save_json, time_fn

from minibert.data.corpus import builtin_documents
from minibert.tokenizer import BertTokenizer
from minibert.tokenizer.train import default_vocab_dir


def load_peers(vocab_dir: str) -> dict:
    """name -> a callable ``texts -> input_ids`` for every tokenizer that is installed."""
    peers = {}
    ours = BertTokenizer.from_pretrained(vocab_dir)
    peers["minibert (warm)"] = lambda texts: ours(texts)["input_ids"]
    peers["minibert (cold)"] = lambda texts: BertTokenizer.from_pretrained(vocab_dir)(texts)["input_ids"]
    try:
        from transformers import BertTokenizerFast
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    except ImportError:
        print("transformers is not installed: timing minibert alone")
        return peers
    legacy = BertTokenizerLegacy.from_pretrained(vocab_dir)
    fast = BertTokenizerFast.from_pretrained(vocab_dir)
    peers["transformers BertTokenizerLegacy (Python)"] = lambda texts: legacy(texts)["input_ids"]
    peers["transformers BertTokenizerFast (Rust)"] = lambda texts: fast(texts)["input_ids"]
    # The Rust tokenizer without transformers' Python wrapping around it: the speed of Rust itself.
    backend = fast.backend_tokenizer
    peers["tokenizers encode_batch (Rust only)"] = lambda texts: [e.ids for e in backend.encode_batch(texts)]

    # Identical output first: ids from all three, offsets from minibert and the fast one.
    sample = [s for doc in builtin_documents() for s in doc]
    reference = fast(sample, return_offsets_mapping=True)
    ours_out = ours(sample, return_offsets_mapping=True)
    assert ours_out["input_ids"] == reference["input_ids"], "minibert and BertTokenizerFast disagree on ids"
    assert ours_out["offset_mapping"] == [[tuple(o) for o in row] for row in reference["offset_mapping"]]
    assert legacy(sample)["input_ids"] == ours_out["input_ids"], "minibert and BertTokenizerLegacy disagree"
    assert [e.ids for e in fast.backend_tokenizer.encode_batch(sample)] == ours_out["input_ids"]
    print(f"checked: identical ids from all three (and identical offsets from minibert and the fast one) "
          f"on all {len(sample):,} corpus sentences")
    return peers


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=6000, help="sentences per timed call")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    vocab_dir = default_vocab_dir()
    texts = [s for doc in builtin_documents() for s in doc][:args.n_texts]
    n_chars = sum(map(len, texts))
    peers = load_peers(vocab_dir)
    n_tokens = sum(map(len, peers["minibert (warm)"](texts)))

    # Round-robin: one timed call of each tokenizer per round, so a burst of load from another process
    # on this shared machine hits all of them alike rather than whichever happened to be running.
    samples = {name: [] for name in peers}
    for name, fn in peers.items():
        fn(texts)  # warm-up
    for _ in range(args.repeats):
        for name, fn in peers.items():
            samples[name] += time_fn(lambda: fn(texts), warmup=0, repeats=1)["samples_s"]
    rows = []
    for name, times in samples.items():
        seconds = statistics.median(times)
        rows.append({"tokenizer": name, "median_s": seconds, "texts_per_s": len(texts) / seconds,
                     "tokens_per_s": n_tokens / seconds, "samples_s": times})
    legacy = next((r for r in rows if "Legacy" in r["tokenizer"]), None)
    for row in rows:
        row["speedup_vs_python_hf"] = legacy["median_s"] / row["median_s"] if legacy else None

    print(f"\n{len(texts):,} sentences, {n_chars:,} characters, {n_tokens:,} tokens (vocab {vocab_dir})")
    print_table(rows, ["tokenizer", "median_s", "texts_per_s", "tokens_per_s", "speedup_vs_python_hf"],
                {"median_s": ".3f", "texts_per_s": ",.0f", "tokens_per_s": ",.0f", "speedup_vs_python_hf": ".2f"})
    path = save_json("tokenizer", {"n_texts": len(texts), "n_chars": n_chars, "n_tokens": n_tokens,
                                   "vocab_size": len(BertTokenizer.from_pretrained(vocab_dir)), "rows": rows})

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [r["tokenizer"] for r in rows]
    ax.barh(names, [r["texts_per_s"] for r in rows], color=["C0", "C0", "C1", "C2", "C2"][:len(rows)])
    ax.set_xlabel("sentences per second (higher is better)")
    ax.invert_yaxis()
    ax.set_title(f"BERT tokenization of {len(texts):,} built-in corpus sentences")
    for i, r in enumerate(rows):
        ax.text(r["texts_per_s"], i, f" {r['texts_per_s']:,.0f}", va="center", fontsize=8)
    print(f"saved {path} and {save_figure(fig, 'tokenizer')}")


if __name__ == "__main__":
    main()
