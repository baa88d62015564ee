"""WordPiece vocabulary training: minibert's two merge criteria vs HF ``tokenizers``' WordPieceTrainer.

Both learn from the same documents (every 10th document held out) with the same vocabulary size,
min_frequency=2, limit_alphabet=1000 and the same five special tokens; HF gets a ``BertNormalizer`` +
``BertPreTokenizer``, the equivalent of minibert's ``BasicTokenizer``. Measured: training time (median
of repeats, after a warm-up), and on the held-out documents tokens per word (words counted by
``BasicTokenizer`` for both) and the [UNK] rate.

Three trainers, three merge rules. minibert "likelihood" (the default) merges the pair with the largest
gain in unigram log-likelihood, count(ab) * log(N * count(ab) / (count(a) * count(b))); minibert "ratio"
merges by the per-occurrence form count(ab) / (count(a) * count(b)); HF's WordPieceTrainer trains *BPE*
(merge the most frequent pair) and then writes the result as a WordPiece vocabulary. The ratio favours
pairs whose parts rarely occur apart ("q" + "##u") and leaves very frequent pieces apart ("the" ->
"th ##e"), so it needs far more tokens per word; the likelihood weights the same quantity by frequency
and lands where BPE does.

    python benchmarks/vocab.py [--sizes 2000 4000 8000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, save_figure, save_json, time_fn  # noqa: E402

from minibert.data import corpus
from minibert.tokenizer import train as vocab_trainer  # noqa: E402
from minibert.tokenizer import SPECIAL_TOKENS, BertTokenizer  # noqa: E402


def _train_minibert(documents, size, out_dir, criterion):
    def train():
        return vocab_trainer.train_wordpiece(documents, vocab_size=size, min_frequency=vocab_trainer.DEFAULT_MIN_FREQUENCY,
                                     limit_alphabet=vocab_trainer.DEFAULT_LIMIT_ALPHABET, criterion=criterion)
    return train, lambda learned: vocab_trainer.save_vocab(learned, out_dir).tokenize


def _train_hf(documents, size):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    sentences = [s for doc in documents for s in doc]

    def train():
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=size, min_frequency=vocab_trainer.DEFAULT_MIN_FREQUENCY,
                                            limit_alphabet=vocab_trainer.DEFAULT_LIMIT_ALPHABET,
                                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        tok.train_from_iterator(sentences, trainer)
        return tok
    return train, lambda tok: (lambda s: tok.encode(s, add_special_tokens=False).tokens)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    documents = corpus.builtin_documents()
    train_docs = list(corpus.held_out_split(documents, held_out=False))
    held_out = list(corpus.held_out_split(documents, held_out=True))
    stats = corpus.corpus_stats(train_docs)
    print(f"built-in corpus: training on {stats['documents']} documents, {stats['words']:,} words, "
          f"{stats['megabytes']:.2f} MB; {len(held_out)} held-out documents")

    rows = []
    out_root = tempfile.mkdtemp(prefix="minibert-vocab-bench-")
    for size in args.sizes:
        trainers = {}
        for criterion in vocab_trainer.CRITERIA:
            out_dir = os.path.join(out_root, f"{criterion}-{size}")
            trainers[f"minibert ({criterion})"] = _train_minibert(train_docs, size, out_dir, criterion)
        trainers["tokenizers (BPE->WordPiece)"] = _train_hf(train_docs, size)
        for name, (train, tokenize_with) in trainers.items():
            timing = time_fn(train, warmup=1, repeats=args.repeats)
            trained = train()
            fit = vocab_trainer.tokenization_stats(tokenize_with(trained), held_out)
            rows.append({"trainer": name, "vocab_size": size, "train_s": timing["median_s"],
                         "train_s_min": timing["min_s"], **fit})
    print_table(rows, ["trainer", "vocab_size", "train_s", "tokens_per_word", "unk_rate", "words", "tokens"],
                {"train_s": ".2f", "tokens_per_word": ".3f", "unk_rate": ".5f"})
    # The trained vocabulary must also load in BertTokenizer from its folder (what the CLI writes).
    for criterion in vocab_trainer.CRITERIA:
        folder = os.path.join(out_root, f"{criterion}-{args.sizes[-1]}")
        assert len(BertTokenizer.from_pretrained(folder)) == args.sizes[-1]
    shutil.rmtree(out_root)

    import tokenizers
    path = save_json("vocab", {"corpus": "builtin", "train_corpus": stats, "held_out_documents": len(held_out),
                               "tokenizers": tokenizers.__version__,
                               "min_frequency": vocab_trainer.DEFAULT_MIN_FREQUENCY,
                               "limit_alphabet": vocab_trainer.DEFAULT_LIMIT_ALPHABET, "rows": rows})
    print(f"saved {path}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["trainer"] for r in rows):
        mine = [r for r in rows if r["trainer"] == name]
        ax1.plot([r["vocab_size"] for r in mine], [r["tokens_per_word"] for r in mine], "o-", label=name)
        ax2.plot([r["vocab_size"] for r in mine], [r["train_s"] for r in mine], "o-", label=name)
    ax1.set(xlabel="vocabulary size", ylabel="tokens per word (held-out)", title="Fit to unseen text")
    ax2.set(xlabel="vocabulary size", ylabel="training time (s, median)", title="Training time")
    ax1.legend()
    ax2.legend()
    print(f"saved {save_figure(fig, 'vocab')}")


if __name__ == "__main__":
    main()
