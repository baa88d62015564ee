"""Pretraining instances on disk: compact ``.npz`` shards, written as a stream, read back by index.

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
* ``vocab.txt``: the vocabulary the ids refer to (dynamic masking needs [MASK] and the ``##`` pieces), and
  ``tokenizer_config.json`` when the tokenizer can save one, so ``minibert pretrain --shards DIR`` finds
  the very tokenizer the instances were made with;
* ``index.json``: shard files and sizes, written last. Every file is written to a temporary name and
  renamed, so a directory with an ``index.json`` is complete, and an interrupted write leaves none.
"""
from __future__ import annotations

import bisect
import glob
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from minibert.data.instances import TrainingInstance
from minibert.data.masking import MaskingSpec, vocab_tokens
from minibert.files import atomic_open, atomic_write_text

SHARD_FORMAT = "minibert-pretraining-shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DEFAULT_INSTANCES_PER_SHARD = 10_000  # ~2.5 MB of ids at 128 tokens: a big shuffle buffer, cheap to load
_INT16_MAX = np.iinfo(np.int16).max

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
                     os.path.join(out_dir, TOKENIZER_CONFIG_FILE),
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
    if hasattr(tokenizer, "save_pretrained"):  # the same vocab.txt again, plus tokenizer_config.json
        tokenizer.save_pretrained(out_dir)
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


class PretrainingShards(Sequence):
    """The instances of a shard directory as a read-only sequence: ``len(ds)``, ``ds[i]``, ``for i in ds``.

    ``ds[i]`` is the ``i``-th instance in written order. A shard's arrays are read on first use and kept
    (compact: ~3 bytes a token, against 28+ for a Python int), because training visits the instances in a
    fresh global permutation every epoch, so every step's batch draws from all over the directory.

    This class only reads. Which instances make up a step, how the step is split over ranks, micro-steps
    and DataLoader workers, and dynamic masking all happen in one place for shards and in-memory instances
    alike: ``minibert.train.data.StepBatches`` (``minibert pretrain --shards DIR``).

    ``masked`` tells whether the instances carry masks; shards written unmasked
    (``create_training_instances(..., dynamic_masking=True)``) must be trained with dynamic masking.
    Pass ``tokenizer`` to check that the shards were written with the same vocabulary.
    """

    def __init__(self, directory, tokenizer=None):
        self.directory = os.fspath(directory)
        index = _read_index(self.directory)
        self.files = [os.path.join(self.directory, s["file"]) for s in index["shards"]]
        sizes = [s["num_instances"] for s in index["shards"]]
        self.shard_starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()  # global index of each shard's first
        self.masked = index["masked"]
        self.max_length = index["max_length"]
        self.pad_token_id = index["pad_token_id"]
        with open(os.path.join(self.directory, VOCAB_FILE), encoding="utf-8") as f:
            vocab = f.read().splitlines()
        if tokenizer is not None and vocab_tokens(tokenizer) != vocab:
            raise ValueError(f"the shards in {self.directory} were written with a different vocabulary than this "
                             f"tokenizer's ({len(vocab)} vs {len(tokenizer.vocab)} tokens, or a different order); "
                             "their ids would mean other tokens. Use the vocab.txt stored beside the shards.")
        self._arrays: dict[int, dict] = {}  # shard number -> its arrays, read on first use

    def __len__(self) -> int:
        return self.shard_starts[-1]

    def fingerprint(self) -> str:
        """A hash of the index and every shard's bytes, so ``--resume`` can refuse shards that changed."""
        h = hashlib.sha256()
        for path in [os.path.join(self.directory, INDEX_FILE), *self.files]:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:16]

    def _load(self, shard: int) -> dict:
        if shard not in self._arrays:
            path = self.files[shard]
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            expected = self.shard_starts[shard + 1] - self.shard_starts[shard]
            if len(arrays["is_random_next"]) != expected:
                raise ValueError(f"{path} holds {len(arrays['is_random_next'])} instances but {INDEX_FILE} says "
                                 f"{expected}: the directory mixes files from different writes")
            self._arrays[shard] = arrays
        return self._arrays[shard]

    def __getitem__(self, i: int) -> TrainingInstance:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} instances")
        g = i % len(self)
        shard = bisect.bisect_right(self.shard_starts, g) - 1
        a = self._load(shard)
        j = g - self.shard_starts[shard]
        t0, t1 = a["token_offsets"][j], a["token_offsets"][j + 1]
        m0, m1 = a["mask_offsets"][j], a["mask_offsets"][j + 1]
        return TrainingInstance(a["tokens"][t0:t1].tolist(), a["segment_ids"][t0:t1].tolist(),
                                bool(a["is_random_next"][j]), a["masked_lm_positions"][m0:m1].tolist(),
                                a["masked_lm_labels"][m0:m1].tolist())
