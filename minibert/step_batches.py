"""Which examples make up optimizer step ``s``: a pure function of (seed, step), so runs resume exactly.

Pretraining instances are created once, up front. The training stream is the concatenation of epochs,
each a fresh permutation of all instances drawn from ``(seed, epoch)``; optimizer step ``s`` takes the
global batch of positions ``[s * G, (s + 1) * G)`` of that stream, ``G = micro_batch x world_size x
grad_accum``. Nothing depends on what happened before step ``s``, so a run resumed at step ``s`` sees
exactly the batches an uninterrupted run would have seen, and the checkpoint's "data position" is
simply the step.

The global batch is cut into ``grad_accum x world_size`` micro-batches: rank ``r`` runs micro-batches
``[a, r]`` for ``a = 0 .. grad_accum - 1``. The ranks' parts are disjoint and together cover the whole
global batch, so N processes see the same examples per step as one process with an N times larger batch.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from minibert import data


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. ``(seed, step, micro, rank)``), stable across runs/machines."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class StepBatches(torch.utils.data.Dataset):
    """``batches[step]`` is this rank's list of ``grad_accum`` collated micro-batches for that step.

    A map-style dataset indexed by step, so a ``DataLoader`` with ``num_workers > 0`` can build the
    next steps' batches in the background while the model trains on the current one.

    ``masking`` (a ``minibert.data.MaskingSpec``) turns on dynamic masking: each micro-batch draws fresh
    masks from an RNG seeded with ``(seed, step, micro-step, rank)``, so masks too are reproducible.
    """

    def __init__(self, instances: list, *, micro_batch_size: int, grad_accum: int, rank: int,
                 world_size: int, seed: int, pad_id: int, max_seq_length: int, num_steps: int,
                 masking: data.MaskingSpec | None = None):
        if not instances:
            raise ValueError("no pretraining instances were created: the training corpus is too small "
                             "(add documents, or lower --max-seq-length)")
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

    def global_indices(self, step: int) -> np.ndarray:
        """Instance indices of the whole global batch of ``step``: ``[grad_accum, world_size, micro]``."""
        n = len(self.instances)
        positions = step * self.global_batch_size + np.arange(self.global_batch_size)
        epochs, within = np.divmod(positions, n)
        # A batch straddles at most a few epochs (more only when G > n): build each permutation once.
        perms = {int(e): self._epoch_permutation(int(e)) for e in np.unique(epochs)}
        idx = np.array([perms[int(e)][w] for e, w in zip(epochs, within)])
        return idx.reshape(self.grad_accum, self.world_size, self.micro_batch_size)

    def __getitem__(self, step: int) -> list[dict]:
        idx = self.global_indices(step)[:, self.rank]  # [grad_accum, micro]
        batches = []
        for a, micro in enumerate(idx):
            rng = (random.Random(derived_seed(self.seed, step, a, self.rank)) if self.masking is not None
                   else None)
            batches.append(data.collate([self.instances[i] for i in micro], self.pad_id, self.max_seq_length,
                                        masking=self.masking, rng=rng))
        return batches
