"""``minibert finetune squad``: extractive question answering on SQuAD v1.1 / v2.0 JSON files.

The pipeline (Devlin et al., 2018, section 4.2), with the bookkeeping from ``minibert.train.finetune.squad``:

1. ``read_squad`` the training and dev files; ``make_features`` cuts every question + context into
   windows of ``--max-seq-length`` tokens overlapping by ``--doc-stride``, each labelled with the answer's
   start and end token ([CLS] = 0 when the window does not hold the answer, or there is none).
2. ``BertForQuestionAnswering`` scores every token as a start and as an end; the loss is the mean of the
   two cross-entropies. The shared loop (``minibert.train.finetune.loop``) trains it for ``--epochs``.
3. After each epoch the dev windows are scored, ``postprocess`` picks each question's best valid span
   (or "no answer" in v2.0) and ``evaluate`` computes the official exact match and F1.
4. The best epoch's checkpoint answers the dev questions once more: ``OUT/predictions.json`` (``{id:
   answer}``, the official scripts' input) and ``OUT/nbest_predictions.json``, both written atomically.

Windows are padded to ``--max-seq-length`` by ``make_features``; batches are cut back to their longest
real window, so short contexts cost no more than their length.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from minibert.train import common
from minibert.train.finetune import loop, squad
from minibert.files import atomic_write_text

PREDICTIONS_FILE = "predictions.json"
NBEST_FILE = "nbest_predictions.json"
# A logit for the padding cut off a batch: far below any real logit, yet finite (postprocess refuses inf).
PADDING_LOGIT = -1e4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``minibert finetune squad``'s options to ``parser``."""
    g = parser.add_argument_group("data")
    g.add_argument("--train", required=True, help="SQuAD-format training JSON (v1.1 or v2.0)")
    g.add_argument("--dev", required=True, help="SQuAD-format dev JSON, scored after every epoch")
    g.add_argument("--doc-stride", type=int, default=squad.DOC_STRIDE,
                   help=f"tokens of overlap between consecutive context windows (default {squad.DOC_STRIDE})")
    g.add_argument("--max-query-length", type=int, default=squad.MAX_QUERY_LENGTH,
                   help=f"question tokens kept (default {squad.MAX_QUERY_LENGTH})")
    g.add_argument("--n-best-size", type=int, default=squad.N_BEST_SIZE,
                   help=f"start and end candidates per window (default {squad.N_BEST_SIZE})")
    g.add_argument("--max-answer-length", type=int, default=squad.MAX_ANSWER_LENGTH,
                   help=f"longest answer in tokens (default {squad.MAX_ANSWER_LENGTH})")
    g.add_argument("--null-score-diff-threshold", type=float, default=0.0,
                   help="v2.0: answer nothing when null score - best span score exceeds this (default 0)")
    loop.add_training_arguments(parser, squad.MAX_SEQ_LENGTH)


def collate(features: list, with_positions: bool = True) -> dict:
    """Stack windows into tensors cut to the batch's longest real window; start/end positions for training."""
    longest = max(sum(f.attention_mask) for f in features)
    batch = {name: torch.tensor([getattr(f, name)[:longest] for f in features], dtype=torch.long)
             for name in ("input_ids", "token_type_ids", "attention_mask")}
    if with_positions:
        batch["start_positions"] = torch.tensor([f.start_position for f in features], dtype=torch.long)
        batch["end_positions"] = torch.tensor([f.end_position for f in features], dtype=torch.long)
    return batch


@torch.no_grad()
def predict_logits(model, features: list, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits ``[n_features, max_seq_length]`` (cut-off padding gets ``PADDING_LOGIT``)."""
    model.eval()
    width = len(features[0].input_ids)
    starts = np.full((len(features), width), PADDING_LOGIT)
    ends = np.full((len(features), width), PADDING_LOGIT)
    for i in range(0, len(features), batch_size):
        batch = collate(features[i:i + batch_size], with_positions=False)
        out = model(**{k: v.to(device) for k, v in batch.items()})
        n, seq = out.start_logits.shape
        starts[i:i + n, :seq] = out.start_logits.double().cpu().numpy()
        ends[i:i + n, :seq] = out.end_logits.double().cpu().numpy()
    return starts, ends


def answer(model, examples, features, args, device, version_2: bool):
    """(predictions, nbest, metrics) of ``model`` on the dev ``examples`` and their ``features``."""
    starts, ends = predict_logits(model, features, args.batch_size, device)
    predictions, nbest = squad.postprocess(examples, features, starts, ends, args.n_best_size,
                                           args.max_answer_length, version_2, args.null_score_diff_threshold)
    return predictions, nbest, squad.evaluate(examples, predictions, version_2)


def run(args) -> dict:
    """Fine-tune on SQuAD as ``args`` say; returns the summary (also OUT/summary.json) with EM/F1."""
    from minibert.modeling import BertForQuestionAnswering
    from minibert.tokenizer import BertTokenizer

    loop.check_training_arguments(args)
    device = common.select_device(args.device)
    resume = loop.Resume(args)
    train, dev = squad.read_squad(args.train), squad.read_squad(args.dev)
    version_2 = any(e.is_impossible for e in train + dev)
    tokenizer = BertTokenizer.from_pretrained(resume.model_dir)
    model = loop.prepare_model(BertForQuestionAnswering, args, resume, device)
    if args.max_seq_length > model.config.max_position_embeddings:
        raise ValueError(f"--max-seq-length {args.max_seq_length} exceeds the model's max_position_embeddings="
                         f"{model.config.max_position_embeddings}")
    windows = dict(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                   max_query_length=args.max_query_length)
    train_features = squad.make_features(train, tokenizer, training=True, **windows)
    dev_features = squad.make_features(dev, tokenizer, training=False, **windows)
    print(f"data: {len(train)} training questions -> {len(train_features)} windows, {len(dev)} dev questions "
          f"-> {len(dev_features)} windows (SQuAD {'v2.0' if version_2 else 'v1.1'})")

    def evaluate(m) -> dict:
        metrics = answer(m, dev, dev_features, args, device, version_2)[2]
        return {k: v for k, v in metrics.items() if k.endswith(("exact_match", "f1"))}  # not the counts

    summary = loop.finetune(model, tokenizer, train_features, collate, evaluate, "f1", args, resume, device)
    best_model = BertForQuestionAnswering.from_pretrained(summary["best_checkpoint"], args.attn, args.gelu,
                                                      layernorm_implementation=args.layernorm)
    predictions, nbest, metrics = answer(best_model.to(device), dev, dev_features, args, device, version_2)
    atomic_write_text(os.path.join(args.out, PREDICTIONS_FILE), json.dumps(predictions, indent=2) + "\n")
    atomic_write_text(os.path.join(args.out, NBEST_FILE), json.dumps(nbest, indent=2) + "\n")
    summary["dev_metrics"] = metrics
    print(f"best dev (epoch {summary['best']['epoch']}): exact match {metrics['exact_match']:.2f}, "
          f"F1 {metrics['f1']:.2f} over {metrics['total']} questions; wrote {PREDICTIONS_FILE} and "
          f"{NBEST_FILE} to {args.out}")
    return summary


def main(argv=None) -> dict:
    """``python -m minibert.train.finetune.qa``: the same as ``minibert finetune squad``."""
    parser = argparse.ArgumentParser(prog="minibert finetune squad",
                                     description="Fine-tune a BERT for SQuAD-style question answering.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
