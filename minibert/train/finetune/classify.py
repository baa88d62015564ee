"""``minibert finetune classify``: sentence (or sentence-pair) classification and regression.

Data: TSV, CSV or JSONL files with a text column, an optional second-text column (for pair tasks such as
entailment) and a label column, named with ``--text-column`` / ``--text-pair-column`` / ``--label-column``
(a header names the columns; without one, ``--no-header``, columns are numbered from 0). String labels are
mapped to class ids in sorted order (numerically when every label is a number) and the map is saved as
``id2label`` / ``label2id`` in the checkpoint's config.json, as HF does. ``--regression`` reads the label as
a number and trains a single output with mean squared error (STS-B style).

With no ``--train`` the run uses a small real task built from the built-in corpus: is a sentence from the
Python *language reference* (the pydoc topics) or from a *module docstring*? Dev sentences come from the
documents ``minibert pretrain`` holds out (every 10th), so a pretrained model has never seen them.

Metrics: accuracy and macro-F1 (and Matthews correlation for two classes) against the majority-class
baseline; Pearson and Spearman correlation for regression. ``--predict FILE`` writes
``OUT/predictions.tsv``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os

import numpy as np
import torch

from minibert.train import common
from minibert.train.finetune import loop
from minibert.files import atomic_write_text

DEFAULT_MAX_SEQ_LENGTH = 128  # GLUE runs used 128 (google-research/bert run_classifier.py)
BUILTIN_PER_CLASS = 1000      # training sentences per class of the built-in task
BUILTIN_HELD_OUT_EVERY = 10   # = minibert pretrain's --held-out-every default: dev documents were never seen
BUILTIN_SEED = 1234           # the built-in task is fixed: it does not change with --seed
PREDICTIONS_FILE = "predictions.tsv"


@dataclasses.dataclass
class Example:
    """One row: its text (and second text), its label as written (None when absent), and where it came from."""

    text: str
    text_pair: str | None
    label: str | None
    where: str  # "file:line", for error messages


# ------------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------------
def _lines(path: str) -> list[str]:
    """The file's lines decoded as UTF-8, with a file:line error for the first undecodable one."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ValueError(f"{path} is empty: a data file needs at least one example")
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{number}: not UTF-8 ({e.reason} at byte {e.start}); re-save the file "
                             f"as UTF-8") from None
    return raw.decode("utf-8-sig").splitlines()


def _column(spec: str, header: list[str] | None, path: str) -> int:
    """The index of column ``spec``: a header name, or a 0-based number."""
    if header is not None and spec in header:
        return header.index(spec)
    if spec.isdigit():
        return int(spec)
    if header is None:
        raise ValueError(f"{path} is read without a header (--no-header), so columns are numbers; got {spec!r}")
    raise ValueError(f"{path} has no column {spec!r}; its columns are {header}. Name the columns with "
                     f"--text-column / --text-pair-column / --label-column")


def _rows(path: str, header: bool) -> tuple[list[str] | None, list[tuple[int, dict | list]]]:
    """(header names or None, [(line number, row)]); a row is a list of fields, or a dict for JSONL."""
    lines = _lines(path)
    if path.endswith((".jsonl", ".json")):
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg}); JSONL has one object per line")
            except RecursionError:
                raise ValueError(f"{path}:{number}: nested too deeply to be an example (Python's JSON parser "
                                 f"gives up); JSONL has one flat object per line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: each JSONL line must be an object, got {type(row).__name__}")
            rows.append((number, row))
        return None, rows
    delimiter = "\t" if path.endswith((".tsv", ".txt")) else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # GLUE TSVs have bare quotes
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quoting=quoting)
    rows, start = [], 1  # start: the line where the row being read begins (a quoted field may span lines)
    try:
        for fields in reader:
            if fields:
                rows.append((reader.line_num, fields))
            start = reader.line_num + 1
    except csv.Error as e:  # e.g. a field longer than csv.field_size_limit() (128 KiB)
        hint = "is it really a TSV file?" if delimiter == "\t" else "is a quote left unclosed?"
        raise ValueError(f"{path}:{start}: the row starting here cannot be read ({e}); an example's text is a "
                         f"few thousand characters at most: {hint}") from None
    if not rows:
        raise ValueError(f"{path} has no rows")
    names = None
    if header:
        (_, names), rows = rows[0], rows[1:]
    width = len(names) if names is not None else len(rows[0][1]) if rows else 0
    for number, fields in rows:
        if len(fields) != width:
            raise ValueError(f"{path}:{number}: {len(fields)} fields where the "
                             f"{'header has' if names else 'first row has'} {width}; every row needs the "
                             f"same columns (a stray {'tab' if delimiter == chr(9) else 'comma'} in a text?)")
    return names, rows


