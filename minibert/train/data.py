"""Pretraining data for the loop: instances built once, then step ``s``'s batch as a function of (seed, s).

:func:`prepare_data` gets the training instances from one of two places and measures the baselines the
model must beat:

* ``--corpus``: read the documents, hold out every N-th one for evaluation *before* any instance exists
  (so no held-out sentence is ever trained on), build the instances once, in memory;
* ``--shards DIR``: the instances ``python -m minibert.data --out DIR`` (or ``write_shards``) wrote,
  read from disk by index (``minibert.data.PretrainingShards``); there are no documents to hold out,
  so no evaluation, and the baselines are measured on the training instances.

Either way the instances are a sequence, and everything after is one code path: the same instances
give the same batches, masks and losses whether they sit in memory or on disk.

:class:`StepBatches` then answers "which examples make up optimizer step ``s``?" as a pure function of
(seed, step), so runs resume exactly. The training stream is the concatenation of epochs, each a fresh
permutation of all instances drawn from ``(seed, epoch)``; optimizer step ``s`` takes the global batch of
positions ``[s * G, (s + 1) * G)`` of that stream, ``G = micro_batch x world_size x grad_accum``.
Nothing depends on what happened before step ``s``, so a run resumed at step ``s`` sees exactly the
batches an uninterrupted run would have seen, and the checkpoint's "data position" is simply the step.

The global batch is cut into ``grad_accum x world_size`` micro-batches: rank ``r`` runs micro-batches
``[a, r]`` for ``a = 0 .. grad_accum - 1``. The ranks' parts are disjoint and together cover the whole
global batch, so N processes see the same examples per step as one process with an N times larger batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence

import numpy as np
import torch

from minibert import data
from minibert.data.corpus import held_out_split, load_corpus
from minibert.train.common import derived_seed
from minibert.train.pretrain_args import max_predictions_per_seq


class StepBatches(torch.utils.data.Dataset):
    """``batches[step]`` is this rank's list of ``grad_accum`` collated micro-batches for that step.

    ``instances`` is any sequence of ``TrainingInstance``: a list in memory or a ``PretrainingShards``.
    This is the one place where a step's examples are chosen, split over ranks and micro-steps (and,
    through the step index, over DataLoader workers) and dynamically masked.

    A map-style dataset indexed by step, so a ``DataLoader`` with ``num_workers > 0`` can build the
    next steps' batches in the background while the model trains on the current one.

    ``masking`` (a ``minibert.data.MaskingSpec``) turns on dynamic masking: each time an instance is
    batched it gets fresh masks from an RNG seeded with ``(seed, epoch, instance index)``, so masks are
    reproducible and the same for any number of processes, micro-steps or loader workers.
    """

    def __init__(self, instances, *, micro_batch_size: int, grad_accum: int, rank: int,
                 world_size: int, seed: int, pad_id: int, max_seq_length: int, num_steps: int,
                 masking: data.MaskingSpec | None = None):
        self.instances = instances
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pad_id = pad_id
        self.max_seq_length = max_seq_length
        self.num_steps = num_steps
        self.masking = masking
        self.global_batch_size = micro_batch_size * world_size * grad_accum

    def __len__(self) -> int:
        return self.num_steps

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.instances))

    def _stream(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, instance index) of each example of ``step``'s global batch, both ``[grad_accum, world_size,
        micro]``."""
        n = len(self.instances)
        positions = step * self.global_batch_size + np.arange(self.global_batch_size)
        epochs, within = np.divmod(positions, n)
        # A batch straddles at most a few epochs (more only when G > n): build each permutation once.
        perms = {int(e): self._epoch_permutation(int(e)) for e in np.unique(epochs)}
        idx = np.array([perms[int(e)][w] for e, w in zip(epochs, within)])
        shape = (self.grad_accum, self.world_size, self.micro_batch_size)
        return epochs.reshape(shape), idx.reshape(shape)

    def global_indices(self, step: int) -> np.ndarray:
        """Instance indices of the whole global batch of ``step``: ``[grad_accum, world_size, micro]``."""
        return self._stream(step)[1]

    def __getitem__(self, step: int) -> list[dict]:
        epochs, idx = self._stream(step)
        batches = []
        for epoch, micro in zip(epochs[:, self.rank], idx[:, self.rank]):  # [micro] each, per micro-step
            # Each instance's masks come from (seed, epoch, instance): the same whichever rank, micro-step
            # or data-loader worker builds it, so any world size trains on identical masked sequences.
            rngs = ([random.Random(derived_seed(self.seed, e, i)) for e, i in zip(epoch, micro)]
                    if self.masking is not None else None)
            batches.append(data.collate([self.instances[i] for i in micro], self.pad_id, self.max_seq_length,
                                        masking=self.masking, rngs=rngs))
        return batches


