"""From start/end logits to answer texts: google-research/bert's n-best span search, v2.0 null answer.

The model gives every token of every window two logits: "the answer starts here" and "it ends here".
A span ``(s, e)`` of one window scores ``start_logit[s] + end_logit[e]``. Trying every pair costs
``seq_len**2``, so, like the original, we pair only the ``n_best_size`` best starts with the
``n_best_size`` best ends of each window and keep the valid pairs:

* both ends are context tokens (not [CLS], the question, [SEP] or padding),
* ``s <= e`` and the span is at most ``max_answer_length`` tokens,
* ``s`` is a max-context token of this window (the window where it is scored, see
  ``squad_features.max_context_windows``), so a span is judged where its start sees the most text.

The best spans of all of an example's windows compete; the text of each is cut from the original
context through the token offsets, so it is an exact substring of the context. In SQuAD v2.0 the
[CLS] token doubles as "no answer": its score ``start_logit[0] + end_logit[0]`` (the lowest over the
example's windows, as in the original) competes too, and the prediction is '' when
``null_score - best_span_score > null_score_diff_threshold`` (tune the threshold on dev data).
"""
from __future__ import annotations

import numpy as np

# Defaults of google-research/bert run_squad.py.
N_BEST_SIZE = 20
MAX_ANSWER_LENGTH = 30


def postprocess(examples, features, start_logits, end_logits, n_best_size: int = N_BEST_SIZE,
                max_answer_length: int = MAX_ANSWER_LENGTH, version_2_with_negative: bool = False,
                null_score_diff_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """Predicted answer text and n-best list of every example, from the logits of its windows.

    ``start_logits``/``end_logits``: one row per feature, ``[n_features, seq_len]`` (a NumPy array, a
    CPU tensor or a list of rows), row i for ``features[i]``. Returns ``(predictions, nbest)``:
    ``predictions[qas_id]`` is an exact substring of the context, or '' when no valid span exists or,
    with ``version_2_with_negative``, when the null answer wins; ``nbest[qas_id]`` lists up to
    ``n_best_size`` distinct span texts (plus the null answer '' in v2.0) best first, each ``{"text",
    "answer_start", "start_logit", "end_logit", "probability"}`` (``answer_start``: a character offset,
    None for the null answer; the probabilities are a softmax over the listed scores).
    """
    starts, ends = _logits(start_logits, features, "start_logits"), _logits(end_logits, features, "end_logits")
    for name, value in (("n_best_size", n_best_size), ("max_answer_length", max_answer_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    windows_of = [[] for _ in examples]
    for i, feature in enumerate(features):
        if not 0 <= feature.example_index < len(examples):
            raise ValueError(f"features[{i}].example_index={feature.example_index} does not index the "
                             f"{len(examples)} examples; pass the examples the features were made from")
        windows_of[feature.example_index].append(i)
    predictions, nbest = {}, {}
    for index, example in enumerate(examples):
        if not windows_of[index]:
            raise ValueError(f"example {example.qas_id!r} has no features; make evaluation features with "
                             "make_features(..., training=False), which keeps every example")
        candidates = []
        for i in windows_of[index]:
            candidates += _window_spans(features[i], starts[i], ends[i], n_best_size, max_answer_length)
        candidates.sort(key=lambda c: -(c[2] + c[3]))  # stable: equal scores keep window order
        best, seen = [], set()
        for char_start, char_end, start_logit, end_logit in candidates:
            text = example.context[char_start:char_end]
            if text not in seen:  # windows overlap, so the same text comes back from several of them
                seen.add(text)
                best.append({"text": text, "answer_start": char_start, "start_logit": start_logit,
                             "end_logit": end_logit})
        best = best[:n_best_size]
        answer = best[0]["text"] if best else ""
        if version_2_with_negative:
            null = _null_answer(starts, ends, windows_of[index])
            if best and _score(null) - _score(best[0]) > null_score_diff_threshold:
                answer = ""
            best = sorted(best + [null], key=lambda c: -_score(c))
        if best:
            scores = np.array([_score(c) for c in best])
            probabilities = np.exp(scores - scores.max())
            for c, p in zip(best, probabilities / probabilities.sum()):
                c["probability"] = float(p)
        predictions[example.qas_id] = answer
        nbest[example.qas_id] = best
    return predictions, nbest


def _score(candidate: dict) -> float:
    return candidate["start_logit"] + candidate["end_logit"]


def _null_answer(starts, ends, windows: list[int]) -> dict:
    """The n-best entry of "no answer": [CLS] logits of the window whose null score is lowest (the
    original's choice: the window that most believes there is an answer)."""
    i = min(windows, key=lambda w: starts[w][0] + ends[w][0])
    return {"text": "", "answer_start": None, "start_logit": float(starts[i][0]), "end_logit": float(ends[i][0])}


def _window_spans(feature, starts: np.ndarray, ends: np.ndarray, n_best_size: int,
                  max_answer_length: int) -> list[tuple[int, int, float, float]]:
    """Valid ``(char_start, char_end, start_logit, end_logit)`` spans of one window (module docstring)."""
    offsets, max_context = feature.offsets, feature.token_is_max_context
    # Stable sorts: on equal logits the earlier token comes first, as in the original's sorted().
    top_starts = np.argsort(-starts, kind="stable")[:n_best_size]
    top_ends = np.argsort(-ends, kind="stable")[:n_best_size]
    spans = []
    for s in top_starts:
        if offsets[s] is None or not max_context[s]:
            continue
        for e in top_ends:
            if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            spans.append((offsets[s][0], offsets[e][1], float(starts[s]), float(ends[e])))
    return spans


def _logits(logits, features, name: str) -> list[np.ndarray]:
    """Check one logits argument against the features; return one float64 row per feature."""
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()  # a torch tensor
    rows = [np.asarray(row, dtype=np.float64) for row in logits]
    if len(rows) != len(features):
        raise ValueError(f"{name} has {len(rows)} rows but there are {len(features)} features; pass one row "
                         "of logits per feature, in the same order")
    for i, (row, feature) in enumerate(zip(rows, features)):
        if row.shape != (len(feature.input_ids),):
            raise ValueError(f"{name}[{i}] has shape {row.shape}, expected ({len(feature.input_ids)},): one "
                             "logit per token of the feature")
        if not np.isfinite(row).all():
            raise ValueError(f"{name}[{i}] holds NaN or infinity: the model diverged")
    return rows
