"""Pretraining instances on disk: compact ``.npz`` shards, read back one shard at a time.

A shard directory holds

* ``shard-00000.npz``, ``shard-00001.npz``, ...: each ``instances_per_shard`` instances as flat arrays
  (ragged rows are concatenated, with offsets), no pickles:

  ======================  ===================  ====================================================
  ``tokens``              ``[T]`` int16/int32  every instance's ids, one after the other
  ``token_offsets``       ``[N+1]`` int64      instance ``j`` is ``tokens[token_offsets[j]:token_offsets[j+1]]``
  ``segment_ids``         ``[T]`` int8         aligned with ``tokens``
  ``is_random_next``      ``[N]`` bool
  ``masked_lm_positions`` ``[M]`` int16/int32  instance ``j``'s are ``[mask_offsets[j]:mask_offsets[j+1]]``
  ``masked_lm_labels``    ``[M]`` int16/int32
  ``mask_offsets``        ``[N+1]`` int64
  ======================  ===================  ====================================================

  Token ids are int16 when the vocabulary has at most 32,767 tokens (BERT's 30,522 fits), int32 otherwise:
  about 3 bytes per token with the segment id, instead of 28+ for a Python int.
* ``vocab.txt``: the vocabulary the ids refer to (dynamic masking needs [MASK] and the ``##`` pieces);
* ``index.json``: shard files and sizes, written last. Every file is written to a temporary name and
  renamed, so a directory with an ``index.json`` is complete, and an interrupted write leaves none.
"""
from __future__ import annotations

import bisect
import glob
import json
import os
import random

import numpy as np

from minibert.data.instances import TrainingInstance
from minibert.data.masking import (DEFAULT_MASKED_LM_PROB, DEFAULT_MAX_PREDICTIONS_PER_SEQ, MaskingSpec,
                                   mask_tokens, vocab_tokens)
from minibert.files import atomic_open, atomic_write_text

SHARD_FORMAT = "minibert-pretraining-shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
VOCAB_FILE = "vocab.txt"
DEFAULT_INSTANCES_PER_SHARD = 10_000  # ~2.5 MB of ids at 128 tokens: a big shuffle buffer, cheap to load
_INT16_MAX = np.iinfo(np.int16).max

try:  # A torch IterableDataset makes DataLoader call __iter__ in each worker; torch itself is optional.
    from torch.utils.data import IterableDataset as _DatasetBase
except ImportError:  # pragma: no cover - exercised only where torch is absent
    _DatasetBase = object


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.npz"