def read_examples(path: str, text_column: str = "text", text_pair_column: str | None = None,
                  label_column: str | None = "label", header: bool = True) -> list[Example]:
    """Read a TSV (``.tsv``), CSV (``.csv``) or JSONL (``.jsonl``) file into examples.

    ``label_column=None`` reads no labels (for ``--predict`` on unlabelled text). Raises ValueError with
    ``file:line`` for undecodable bytes, ragged rows, missing fields and empty texts.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no data file {path!r}")
    names, rows = _rows(path, header)
    if not rows:
        raise ValueError(f"{path} has a header but no examples")
    wanted = {"text": text_column, "text_pair": text_pair_column, "label": label_column}
    examples = []
    if names is None and rows and isinstance(rows[0][1], dict):  # JSONL: fields by name
        for number, row in rows:
            values = {}
            for field, key in wanted.items():
                if key is None:
                    values[field] = None
                elif key not in row:
                    raise ValueError(f"{path}:{number}: no field {key!r} (fields: {sorted(row)})")
                else:
                    values[field] = str(row[key])
            examples.append(Example(**values, where=f"{path}:{number}"))
    else:
        index = {field: None if key is None else _column(key, names, path) for field, key in wanted.items()}
        width = len(rows[0][1])
        for field, i in index.items():
            if i is not None and i >= width:
                raise ValueError(f"{path}: column {i} (--{field.replace('_', '-')}-column) does not exist; rows "
                                 f"have {width} columns")
        for number, fields in rows:
            examples.append(Example(**{f: None if i is None else fields[i] for f, i in index.items()},
                                    where=f"{path}:{number}"))
    for e in examples:
        if not e.text.strip():
            raise ValueError(f"{e.where}: the text is empty")
    return examples


def label_names(examples: list[Example]) -> list[str]:
    """The distinct labels in sorted order (numerically when all are numbers): class id = position."""
    labels = {e.label for e in examples}
    if None in labels:
        raise ValueError("training examples need labels")
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def label_ids(examples: list[Example], label2id: dict[str, int] | None) -> list[float] | list[int]:
    """Class ids of the examples (``label2id``), or float targets when ``label2id`` is None (regression)."""
    out = []
    for e in examples:
        if e.label is None:
            raise ValueError(f"{e.where}: the example has no label")
        if label2id is None:
            try:
                out.append(float(e.label))
            except ValueError:
                raise ValueError(f"{e.where}: regression labels are numbers, got {e.label!r}") from None
        elif e.label not in label2id:
            raise ValueError(f"{e.where}: label {e.label!r} never occurs in the training data, whose labels are "
                             f"{sorted(label2id)}")
        else:
            out.append(label2id[e.label])
    return out


# ------------------------------------------------------------------------------------------------------
# The built-in task
# ------------------------------------------------------------------------------------------------------
BUILTIN_LABELS = ("docstring", "reference")


def builtin_task() -> tuple[list[Example], list[Example]]:
    """(train, dev) of "language reference or module docstring?", balanced, fixed for a Python version.

    The built-in corpus lists the pydoc topics (the language reference) first, then one document per
    standard-library module. Documents the pretraining run holds out (every 10th) give the dev set; each
    class keeps at most ``BUILTIN_PER_CLASS`` training sentences, and both sets are balanced by sampling
    the larger class down, so the majority baseline is 50%.
    """
    import pydoc_data.topics

    from minibert.data import corpus

    documents = corpus.builtin_documents()
    n_reference = sum(1 for name in sorted(pydoc_data.topics.topics)
                      if corpus.text_to_sentences(pydoc_data.topics.topics[name]))
    gen = np.random.default_rng(BUILTIN_SEED)
    splits = []
    for held_out in (False, True):
        by_label = {label: [] for label in BUILTIN_LABELS}
        for i, doc in enumerate(documents):
            if (i % BUILTIN_HELD_OUT_EVERY == BUILTIN_HELD_OUT_EVERY - 1) == held_out:
                label = "reference" if i < n_reference else "docstring"
                by_label[label].extend((s, f"builtin:{label}:{i}") for s in doc)
        n = min(len(v) for v in by_label.values())
        n = n if held_out else min(n, BUILTIN_PER_CLASS)
        rows = [Example(s, None, label, where) for label, items in by_label.items()
                for s, where in (items[j] for j in sorted(gen.choice(len(items), n, replace=False)))]
        splits.append([rows[j] for j in gen.permutation(len(rows))])
    return splits[0], splits[1]


# ------------------------------------------------------------------------------------------------------
# Features, batches and metrics
# ------------------------------------------------------------------------------------------------------
def encode(tokenizer, examples: list[Example], targets, max_seq_length: int) -> list[dict]:
    """Tokenised features: ``[CLS] text [SEP] (pair [SEP])`` cut to ``max_seq_length`` (longest first)."""
    features = []
    for i, e in enumerate(examples):
        enc = tokenizer(e.text, e.text_pair, truncation=True, max_length=max_seq_length)
        feature = {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}
        if targets is not None:
            feature["labels"] = targets[i]
        features.append(feature)
    return features


def collate(features: list[dict], pad_id: int = 0) -> dict:
    """Pad a batch to its longest sequence (dynamic padding) and stack it into tensors."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    types = torch.zeros((len(features), longest), dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        types[row, :n] = torch.tensor(f["token_type_ids"])
        mask[row, :n] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if "labels" in features[0]:
        labels = [f["labels"] for f in features]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    return batch


