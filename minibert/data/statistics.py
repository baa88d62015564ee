"""Statistics that show pretraining instances are what BERT prescribes (and make a good test oracle).

Expected values for BERT's recipe: ``masking_rate`` ~0.15 of the maskable tokens, ``mask_fraction`` /
``random_fraction`` / ``kept_fraction`` ~0.8 / 0.1 / 0.1, ``random_next_fraction`` ~0.5,
``special_masked`` exactly 0, ``whole_word_fraction`` 1.0 with whole-word masking.
"""
from __future__ import annotations

import numpy as np

from minibert.data.masking import MaskingSpec


def data_statistics(instances, tokenizer, bins: int = 8) -> dict:
    """Measure a collection of instances; returns a dict of plain numbers and lists.

    * ``num_instances``, ``num_tokens`` (including specials), ``max_length``, ``mean_length``
    * ``masking_rate``: predicted positions / maskable (non-special) tokens
    * ``mask_fraction``, ``random_fraction``, ``kept_fraction``: of the predicted positions, the share
      showing [MASK], another token, and the original token. A random replacement that happens to draw
      the original token counts as kept (probability 1/vocabulary per replacement).
    * ``predictions_per_instance``: mean number of predicted positions
    * ``random_next_fraction``: share of instances whose B is from another document (label 1)
    * ``special_masked``: predicted positions holding a special token ([CLS], [SEP], ...): must be 0
    * ``whole_word_fraction``: of the multi-piece words with at least one piece predicted, the share
      with *all* pieces predicted (1.0 with whole-word masking; None when no such word exists)
    * ``segment_a_mean``, ``segment_b_mean``, ``length_histogram`` (``bins`` equal-width bins over
      ``[0, max_length]``: counts and edges)
    """
    spec = MaskingSpec.from_tokenizer(tokenizer)
    lengths, a_lengths, b_lengths = [], [], []
    num_maskable = num_predicted = num_mask = num_kept = num_special_masked = num_random_next = 0
    words_touched = words_whole = 0
    for instance in instances:
        original = instance.original_tokens()
        n = len(original)
        lengths.append(n)
        num_a = instance.segment_ids.count(0)
        a_lengths.append(num_a - 2)  # minus [CLS] and the first [SEP]
        b_lengths.append(n - num_a - 1)  # minus the last [SEP]
        num_random_next += instance.is_random_next
        num_maskable += sum(t not in spec.special_ids for t in original)
        predicted = set(instance.masked_lm_positions)
        num_predicted += len(predicted)
        for position in predicted:
            shown = instance.tokens[position]
            num_mask += shown == spec.mask_token_id
            num_kept += shown == original[position]
            num_special_masked += original[position] in spec.special_ids
        # Words: a non-continuation token followed by its ## pieces, inside one segment.
        for start in range(n):
            if original[start] in spec.continuation_ids or original[start] in spec.special_ids:
                continue
            end = start + 1
            while end < n and original[end] in spec.continuation_ids:
                end += 1
            if end - start < 2:
                continue
            hit = sum(p in predicted for p in range(start, end))
            words_touched += hit > 0
            words_whole += hit == end - start

    num_instances = len(lengths)
    if num_instances == 0:
        raise ValueError("data_statistics needs at least one instance")
    counts, edges = np.histogram(lengths, bins=bins, range=(0, max(lengths)))
    return {
        "num_instances": num_instances,
        "num_tokens": int(sum(lengths)),
        "max_length": int(max(lengths)),
        "mean_length": float(np.mean(lengths)),
        "masking_rate": num_predicted / max(num_maskable, 1),
        "mask_fraction": num_mask / max(num_predicted, 1),
        "random_fraction": (num_predicted - num_mask - num_kept) / max(num_predicted, 1),
        "kept_fraction": num_kept / max(num_predicted, 1),
        "predictions_per_instance": num_predicted / num_instances,
        "num_predicted": num_predicted,
        "random_next_fraction": num_random_next / num_instances,
        "special_masked": num_special_masked,
        "whole_word_fraction": words_whole / words_touched if words_touched else None,
        "segment_a_mean": float(np.mean(a_lengths)),
        "segment_b_mean": float(np.mean(b_lengths)),
        "length_histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }
