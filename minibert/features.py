"""``minibert features``: BERT as a sentence encoder, one fixed-size vector per sentence.

A BERT turns a sentence of S tokens into S vectors of ``hidden_size`` numbers (the last hidden states).
Many uses (a linear probe, clustering, nearest-neighbour search) want one vector per sentence instead.
There are three common ways to pool the S vectors into one, and ``--pooling`` picks among them:

* ``cls``: the last hidden state of ``[CLS]`` (position 0). Every layer's attention lets ``[CLS]`` read
  the whole sentence, and pretraining's next-sentence head reads it, so it is trained to summarise.
* ``pooled``: the pooler's output ``tanh(W h_cls + b)``, exactly what the NSP head and
  ``minibert finetune classify`` put a classifier on. A checkpoint without a pooler (a question-answering
  model) cannot give it.
* ``mean``: the average of the last hidden states of the real tokens (``[CLS]`` and ``[SEP]`` included,
  padding excluded). It needs no trained summary token and often works better for similarity.

Sentences are tokenized as ``[CLS] sentence [SEP]`` cut to ``max_seq_length`` tokens and run in batches
with dropout off. Each batch is padded to its longest sentence and the padding is masked out, so a
sentence's vector does not depend on the batch it lands in (the tests compare batch 1 with batch 7).
Sentences are batched in order of length, which wastes less work on padding; the rows come back in the
input order.

From Python (what the command and ``tutorials/07_sentence_features.ipynb`` use)::

    from minibert.features import encode
    vectors = encode("runs/pretrain", ["The pass statement does nothing."], pooling="mean")  # [1, hidden]

From the shell, one sentence per line of a UTF-8 file (blank lines are skipped; row i of the array is
the i-th non-blank line)::

    minibert features --model runs/pretrain --input sentences.txt --out vectors.npy --pooling mean

``--model`` means what it means for every command (``minibert.train.state.model_directory``): a run
folder (its ``best/``, else its ``last/``), a checkpoint folder, or any HF-format BERT folder.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

POOLINGS = ("cls", "pooled", "mean")
DEFAULT_POOLING = "cls"
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_SEQ_LENGTH = 128  # what minibert pretrain trains on; longer sentences are cut


# ------------------------------------------------------------------------------------------------------
# Pooling: [B, S, E] hidden states -> [B, E] sentence vectors
# ------------------------------------------------------------------------------------------------------
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden [B, S, E]`` over the positions where ``attention_mask [B, S]`` is 1.

    Padded positions hold numbers too (the encoder computes every row), so they must be left out of both
    the sum and the count; otherwise a sentence's vector would change with the batch's longest sentence.
    """
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)          # [B, S, 1]: 1 real token, 0 padding
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)   # [B, E]


def pool(output, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence from a ``BertModel`` output: ``pooling`` is "cls", "pooled" or "mean"."""
    if pooling == "cls":
        return output.last_hidden_state[:, 0]                        # [B, E]: the [CLS] position
    if pooling == "pooled":
        if output.pooler_output is None:
            raise ValueError("pooling='pooled' needs the model's pooler; this model has none")
        return output.pooler_output                                  # [B, E]: tanh(W h_cls + b)
    if pooling == "mean":
        return mean_pool(output.last_hidden_state, attention_mask)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


# ------------------------------------------------------------------------------------------------------
# The model and the sentences
# ------------------------------------------------------------------------------------------------------
def load(model_dir: str, device: str | torch.device = "cpu", pooler: bool = True,
         attn_implementation: str = "fused", gelu_implementation: str = "fused"):
    """(``BertModel`` in eval mode, ``BertTokenizer``) from a checkpoint folder (``model_directory``'s rule).

    Any head the checkpoint holds (MLM, NSP, classifier, QA) is left out. ``pooler=False`` builds the
    encoder without its pooler, which is how a checkpoint that has none (a question-answering model)
    loads; a checkpoint that has none with ``pooler=True`` is a ``ValueError`` saying so. The backends are
    the model's (``"fused"`` quietly becomes eager where the extension is absent).
    """
    from minibert import checkpoint
    from minibert.config import BertConfig
    from minibert.modeling import BertModel
    from minibert.tokenizer import BertTokenizer
    from minibert.train.state import model_directory

    directory = model_directory(os.fspath(model_dir))
    if not os.path.isfile(os.path.join(directory, "vocab.txt")):
        raise FileNotFoundError(f"{directory} has no vocab.txt: sentence features need the vocabulary the "
                                f"model was trained with (minibert pretrain saves it in every checkpoint)")
    config = BertConfig.from_pretrained(directory)
    state = checkpoint.load_state_dict(directory, config)  # FileNotFoundError naming the folder if no weights
    names = {checkpoint.canonical_name(k).removeprefix("bert.") for k in state}
    if pooler and "pooler.dense.weight" not in names:
        raise ValueError(f"{directory} has no pooler (pooler.dense.*), as a question-answering checkpoint has "
                         f"none, so it cannot give pooled features; use pooling 'cls' or 'mean'")
    model = BertModel(config, add_pooling_layer=pooler, attn_implementation=attn_implementation,
                      gelu_implementation=gelu_implementation)
    checkpoint.load_weights(model, state, source=directory)
    tokenizer = BertTokenizer.from_pretrained(directory)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"{directory}: vocab.txt has {len(tokenizer)} tokens but the model only "
                         f"vocab_size={config.vocab_size} embeddings; the two do not belong together")
    return model.to(device).eval(), tokenizer


def read_sentences(path: str) -> list[str]:
    """The non-blank lines of the UTF-8 text file ``path``, stripped, in order.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file with no non-blank line or
    with bytes that are not UTF-8 (naming the first such line, ``path:line``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path!r} does not exist (or is not a file); give a text file with "
                                f"one sentence per line")
    with open(path, "rb") as f:
        raw = f.read()
    sentences = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark is allowed
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{number}: not UTF-8 ({e.reason} at byte {e.start} of the line); re-save "
                             f"the file as UTF-8") from None
        if text.strip():
            sentences.append(text.strip())
    if not sentences:
        raise ValueError(f"--input {path} has no sentences (every line is blank); write one sentence per line")
    return sentences


