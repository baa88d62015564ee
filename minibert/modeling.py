"""The PyTorch BERT models: same weights, same numbers as HF ``transformers`` and our NumPy reference.

``BertModel`` (the encoder), ``BertForPreTraining`` (MLM + NSP), ``BertForMaskedLM``, and the fine-tuning
models ``BertForSequenceClassification`` and ``BertForQuestionAnswering`` (section 4 of the paper;
``minibert finetune`` trains them), built from the sub-modules of ``minibert.blocks`` (where the backend
switch and the reproducible dropout are explained). Parameter names are HF's, so checkpoints move between
``transformers``, ``minibert.reference`` and these models with no renaming; ``from_pretrained`` and
``load_weights`` are thin wrappers of ``minibert.checkpoint``'s loader.

Input values (ids in range, a 0/1 attention mask) are checked only where that is free: reading a GPU
tensor's values waits for the GPU (a host sync), so off the CPU they are checked only with
``MINIBERT_CHECK_INPUTS=1`` (or ``CHECK_INPUT_VALUES = True`` here). Shapes and dtypes are always checked.

Shapes: B batch, S sequence, E hidden size, V vocabulary, M masked positions (as in ``minibert.blocks``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minibert import checkpoint
from minibert import ops
from minibert.blocks import (ATTN_IMPLEMENTATIONS, GELU_IMPLEMENTATIONS, LAYERNORM_IMPLEMENTATIONS,
                             LOSS_IMPLEMENTATIONS, BertEmbeddings,
                             BertEncoder, BertIntermediate, BertLayerNorm, BertLMPredictionHead, BertOnlyMLMHead,
                             BertPooler, BertPreTrainingHeads, BertSelfAttention, DenseGelu, DropoutPlan,
                             PositionRows, resolve_implementation)
from minibert.config import BertConfig
from minibert.files import atomic_write_text
from minibert.ops.eager import AttentionMask
from minibert.rng import SITE_CLASSIFIER

IGNORE_INDEX = -100  # MLM label of a position that is not predicted (HF / PyTorch convention)
CHECK_INPUT_VALUES = os.environ.get("MINIBERT_CHECK_INPUTS", "0") == "1"


def _values_checked(t: torch.Tensor) -> bool:
    """Whether to read ``t``'s values for a check: free on the CPU, a host sync anywhere else."""
    return t.device.type == "cpu" or CHECK_INPUT_VALUES


