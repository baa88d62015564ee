"""Pretraining in NumPy: one step (forward, backward, clip, update) and a small loop.

    python -m minibert.reference.train      # overfits a few MLM+NSP examples, printing loss and accuracy

A batch is a dict of arrays with HF names, as ``minibert.data.collate`` makes them: ``input_ids``,
``token_type_ids``, ``attention_mask`` [B, S], ``labels`` [B, S] (-100 where nothing is predicted) and
``next_sentence_label`` [B] (0 = IsNext, 1 = random). ``toy_batch`` builds one from a few sentences with a
whitespace vocabulary, enough to watch the model learn without a tokenizer or corpus.
"""
from __future__ import annotations

import argparse
import random
import re
from typing import Callable

import numpy as np

from minibert.config import BertConfig
from minibert.reference.losses import IGNORE_INDEX
from minibert.reference.model import BertForPreTraining
from minibert.reference.optim import AdamW, clip_grad_norm
from minibert.reference.schedules import linear_warmup_decay

MAX_GRAD_NORM = 1.0  # BERT clips the global gradient norm to 1.0 (optimization.py)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the rows whose label is not -100 where argmax(logits) equals the label (NaN if none)."""
    predicted = labels != IGNORE_INDEX
    if not predicted.any():
        return float("nan")
    return float((logits.argmax(-1)[predicted] == labels[predicted]).mean())


def pretraining_step(model: BertForPreTraining, optimizer, batch: dict, lr: float, dropout_seed: int = 0,
                     max_grad_norm: float | None = MAX_GRAD_NORM) -> dict:
    """One MLM+NSP update of ``model.params`` in place: forward with dropout on, backward, global-norm
    clipping (skipped when ``max_grad_norm`` is None), ``optimizer.step(grads, lr)``.

    Returns the step's ``loss``, ``mlm_loss``, ``nsp_loss``, ``mlm_accuracy``, ``nsp_accuracy`` (measured
    in that same forward, before the update), ``grad_norm`` (before clipping) and ``lr``.
    """
    out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                        batch["labels"], batch["next_sentence_label"], training=True, dropout_seed=dropout_seed)
    grads = model.backward()
    norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())))
    if max_grad_norm is not None:
        grads, norm = clip_grad_norm(grads, max_grad_norm)
    optimizer.step(grads, lr=lr)
    return {"loss": float(out["loss"]), "mlm_loss": float(out["mlm_loss"]), "nsp_loss": float(out["nsp_loss"]),
            "mlm_accuracy": accuracy(out["prediction_logits"], batch["labels"]),
            "nsp_accuracy": accuracy(out["seq_relationship_logits"], batch["next_sentence_label"]),
            "grad_norm": norm, "lr": lr}


def train(model: BertForPreTraining, optimizer, batches: Callable[[int], dict], steps: int,
          schedule: Callable[[int], float], seed: int = 0, log_every: int = 0) -> list[dict]:
    """Run ``steps`` pretraining steps; ``batches(step)`` gives step ``step``'s batch, ``schedule(step)`` its
    learning rate. Step s uses dropout seed ``seed + s``. Returns every step's metrics (printed every
    ``log_every`` steps when > 0)."""
    history = []
    for step in range(steps):
        metrics = pretraining_step(model, optimizer, batches(step), schedule(step), dropout_seed=seed + step)
        history.append(metrics)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  lr {metrics['lr']:.2e}  loss {metrics['loss']:.4f}  "
                  f"mlm {metrics['mlm_loss']:.4f} (acc {metrics['mlm_accuracy']:.2f})  "
                  f"nsp {metrics['nsp_loss']:.4f}  |g| {metrics['grad_norm']:.2f}")
    return history


# --- a toy batch from plain sentences -------------------------------------------------------------------
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, BERT's special tokens

# A few sentences of real prose (from the BERT paper's abstract and introduction, lightly shortened).
SAMPLE_SENTENCES = (
    "We introduce a new language representation model called BERT.",
    "BERT stands for Bidirectional Encoder Representations from Transformers.",
    "It is designed to pretrain deep bidirectional representations from unlabeled text.",
    "It conditions on both left and right context in all layers.",
    "The pretrained model can be fine tuned with just one additional output layer.",
    "It obtains new state of the art results on eleven natural language processing tasks.",
    "Language model pretraining has been shown to be effective for many tasks.",
    "We use a masked language model and a next sentence prediction task.",
)