def read_split(corpus, held_out_every: int) -> tuple[list, list]:
    """(train documents, held-out documents); the split happens before any instance is built."""
    spec = corpus[0] if len(corpus) == 1 else corpus
    if held_out_every == 0:
        return [list(d) for d in load_corpus(spec)], []
    train = [list(d) for d in held_out_split(load_corpus(spec), False, held_out_every)]
    held_out = [list(d) for d in held_out_split(load_corpus(spec), True, held_out_every)]
    if not held_out:
        raise ValueError(f"the corpus has fewer than {held_out_every} documents, so none is held out for "
                         f"evaluation: lower --held-out-every, or pass --held-out-every 0 to skip evaluation")
    return train, held_out


def _fingerprint(documents: list) -> str:
    """A hash of the training text, so --resume can refuse a corpus that changed under it."""
    h = hashlib.sha256()
    for doc in documents:
        for sentence in doc:
            h.update(sentence.encode("utf-8") + b"\n")
        h.update(b"\n")
    return h.hexdigest()[:16]


def _make_instances(documents, tokenizer, args, config, seed: int, dupe_factor: int, dynamic: bool,
                    masking: dict, max_seq_length: int | None = None) -> list:
    return list(data.create_training_instances(
        documents, tokenizer, max_seq_length=max_seq_length or args.max_seq_length, dupe_factor=dupe_factor,
        whole_word_mask=args.whole_word_mask, dynamic_masking=dynamic, seed=seed,
        max_position_embeddings=config.max_position_embeddings, **masking))


def _collate_all(instances, pad_id: int, max_seq_length: int, batch_size: int, masking=None,
                 seed: int = 0) -> list[dict]:
    """All ``instances`` as batches (masked now, with ``masking``, when they were made unmasked)."""
    rng = random.Random(seed) if masking is not None else None
    return [data.collate([instances[j] for j in range(i, min(i + batch_size, len(instances)))], pad_id,
                         max_seq_length, masking=masking, rng=rng)
            for i in range(0, len(instances), batch_size)]


def _unigram_token(batches: list[dict]) -> int:
    """The most frequent masked-label token: the unigram baseline always predicts it."""
    labels = np.concatenate([b["labels"][b["labels"] != -100] for b in batches])
    return int(np.bincount(labels).argmax())


def _unigram_accuracy(batches: list[dict], token: int) -> float:
    labels = np.concatenate([b["labels"][b["labels"] != -100] for b in batches])
    return float((labels == token).mean())


@dataclasses.dataclass
class PretrainingData:
    """Everything the loop needs from the corpus or the shards, built once before the first step."""

    instances: Sequence             # training instances: a list, or PretrainingShards (unmasked when dynamic)
    masking: data.MaskingSpec | None  # set for dynamic masking: masks are drawn per batch
    eval_batches: list[dict]        # held-out batches with fixed masks (empty: no evaluation)
    unigram_token: int              # the most frequent masked token of the training data
    unigram_accuracy: float         # MLM accuracy of always predicting it (on the held-out batches)
    nsp_majority_accuracy: float    # NSP accuracy of always guessing the more common label
    fingerprint: str                # hash of the training text (or shards), checked on --resume
    source: str                     # where the instances came from, for the opening line
    held_out_sentences: list = dataclasses.field(default_factory=list)  # a few, for fill-mask examples
    short_instances: Sequence | None = None  # --short-seq-length: the first phase's training instances