def _check_ids(name: str, ids: torch.Tensor, shape, low: int, high: int, what_to_do: str,
               ignore: int | None = None) -> None:
    """Raise unless ``ids`` is an integer tensor of ``shape`` with values in [low, high) (or ``ignore``)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers (torch.long), got dtype {ids.dtype}")
    if tuple(ids.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(ids.shape)} but must have shape {tuple(shape)} "
                         f"to match input_ids [batch, seq_len]")
    if not ids.numel() or not _values_checked(ids):
        return
    if ignore is not None:
        ids = ids.masked_fill(ids == ignore, low)
    if int(ids.min()) < low or int(ids.max()) >= high:
        raise ValueError(f"{name} has values in [{int(ids.min())}, {int(ids.max())}] but must lie in "
                         f"[{low}, {high}): {what_to_do}")


# ------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BertModelOutput:
    """What a forward pass returns; fields a model does not compute are None."""

    last_hidden_state: torch.Tensor | None                 # [B, S, E]; None if the last layer ran at the
                                                           # masked positions only (masked_positions_only)
    pooler_output: torch.Tensor | None = None              # [B, E]
    prediction_logits: torch.Tensor | None = None          # [B, S, V], or [M, V] (masked_positions_only)
    seq_relationship_logits: torch.Tensor | None = None    # [B, 2]
    loss: torch.Tensor | None = None                       # mlm_loss + nsp_loss (those given labels)
    mlm_loss: torch.Tensor | None = None                   # mean CE over positions whose label != -100
    nsp_loss: torch.Tensor | None = None                   # mean CE of the IsNext(0) / random(1) label


class BertPreTrainedModel(nn.Module):
    """What every BERT model here shares: init, weight tying, backend switches, loading and saving."""

    base_model_prefix = "bert"  # where the encoder sits in state_dict keys ("" for BertModel itself)
    # The loading policy (minibert.checkpoint.match_weights): parameters under these prefixes may be missing
    # from a checkpoint (they keep their fresh init, reported); checkpoint tensors a model lacks are dropped.
    optional_prefixes: tuple[str, ...] = ()
    head_prefix = ""  # a fine-tuning head ("classifier." / "qa_outputs."), named in shape errors
    load_report: checkpoint.LoadReport | None = None  # set by loading

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a minibert.BertConfig, got {type(config).__name__}")
        config.validate()
        self.config = config

    # --- initialisation ---------------------------------------------------------------------------
    def post_init(self) -> None:
        """Initialise every weight as BERT / HF do, then tie the MLM decoder to the word embeddings."""
        self.apply(self._init_weights)
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        # Devlin et al.'s TF code: truncated normal(0.02); HF (and we) use a plain normal(0, range).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if module.weight is self.get_input_embeddings().weight:
                return  # a tied MLM decoder: its weight is the embedding table, initialised as one
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BertLMPredictionHead):
            nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """Make every MLM decoder use the word-embedding matrix and the head's own bias (no copies)."""
        for module in self.modules():
            if isinstance(module, BertLMPredictionHead):
                module.decoder.weight = self.get_input_embeddings().weight
                module.decoder.bias = module.bias

    @property
    def base_model(self) -> "BertModel":
        """The encoder: ``self.bert`` in the wrapping models, the model itself for BertModel (as in HF)."""
        return getattr(self, self.base_model_prefix) if self.base_model_prefix else self

    def get_input_embeddings(self) -> nn.Embedding:
        """The word-embedding table ``[V, E]``."""
        return self.base_model.embeddings.word_embeddings

    # --- backends -----------------------------------------------------------------------------------
    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch every layer's attention to "eager", "sdpa" or "fused" (fused -> eager without extension)."""
        resolved = resolve_implementation(attn_implementation, ATTN_IMPLEMENTATIONS, "attn_implementation")
        for module in self.modules():
            if isinstance(module, BertSelfAttention):
                module.attn_implementation = resolved

    def set_gelu_implementation(self, gelu_implementation: str) -> None:
        """Switch every GELU to "eager" or "fused" (bias+GELU kernel; eager where the extension is absent)."""
        resolved = resolve_implementation(gelu_implementation, GELU_IMPLEMENTATIONS, "gelu_implementation")
        for module in self.modules():
            if isinstance(module, DenseGelu):
                module.gelu_implementation = resolved

    def set_layernorm_implementation(self, layernorm_implementation: str) -> None:
        """Switch every LayerNorm to "eager" or "fused" (residual + dropout + LayerNorm kernel; eager where the
        extension is absent)."""
        resolved = resolve_implementation(layernorm_implementation, LAYERNORM_IMPLEMENTATIONS,
                                          "layernorm_implementation")
        for module in self.modules():
            if isinstance(module, BertLayerNorm):
                module.layernorm_implementation = resolved

    def set_loss_implementation(self, loss_implementation: str) -> None:
        """Switch the pretraining losses to "eager" (F.linear + F.cross_entropy) or "fused"
        (``ops.linear_cross_entropy`` for the MLM head, ``ops.cross_entropy`` for NSP; eager where the
        extension is absent). Models without an MLM head (the fine-tuning ones) accept and ignore it."""
        resolved = resolve_implementation(loss_implementation, LOSS_IMPLEMENTATIONS, "loss_implementation")
        for module in self.modules():
            if isinstance(module, BertLMPredictionHead):
                module.loss_implementation = resolved

    @property
    def loss_implementation(self) -> str:
        """The pretraining-loss backend actually in use ("eager" for a model without an MLM head)."""
        return next((m.loss_implementation for m in self.modules() if isinstance(m, BertLMPredictionHead)), "eager")

    @property
    def attn_implementation(self) -> str:
        """The attention backend actually in use."""
        return next(m for m in self.modules() if isinstance(m, BertSelfAttention)).attn_implementation

    @property
    def gelu_implementation(self) -> str:
        """The GELU backend actually in use."""
        return next(m for m in self.modules() if isinstance(m, BertIntermediate)).gelu_implementation

    @property
    def layernorm_implementation(self) -> str:
        """The LayerNorm backend actually in use."""
        return next(m for m in self.modules() if isinstance(m, BertLayerNorm)).layernorm_implementation

    # --- weights in and out -------------------------------------------------------------------------
    def load_weights(self, state: Mapping[str, np.ndarray | torch.Tensor]) -> checkpoint.LoadReport:
        """Copy an HF-named state dict (NumPy arrays or tensors) into this model: ``checkpoint.load_weights``."""
        return checkpoint.load_weights(self, state)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, attn_implementation: str = "eager",
                        gelu_implementation: str = "eager", dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", layernorm_implementation: str = "eager",
                        loss_implementation: str = "eager", **config_overrides):
        """Load a checkpoint directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).

        Checkpoints written by ``transformers`` load unchanged; ``config_overrides`` (``num_labels``, ...)
        replace config.json fields. What was initialised fresh or dropped is ``loading_report()``. The
        model is returned in eval mode. See ``minibert.checkpoint.load_pretrained``.
        """
        model = checkpoint.load_pretrained(cls, directory, attn_implementation, gelu_implementation, dtype,
                                           device, layernorm_implementation=layernorm_implementation,
                                           **config_overrides)
        model.set_loss_implementation(loss_implementation)
        return model

    @property
    def newly_initialized(self) -> list[str]:
        """Parameters the loaded checkpoint lacked (they keep their fresh initialisation)."""
        return self.load_report.newly_initialized if self.load_report else []

    @property
    def dropped(self) -> list[str]:
        """Checkpoint tensors loading left out (heads this model has no use for)."""
        return self.load_report.dropped if self.load_report else []

    def loading_report(self) -> str:
        """One line saying which parameters loading initialised and which checkpoint tensors it dropped."""
        return str(self.load_report or checkpoint.LoadReport())

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> None:
        """Write ``config.json`` + ``model.safetensors`` (+ ``vocab.txt`` via ``tokenizer``) atomically.

        Each file goes to a temporary name and is renamed, so an interrupted save never leaves a
        half-written file. ``transformers.BertForPreTraining.from_pretrained(directory)`` reads the result.
        """
        if tokenizer is not None and len(tokenizer) > self.config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                             f"vocab_size={self.config.vocab_size} embeddings: its ids would not fit. Save "
                             f"the tokenizer the model was trained with")
        os.makedirs(directory, exist_ok=True)
        checkpoint.save_state_dict(self.state_dict(), directory)
        self.config.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    # --- inputs -------------------------------------------------------------------------------------
    def _check_inputs(self, input_ids, attention_mask, token_type_ids, position_ids) -> None:
        config = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = (tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor)
                     else type(input_ids).__name__)
            raise ValueError(f"input_ids must be a [batch, seq_len] tensor of token ids, got {shape}; "
                             f"add a batch dimension with input_ids[None] for one sequence")
        batch, seq = input_ids.shape
        if seq > config.max_position_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings="
                             f"{config.max_position_embeddings}; truncate or split the input")
        if batch == 0 or seq == 0:
            raise ValueError(f"input_ids has an empty dimension {tuple(input_ids.shape)}")
        _check_ids("input_ids", input_ids, (batch, seq), 0, config.vocab_size,
                   f"ids must index the vocabulary (vocab_size={config.vocab_size}); was the tokenizer "
                   f"built with a different vocabulary than the model?")
        if token_type_ids is not None:
            _check_ids("token_type_ids", token_type_ids, (batch, seq), 0, config.type_vocab_size,
                       f"segment ids index type_vocab_size={config.type_vocab_size} embeddings")
        if position_ids is not None:
            _check_ids("position_ids", position_ids, (batch, seq), 0, config.max_position_embeddings,
                       "positions index max_position_embeddings embeddings")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (batch, seq):
                shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else None
                raise ValueError(f"attention_mask must have shape {(batch, seq)} like input_ids, got {shape}")
            if _values_checked(attention_mask):
                if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                    raise ValueError("attention_mask must hold 1 (real token) or 0 (padding) only")

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, dropout_seed,
                rows: PositionRows | None = None):
        """Check the inputs and run the encoder: (BertModelOutput, the pass's DropoutPlan). With ``rows`` the
        last layer runs at those positions only and ``last_hidden_state`` is [R, E] (``BertModel.encode``)."""
        self._check_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        if not self.training:
            plan = DropoutPlan(None)
        elif dropout_seed is None:  # drawn from torch's RNG, so torch.manual_seed makes runs reproducible
            plan = DropoutPlan(int(torch.randint(0, 2**62, (), dtype=torch.int64)))
        else:
            plan = DropoutPlan(int(dropout_seed))
        return self.base_model.encode(input_ids, attention_mask, token_type_ids, position_ids, plan, rows), plan

    def _loss_rows(self, input_ids, attention_mask, token_type_ids, position_ids, labels,
                   wanted: bool) -> PositionRows | None:
        """The positions the pretraining losses read (``_loss_rows``) when ``wanted``, else None."""
        if not wanted:
            return None
        self._check_inputs(input_ids, attention_mask, token_type_ids, position_ids)  # the shape labels need
        return _loss_rows(labels, tuple(input_ids.shape), self.config.vocab_size,
                          self.base_model.pooler is not None)