def words(sentence: str) -> list[str]:
    """Lower-cased words without punctuation: the toy tokenizer."""
    return re.findall(r"[a-z0-9]+", sentence.lower())


def toy_batch(sentences=SAMPLE_SENTENCES, mask_rate: float = 0.15, seed: int = 0) -> tuple[dict, list[str]]:
    """One MLM+NSP example per sentence: ``[CLS] A [SEP] B [SEP]`` where B is the next sentence (label 0)
    for even examples and a random other sentence (label 1) for odd ones; ``mask_rate`` of the words (at
    least one per example) are replaced by ``[MASK]`` and become MLM labels. Returns (batch, vocabulary).
    """
    if len(sentences) < 3:
        raise ValueError("toy_batch needs at least 3 sentences (a next one and a random one for each)")
    gen = random.Random(seed)
    vocab = list(SPECIAL_TOKENS) + sorted({w for s in sentences for w in words(s)})
    ids = {w: i for i, w in enumerate(vocab)}
    pad, cls, sep, mask = (ids[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))
    rows = []
    for i, a in enumerate(sentences):
        is_random = i % 2 == 1
        j = gen.choice([k for k in range(len(sentences)) if k not in (i, (i + 1) % len(sentences))]) \
            if is_random else (i + 1) % len(sentences)
        wa, wb = [ids[w] for w in words(a)], [ids[w] for w in words(sentences[j])]
        tokens = [cls] + wa + [sep] + wb + [sep]
        segments = [0] * (len(wa) + 2) + [1] * (len(wb) + 1)
        word_positions = [p for p, t in enumerate(tokens) if t not in (cls, sep)]
        chosen = gen.sample(word_positions, max(1, round(mask_rate * len(word_positions))))
        labels = [IGNORE_INDEX] * len(tokens)
        for p in chosen:
            labels[p], tokens[p] = tokens[p], mask
        rows.append((tokens, segments, labels, int(is_random)))
    S = max(len(r[0]) for r in rows)
    batch = {"input_ids": np.full((len(rows), S), pad), "token_type_ids": np.zeros((len(rows), S), int),
             "attention_mask": np.zeros((len(rows), S), int), "labels": np.full((len(rows), S), IGNORE_INDEX),
             "next_sentence_label": np.array([r[3] for r in rows])}
    for b, (tokens, segments, labels, _) in enumerate(rows):
        n = len(tokens)
        batch["input_ids"][b, :n], batch["token_type_ids"][b, :n] = tokens, segments
        batch["attention_mask"][b, :n], batch["labels"][b, :n] = 1, labels
    return batch, vocab


def overfit_demo(steps: int = 200, lr: float = 5e-3, seed: int = 0, log_every: int = 25,
                 dtype=np.float32) -> tuple[BertForPreTraining, dict, list[dict]]:
    """Train a tiny BERT on ``toy_batch()`` until it memorises it; returns (model, batch, history)."""
    batch, vocab = toy_batch(seed=seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=batch["input_ids"].shape[1])
    model = BertForPreTraining(config, dtype=dtype, seed=seed)
    optimizer = AdamW(model.params, lr=lr, weight_decay=0.01)
    history = train(model, optimizer, lambda step: batch, steps,
                    lambda step: linear_warmup_decay(step, lr, steps // 10, steps), seed, log_every)
    return model, batch, history


def main(argv=None) -> int:
    """Command line: overfit the toy batch and report the final eval-mode loss and accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, batch, _ = overfit_demo(args.steps, args.lr, args.seed)
    out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["labels"],
                        batch["next_sentence_label"])
    print(f"eval: loss {float(out['loss']):.4f}  "
          f"mlm accuracy {accuracy(out['prediction_logits'], batch['labels']):.2f}  "
          f"nsp accuracy {accuracy(out['seq_relationship_logits'], batch['next_sentence_label']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
