"""Batching: a list of :class:`TrainingInstance` -> padded arrays the model eats.

The arrays use HF ``transformers`` names, so a batch feeds our models and ``BertForPreTraining`` alike:

* ``input_ids``       ``[B, S]`` int64, padded with ``pad_id``
* ``token_type_ids``  ``[B, S]`` int64, 0 = segment A, 1 = segment B (0 on padding)
* ``attention_mask``  ``[B, S]`` int64, 1 = real token, 0 = padding
* ``labels``          ``[B, S]`` int64, the original id at each masked position, -100 elsewhere
  (-100 is the ``ignore_index`` of the cross-entropy loss, so unmasked positions cost nothing)
* ``next_sentence_label`` ``[B]`` int64, 0 = IsNext, 1 = random next
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from minibert.data.masking import MaskingSpec, mask_tokens

IGNORE_INDEX = -100


def collate(instances, pad_id: int, max_seq_length: int, *, pad_to: str = "longest",
            masking: MaskingSpec | None = None, rng: random.Random | None = None,
            rngs: Sequence[random.Random] | None = None) -> dict:
    """Stack ``instances`` into a dict of ``np.ndarray`` (see the module docstring for the keys).

    ``pad_to="longest"`` pads to the longest instance of the batch (less compute on short batches);
    ``pad_to="max_length"`` pads every batch to ``max_seq_length`` (fixed shapes, e.g. for compiled
    models). An instance longer than ``max_seq_length`` is an error, never silently cut.

    Dynamic masking: pass ``masking`` (a :class:`MaskingSpec`) to draw fresh masks now, from each
    instance's original tokens (an already-masked instance is unmasked first), and either ``rng``, one
    ``random.Random`` that the instances draw from in turn, or ``rngs``, one per instance. With ``rngs`` an
    instance's masks depend only on its own generator, not on which batch, rank or worker it lands in
    (``minibert.train.data.StepBatches`` seeds each from the instance and the epoch).
    """
    if pad_to not in ("longest", "max_length"):
        raise ValueError(f"pad_to must be 'longest' or 'max_length', got {pad_to!r}")
    instances = list(instances)
    if not instances:
        raise ValueError("collate needs at least one instance")
    if masking is not None and (rng is None) == (rngs is None):
        raise ValueError("dynamic masking needs an rng or one rng per instance, not both: "
                         "collate(..., masking=spec, rng=random.Random(seed)) or rngs=[random.Random(s) ...]")
    if rngs is not None and len(rngs) != len(instances):
        raise ValueError(f"rngs has {len(rngs)} generators for {len(instances)} instances; pass one per instance")

    rows = []  # (tokens, positions, labels) per instance
    for n, instance in enumerate(instances):
        if len(instance.tokens) > max_seq_length:
            raise ValueError(f"instance {n} has {len(instance.tokens)} tokens, more than max_seq_length="
                             f"{max_seq_length}; create instances with the same max_seq_length you train with")
        if len(instance.segment_ids) != len(instance.tokens):
            raise ValueError(f"instance {n} has {len(instance.tokens)} tokens but {len(instance.segment_ids)} "
                             "segment ids")
        if masking is not None:
            rows.append(mask_tokens(instance.original_tokens(), masking, rng if rngs is None else rngs[n]))
        else:
            rows.append((instance.tokens, instance.masked_lm_positions, instance.masked_lm_labels))
    if masking is None and not any(positions for _, positions, _ in rows):
        # Every instance unmasked: they were made with dynamic_masking=True. Training on this batch would
        # silently give a masked-LM loss of nothing.
        raise ValueError("no instance in this batch has masked positions (they were created with "
                         "dynamic_masking=True); pass masking=MaskingSpec.from_tokenizer(tok) and rng= to "
                         "collate, or train with `minibert pretrain --dynamic-masking`")

    batch_size = len(instances)
    seq_len = max_seq_length if pad_to == "max_length" else max(len(t) for t, _, _ in rows)
    input_ids = np.full((batch_size, seq_len), pad_id, dtype=np.int64)  # [B, S]
    token_type_ids = np.zeros((batch_size, seq_len), dtype=np.int64)  # [B, S]
    attention_mask = np.zeros((batch_size, seq_len), dtype=np.int64)  # [B, S]
    labels = np.full((batch_size, seq_len), IGNORE_INDEX, dtype=np.int64)  # [B, S]
    for b, (instance, (tokens, positions, masked_labels)) in enumerate(zip(instances, rows)):
        n = len(tokens)
        input_ids[b, :n] = tokens
        token_type_ids[b, :n] = instance.segment_ids
        attention_mask[b, :n] = 1
        labels[b, positions] = masked_labels
    next_sentence_label = np.array([i.next_sentence_label for i in instances], dtype=np.int64)  # [B]
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": labels, "next_sentence_label": next_sentence_label}


def to_torch(batch: dict, device=None) -> dict:
    """The same batch as ``torch.Tensor`` s (sharing memory with the arrays when on the CPU)."""
    try:
        import torch
    except ImportError as e:  # torch is optional for the NumPy path
        raise ImportError("to_torch needs PyTorch; install torch or use the NumPy batch directly") from e
    return {name: torch.from_numpy(array).to(device) if device is not None else torch.from_numpy(array)
            for name, array in batch.items()}