class BertModel(BertPreTrainedModel):
    """The BERT encoder: embeddings, ``num_hidden_layers`` layers and (optionally) the pooler.

    Keys: ``embeddings.*``, ``encoder.layer.{i}.*``, ``pooler.*`` (HF's BertModel). Wrapped as ``bert`` in
    the pretraining / MLM models.
    """

    base_model_prefix = ""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager", *, init_weights: bool = True,
                 layernorm_implementation: str = "eager"):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config, attn_implementation, gelu_implementation)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.set_layernorm_implementation(layernorm_implementation)
        if init_weights:  # a wrapping model (BertForPreTraining, ...) initialises everything once itself
            self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                dropout_seed: int | None = None) -> BertModelOutput:
        """Encode ``input_ids [B, S]``; ``dropout_seed`` fixes the dropout masks in training mode.

        In training mode with ``dropout_seed=None`` a seed is drawn from torch's RNG, so
        ``torch.manual_seed`` makes runs reproducible. In eval mode there is no dropout.
        """
        return self._encode(input_ids, attention_mask, token_type_ids, position_ids, dropout_seed)[0]

    def encode(self, input_ids, attention_mask, token_type_ids, position_ids, dropout: DropoutPlan,
               rows: PositionRows | None = None) -> BertModelOutput:
        """The encoder on checked inputs (``_encode`` checks them): [B, S] ids -> hidden states.

        With ``rows`` (which must hold every [CLS] position when there is a pooler) the last layer runs at
        those positions only: ``last_hidden_state`` is [R, E], the rows in ``rows.index`` order.
        """
        batch, seq = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        mask = None if attention_mask is None else AttentionMask(attention_mask)
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, dropout)
        hidden = self.encoder(hidden, mask, dropout, rows)                   # [B, S, E], or [R, E]
        if self.pooler is None:
            pooled = None
        elif rows is None:
            pooled = self.pooler(hidden)                                     # [B, E]
        else:
            pooled = self.pooler.pool(hidden[rows.index % seq == 0])         # the [CLS] rows, in batch order
        return BertModelOutput(last_hidden_state=hidden, pooler_output=pooled)


