"""SQuAD features: each example becomes windows ``[CLS] question [SEP] context piece [SEP] [PAD]...``.

A context longer than the model's sequence is cut into windows of context tokens; consecutive windows
overlap by ``doc_stride`` tokens, so an answer cut by one window's edge lies whole inside the next one.
(This is HF's meaning of the stride, what ``tokenizer(question, context, truncation="only_second",
stride=..., return_overflowing_tokens=True)`` gives; in google-research/bert's run_squad.py the same
``--doc_stride=128`` is the distance between window *starts*. With 384-token windows and short questions
the two differ by about 190 tokens of overlap; tests/test_squad.py checks our windows against HF's.)

Tokens are mapped to context characters through the tokenizer's offsets, not through the original
code's whitespace tokens, so a predicted span is an exact slice of the original context (case, accents
and punctuation intact even for an uncased model) and a training label points at the tokens covering
the answer: the last token starting at or before the answer's first character and the first token
ending at or after its last one (HF's run_qa.py rule).
"""
from __future__ import annotations

import dataclasses
import warnings

from minibert.tokenizer.encoding import stride_windows

# Defaults of google-research/bert run_squad.py (HF's run_qa.py uses the same numbers).
MAX_SEQ_LENGTH = 384
DOC_STRIDE = 128
MAX_QUERY_LENGTH = 64
_N_SPECIAL = 3  # [CLS] question [SEP] context [SEP]


@dataclasses.dataclass
class SquadFeature:
    """One window of one example, padded to ``max_seq_length``.

    ``offsets[i]`` is the ``(start, end)`` character span of token i in the example's context, ``None``
    for [CLS], question, [SEP] and padding tokens. ``token_is_max_context[i]`` is True where this window
    is the one that scores context token i (see ``max_context_windows``). ``start_position`` and
    ``end_position`` (inclusive) are the answer's tokens, both 0 ([CLS]) when this window does not hold
    the whole answer or the example has none.
    """

    example_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    offsets: list[tuple[int, int] | None]
    token_is_max_context: list[bool]
    start_position: int
    end_position: int


