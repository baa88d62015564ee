"""The official SQuAD metric: exact match and token F1, the best over each question's gold answers.

Both official evaluation scripts (v1.1 and v2.0) first normalise the two texts: lower-case, drop ASCII
punctuation, drop the articles a/an/the, squeeze whitespace. Exact match is then string equality and F1
the harmonic mean of precision and recall of the bags of words. Each question scores the maximum over
its gold answers (the dev sets have up to 6, one per annotator); the totals are percentages.

The v2.0 script differs in three details, which we follow when the data has unanswerable questions
(``version_2_with_negative``): gold answers that normalise to nothing are dropped and a question left
without any expects '' (no answer); F1 between two empty answers is 1, not 0; and it reports the
answerable (``HasAns_*``) and unanswerable (``NoAns_*``) questions separately. One deviation, on purpose:
a question with no prediction scores 0 in both versions (as in v1.1; the v2.0 script leaves it out of
the average, which flatters an incomplete predictions file), and ``missing`` counts them.
"""
from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)  # ASCII only: "¿" or "—" survive, as in the official scripts


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop articles, squeeze whitespace: ``"The  Eiffel-Tower!"`` ->
    ``"eiffeltower"``; ``"a cat, an owl"`` -> ``"cat owl"``."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, gold: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, version_2_with_negative: bool = False) -> float:
    """Token F1 of the normalised texts: ``2 * precision * recall / (precision + recall)`` over the words
    the two share (counted with multiplicity). With an empty side the v1.1 script gives 0; the v2.0
    script gives 1 when both are empty (a correct "no answer") and 0 otherwise."""
    prediction_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2_with_negative and (not prediction_tokens or not gold_tokens):
        return float(prediction_tokens == gold_tokens)
    n_same = sum((collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)).values())
    if n_same == 0:
        return 0.0
    precision, recall = n_same / len(prediction_tokens), n_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def evaluate(examples, predictions: dict[str, str], version_2_with_negative: bool | None = None) -> dict:
    """Official exact match and F1 of ``predictions`` (``{qas_id: answer text}``) over ``examples``.

    ``version_2_with_negative=None`` uses the v2.0 rules when any example ``is_impossible``. Returns
    ``{"exact_match": %, "f1": %, "total": n, "missing": questions without a prediction}`` and, with the
    v2.0 rules, ``HasAns_exact_match``, ``HasAns_f1``, ``HasAns_total`` and the same for ``NoAns``
    (each group only when it has questions). Predictions for unknown ids are ignored, as officially.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    if version_2_with_negative is None:
        version_2_with_negative = any(example.is_impossible for example in examples)
    scores = {"": [], "HasAns_": [], "NoAns_": []}  # group -> [(exact, f1)]
    missing = 0
    for example in examples:
        golds = [a["text"] for a in example.answers]
        if version_2_with_negative:
            golds = [g for g in golds if normalize_answer(g)] or [""]
        elif not golds:
            raise ValueError(f"question {example.qas_id!r} has no gold answers: evaluation needs them (a v2.0 "
                             "unanswerable question is marked is_impossible)")
        prediction = predictions.get(example.qas_id)
        if prediction is None:
            missing += 1
            score = (0.0, 0.0)
        elif not isinstance(prediction, str):
            raise ValueError(f"the prediction for {example.qas_id!r} must be a string, got {prediction!r}")
        else:
            score = (max(exact_match_score(prediction, g) for g in golds),
                     max(f1_score(prediction, g, version_2_with_negative) for g in golds))
        scores[""].append(score)
        if version_2_with_negative:
            scores["HasAns_" if example.answers else "NoAns_"].append(score)
    result = {}
    for group, group_scores in scores.items():
        if group_scores:
            result[group + "exact_match"] = 100.0 * sum(s[0] for s in group_scores) / len(group_scores)
            result[group + "f1"] = 100.0 * sum(s[1] for s in group_scores) / len(group_scores)
            result[group + "total"] = len(group_scores)
        if group == "":
            result["missing"] = missing
    return result