_MLM_LABELS_HELP = "MLM labels are token ids of the original tokens, or -100 where nothing is predicted"
_NEEDS_LABELS = "masked_positions_only=True needs labels: they say which positions to predict"


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100.

    A batch with no predicted position has loss 0 and gradient 0 (as in ``minibert.reference.losses``),
    not PyTorch's 0/0 = NaN, so one unlucky batch cannot poison a training run.
    """
    _check_ids("labels", labels, logits.shape[:-1], 0, vocab_size, _MLM_LABELS_HELP, ignore=IGNORE_INDEX)
    total = F.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1).long(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def _loss_rows(labels, shape: tuple[int, int], vocab_size: int, with_cls: bool) -> PositionRows:
    """The positions the losses read, for ``masked_positions_only``: every position with an MLM label, and
    each sequence's [CLS] (position 0) when the NSP head reads it. Checks the labels first."""
    if labels is None:
        raise ValueError(_NEEDS_LABELS)
    _check_ids("labels", labels, shape, 0, vocab_size, _MLM_LABELS_HELP, ignore=IGNORE_INDEX)
    kept = labels != IGNORE_INDEX                                   # [B, S]
    if with_cls:
        kept[:, 0] = True
    return PositionRows(kept.reshape(-1).nonzero().squeeze(1), kept.numel())  # row-major (b, s) order