def _write_one_shard(path: str, instances: list, id_dtype, vocab_size: int) -> None:
    lengths = [len(i.tokens) for i in instances]
    num_masked = [len(i.masked_lm_positions) for i in instances]
    for n, instance in enumerate(instances):
        if len(instance.segment_ids) != len(instance.tokens):
            raise ValueError(f"instance {n} of {path}: {len(instance.tokens)} tokens but "
                             f"{len(instance.segment_ids)} segment ids")
        if len(instance.masked_lm_labels) != len(instance.masked_lm_positions):
            raise ValueError(f"instance {n} of {path}: masked_lm_positions and masked_lm_labels differ in length")
    tokens = np.fromiter((t for i in instances for t in i.tokens), dtype=np.int64, count=sum(lengths))
    labels = np.fromiter((t for i in instances for t in i.masked_lm_labels), dtype=np.int64, count=sum(num_masked))
    for name, ids in (("token", tokens), ("label", labels)):
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"a {name} id is outside the vocabulary [0, {vocab_size}): the instances were "
                             "made with a different tokenizer than the one given to write_shards")
    position_dtype = np.int16 if max(lengths) <= _INT16_MAX else np.int32
    arrays = {
        "tokens": tokens.astype(id_dtype),
        "token_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "segment_ids": np.fromiter((s for i in instances for s in i.segment_ids), dtype=np.int8,
                                   count=sum(lengths)),
        "is_random_next": np.array([i.is_random_next for i in instances], dtype=bool),
        "masked_lm_positions": np.fromiter((p for i in instances for p in i.masked_lm_positions),
                                           dtype=position_dtype, count=sum(num_masked)),
        "masked_lm_labels": labels.astype(id_dtype),
        "mask_offsets": np.concatenate([[0], np.cumsum(num_masked)]).astype(np.int64),
    }
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def write_shards(instances, out_dir, tokenizer, instances_per_shard: int = DEFAULT_INSTANCES_PER_SHARD, *,
                 overwrite: bool = False) -> list:
    """Write ``instances`` (any iterable, consumed lazily) to shards in ``out_dir``; returns their paths.

    Only one shard's worth of instances is held in memory. ``tokenizer`` supplies the vocabulary,
    copied to ``out_dir/vocab.txt``. ``out_dir`` must be empty or new; ``overwrite=True`` first removes
    an earlier index, shards and vocabulary there.
    """
    if not isinstance(instances_per_shard, int) or instances_per_shard < 1:
        raise ValueError(f"instances_per_shard must be a positive integer, got {instances_per_shard!r}")
    tokens = vocab_tokens(tokenizer)
    if "[MASK]" not in tokens:
        raise ValueError("the tokenizer's vocabulary has no [MASK] token; shards need a BERT vocabulary")
    out_dir = os.fspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; choose a new directory or pass overwrite=True")
        # The index goes first: from here on the directory reads as incomplete until the new index lands.
        for path in [os.path.join(out_dir, INDEX_FILE), os.path.join(out_dir, VOCAB_FILE),
                     *glob.glob(os.path.join(out_dir, "shard-*.npz"))]:
            if os.path.exists(path):
                os.remove(path)
    os.makedirs(out_dir, exist_ok=True)

    id_dtype = np.int16 if len(tokens) <= _INT16_MAX + 1 else np.int32
    paths, sizes, buffer = [], [], []
    masked = False
    max_length = 0

    def flush():
        path = os.path.join(out_dir, _shard_name(len(paths)))
        _write_one_shard(path, buffer, id_dtype, len(tokens))
        paths.append(path)
        sizes.append(len(buffer))
        buffer.clear()

    for instance in instances:
        buffer.append(instance)
        masked = masked or bool(instance.masked_lm_positions)
        max_length = max(max_length, len(instance.tokens))
        if len(buffer) == instances_per_shard:
            flush()
    if buffer:
        flush()
    if not paths:
        raise ValueError("write_shards got no instances to write")

    atomic_write_text(os.path.join(out_dir, VOCAB_FILE), "\n".join(tokens) + "\n")
    special_ids = sorted(MaskingSpec.from_tokenizer(tokenizer).special_ids)
    index = {
        "format": SHARD_FORMAT, "version": FORMAT_VERSION,
        "num_instances": sum(sizes), "max_length": max_length, "masked": masked,
        "vocab_size": len(tokens), "special_ids": special_ids,
        "pad_token_id": tokens.index("[PAD]") if "[PAD]" in tokens else 0,
        "shards": [{"file": os.path.basename(p), "num_instances": n} for p, n in zip(paths, sizes)],
    }
    atomic_write_text(os.path.join(out_dir, INDEX_FILE), json.dumps(index, indent=1) + "\n")
    return paths


def _read_index(directory: str) -> dict:
    path = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {INDEX_FILE} in {directory!r}: not a shard directory, or write_shards was "
                                "interrupted before it finished (its index is written last)")
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    if index.get("format") != SHARD_FORMAT or index.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a {SHARD_FORMAT} v{FORMAT_VERSION} index")
    return index