def _check_settings(pooling: str, batch_size: int, max_seq_length: int, max_positions: int | None) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (--batch-size) must be a positive integer, got {batch_size!r}")
    if max_seq_length is not None and (not isinstance(max_seq_length, int) or max_seq_length < 2):
        raise ValueError(f"max_seq_length (--max-seq-length) must be at least 2 ([CLS] and [SEP]), "
                         f"got {max_seq_length!r}")
    if None not in (max_positions, max_seq_length) and max_seq_length > max_positions:
        raise ValueError(f"max_seq_length (--max-seq-length) {max_seq_length} exceeds the model's "
                         f"max_position_embeddings={max_positions}")


# ------------------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------------------
def batches(tokenizer, sentences: list[str], batch_size: int, max_seq_length: int):
    """Yield ``(row indices, {input_ids, token_type_ids, attention_mask})`` batches, shortest sentences first.

    Each batch is padded only to its own longest sentence. Sorting by length first puts sentences of
    similar length together, so little of the work is spent on padding.
    """
    ids = [tokenizer(s, truncation=True, max_length=max_seq_length)["input_ids"] for s in sentences]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # stable: equal lengths keep input order
    pad_id = tokenizer.pad_token_id or 0
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        longest = max(len(ids[i]) for i in rows)
        input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, i in enumerate(rows):
            input_ids[r, :len(ids[i])] = torch.tensor(ids[i])
            attention_mask[r, :len(ids[i])] = 1
        yield rows, {"input_ids": input_ids, "attention_mask": attention_mask,
                     "token_type_ids": torch.zeros_like(input_ids)}  # one segment: all type 0


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], pooling: str = DEFAULT_POOLING,
          batch_size: int = DEFAULT_BATCH_SIZE, max_seq_length: int | None = None,
          progress: bool = False) -> np.ndarray:
    """``[len(sentences), hidden_size]`` float32 vectors of ``sentences`` from a loaded ``BertModel``.

    ``model``/``tokenizer`` as :func:`load` returns them; row i belongs to ``sentences[i]``.
    ``max_seq_length=None`` means ``DEFAULT_MAX_SEQ_LENGTH`` (128), or the model's
    ``max_position_embeddings`` when that is smaller. ``progress`` shows a tqdm bar (on stderr) over the
    batches.
    """
    from tqdm import tqdm

    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise ValueError("sentences must be a list of strings (one sentence each), not "
                         f"{type(sentences).__name__}")
    if not sentences:
        raise ValueError("sentences is empty: there is nothing to encode")
    positions = model.config.max_position_embeddings
    max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, positions) if max_seq_length is None else max_seq_length
    _check_settings(pooling, batch_size, max_seq_length, positions)
    if pooling == "pooled" and getattr(model, "pooler", None) is None:
        raise ValueError("pooling='pooled' needs the model's pooler; load it with pooler=True")
    model.eval()
    device = next(model.parameters()).device
    vectors = np.zeros((len(sentences), model.config.hidden_size), dtype=np.float32)
    n_batches = -(-len(sentences) // batch_size)
    for rows, batch in tqdm(batches(tokenizer, sentences, batch_size, max_seq_length), total=n_batches,
                            disable=not progress, desc="features", unit="batch", dynamic_ncols=True):
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model(**batch)
        vectors[rows] = pool(output, batch["attention_mask"], pooling).float().cpu().numpy()
    if not np.isfinite(vectors).all():
        raise ValueError("the model gave NaN or infinite hidden states; its weights or config.json "
                         "(e.g. layer_norm_eps) are damaged")
    return vectors


def encode(model_dir: str, sentences: list[str], pooling: str = DEFAULT_POOLING,
           batch_size: int = DEFAULT_BATCH_SIZE, max_seq_length: int | None = None,
           device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """``[len(sentences), hidden_size]`` float32 sentence vectors from the model in ``model_dir``.

    ``model_dir``: a run folder, a checkpoint folder or an HF BERT folder (``model_directory``'s rule).
    ``pooling``: "cls" (the [CLS] last hidden state), "pooled" (the pooler's ``tanh(W h_cls + b)``) or
    "mean" (average over real tokens). ``max_seq_length``: tokens per sentence, [CLS] and [SEP] included
    (default: 128, or the model's ``max_position_embeddings`` when smaller). Loads the model, then
    :func:`embed`; to encode several lists with one model, :func:`load` it once and call :func:`embed`.
    """
    _check_settings(pooling, batch_size, max_seq_length, None)
    model, tokenizer = load(model_dir, device, pooler=pooling == "pooled")
    return embed(model, tokenizer, sentences, pooling, batch_size, max_seq_length, progress)


def save_vectors(path: str, vectors: np.ndarray) -> None:
    """Write ``vectors`` to ``path`` as a ``.npy`` file, atomically (temporary name, then rename)."""
    from minibert.files import atomic_open

    with atomic_open(path, "wb") as f:
        np.save(f, vectors)


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``minibert features``'s options to ``parser``."""
    parser.add_argument("--model", required=True,
                        help="a run folder (e.g. runs/pretrain: its best/, else its last/ checkpoint), a "
                             "checkpoint folder or an HF-format BERT folder")
    parser.add_argument("--input", required=True,
                        help="UTF-8 text file, one sentence per line (blank lines are skipped)")
    parser.add_argument("--out", required=True, help="the .npy file to write: float32 [sentences, hidden]")
    parser.add_argument("--pooling", choices=POOLINGS, default=DEFAULT_POOLING,
                        help="cls: [CLS]'s last hidden state; pooled: the pooler's tanh(W h_cls + b); mean: "
                             "mean of the real tokens' last hidden states")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="sentences per forward pass")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help=f"tokens per sentence, [CLS] and [SEP] included; longer sentences are cut "
                             f"(default: {DEFAULT_MAX_SEQ_LENGTH}, or the model's max_position_embeddings "
                             f"when smaller)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _device(name: str) -> torch.device:
    """``--device`` as a torch device; a clear error for a name torch does not know or a GPU it lacks."""
    from minibert.train.common import select_device

    try:
        return select_device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device torch knows ({e}); use cpu or cuda") from None


def run(args) -> np.ndarray:
    """Encode ``--input``'s sentences and write ``--out``; returns the vectors."""
    from minibert.train.state import model_directory

    _check_settings(args.pooling, args.batch_size, args.max_seq_length, None)
    out_folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_folder):
        raise FileNotFoundError(f"--out {args.out!r}: the folder {out_folder!r} does not exist; create it first")
    if os.path.isdir(args.out):
        raise IsADirectoryError(f"--out {args.out!r} is a folder; give a file name such as vectors.npy")
    sentences = read_sentences(args.input)
    model_dir = model_directory(args.model)
    model, tokenizer = load(model_dir, _device(args.device), pooler=args.pooling == "pooled")
    print(f"model: {model_dir}: {model.config.num_hidden_layers} layers, hidden size {model.config.hidden_size}; "
          f"{model.loading_report()}", file=sys.stderr)
    vectors = embed(model, tokenizer, sentences, args.pooling, args.batch_size, args.max_seq_length,
                    progress=not args.quiet)
    save_vectors(args.out, vectors)
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 {args.pooling} vectors to {args.out}")
    return vectors


def main(argv=None) -> np.ndarray:
    """``python -m minibert.features --model DIR --input FILE --out vectors.npy``."""
    from minibert.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="minibert features", formatter_class=HelpFormatter,
                                     description="Encode sentences (one per line) into fixed-size vectors.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