def _masked_lm(predictions: BertLMPredictionHead, hidden: torch.Tensor, labels: torch.Tensor | None,
               vocab_size: int, masked_positions_only: bool, rows: PositionRows | None = None):
    """(MLM logits, MLM loss or None) from the last hidden states [B, S, E] (or their rows ``rows``, [R, E]).

    With ``masked_positions_only`` the vocabulary projection runs only at the M positions whose label is
    not -100 and the logits are [M, V] in row-major (b, s) order, as Google's BERT gathers
    ``masked_lm_positions``: with 15% masking and V ~ 30k this skips most of the head's matmul and the
    largest activation of the model. The loss is the same either way.
    """
    if masked_positions_only and rows is None:  # the whole last layer ran: pick its predicted positions
        if labels is None:
            raise ValueError(_NEEDS_LABELS)
        _check_ids("labels", labels, hidden.shape[:2], 0, vocab_size, _MLM_LABELS_HELP, ignore=IGNORE_INDEX)
        predicted = labels != IGNORE_INDEX                     # [B, S]
        hidden, labels = hidden[predicted], labels[predicted]  # [M, E], [M]
    elif masked_positions_only:  # hidden holds the rows `rows` only: the predicted ones and [CLS]
        labels = labels.reshape(-1)[rows.index]                # [R]
        predicted = labels != IGNORE_INDEX
        hidden, labels = hidden[predicted], labels[predicted]  # [M, E], [M]
    if labels is not None and _fused_loss(predictions, hidden):
        return _fused_masked_lm(predictions, hidden, labels, vocab_size)
    logits = predictions(hidden)                               # [B, S, V] or [M, V]
    return logits, None if labels is None else _mlm_loss(logits, labels, vocab_size)


def _fused_loss(predictions: BertLMPredictionHead, x: torch.Tensor) -> bool:
    """Whether the fused losses run: chosen, and no autocast (the fused head's backward multiplies its
    saved tensors itself, outside autocast, so they must share one dtype)."""
    return predictions.loss_implementation == "fused" and not torch.is_autocast_enabled(x.device.type)


def _fused_masked_lm(predictions: BertLMPredictionHead, hidden: torch.Tensor, labels: torch.Tensor,
                     vocab_size: int):
    """``_masked_lm``'s logits and loss through ``ops.linear_cross_entropy``: the same numbers, but the
    cross-entropy reads each predicted row once (no log_softmax tensor) and the backward of the vocabulary
    projection multiplies only the predicted rows, whose gradients are the only non-zero ones."""
    _check_ids("labels", labels, hidden.shape[:-1], 0, vocab_size, _MLM_LABELS_HELP, ignore=IGNORE_INDEX)
    h = predictions.transform(hidden)                                                  # [..., E]
    decoder = predictions.decoder
    logits, loss = ops.linear_cross_entropy(h.reshape(-1, h.shape[-1]), decoder.weight, decoder.bias,
                                            labels.reshape(-1), IGNORE_INDEX)          # [N, V], [N]
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return logits.reshape(*h.shape[:-1], vocab_size), loss.sum() / count


class BertForPreTraining(BertPreTrainedModel):
    """BERT with both pretraining heads: masked-LM logits and next-sentence-prediction logits (+ losses)."""

    optional_prefixes = ("cls.",)  # an encoder-only checkpoint loads with fresh heads

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager", layernorm_implementation: str = "eager",
                 loss_implementation: str = "eager"):
        super().__init__(config)
        self.bert = BertModel(config, True, attn_implementation, gelu_implementation, init_weights=False)
        self.cls = BertPreTrainingHeads(config, gelu_implementation)
        self.set_layernorm_implementation(layernorm_implementation)
        self.set_loss_implementation(loss_implementation)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                next_sentence_label=None, dropout_seed: int | None = None,
                masked_positions_only: bool = False, full_last_layer: bool = False) -> BertModelOutput:
        """Run BERT on ``input_ids [B, S]`` and both heads.

        ``labels [B, S]`` holds the original token id at masked positions and -100 elsewhere;
        ``next_sentence_label [B]`` is 0 (IsNext) or 1 (random). ``loss`` = MLM loss + NSP loss over
        whichever labels are given. ``dropout_seed``: see ``BertModel.forward``.

        ``masked_positions_only=True`` computes only what the losses read (faster pretraining; the same
        loss and gradients): ``prediction_logits`` only where ``labels != -100``, shape [M, V], and the
        last layer after its attention only at those positions and [CLS], so ``last_hidden_state`` is
        None. ``full_last_layer=True`` keeps the last layer at every position (and ``last_hidden_state``).
        """
        rows = self._loss_rows(input_ids, attention_mask, token_type_ids, position_ids, labels,
                               masked_positions_only and not full_last_layer)
        out, _ = self._encode(input_ids, attention_mask, token_type_ids, position_ids, dropout_seed, rows)
        out.prediction_logits, out.mlm_loss = _masked_lm(self.cls.predictions, out.last_hidden_state, labels,
                                                         self.config.vocab_size, masked_positions_only, rows)
        if rows is not None:
            out.last_hidden_state = None  # only some rows were computed
        out.seq_relationship_logits = self.cls.seq_relationship(out.pooler_output)   # [B, 2]
        if next_sentence_label is not None:
            _check_ids("next_sentence_label", next_sentence_label, out.seq_relationship_logits.shape[:1], 0, 2,
                       "NSP labels are 0 (IsNext) or 1 (random sentence), one per sequence")
            nsp_logits, nsp_labels = out.seq_relationship_logits, next_sentence_label.long()
            fused = _fused_loss(self.cls.predictions, nsp_logits)
            out.nsp_loss = (ops.cross_entropy(nsp_logits, nsp_labels).mean() if fused
                            else F.cross_entropy(nsp_logits, nsp_labels))
        losses = [x for x in (out.mlm_loss, out.nsp_loss) if x is not None]
        out.loss = sum(losses) if losses else None
        return out


