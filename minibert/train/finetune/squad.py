"""SQuAD-style extractive question answering: examples, windowed features, answers, the official metric.

BERT answers a question by pointing at a span of the context: one logit per token says "the answer
starts here", another "it ends here" (Devlin et al., 2018, sec. 4.2). Everything around those two
logits is bookkeeping, and it lives in four small modules, re-exported here:

1. ``squad_data``: ``read_squad`` reads SQuAD v1.1 / v2.0 JSON into ``SquadExample`` objects.
2. ``squad_features``: ``make_features`` cuts each example into windows ``[CLS] question [SEP]
   context piece [SEP]`` that overlap by ``doc_stride`` tokens, marks in which window each context
   token has the most context, and labels each window with the answer's tokens (or [CLS]).
3. ``squad_answers``: ``postprocess`` turns the windows' start/end logits into the best valid span of
   each example, an exact substring of the original context ('' for "no answer" in v2.0).
4. ``squad_metric``: ``evaluate`` computes exact match and F1 as the official scripts do.

Show your work::

    python -m minibert.train.finetune.squad features [--vocab DIR] DATA.json    # windows of the first example
    python -m minibert.train.finetune.squad evaluate DATA.json PREDICTIONS.json # official metrics as JSON
"""
from __future__ import annotations

import argparse
import json
import sys

from minibert.train.finetune.squad_answers import MAX_ANSWER_LENGTH, N_BEST_SIZE, postprocess
from minibert.train.finetune.squad_data import SquadExample, read_squad
from minibert.train.finetune.squad_features import (DOC_STRIDE, MAX_QUERY_LENGTH, MAX_SEQ_LENGTH, SquadFeature,
                                              make_features)
from minibert.train.finetune.squad_metric import evaluate, exact_match_score, f1_score, normalize_answer

__all__ = ["SquadExample", "SquadFeature", "read_squad", "make_features", "postprocess", "evaluate",
           "normalize_answer", "exact_match_score", "f1_score", "show_features", "main", "MAX_SEQ_LENGTH",
           "DOC_STRIDE", "MAX_QUERY_LENGTH", "N_BEST_SIZE", "MAX_ANSWER_LENGTH"]

# Small windows for the show-your-work view, so that a paragraph of the sample files needs several.
SHOW_MAX_SEQ_LENGTH, SHOW_DOC_STRIDE, SHOW_MAX_QUERY_LENGTH = 48, 8, 16


def show_features(example: SquadExample, tokenizer, max_seq_length: int = SHOW_MAX_SEQ_LENGTH,
                  doc_stride: int = SHOW_DOC_STRIDE, max_query_length: int = SHOW_MAX_QUERY_LENGTH) -> str:
    """Every window of one example as text: its tokens (``*`` = scored here, the max-context window),
    the context characters it covers, and the labelled answer span."""
    answer = example.answers[0] if example.answers else None
    lines = [f"question {example.qas_id!r}: {example.question}",
             f"context:  {len(example.context)} characters",
             "answer:   " + ("(none: is_impossible)" if answer is None else
                             f"{answer['text']!r} at character {answer['answer_start']}")]
    features = make_features([example], tokenizer, max_seq_length, doc_stride, max_query_length, training=False)
    for n, feature in enumerate(features):
        n_real = sum(feature.attention_mask)
        tokens = tokenizer.convert_ids_to_tokens(feature.input_ids[:n_real])
        context = [i for i, o in enumerate(feature.offsets) if o is not None]
        first, last = feature.offsets[context[0]][0], feature.offsets[context[-1]][1]
        lines.append(f"window {n}: context characters [{first}, {last}), {len(context)} tokens, "
                     f"{max_seq_length - n_real} padding")
        lines.append("  " + " ".join(t + ("*" if feature.token_is_max_context[i] else "")
                                     for i, t in enumerate(tokens)))
        if feature.start_position:
            s, e = feature.start_position, feature.end_position
            span = example.context[feature.offsets[s][0]:feature.offsets[e][1]]
            lines.append(f"  label: tokens {s}..{e} = {' '.join(tokens[s:e + 1])} -> {span!r}")
        else:
            lines.append("  label: 0..0 = [CLS] (this window does not hold the whole answer)")
    lines.append(f"(max_seq_length={max_seq_length}, doc_stride={doc_stride} tokens of overlap, "
                 f"max_query_length={max_query_length}; * marks the window that scores a context token)")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m minibert.train.finetune.squad {evaluate DATA PREDICTIONS | features [--vocab DIR] DATA}``."""
    parser = argparse.ArgumentParser(prog="python -m minibert.train.finetune.squad",
                                     description="SQuAD data: show an example's windows, or score predictions.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("evaluate", help="official exact match / F1 of a predictions file, as JSON")
    p.add_argument("data", help="SQuAD v1.1 or v2.0 JSON with gold answers")
    p.add_argument("predictions", help="JSON object {question id: answer text} ('' = no answer)")
    p = verbs.add_parser("features", help="show the windows of the first example")
    p.add_argument("data", help="SQuAD v1.1 or v2.0 JSON")
    p.add_argument("--vocab", default=None, help="vocab.txt or tokenizer directory (default: the vocabulary "
                   "trained on minibert's built-in corpus)")
    p.add_argument("--max-seq-length", type=int, default=SHOW_MAX_SEQ_LENGTH)
    p.add_argument("--doc-stride", type=int, default=SHOW_DOC_STRIDE, help="tokens of overlap between windows")
    p.add_argument("--max-query-length", type=int, default=SHOW_MAX_QUERY_LENGTH)
    args = parser.parse_args(argv)
    examples = read_squad(args.data)
    if args.verb == "evaluate":
        predictions = _read_predictions(args.predictions)
        result = evaluate(examples, predictions)
        if result["missing"]:
            print(f"warning: {result['missing']} of {result['total']} questions have no prediction; they "
                  "score 0", file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        from minibert.tokenizer import BertTokenizer
        if args.vocab is None:
            from minibert.tokenizer.train import default_vocab_dir  # trains (once, then cached) on the built-in corpus
            args.vocab = default_vocab_dir()
        tokenizer = BertTokenizer.from_pretrained(args.vocab)
        print(show_features(examples[0], tokenizer, args.max_seq_length, args.doc_stride, args.max_query_length))
    return 0


def _read_predictions(path: str) -> dict[str, str]:
    """A predictions file (``{id: text}``, as the official scripts read it), checked."""
    try:
        with open(path, encoding="utf-8") as f:
            predictions = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not UTF-8 JSON ({e})") from None
    if not isinstance(predictions, dict):
        raise ValueError(f"{path}: predictions must be a JSON object {{question id: answer text}}")
    return predictions


if __name__ == "__main__":
    sys.exit(main())