class PretrainingShards(_DatasetBase):
    """The instances of a shard directory, as an iterable (and map-style) dataset.

    Iterating loads one shard at a time, visits the shards in a random order and shuffles the instances
    within each shard (``shuffle=False``: the written order). A new ``set_epoch(e)`` gives a new order.

    Splitting for DDP: rank ``rank`` of ``world_size`` gets the contiguous block
    ``[N * rank // world_size, N * (rank + 1) // world_size)`` of the written order, so ranks are disjoint,
    together complete, differ in size by at most one instance, and each reads only ~1/world_size of the
    shards. ``equal_split=True`` gives every rank exactly ``N // world_size`` (dropping up to
    ``world_size - 1`` instances at the end), for loops that run until the data ends: DDP hangs when one
    rank has a batch more than the others. Inside a torch ``DataLoader`` with workers, each worker takes a contiguous part of its rank's
    block the same way. A rank always sees the same block; the creation-time shuffle already mixed it.

    ``dynamic_masking=True`` draws fresh masks for every instance each epoch (RoBERTa), from the instance's
    original tokens (masked shards are unmasked first), with a random generator seeded by
    ``(seed, epoch, instance index)``: the masks do not depend on the rank, worker or shuffle order.
    Shards written unmasked (``create_training_instances(..., dynamic_masking=True)``) require it.

    ``ds[i]`` returns the rank's ``i``-th instance in written order, loading (and caching) its shard:
    cheap for sequential access, slow for random access across shards; train by iterating.

    Pass ``tokenizer`` to check that the shards were written with the same vocabulary.
    """

    def __init__(self, directory, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 dynamic_masking: bool = False, masked_lm_prob: float = DEFAULT_MASKED_LM_PROB,
                 max_predictions_per_seq: int = DEFAULT_MAX_PREDICTIONS_PER_SEQ, whole_word_mask: bool = False,
                 equal_split: bool = False, tokenizer=None):
        self.directory = os.fspath(directory)
        index = _read_index(self.directory)
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        if not index["masked"] and not dynamic_masking:
            raise ValueError(f"the shards in {self.directory} were written without masks (instances created with "
                             "dynamic_masking=True); read them with PretrainingShards(..., dynamic_masking=True)")
        self.files = [os.path.join(self.directory, s["file"]) for s in index["shards"]]
        sizes = [s["num_instances"] for s in index["shards"]]
        self.shard_starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()  # global index of each shard's first
        self.num_instances = self.shard_starts[-1]
        self.max_length = index["max_length"]
        self.vocab_size = index["vocab_size"]
        self.pad_token_id = index["pad_token_id"]
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch = 0
        if equal_split:
            per_rank = self.num_instances // world_size
            self.start, self.stop = per_rank * rank, per_rank * (rank + 1)
        else:
            self.start = self.num_instances * rank // world_size
            self.stop = self.num_instances * (rank + 1) // world_size
        with open(os.path.join(self.directory, VOCAB_FILE), encoding="utf-8") as f:
            vocab = f.read().splitlines()
        if tokenizer is not None and vocab_tokens(tokenizer) != vocab:
            raise ValueError(f"the shards in {self.directory} were written with a different vocabulary than this "
                             f"tokenizer's ({len(vocab)} vs {len(tokenizer.vocab)} tokens, or a different order); "
                             "their ids would mean other tokens. Use the vocab.txt stored beside the shards.")
        self.masking = None
        if dynamic_masking:
            self.masking = MaskingSpec.from_vocab(vocab, index["special_ids"], masked_lm_prob=masked_lm_prob,
                                                  max_predictions_per_seq=max_predictions_per_seq,
                                                  whole_word_mask=whole_word_mask)
        self._cached = (None, None)  # (shard number, its arrays): the one shard held in memory

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order and dynamic masks of ``epoch`` (call before each epoch, as for
        ``DistributedSampler``; with persistent DataLoader workers the workers keep their old copy)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.stop - self.start

    def _load(self, shard: int) -> dict:
        if self._cached[0] != shard:
            path = self.files[shard]
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            expected = self.shard_starts[shard + 1] - self.shard_starts[shard]
            if len(arrays["is_random_next"]) != expected:
                raise ValueError(f"{path} holds {len(arrays['is_random_next'])} instances but {INDEX_FILE} says "
                                 f"{expected}: the directory mixes files from different writes")
            self._cached = (shard, arrays)
        return self._cached[1]

    def _instance(self, shard: int, g: int) -> TrainingInstance:
        """Global instance ``g``, which lives in ``shard``."""
        a = self._load(shard)
        j = g - self.shard_starts[shard]
        t0, t1 = a["token_offsets"][j], a["token_offsets"][j + 1]
        m0, m1 = a["mask_offsets"][j], a["mask_offsets"][j + 1]
        instance = TrainingInstance(a["tokens"][t0:t1].tolist(), a["segment_ids"][t0:t1].tolist(),
                                    bool(a["is_random_next"][j]), a["masked_lm_positions"][m0:m1].tolist(),
                                    a["masked_lm_labels"][m0:m1].tolist())
        if self.masking is not None:
            # A string seed is hashed with SHA-512 by random.Random: distinct for every (seed, epoch, g).
            rng = random.Random(f"{self.seed}/{self.epoch}/{g}")
            tokens, positions, labels = mask_tokens(instance.original_tokens(), self.masking, rng)
            instance = TrainingInstance(tokens, instance.segment_ids, instance.is_random_next, positions, labels)
        return instance

    def __getitem__(self, i: int) -> TrainingInstance:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} instances")
        g = self.start + i % len(self)
        return self._instance(bisect.bisect_right(self.shard_starts, g) - 1, g)

    def iter_part(self, part: int, num_parts: int):
        """Iterate over part ``part`` of ``num_parts`` of this rank's block (what one DataLoader worker gets)."""
        lo = self.start + len(self) * part // num_parts
        hi = self.start + len(self) * (part + 1) // num_parts
        pieces = []  # (shard, first global index, end global index) covering [lo, hi)
        for shard in range(len(self.files)):
            a, b = max(lo, self.shard_starts[shard]), min(hi, self.shard_starts[shard + 1])
            if a < b:
                pieces.append((shard, a, b))
        rng = random.Random(f"order/{self.seed}/{self.epoch}/{self.rank}/{part}")
        if self.shuffle:
            rng.shuffle(pieces)
        for shard, a, b in pieces:
            order = list(range(a, b))
            if self.shuffle:
                rng.shuffle(order)
            for g in order:
                yield self._instance(shard, g)

    def __iter__(self):
        part, num_parts = 0, 1
        if _DatasetBase is not object:
            from torch.utils.data import get_worker_info
            info = get_worker_info()
            if info is not None:
                part, num_parts = info.id, info.num_workers
        return self.iter_part(part, num_parts)
