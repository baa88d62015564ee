"""Stage 3 of BERT tokenization, second half: word-piece ids -> the rows a model eats.

Given each text's ids and character offsets (``BertTokenizer._encode_text``), build
``[CLS] A [SEP] (B [SEP])`` with ``token_type_ids``, ``attention_mask``, ``special_tokens_mask`` and
``offset_mapping``; truncate with HF's strategies (``longest_first``, ``only_first``, ``only_second``);
cut long inputs into ``stride``-overlapping windows (``return_overflowing_tokens``, as SQuAD does for long
documents); pad; and return lists or ``[batch, seq]`` NumPy / torch tensors. Every rule, down to the order
of overflow windows, is the one of HF's fast tokenizer.
"""
from __future__ import annotations

import contextlib
import gc

from minibert.tokenizer.basic import check_text
from minibert.tokenizer.vocab_file import CLS_TOKEN, SEP_TOKEN

PADDING_STRATEGIES = (False, True, "do_not_pad", "longest", "max_length")
TRUNCATION_STRATEGIES = (False, True, "do_not_truncate", "longest_first", "only_first", "only_second")


class BatchEncoding(dict):
    """The result of ``BertTokenizer.__call__``: a dict (``enc["input_ids"]``) that also allows ``enc.input_ids``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def encode_batch(tokenizer, text, text_pair=None, add_special_tokens=True, padding=False, truncation=False,
                 max_length=None, stride=0, return_overflowing_tokens=False, return_offsets_mapping=False,
                 return_special_tokens_mask=False, return_tensors=None) -> BatchEncoding:
    """The work of ``BertTokenizer.__call__`` (see its docstring for the arguments and the result).

    ``tokenizer`` gives each text's ids and character offsets (``tokenizer._encode_text``), the vocabulary
    ids of [CLS], [SEP] and [PAD]; everything from there on, pairs, truncation, windows, padding and
    tensors, happens here.
    """
    batched = isinstance(text, (list, tuple))
    texts = list(text) if batched else [text]
    if not texts:
        raise ValueError("the batch is empty: pass at least one text")
    if text_pair == "":
        text_pair = None  # as in HF: a single empty pair is no pair (in a batch, "" stays a pair)
    if text_pair is None:
        pairs = [None] * len(texts)
    elif batched != isinstance(text_pair, (list, tuple)) or (batched and len(text_pair) != len(texts)):
        raise TypeError("text_pair must match text: a str for a str, a list of the same length for a list")
    else:
        pairs = list(text_pair) if batched else [text_pair]
    for i, (a, b) in enumerate(zip(texts, pairs)):
        check_text(a, f"text[{i}]" if batched else "text")
        if b is not None:
            check_text(b, f"text_pair[{i}]" if batched else "text_pair")
    padding, truncation = _check_options(padding, truncation, max_length, stride, return_tensors,
                                         tokenizer.pad_token_id)

    rows, sample_of_row, longest = [], [], 0
    with _collector_paused():
        for index, (a, b) in enumerate(zip(texts, pairs)):
            windows = _build(tokenizer, a, b, add_special_tokens, truncation, max_length, stride)
            if not return_overflowing_tokens:
                windows = windows[:1]
            rows.extend(windows)
            sample_of_row.extend([index] * len(windows))
            # "longest" means the longest first window, as in the fast tokenizer. An overflow window is
            # never longer, except in the odd pair cut where max_length leaves a single text token.
            longest = max(longest, len(windows[0][0]))
        if padding:
            target = max_length if padding == "max_length" else longest
            rows = [_pad(row, target, tokenizer.pad_token_id) for row in rows]

        names = ["input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping"]
        wanted = [True, True, True, return_special_tokens_mask, return_offsets_mapping]
        out = BatchEncoding()
        for column, (name, want) in enumerate(zip(names, wanted)):
            if want:
                out[name] = [row[column] for row in rows]
    if return_overflowing_tokens:
        out["overflow_to_sample_mapping"] = sample_of_row
    elif not batched and return_tensors is None:
        out = BatchEncoding({k: v[0] for k, v in out.items()})
    return _to_tensors(out, return_tensors) if return_tensors else out


def _check_options(padding, truncation, max_length, stride, return_tensors, pad_token_id):
    """Validate and canonicalise the options of __call__; return (padding, truncation) strategy names."""
    if padding not in PADDING_STRATEGIES:
        raise ValueError(f"padding must be one of {PADDING_STRATEGIES}, got {padding!r}")
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
    padding = {True: "longest", "do_not_pad": False}.get(padding, padding)
    truncation = {True: "longest_first", "do_not_truncate": False}.get(truncation, truncation)
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if (truncation or padding == "max_length") and max_length is None:
        raise ValueError("truncation and padding='max_length' need max_length")
    if not isinstance(stride, int) or stride < 0:
        raise ValueError(f"stride must be a non-negative int, got {stride!r}")
    if truncation and stride > max_length - 2:  # the fast tokenizer's own up-front check
        raise ValueError(f"stride ({stride}) must be at most max_length - 2 ({max_length - 2}): the windows "
                         "must move forward by at least one token; lower stride or raise max_length")
    if padding and pad_token_id is None:
        raise ValueError("padding needs [PAD] in the vocabulary")
    if return_tensors not in (None, "np", "pt"):
        raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")
    return padding, truncation


def _build(tokenizer, text, text_pair, add_special_tokens, truncation, max_length, stride) -> list[tuple]:
    """One input -> its windows, each ``(ids, type_ids, mask, special_mask, offsets)``; the first is the
    main row, the others overflow (ordered as the fast tokenizer orders them)."""
    ids_a, off_a = tokenizer._encode_text(text)
    ids_b, off_b = tokenizer._encode_text(text_pair) if text_pair is not None else (None, None)
    n_b = None if ids_b is None else len(ids_b)
    if truncation:
        n_special = (3 if ids_b is not None else 2) if add_special_tokens else 0
        budget = max_length - n_special
        if budget < 1:
            raise ValueError(f"max_length={max_length} leaves no room for text next to the {n_special} "
                             f"special tokens; use max_length >= {n_special + 1}")
        keep_a, keep_b = _kept_lengths(len(ids_a), n_b, budget, truncation)
        windows_a = stride_windows(len(ids_a), keep_a, stride)
        windows_b = stride_windows(n_b, keep_b, stride) if ids_b is not None else [None]
    else:
        windows_a, windows_b = [(0, len(ids_a))], [None if ids_b is None else (0, n_b)]
    # Fast-tokenizer order: (a0, b0), then each later a-window with b0 and every later b-window,
    # then a0 with each later b-window.
    combos = [(windows_a[0], windows_b[0])]
    for wa in windows_a[1:]:
        combos += [(wa, windows_b[0])] + [(wa, wb) for wb in windows_b[1:]]
    combos += [(windows_a[0], wb) for wb in windows_b[1:]]
    return [_assemble(tokenizer, ids_a, off_a, wa, ids_b, off_b, wb, add_special_tokens) for wa, wb in combos]


def _assemble(tokenizer, ids_a, off_a, wa, ids_b, off_b, wb, add_special_tokens) -> tuple:
    """``[CLS] A [SEP] B [SEP]`` for one window, with all the per-token columns."""
    cls, sep, none = tokenizer.vocab[CLS_TOKEN], tokenizer.vocab[SEP_TOKEN], (0, 0)
    a_ids, a_off = ids_a[wa[0]:wa[1]], off_a[wa[0]:wa[1]]
    if add_special_tokens:
        ids, offsets = [cls] + a_ids + [sep], [none] + a_off + [none]
        special = [1] + [0] * len(a_ids) + [1]
    else:
        ids, offsets, special = list(a_ids), list(a_off), [0] * len(a_ids)
    n_first = len(ids)
    if wb is not None:
        b_ids, b_off = ids_b[wb[0]:wb[1]], off_b[wb[0]:wb[1]]
        ids += b_ids + ([sep] if add_special_tokens else [])
        offsets += b_off + ([none] if add_special_tokens else [])
        special += [0] * len(b_ids) + ([1] if add_special_tokens else [])
    type_ids = [0] * n_first + [1] * (len(ids) - n_first)
    return ids, type_ids, [1] * len(ids), special, offsets


def _pad(row: tuple, target: int, pad_id: int) -> tuple:
    """Append padding up to ``target`` tokens (rows already that long are returned unchanged)."""
    n = target - len(row[0])
    if n <= 0:
        return row
    ids, type_ids, mask, special, offsets = row
    return (ids + [pad_id] * n, type_ids + [0] * n, mask + [0] * n, special + [1] * n,
            offsets + [(0, 0)] * n)


def stride_windows(n: int, keep: int, stride: int) -> list[tuple[int, int]]:
    """Spans ``[start, stop)`` of a sequence of ``n`` tokens cut to ``keep`` tokens; later ones overflow.

    Consecutive windows overlap by ``stride`` tokens, so a SQuAD answer cut by one window boundary lies
    whole inside the next window. ``keep == 0`` keeps nothing and moves the whole sequence to overflow
    (as the fast tokenizer does).
    """
    if keep >= n:
        return [(0, n)]
    if keep == 0:
        return [(0, 0), (0, n)]
    if stride >= keep:
        raise ValueError(f"stride ({stride}) must be smaller than the number of tokens kept per window "
                         f"({keep}, i.e. max_length minus the special tokens); lower stride or raise max_length")
    spans, start = [], 0
    while True:
        stop = min(start + keep, n)
        spans.append((start, stop))
        if stop == n:
            return spans
        start += keep - stride


def _kept_lengths(n_a: int, n_b, budget: int, strategy: str):
    """How many tokens of the first (and second) sequence the first window keeps (the fast tokenizer's rule)."""
    total = n_a + (n_b or 0)
    if total <= budget:
        return n_a, n_b
    to_remove = total - budget
    if strategy == "longest_first":
        if n_b is None:
            return budget, None
        # Keep the shorter one whole when the longer one can absorb the cut; else split the budget evenly
        # (the longer sequence gets the odd token).
        short, long_ = sorted((n_a, n_b))
        long_ = short if short > budget else max(short, budget - short)
        if short + long_ > budget:
            short, long_ = budget // 2, budget // 2 + budget % 2
        return (long_, short) if n_a > n_b else (short, long_)
    if strategy == "only_second" and n_b is None:
        raise ValueError("truncation='only_second' needs a text_pair; use 'only_first' or 'longest_first'")
    target = n_a if strategy == "only_first" else n_b
    if target <= to_remove:
        raise ValueError(f"truncation={strategy!r} cannot fit the input into max_length: that sequence has "
                         f"{target} tokens but {to_remove} must go; use truncation='longest_first'")
    return (n_a - to_remove, n_b) if strategy == "only_first" else (n_a, n_b - to_remove)


def _to_tensors(out: BatchEncoding, kind: str) -> BatchEncoding:
    """Lists of equal-length rows -> int64 arrays ``[batch, seq]`` (offsets ``[batch, seq, 2]``)."""
    import numpy as np

    rows = out["input_ids"]
    if not isinstance(rows[0], list):
        out = BatchEncoding({k: [v] for k, v in out.items()})  # a single text becomes a batch of one
        rows = out["input_ids"]
    if len({len(r) for r in rows}) > 1:
        raise ValueError("sequences have different lengths, so they cannot form one tensor; "
                         "pass padding=True (or truncation with padding='max_length')")
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
    if kind == "pt":
        import torch
        arrays = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return BatchEncoding(arrays)


@contextlib.contextmanager
def _collector_paused():
    """Switch Python's cyclic garbage collector off for one batch (back on afterwards if it was on).

    A batch allocates several small tuples and lists per token (offsets, rows) and keeps them all until it
    returns. None of them can form a reference cycle, but every 700 allocations the collector runs, and
    its older generations rescan everything alive, the batch so far and the whole rest of the heap. With a
    large library such as transformers imported, that scanning took half the time of a 6,000-sentence
    batch (measured: 28k sentences/s with the collector on, 53k/s off). Reference counting still frees
    everything as usual; only the cycle search waits until the batch is done.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