class BertForMaskedLM(BertPreTrainedModel):
    """BERT with only the masked-LM head (no pooler, no NSP), as RoBERTa-style pretraining uses."""

    optional_prefixes = ("cls.",)  # an encoder-only checkpoint loads with a fresh MLM head

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager", layernorm_implementation: str = "eager",
                 loss_implementation: str = "eager"):
        super().__init__(config)
        self.bert = BertModel(config, False, attn_implementation, gelu_implementation, init_weights=False)
        self.cls = BertOnlyMLMHead(config, gelu_implementation)
        self.set_layernorm_implementation(layernorm_implementation)
        self.set_loss_implementation(loss_implementation)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                dropout_seed: int | None = None, masked_positions_only: bool = False,
                full_last_layer: bool = False) -> BertModelOutput:
        """Masked-LM logits ``[B, S, V]`` and, given ``labels`` (-100 = not predicted), the MLM loss.

        Arguments as in ``BertForPreTraining.forward``.
        """
        rows = self._loss_rows(input_ids, attention_mask, token_type_ids, position_ids, labels,
                               masked_positions_only and not full_last_layer)
        out, _ = self._encode(input_ids, attention_mask, token_type_ids, position_ids, dropout_seed, rows)
        out.prediction_logits, out.mlm_loss = _masked_lm(self.cls.predictions, out.last_hidden_state, labels,
                                                         self.config.vocab_size, masked_positions_only, rows)
        if rows is not None:
            out.last_hidden_state = None  # only some rows were computed
        out.loss = out.mlm_loss
        return out


# ------------------------------------------------------------------------------------------------------
# Fine-tuning heads (Devlin et al., 2018, section 4): sentence classification and SQuAD-style span QA.
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FinetuneOutput:
    """What a fine-tuning model returns; fields a model does not compute are None."""

    logits: torch.Tensor | None = None         # [B, num_labels] (classification)
    start_logits: torch.Tensor | None = None   # [B, S] (question answering)
    end_logits: torch.Tensor | None = None     # [B, S]
    loss: torch.Tensor | None = None


class BertForFinetuning(BertPreTrainedModel):
    """What both fine-tuning models share: they start from any BERT checkpoint.

    ``from_pretrained`` accepts a checkpoint of the same model type (everything is loaded), a pretraining
    checkpoint (``cls.*`` dropped, the new head initialised as HF does) or a bare encoder; the pooler and
    the head may be missing. ``loading_report()`` says what happened.
    """

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> None:
        """As ``BertPreTrainedModel.save_pretrained``, plus ``architectures`` in config.json (HF's field)."""
        super().save_pretrained(directory, tokenizer)
        d = {**self.config.to_dict(), "architectures": [type(self).__name__]}
        atomic_write_text(os.path.join(directory, "config.json"), json.dumps(d, indent=2, sort_keys=True) + "\n")


