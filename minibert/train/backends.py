"""One optimizer step of MLM + NSP pretraining, for each backend the training loop can drive.

Both backends expose the same four operations, so ``minibert.train.pretrain`` runs one loop for either:

* ``forward_backward(micro_batches, norm, dropout_seeds)`` accumulates gradients of the step's loss and
  returns the summed statistics (loss sums, correct predictions);
* ``optimizer_step(lr)`` clips the gradient norm, applies AdamW and clears the gradients;
* ``evaluate(batch)`` returns the same statistics without dropout or gradients;
* ``save_model(directory, tokenizer)`` / ``optimizer_state`` / ``load_optimizer_state`` for checkpoints.

The loss of a step is normalised by the *global* batch, not per micro-batch:

    loss = sum(masked-token cross-entropies) / n_masked_global + sum(NSP cross-entropies) / n_examples_global

which is the mean MLM loss plus the mean NSP loss over the whole global batch. Averaging per-micro-batch
means instead would weight a masked token by how many others share its micro-batch, so splitting a batch
over processes or accumulation steps would change the gradient; with global normalisation it does not.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from minibert.reference import model as reference_model
from minibert.reference import optim as reference_optim
from minibert.train.common import ADAM_BETAS, ADAM_EPS, clip_and_step, make_optimizer

STAT_KEYS = ("mlm_loss_sum", "nsp_loss_sum", "mlm_correct", "n_masked", "nsp_correct", "n_examples",
             "n_tokens", "mlm_hidden_correct", "n_hidden")


def count_batch(batch: dict) -> dict:
    """The normalisers of one collated batch: masked tokens, examples, non-padding tokens, and the masked
    tokens whose input hides the answer (``[MASK]`` or a random token: BERT's 80% + 10%, not the 10% kept)."""
    labels = batch["labels"]
    return {"n_masked": int((labels != -100).sum()), "n_examples": int(len(batch["input_ids"])),
            "n_tokens": int(batch["attention_mask"].sum()),
            "n_hidden": int(hidden_answers(batch["input_ids"], labels).sum())}


def hidden_answers(input_ids, labels):
    """At the predicted positions (in order), whether the input hides the answer: a model can get the 10%
    of kept tokens right by copying its input, and only the others show what it learned of the context."""
    predicted = labels != -100
    return input_ids[predicted] != labels[predicted]


class TorchBackend:
    """Pretraining on ``minibert.modeling.BertForPreTraining`` with ``torch.optim.AdamW``.

    The model's own forward computes the losses with ``masked_positions_only=True``: the vocabulary
    projection runs only at the positions that are scored, and the last layer after its attention only
    there and at [CLS] (the same loss and gradients, with less work). ``ddp=True`` wraps the model in
    ``DistributedDataParallel`` (the process group must already exist): gradients are averaged over ranks
    during the last micro-batch's backward.
    """

    def __init__(self, model, *, device, lr: float, weight_decay: float, clip_grad_norm: float,
                 amp: bool = False, ddp: bool = False):
        self.model = model
        self.device = device
        self.clip_grad_norm = clip_grad_norm
        self.amp = amp
        self.world_size = torch.distributed.get_world_size() if ddp else 1
        if ddp:
            ids = [device.index] if device.type == "cuda" else None
            self.module = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.module = model
        self.optimizer = make_optimizer(model, lr, weight_decay)

    def _stats(self, module, batch: dict, dropout_seed) -> dict:
        """Summed losses and correct counts of ``batch`` (tensors, so the losses keep their graph)."""
        tensors = {k: torch.as_tensor(v).to(self.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            out = module(tensors["input_ids"], attention_mask=tensors["attention_mask"],
                         token_type_ids=tensors["token_type_ids"], labels=tensors["labels"],
                         next_sentence_label=tensors["next_sentence_label"], dropout_seed=dropout_seed,
                         masked_positions_only=True)
        counts = count_batch(batch)
        mlm_labels = tensors["labels"][tensors["labels"] != -100]            # [M], the rows of prediction_logits
        right = out.prediction_logits.argmax(-1) == mlm_labels               # [M]
        # The model returns mean losses; the loop normalises by the global batch, so it wants sums.
        return {"mlm_loss_sum": out.mlm_loss * counts["n_masked"],
                "nsp_loss_sum": out.nsp_loss * counts["n_examples"],
                "mlm_correct": right.sum(),
                "mlm_hidden_correct": (right & hidden_answers(tensors["input_ids"], tensors["labels"])).sum(),
                "nsp_correct": (out.seq_relationship_logits.argmax(-1) == tensors["next_sentence_label"]).sum()}

    def forward_backward(self, micro_batches: list[dict], norm: dict, dropout_seeds: list[int]) -> dict:
        """Accumulate the gradient of the step's loss over this rank's micro-batches; return summed stats.

        ``norm`` holds the global ``n_masked`` and ``n_examples`` of the step (all ranks, all micro-batches).
        """
        self.module.train()
        totals = dict.fromkeys(STAT_KEYS, 0.0)
        for i, (batch, seed) in enumerate(zip(micro_batches, dropout_seeds)):
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients in backward; only the last micro-batch needs to (no_sync skips it).
            sync = self.module.no_sync() if (self.world_size > 1 and not last) else contextlib.nullcontext()
            with sync:
                stats = self._stats(self.module, batch, seed)
                # DDP averages gradients over ranks, so each rank's share is scaled by world_size.
                loss = (stats["mlm_loss_sum"] / max(norm["n_masked"], 1)
                        + stats["nsp_loss_sum"] / norm["n_examples"]) * self.world_size
                loss.backward()
            _add(totals, stats, count_batch(batch))
        return totals

    def optimizer_step(self, lr: float) -> float:
        """Clip the gradient norm, take one AdamW step at learning rate ``lr``; returns the pre-clip norm."""
        return clip_and_step(self.model, self.optimizer, lr, self.clip_grad_norm)

    @torch.no_grad()
    def evaluate(self, batch: dict) -> dict:
        """Summed statistics of ``batch`` with dropout off."""
        self.model.eval()
        totals = dict.fromkeys(STAT_KEYS, 0.0)
        _add(totals, self._stats(self.model, batch, None), count_batch(batch))
        return totals

    def optimizer_state(self) -> dict:
        """AdamW moments and step counts (tensors only, safe for ``torch.load(weights_only=True)``)."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        """Restore what :meth:`optimizer_state` returned."""
        self.optimizer.load_state_dict(state)

    def save_model(self, directory: str, tokenizer) -> None:
        """config.json + model.safetensors + vocabulary, loadable by us and by ``transformers``."""
        self.model.save_pretrained(directory, tokenizer=tokenizer)


def _add(totals: dict, stats: dict, counts: dict) -> None:
    for k, v in stats.items():
        totals[k] += float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
    for k, v in counts.items():
        totals[k] += v


class NumpyBackend:
    """Pretraining on the NumPy reference (hand-written backward) with the reference's AdamW.

    The reference's ``backward()`` differentiates ``mean MLM loss + mean NSP loss`` of the batch it last
    saw. With one micro-batch per step that *is* the step's loss. With ``--grad-accum`` the two means
    need different weights (a micro-batch's share of the step's masked tokens, and of its sequences),
    so then each micro-batch runs twice, once per loss, and each gradient gets its own weight: twice the
    work, but exactly the gradient the torch backend computes.
    """

    def __init__(self, config, *, dtype, seed: int, weights_dir: str | None, lr: float, weight_decay: float,
                 clip_grad_norm: float):
        if weights_dir is not None:
            self.model = reference_model.BertForPreTraining.from_pretrained(weights_dir, dtype=dtype)
        else:
            self.model = reference_model.BertForPreTraining(config, dtype=dtype, seed=seed)
        self.config = self.model.config
        self.clip_grad_norm = clip_grad_norm
        self.optimizer = reference_optim.AdamW(self.model.params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                               weight_decay=weight_decay)
        self.grads = None

    def _run(self, batch: dict, dropout_seed, mlm: bool, nsp: bool) -> dict:
        return self.model.forward(
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
            masked_lm_labels=batch["labels"] if mlm else None,
            next_sentence_label=batch["next_sentence_label"] if nsp else None,
            training=dropout_seed is not None, dropout_seed=dropout_seed or 0)

    def _accumulate(self, weight: float) -> None:
        grads = self.model.backward()
        if self.grads is None:
            self.grads = {k: g * weight for k, g in grads.items()}
        else:
            for k, g in grads.items():
                self.grads[k] += g * weight

    def forward_backward(self, micro_batches: list[dict], norm: dict, dropout_seeds: list[int]) -> dict:
        """Accumulate the gradient of the step's loss over the micro-batches; return summed stats."""
        totals = dict.fromkeys(STAT_KEYS, 0.0)
        for batch, seed in zip(micro_batches, dropout_seeds):
            counts = count_batch(batch)
            w_mlm = counts["n_masked"] / max(norm["n_masked"], 1)
            w_nsp = counts["n_examples"] / norm["n_examples"]
            out = self._run(batch, seed, mlm=True, nsp=True)
            if w_mlm == w_nsp:
                self._accumulate(w_mlm)
            else:
                self._run(batch, seed, mlm=True, nsp=False)
                self._accumulate(w_mlm)
                self._run(batch, seed, mlm=False, nsp=True)
                self._accumulate(w_nsp)
            _add(totals, _numpy_stats(out, batch, counts), counts)
        return totals

    def optimizer_step(self, lr: float) -> float:
        """Clip the gradient norm, take one AdamW step at learning rate ``lr``; returns the pre-clip norm."""
        grads, norm = reference_optim.clip_grad_norm(self.grads, self.clip_grad_norm)
        self.optimizer.step(grads, lr=lr)
        self.grads = None
        return norm

    def evaluate(self, batch: dict) -> dict:
        """Summed statistics of ``batch`` with dropout off."""
        counts = count_batch(batch)
        totals = dict.fromkeys(STAT_KEYS, 0.0)
        _add(totals, _numpy_stats(self._run(batch, None, mlm=True, nsp=True), batch, counts), counts)
        return totals

    def optimizer_state(self) -> dict:
        """AdamW step count and moments, as tensors (safe for ``torch.load(weights_only=True)``)."""
        state = self.optimizer.state_dict()
        return {"t": state["t"], "m": {k: torch.from_numpy(a) for k, a in state["m"].items()},
                "v": {k: torch.from_numpy(a) for k, a in state["v"].items()}}

    def load_optimizer_state(self, state: dict) -> None:
        """Restore what :meth:`optimizer_state` returned."""
        self.optimizer.load_state_dict({"t": state["t"], "m": {k: a.numpy() for k, a in state["m"].items()},
                                        "v": {k: a.numpy() for k, a in state["v"].items()}})

    def save_model(self, directory: str, tokenizer) -> None:
        """config.json + model.safetensors + vocabulary, the same files the torch backend writes."""
        self.model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)


def _numpy_stats(out: dict, batch: dict, counts: dict) -> dict:
    labels = batch["labels"]
    masked = labels != -100                                        # [b, S]
    predicted = out["prediction_logits"][masked].argmax(-1)        # [M]
    nsp_predicted = out["seq_relationship_logits"].argmax(-1)      # [b]
    right = predicted == labels[masked]                            # [M]
    return {"mlm_loss_sum": float(out["mlm_loss"]) * counts["n_masked"],
            "nsp_loss_sum": float(out["nsp_loss"]) * counts["n_examples"],
            "mlm_correct": int(right.sum()),
            "mlm_hidden_correct": int((right & hidden_answers(batch["input_ids"], labels)).sum()),
            "nsp_correct": int((nsp_predicted == batch["next_sentence_label"]).sum())}


def build_backend(args, config, device, world_size: int, weights_dir: str | None):
    """The backend ``--backend`` names, with weights from ``weights_dir`` or freshly initialised from ``--seed``."""
    if args.backend == "numpy":
        return NumpyBackend(config, dtype=np.dtype(args.dtype), seed=args.seed, weights_dir=weights_dir,
                            lr=args.lr, weight_decay=args.weight_decay, clip_grad_norm=args.clip_grad_norm)
    from minibert.modeling import BertForPreTraining
    dtype = getattr(torch, args.dtype)
    if weights_dir is not None:
        model = BertForPreTraining.from_pretrained(weights_dir, attn_implementation=args.attn,
                                                   gelu_implementation=args.gelu, dtype=dtype, device=device,
                                                   layernorm_implementation=args.layernorm,
                                                   loss_implementation=args.loss)
    else:
        torch.manual_seed(args.seed)  # every rank builds the same initial weights
        model = BertForPreTraining(config, attn_implementation=args.attn, gelu_implementation=args.gelu,
                                   layernorm_implementation=args.layernorm, loss_implementation=args.loss)
        model.to(device=device, dtype=dtype)
    amp = args.amp and device.type == "cuda"
    return TorchBackend(model, device=device, lr=args.lr, weight_decay=args.weight_decay,
                        clip_grad_norm=args.clip_grad_norm, amp=amp, ddp=world_size > 1)