def doc_windows(n_tokens: int, window_length: int, doc_stride: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each window over ``n_tokens`` context tokens, ``window_length`` tokens each.

    Windows overlap by ``doc_stride`` tokens (start ``window_length - doc_stride`` apart); the last one
    ends at the last token and may be shorter. ``doc_windows(10, 4, 1) -> [(0, 4), (3, 7), (6, 10)]``.
    """
    if n_tokens > window_length and not 0 <= doc_stride < window_length:
        raise ValueError(f"doc_stride ({doc_stride}) must be smaller than the window ({window_length} context "
                         "tokens) so that windows move forward")
    # The same windows the tokenizer cuts with return_overflowing_tokens and stride (HF's QA recipe).
    return stride_windows(n_tokens, window_length, doc_stride)


def max_context_windows(windows: list[tuple[int, int]], n_tokens: int) -> list[int]:
    """For each context token, the index of the window where it has the most context.

    google-research/bert's example, in our own numbers: the context "rain fell on the old roof of the
    quiet house all night" (12 tokens) in windows of 5 overlapping by 2 is
    ``[0, 5)`` rain fell on the old | ``[3, 8)`` the old roof of the | ``[6, 11)`` of the quiet house all |
    ``[9, 12)`` house all night. The second "the" (token 7) is in two windows: in ``[3, 8)`` it has 4
    tokens on its left and 0 on its right, in ``[6, 11)`` 1 and 3. A token predicted at the very edge of
    a window was predicted half-blind, so its score is the *smaller* side, min(4, 0) = 0 against
    min(1, 3) = 1: window 2 scores it. Ties go to the longer window (the original adds 0.01 * length),
    then to the earlier one. We compare ``100 * min(left, right) + length`` as integers, which orders
    windows the same way without float rounding.
    """
    best_window, best_score = [-1] * n_tokens, [-1] * n_tokens
    for index, (start, stop) in enumerate(windows):
        length = stop - start
        for position in range(start, stop):
            score = 100 * min(position - start, stop - 1 - position) + length
            if score > best_score[position]:
                best_window[position], best_score[position] = index, score
    return best_window


def answer_char_span(example) -> tuple[int, int] | None:
    """``[start, end)`` characters of the example's first answer, without surrounding whitespace.

    None when there is no answer (v2.0 ``is_impossible``, or no answers given) and when ``answer_start``
    does not point at the answer's text (``context[start:start + len(text)] != text``).
    """
    if example.is_impossible or not example.answers:
        return None
    text, start = example.answers[0]["text"], example.answers[0]["answer_start"]
    if example.context[start:start + len(text)] != text:
        return None
    # A label must start and end on a token; SQuAD has answers like " 1990" with a stray space.
    start += len(text) - len(text.lstrip())
    return start, start + len(text.strip())


def answer_token_span(offsets: list[tuple[int, int]], window: tuple[int, int], span: tuple[int, int]):
    """The first and last context token of the answer ``span`` (characters) inside ``window``, or None.

    ``offsets`` are those of all context tokens; the returned indices are into that list. None when the
    window does not cover the whole answer.
    """
    start, stop = window
    char_start, char_end = span
    if not (offsets[start][0] <= char_start and offsets[stop - 1][1] >= char_end):
        return None
    first = start
    while first + 1 < stop and offsets[first + 1][0] <= char_start:
        first += 1  # the last token starting at or before the answer
    last = stop - 1
    while last - 1 >= start and offsets[last - 1][1] >= char_end:
        last -= 1  # the first token ending at or after it
    # One character can become several tokens ("ﬁ" -> f ##i, both spanning it); then the two rules cross.
    return min(first, last), max(first, last)


def make_features(examples, tokenizer, max_seq_length: int = MAX_SEQ_LENGTH, doc_stride: int = DOC_STRIDE,
                  max_query_length: int = MAX_QUERY_LENGTH, training: bool = True) -> list[SquadFeature]:
    """Cut every example into padded windows of ``max_seq_length`` tokens (see the module docstring).

    The question keeps its first ``max_query_length`` tokens; context windows overlap by ``doc_stride``
    tokens. Each window is labelled with the first answer's tokens where it holds the whole answer,
    else with [CLS] (0, 0). With ``training=True`` every example must be answerable or ``is_impossible``,
    and examples whose ``answer_start`` does not point at their answer text are skipped with one warning
    (google-research/bert does the same); with ``training=False`` every example gets its windows (their
    labels are still filled in where the answer can be found, for an evaluation loss).
    """
    _check_lengths(max_seq_length, doc_stride, max_query_length)
    if tokenizer.pad_token_id is None:
        raise ValueError("the vocabulary has no [PAD]; SQuAD features are padded to max_seq_length")
    features, skipped = [], []
    for index, example in enumerate(examples):
        span = answer_char_span(example)
        if training and span is None and not example.is_impossible:
            if not example.answers:
                raise ValueError(f"training example {example.qas_id!r} has no answer and is not marked "
                                 "is_impossible; pass training=False for unlabelled data")
            skipped.append(example.qas_id)
            continue
        features += _example_features(index, example, span, tokenizer, max_seq_length, doc_stride,
                                      max_query_length)
    if skipped:
        if len(skipped) == len(examples):
            raise ValueError(f"no training example has an answer_start that points at its answer text (first: "
                             f"{skipped[0]!r}); are the offsets in bytes or tokens rather than characters?")
        warnings.warn(f"skipped {len(skipped)} of {len(examples)} training examples whose answer_start does not "
                      f"point at their answer text: {', '.join(map(repr, skipped[:5]))}"
                      f"{' ...' if len(skipped) > 5 else ''}", stacklevel=2)
    return features


def _check_lengths(max_seq_length: int, doc_stride: int, max_query_length: int) -> None:
    for name, value in (("max_seq_length", max_seq_length), ("doc_stride", doc_stride),
                        ("max_query_length", max_query_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "doc_stride" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'doc_stride' else 'positive'} int, "
                             f"got {value!r}")
    room = max_seq_length - max_query_length - _N_SPECIAL
    if doc_stride >= room:
        raise ValueError(f"doc_stride ({doc_stride}) must be smaller than max_seq_length - max_query_length - 3 "
                         f"({room}), the context tokens a window holds next to the longest question; raise "
                         "max_seq_length or lower doc_stride / max_query_length")


def _tokens(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``text`` -> (ids, character offsets), without [CLS]/[SEP]."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]


def _example_features(index, example, span, tokenizer, max_seq_length, doc_stride, max_query_length):
    """The windows of one example as SquadFeatures."""
    question_ids = _tokens(tokenizer, example.question)[0][:max_query_length]
    context_ids, context_offsets = _tokens(tokenizer, example.context)
    if not question_ids or not context_ids:
        which = "question" if not question_ids else "context"
        raise ValueError(f"example {example.qas_id!r}: the {which} has no tokens (only characters the "
                         "tokenizer drops)")
    windows = doc_windows(len(context_ids), max_seq_length - len(question_ids) - _N_SPECIAL, doc_stride)
    best_window = max_context_windows(windows, len(context_ids))
    first = len(question_ids) + 2  # position of a window's first context token
    features = []
    for window_index, (start, stop) in enumerate(windows):
        ids = [tokenizer.cls_token_id, *question_ids, tokenizer.sep_token_id, *context_ids[start:stop],
               tokenizer.sep_token_id]
        n_pad = max_seq_length - len(ids)
        tokens = answer_token_span(context_offsets, (start, stop), span) if span is not None else None
        start_position, end_position = (0, 0) if tokens is None else (first + tokens[0] - start,
                                                                      first + tokens[1] - start)
        features.append(SquadFeature(
            example_index=index,
            input_ids=ids + [tokenizer.pad_token_id] * n_pad,
            token_type_ids=[0] * first + [1] * (stop - start + 1) + [0] * n_pad,
            attention_mask=[1] * len(ids) + [0] * n_pad,
            offsets=[None] * first + context_offsets[start:stop] + [None] * (1 + n_pad),
            token_is_max_context=([False] * first + [best_window[p] == window_index for p in range(start, stop)]
                                  + [False] * (1 + n_pad)),
            start_position=start_position, end_position=end_position))
    return features
