"""BERT pretraining data: documents -> NSP pairs -> masked instances -> batches (and shards on disk).

The pieces, one file each:

* :mod:`~minibert.data.instances`: :class:`TrainingInstance`, :func:`create_training_instances`,
  :func:`truncate_seq_pair` (google-research/bert's ``create_pretraining_data.py``, streaming);
* :mod:`~minibert.data.masking`: :func:`mask_tokens` and its :class:`MaskingSpec` (80/10/10, whole words);
* :mod:`~minibert.data.batching`: :func:`collate` (padded ``[B, S]`` arrays, HF names), :func:`to_torch`;
* :mod:`~minibert.data.statistics`: :func:`data_statistics` (masking rate, 80/10/10, NSP balance, ...);
* :mod:`~minibert.data.shards`: :func:`write_shards` and :class:`PretrainingShards` (``.npz`` shards on
  disk, read back as a sequence of instances; ``minibert pretrain --shards DIR`` trains on them, batching,
  splitting and dynamically masking them exactly as instances held in memory).

``python -m minibert.data`` shows instances and their statistics for the built-in corpus (``--out DIR``
also writes them as shards).
"""
from minibert.data.batching import IGNORE_INDEX, collate, to_torch
from minibert.data.instances import (DEFAULT_DUPE_FACTOR, DEFAULT_MAX_SEQ_LENGTH, DEFAULT_SHORT_SEQ_PROB,
                                     TrainingInstance, create_training_instances, truncate_seq_pair)
from minibert.data.masking import (DEFAULT_MASKED_LM_PROB, DEFAULT_MAX_PREDICTIONS_PER_SEQ, MaskingSpec,
                                   mask_tokens)
from minibert.data.shards import PretrainingShards, write_shards
from minibert.data.statistics import data_statistics

__all__ = [
    "TrainingInstance", "create_training_instances", "truncate_seq_pair", "MaskingSpec", "mask_tokens",
    "collate", "to_torch", "data_statistics", "write_shards", "PretrainingShards", "IGNORE_INDEX",
    "DEFAULT_DUPE_FACTOR", "DEFAULT_MAX_SEQ_LENGTH",
    "DEFAULT_SHORT_SEQ_PROB", "DEFAULT_MASKED_LM_PROB", "DEFAULT_MAX_PREDICTIONS_PER_SEQ",
]