@torch.no_grad()
def predict_logits(model, features: list[dict], batch_size: int, device, pad_id: int) -> np.ndarray:
    """Logits ``[N, num_labels]`` of ``features`` with dropout off, in order."""
    model.eval()
    chunks = []
    for i in range(0, len(features), batch_size):
        batch = collate([{k: v for k, v in f.items() if k != "labels"} for f in features[i:i + batch_size]],
                        pad_id)
        chunks.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy())
    return np.concatenate(chunks)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (what Spearman's correlation needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def classification_metrics(predicted: np.ndarray, gold: np.ndarray, num_labels: int) -> dict:
    """Accuracy, macro-F1 over the classes, Matthews correlation (2 classes), majority-class baseline."""
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    f1s = []
    for c in range(num_labels):
        tp = np.sum((predicted == c) & (gold == c))
        fp, fn = np.sum((predicted == c) & (gold != c)), np.sum((predicted != c) & (gold == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    out = {"accuracy": float(np.mean(predicted == gold)), "macro_f1": float(np.mean(f1s)),
           "majority_baseline": float(np.bincount(gold, minlength=num_labels).max() / len(gold))}
    if num_labels == 2:
        tp, tn = np.sum((predicted == 1) & (gold == 1)), np.sum((predicted == 0) & (gold == 0))
        fp, fn = np.sum((predicted == 1) & (gold == 0)), np.sum((predicted == 0) & (gold == 1))
        denominator = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
        out["matthews_corr"] = float((tp * tn - fp * fn) / denominator) if denominator else 0.0
    return out


def regression_metrics(predicted: np.ndarray, gold: np.ndarray) -> dict:
    """Pearson and Spearman correlation (0 when either side is constant), and the mean squared error."""
    predicted, gold = np.asarray(predicted, float), np.asarray(gold, float)

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        scale = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / scale) if scale else 0.0

    return {"pearson": pearson(predicted, gold), "spearman": pearson(_ranks(predicted), _ranks(gold)),
            "mse": float(np.mean((predicted - gold) ** 2))}


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``minibert finetune classify``'s options to ``parser``."""
    g = parser.add_argument_group("data")
    g.add_argument("--train", help="training file (.tsv, .csv or .jsonl); default: the built-in task")
    g.add_argument("--dev", help="evaluation file, same columns (default: none; required with --train)")
    g.add_argument("--predict", help="a file to label with the best model, its label column optional "
                                     "(default: none)")
    g.add_argument("--text-column", default="text", help="name (or 0-based number) of the text column")
    g.add_argument("--text-pair-column", default=None, help="second text of a pair task (default: none)")
    g.add_argument("--label-column", default="label", help="name (or number) of the label column")
    g.add_argument("--no-header", action="store_true", help="TSV/CSV files have no header row")
    g.add_argument("--regression", action="store_true", help="labels are numbers: one output, MSE loss")
    loop.add_training_arguments(parser, DEFAULT_MAX_SEQ_LENGTH)


def _load_data(args):
    if args.train is None:
        if args.dev is not None:
            raise ValueError("--dev needs --train (without --train the built-in task is used)")
        train, dev = builtin_task()
        print(f"data: the built-in task \"language reference or module docstring?\": {len(train)} training "
              f"and {len(dev)} dev sentences (dev from documents pretraining holds out)")
        return train, dev
    if args.dev is None:
        raise ValueError("--train needs --dev: the loop evaluates after every epoch")
    columns = dict(text_column=args.text_column, text_pair_column=args.text_pair_column,
                   label_column=args.label_column, header=not args.no_header)
    return read_examples(args.train, **columns), read_examples(args.dev, **columns)


def run(args) -> dict:
    """Fine-tune a classifier as ``args`` say; returns the summary (also OUT/summary.json)."""
    from minibert.config import BertConfig
    from minibert.modeling import BertForSequenceClassification
    from minibert.tokenizer import BertTokenizer

    loop.check_training_arguments(args)
    device = common.select_device(args.device)
    resume = loop.Resume(args)
    train, dev = _load_data(args)
    if args.regression:
        id2label, overrides = None, {"num_labels": 1}
    else:
        names = label_names(train)
        if len(names) < 2:
            raise ValueError(f"the training data has a single label {names}: a classifier needs at least two")
        id2label = dict(enumerate(names))
        saved = BertConfig.from_pretrained(resume.model_dir).id2label
        if saved is not None and set(saved.values()) == set(names):
            id2label = saved  # continuing a fine-tuned classifier: keep its class order
        overrides = {"num_labels": len(names), "id2label": id2label}
    label2id = None if id2label is None else {v: k for k, v in id2label.items()}
    train_targets, dev_targets = label_ids(train, label2id), label_ids(dev, label2id)
    tokenizer = BertTokenizer.from_pretrained(resume.model_dir)
    model = loop.prepare_model(BertForSequenceClassification, args, resume, device, **overrides)
    if args.max_seq_length > model.config.max_position_embeddings:
        raise ValueError(f"--max-seq-length {args.max_seq_length} exceeds the model's max_position_embeddings="
                         f"{model.config.max_position_embeddings}")
    pad_id = model.config.pad_token_id
    train_features = encode(tokenizer, train, train_targets, args.max_seq_length)
    dev_features = encode(tokenizer, dev, None, args.max_seq_length)

    def evaluate(m) -> dict:
        logits = predict_logits(m, dev_features, args.batch_size, device, pad_id)
        if args.regression:
            return regression_metrics(logits[:, 0], np.array(dev_targets))
        return classification_metrics(logits.argmax(-1), np.array(dev_targets), len(id2label))

    main_metric = "pearson" if args.regression else "accuracy"
    summary = loop.finetune(model, tokenizer, train_features, lambda f: collate(f, pad_id), evaluate,
                            main_metric, args, resume, device)
    best = summary["best"]
    if args.regression:
        print(f"best dev (epoch {best['epoch']}): pearson {best['pearson']:.4f}, spearman {best['spearman']:.4f}")
    else:
        print(f"best dev (epoch {best['epoch']}): accuracy {best['accuracy']:.2%}, macro-F1 "
              f"{best['macro_f1']:.4f} (majority baseline {best['majority_baseline']:.2%})")
    if args.predict:
        summary["predictions"] = write_predictions(args, summary["best_checkpoint"], device)
    return summary


def write_predictions(args, checkpoint_dir: str, device) -> str:
    """Label ``--predict``'s examples with the best checkpoint; writes ``OUT/predictions.tsv`` atomically."""
    from minibert.modeling import BertForSequenceClassification
    from minibert.tokenizer import BertTokenizer

    examples = read_examples(args.predict, args.text_column, args.text_pair_column, None, not args.no_header)
    model = BertForSequenceClassification.from_pretrained(checkpoint_dir, args.attn, args.gelu,
                                                          layernorm_implementation=args.layernorm).to(device)
    tokenizer = BertTokenizer.from_pretrained(checkpoint_dir)
    logits = predict_logits(model, encode(tokenizer, examples, None, args.max_seq_length), args.batch_size,
                            device, model.config.pad_token_id)
    if args.regression:
        lines = ["index\tprediction"] + [f"{i}\t{v:.6g}" for i, v in enumerate(logits[:, 0])]
    else:
        names = model.config.id2label
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        lines = ["index\tprediction\t" + "\t".join(f"p({names[c]})" for c in range(len(names)))]
        lines += [f"{i}\t{names[int(p.argmax())]}\t" + "\t".join(f"{x:.4f}" for x in p) for i, p in enumerate(probs)]
    path = os.path.join(args.out, PREDICTIONS_FILE)
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {len(examples)} predictions to {path}")
    return path


def main(argv=None) -> dict:
    """``python -m minibert.train.finetune.classify``: the same as ``minibert finetune classify``."""
    parser = argparse.ArgumentParser(prog="minibert finetune classify",
                                     description="Fine-tune a BERT classifier (default: the built-in task).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
