"""One optimizer step of MLM + NSP pretraining, for each backend the training loop can drive.

Both backends expose the same four operations, so ``minibert.pretrain`` runs one loop for either:

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
import math

import torch
import torch.nn.functional as F

from minibert.reference import model as reference_model
from minibert.reference import optim as reference_optim
from minibert.reference.optim import decays

# AdamW hyper-parameters of BERT pretraining (Devlin et al., 2018, appendix A.2).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-6

STAT_KEYS = ("mlm_loss_sum", "nsp_loss_sum", "mlm_correct", "n_masked", "nsp_correct", "n_examples",
             "n_tokens")


class PretrainingObjective(torch.nn.Module):
    """The MLM + NSP statistics of a batch, with the MLM head run only where it is scored.

    ``BertForPreTraining.forward`` projects all ``B x S`` positions onto the vocabulary, but only the ~15%
    masked positions enter the loss. Gathering them first (``[M, H]``, M = masked tokens) before the
    head gives identical numbers for those rows and skips most of the largest matmul (``H x V`` per
    position): about a third of a small BERT's training FLOPs. The parameters are the model's own, so
    this wrapper is what ``DistributedDataParallel`` wraps.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, labels, next_sentence_label,
                dropout_seed=None) -> dict:
        """Summed losses and correct counts (tensors, so the losses keep their graph)."""
        out = self.model.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              dropout_seed=dropout_seed)
        masked = labels != -100                                                        # [b, S]
        heads = self.model.cls
        mlm_logits = _at_least_float32(heads.predictions(out.last_hidden_state[masked]))  # [M, V]
        nsp_logits = _at_least_float32(heads.seq_relationship(out.pooler_output))          # [b, 2]
        mlm_labels = labels[masked]                                                    # [M]
        return {
            "mlm_loss_sum": F.cross_entropy(mlm_logits, mlm_labels, reduction="sum"),
            "nsp_loss_sum": F.cross_entropy(nsp_logits, next_sentence_label, reduction="sum"),
            "mlm_correct": (mlm_logits.argmax(-1) == mlm_labels).sum(),
            "nsp_correct": (nsp_logits.argmax(-1) == next_sentence_label).sum(),
        }


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    # Under bf16 autocast the logits are bf16; a softmax over the vocabulary wants float32 (float64 stays).
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def count_batch(batch: dict) -> dict:
    """The normalisers of one collated batch: masked tokens, examples, non-padding tokens."""
    return {"n_masked": int((batch["labels"] != -100).sum()), "n_examples": int(len(batch["input_ids"])),
            "n_tokens": int(batch["attention_mask"].sum())}


class TorchBackend:
    """Pretraining on ``minibert.modeling.BertForPreTraining`` with ``torch.optim.AdamW``.

    ``ddp=True`` wraps the model in ``DistributedDataParallel`` (the process group must already exist):
    gradients are averaged over ranks during the last micro-batch's backward.
    """

    def __init__(self, model, *, device, lr: float, weight_decay: float, clip_grad_norm: float,
                 amp: bool = False, ddp: bool = False):
        self.model = model
        self.device = device
        self.clip_grad_norm = clip_grad_norm
        self.amp = amp
        self.world_size = torch.distributed.get_world_size() if ddp else 1
        self.objective = PretrainingObjective(model)
        if ddp:
            ids = [device.index] if device.type == "cuda" else None
            self.module = torch.nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        else:
            self.module = self.objective
        named = list(model.named_parameters())
        # Weight decay on weight matrices and embeddings, not on biases or LayerNorm (BERT's rule).
        groups = [{"params": [p for n, p in named if decays(n)], "weight_decay": weight_decay},
                  {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)

    def _to_device(self, batch: dict) -> dict:
        return {k: torch.as_tensor(v).to(self.device, non_blocking=True) for k, v in batch.items()}

    def _forward(self, module, batch: dict, dropout_seed):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            return module(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"],
                          batch["next_sentence_label"], dropout_seed)

    def forward_backward(self, micro_batches: list[dict], norm: dict, dropout_seeds: list[int]) -> dict:
        """Accumulate the gradient of the step's loss over this rank's micro-batches; return summed stats.

        ``norm`` holds the global ``n_masked`` and ``n_examples`` of the step (all ranks, all micro-batches).
        """
        self.module.train()
        totals = dict.fromkeys(STAT_KEYS, 0.0)
        for i, (batch, seed) in enumerate(zip(micro_batches, dropout_seeds)):
            tensors = self._to_device(batch)
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients in backward; only the last micro-batch needs to (no_sync skips it).
            sync = self.module.no_sync() if (self.world_size > 1 and not last) else contextlib.nullcontext()
            with sync:
                stats = self._forward(self.module, tensors, seed)
                # DDP averages gradients over ranks, so each rank's share is scaled by world_size.
                loss = (stats["mlm_loss_sum"] / max(norm["n_masked"], 1)
                        + stats["nsp_loss_sum"] / norm["n_examples"]) * self.world_size
                loss.backward()
            _add(totals, stats, count_batch(batch))
        return totals

    def optimizer_step(self, lr: float) -> float:
        """Clip the gradient norm, take one AdamW step at learning rate ``lr``; returns the pre-clip norm."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])
        grad_norm = float(torch.linalg.vector_norm(norms))
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"the gradient norm is {grad_norm}: the loss diverged (lower --lr)")
        # BERT's clip_by_global_norm, exactly as minibert.reference.optim.clip_grad_norm: torch's own
        # clip_grad_norm_ divides by (norm + 1e-6), a 1e-6 relative difference Adam would amplify.
        if grad_norm > self.clip_grad_norm:
            torch._foreach_mul_(grads, self.clip_grad_norm / grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    @torch.no_grad()
    def evaluate(self, batch: dict) -> dict:
        """Summed statistics of ``batch`` with dropout off."""
        self.model.eval()
        totals = dict.fromkeys(STAT_KEYS, 0.0)
        _add(totals, self._forward(self.objective, self._to_device(batch), None), count_batch(batch))
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
    return {"mlm_loss_sum": float(out["mlm_loss"]) * counts["n_masked"],
            "nsp_loss_sum": float(out["nsp_loss"]) * counts["n_examples"],
            "mlm_correct": int((predicted == labels[masked]).sum()),
            "nsp_correct": int((nsp_predicted == batch["next_sentence_label"]).sum())}