def prepare_data(args, tokenizer, config) -> PretrainingData:
    """The training instances (from ``--corpus`` or ``--shards``), held-out batches and baselines."""
    # Training masks follow --masked-lm-prob; the held-out questions always use BERT's 15%.
    train_masking = {"masked_lm_prob": args.masked_lm_prob, "max_predictions_per_seq": max_predictions_per_seq(args)}
    masking = (data.MaskingSpec.from_tokenizer(tokenizer, whole_word_mask=args.whole_word_mask, **train_masking)
               if args.dynamic_masking else None)
    pad_id = config.pad_token_id
    eval_batches, held_out_sentences, short_instances = [], [], None
    if args.shards:
        instances = data.PretrainingShards(args.shards, tokenizer=tokenizer)
        if not instances.masked and masking is None:
            raise ValueError(f"the shards in {args.shards} were written without masks (instances created with "
                             "dynamic_masking=True): train on them with --dynamic-masking")
        if instances.masked and masking is None and args.masked_lm_prob != data.DEFAULT_MASKED_LM_PROB:
            raise ValueError(f"the shards in {args.shards} carry their own masks, so --masked-lm-prob "
                             f"{args.masked_lm_prob} cannot apply: add --dynamic-masking to mask at that rate")
        fingerprint, source = instances.fingerprint(), f"the shards in {args.shards}"
    else:
        train_docs, eval_docs = read_split(args.corpus, args.held_out_every)
        instances = _make_instances(train_docs, tokenizer, args, config, args.seed, args.dupe_factor,
                                    args.dynamic_masking, train_masking)
        if args.short_seq_length is not None:  # the same text cut shorter, for the first phase
            short_masking = {**train_masking, "max_predictions_per_seq": max_predictions_per_seq(
                args, args.short_seq_length)}
            short_instances = _make_instances(train_docs, tokenizer, args, config, args.seed + 2, args.dupe_factor,
                                              args.dynamic_masking, short_masking, args.short_seq_length)
        # Held-out instances keep fixed masks (one copy), so every evaluation scores the same questions.
        eval_instances = (_make_instances(eval_docs, tokenizer, args, config, args.seed + 1, 1, False, {})
                          if eval_docs else [])[:args.eval_sequences]
        eval_batches = _collate_all(eval_instances, pad_id, args.max_seq_length, args.batch_size)
        fingerprint = _fingerprint(train_docs)
        held_out_sentences = [doc[len(doc) // 2] for doc in eval_docs[:40] if doc]
        source = f"{len(train_docs)} documents; {len(eval_docs)} documents held out"
    if not len(instances):
        raise ValueError("no pretraining instances were created: the training corpus is too small "
                         "(add documents, or lower --max-seq-length)")
    train_batches = _collate_all(instances, pad_id, args.max_seq_length, 256, masking, args.seed)
    scored = eval_batches or train_batches  # baselines are measured where the model is measured
    unigram = _unigram_token(train_batches)
    nsp = np.concatenate([b["next_sentence_label"] for b in scored])
    return PretrainingData(
        instances=instances, masking=masking, eval_batches=eval_batches, unigram_token=unigram,
        unigram_accuracy=_unigram_accuracy(scored, unigram),
        nsp_majority_accuracy=float(max(nsp.mean(), 1 - nsp.mean())), fingerprint=fingerprint, source=source,
        held_out_sentences=held_out_sentences, short_instances=short_instances)