class BertForSequenceClassification(BertForFinetuning):
    """BERT + a linear classifier on the pooled [CLS] vector: ``num_labels`` classes, or 1 = regression.

    logits = classifier(dropout(pooler_output)), [B, num_labels]. Loss as HF infers ``problem_type``:
    cross-entropy of integer class ids when ``num_labels > 1``, mean squared error of float targets when
    ``num_labels == 1`` (a regression such as STS-B).
    """

    head_prefix = "classifier."
    optional_prefixes = ("classifier.", "bert.pooler.")

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager", layernorm_implementation: str = "eager"):
        super().__init__(config)
        self.bert = BertModel(config, True, attn_implementation, gelu_implementation, init_weights=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.set_layernorm_implementation(layernorm_implementation)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                dropout_seed: int | None = None) -> FinetuneOutput:
        """``logits [B, num_labels]``; with ``labels [B]`` (class ids, or floats for regression) the loss."""
        out, plan = self._encode(input_ids, attention_mask, token_type_ids, None, dropout_seed)
        p = self.config.classifier_dropout
        p = self.config.hidden_dropout_prob if p is None else p
        pooled = plan.apply(out.pooler_output, p, self.config.num_hidden_layers, SITE_CLASSIFIER)
        logits = self.classifier(pooled)                              # [B, num_labels]
        return FinetuneOutput(logits=logits, loss=None if labels is None else self.loss(logits, labels))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of class ids, or mean squared error of targets when ``num_labels == 1``."""
        n = self.config.num_labels
        if n == 1:
            if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (logits.shape[0],):
                raise ValueError(f"regression labels (num_labels=1) must be a [batch] float tensor, got "
                                 f"{getattr(labels, 'shape', type(labels).__name__)}")
            return F.mse_loss(logits[:, 0], labels.to(logits.dtype))
        _check_ids("labels", labels, logits.shape[:1], 0, n,
                   f"class labels are ids 0..{n - 1} (num_labels={n}), one per sequence")
        return F.cross_entropy(logits, labels.long())


class BertForQuestionAnswering(BertForFinetuning):
    """BERT + a start/end span classifier over every token (SQuAD-style extractive QA).

    ``qa_outputs`` Linear(E, 2) maps each final hidden state to a start and an end logit, [B, S] each.
    There is no pooler (HF builds this model without one).
    """

    head_prefix = "qa_outputs."
    optional_prefixes = ("qa_outputs.",)

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager", layernorm_implementation: str = "eager"):
        super().__init__(config)
        self.bert = BertModel(config, False, attn_implementation, gelu_implementation, init_weights=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.set_layernorm_implementation(layernorm_implementation)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, dropout_seed: int | None = None) -> FinetuneOutput:
        """Start and end logits ``[B, S]``; with ``start_positions``/``end_positions [B]`` the span loss.

        loss = (CE(start) + CE(end)) / 2. As in HF, every position gets logits (padding and question
        tokens too): post-processing only ever picks spans of context tokens.
        """
        out, _ = self._encode(input_ids, attention_mask, token_type_ids, None, dropout_seed)
        logits = self.qa_outputs(out.last_hidden_state)               # [B, S, 2]
        start_logits, end_logits = logits[..., 0], logits[..., 1]     # [B, S] each
        loss = None
        if start_positions is not None or end_positions is not None:
            if start_positions is None or end_positions is None:
                raise ValueError("give both start_positions and end_positions, or neither")
            loss = (span_loss(start_logits, start_positions, "start_positions")
                    + span_loss(end_logits, end_positions, "end_positions")) / 2
        return FinetuneOutput(start_logits=start_logits, end_logits=end_logits, loss=loss)


def span_loss(logits: torch.Tensor, positions: torch.Tensor, name: str = "positions") -> torch.Tensor:
    """Mean cross-entropy of token positions ``[B]`` under ``logits [B, S]``, HF's rule for the outside.

    HF clamps positions to [0, S] and ignores S: an answer cut off by the window (a position >= S) does not
    count. A batch where every position is ignored has loss 0 here (HF's mean would be 0/0 = NaN).
    """
    batch, seq = logits.shape
    _check_ids(name, positions, (batch,), 0, 2**62,
               "positions are token indices into the sequence (0 = [CLS] = no answer)")
    positions = positions.long().clamp(max=seq)
    kept = (positions != seq).sum()
    return F.cross_entropy(logits, positions, ignore_index=seq, reduction="sum") / kept.clamp(min=1)


def _main() -> None:
    """``python -m minibert.modeling``: each layer's output shape on a tiny random BERT."""
    from minibert.model_shapes import show_layer_shapes
    show_layer_shapes(BertForPreTraining)


if __name__ == "__main__":
    _main()
