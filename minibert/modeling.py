"""The PyTorch BERT model: same weights, same numbers as HF ``transformers`` and our NumPy reference.

Module and parameter names copy HuggingFace's BERT exactly (``bert.encoder.layer.0.attention.self.query``,
``cls.predictions.bias``, ...), so ``state_dict()`` keys are HF's keys and checkpoints move between
``transformers``, ``minibert.reference`` and this model with no renaming.

Models: ``BertModel`` (the encoder), ``BertForPreTraining`` (MLM + NSP), ``BertForMaskedLM``, and the
fine-tuning models ``BertForSequenceClassification`` and ``BertForQuestionAnswering`` (section 4 of the
paper; ``minibert finetune`` trains them).

Two things differ from a plain port, both for the project's contracts (DESIGN.md):

* **Backends are a switch.** ``attn_implementation`` picks how attention is computed ("eager" matmul +
  softmax, "sdpa" = ``F.scaled_dot_product_attention``, "fused" = our extension's flash-style kernel) and
  ``gelu_implementation`` picks how the feed-forward activation is computed ("eager" or "fused" bias+GELU).
  All give the same numbers; ``set_attn_implementation`` / ``set_gelu_implementation`` switch later.
* **Dropout is reproducible.** Every dropout site draws its mask from the counter-based hash of
  ``minibert.rng`` at a (seed, offset) fixed by ``minibert.reference.model``'s site numbering, so this model
  and the NumPy reference drop exactly the same elements for the same ``dropout_seed``.

Shapes: B = batch, S = sequence length, H = hidden size, A = attention heads, D = H / A, V = vocabulary.
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

from minibert import checkpoint, ops
from minibert.files import atomic_write_text
from minibert.config import BertConfig
from minibert.reference.model import (EMBEDDINGS_LAYER, SITE_ATTENTION_OUTPUT, SITE_ATTENTION_PROBS,
                                      SITE_EMBEDDINGS, SITE_FFN_OUTPUT, dropout_site_offset)

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "fused")
GELU_IMPLEMENTATIONS = ("eager", "fused")
IGNORE_INDEX = -100  # MLM label of a position that is not predicted (HF / PyTorch convention)


def _resolve_implementation(requested: str, choices: tuple[str, ...], what: str) -> str:
    """Validate a backend name; "fused" quietly means "eager" where the compiled extension is absent."""
    if requested not in choices:
        raise ValueError(f"{what}={requested!r} is not one of {choices}")
    if requested == "fused" and not ops.is_available():
        return "eager"  # ops.backend_info() says why the extension is missing
    return requested


# ------------------------------------------------------------------------------------------------------
# Dropout: one object per forward pass says whether to drop and where each site's mask comes from.
# ------------------------------------------------------------------------------------------------------
class DropoutPlan:
    """Counter-hash dropout for one forward pass.

    ``seed`` is None when dropout is off (evaluation). A site is named by (layer, site) exactly as in
    ``minibert.reference.model``: the embeddings are layer -1; each encoder layer has the attention
    probabilities, the attention output and the feed-forward output. Each site owns a disjoint counter
    range, so the same element of the same site is dropped here and in the NumPy reference.
    """

    def __init__(self, seed: int | None):
        self.seed = seed

    @property
    def active(self) -> bool:
        """True when this forward pass applies dropout."""
        return self.seed is not None

    def apply(self, x: torch.Tensor, p: float, layer: int, site: int) -> torch.Tensor:
        """Inverted dropout of ``x`` with probability ``p`` at (layer, site); identity when inactive."""
        if not self.active or p == 0.0:
            return x
        return ops.dropout(x, p, self.seed, dropout_site_offset(layer, site, x.numel()))


# ------------------------------------------------------------------------------------------------------
# Attention backends. All take q, k, v: [B, A, S, D] and return [B, A, S, D].
# ------------------------------------------------------------------------------------------------------
class AttentionMask:
    """The key-padding mask of a batch, prepared once per forward pass and shared by every layer.

    Built from the user's ``attention_mask [B, S]`` of 1 (real token) / 0 (padding).
    """

    def __init__(self, attention_mask: torch.Tensor):
        self.keep = attention_mask.float()                          # [B, S]: the form ops.attention takes
        self.key_keep = attention_mask.bool()[:, None, None, :]     # [B, 1, 1, S]: broadcasts over A and S_q
        self.has_keys = self.key_keep.any(dim=-1, keepdim=True)    # [B, 1, 1, 1]: False = all padding
        self._additive: dict[torch.dtype, torch.Tensor] = {}

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, 1, S]: 0 for a real key, the most negative finite ``dtype`` number for a padding key.

        Finite rather than -inf: a row whose keys are all padding then gets a finite (uniform) softmax
        instead of 0/0 = NaN, and the caller zeroes that row with ``has_keys``. exp(min - max) underflows
        to exactly 0, so a padding key contributes nothing to a row that has a real key. Made once per
        dtype and reused by every layer.
        """
        if dtype not in self._additive:
            zeros = torch.zeros(self.key_keep.shape, dtype=dtype, device=self.key_keep.device)
            self._additive[dtype] = zeros.masked_fill(~self.key_keep, torch.finfo(dtype).min)
        return self._additive[dtype]


def eager_attention(q, k, v, mask: AttentionMask | None, scale: float, dropout_p: float,
                    seed: int, offset: int) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v written out in plain tensor ops (the textbook form)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale          # [B, A, S, S]
    if mask is not None:
        scores = scores + mask.additive(scores.dtype)
    probs = torch.softmax(scores, dim=-1)                          # attention_probs [B, A, S, S]
    if mask is not None:
        probs = probs * mask.has_keys                              # all-padding rows attend to nothing
    if dropout_p > 0.0:
        # Element (b, h, q, k) of [B, A, S, S] has flat index ((b*A + h)*S + q)*S + k: the rng contract.
        probs = ops.dropout(probs, dropout_p, seed, offset)
    return torch.matmul(probs, v)


def sdpa_attention(q, k, v, mask: AttentionMask | None, scale: float) -> torch.Tensor:
    """PyTorch's ``F.scaled_dot_product_attention`` (picks a flash / memory-efficient kernel on GPU).

    It takes no dropout here: SDPA draws its dropout mask from torch's own RNG, which cannot reproduce
    our counter-hash masks, so the model routes training-with-dropout through the eager path instead.
    """
    attn_mask = None if mask is None else mask.additive(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return out if mask is None else out * mask.has_keys


def fused_attention(q, k, v, mask: AttentionMask | None, scale: float, dropout_p: float,
                    seed: int, offset: int) -> torch.Tensor:
    """Our extension's tiled online-softmax attention (``minibert.ops.attention``)."""
    keep = None if mask is None else mask.keep.to(q.dtype)
    return ops.attention(q, k, v, attention_mask=keep, scale=scale, dropout_p=dropout_p,
                         seed=seed, offset=offset)


# ------------------------------------------------------------------------------------------------------
# Layers (names and nesting exactly HF's, so state_dict keys match).
# ------------------------------------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout: [B, S] ids -> [B, S, H]."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        # padding_idx as in HF: the pad row starts at zero and gets no gradient from the lookup.
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, token_type_ids, position_ids, dropout: DropoutPlan) -> torch.Tensor:
        embeddings = (self.word_embeddings(input_ids)
                      + self.token_type_embeddings(token_type_ids)
                      + self.position_embeddings(position_ids))             # [B, S, H]
        embeddings = self.LayerNorm(embeddings)
        return dropout.apply(embeddings, self.config.hidden_dropout_prob, EMBEDDINGS_LAYER, SITE_EMBEDDINGS)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: project to q, k, v, attend per head, merge heads. [B,S,H] -> [B,S,H]."""

    def __init__(self, config: BertConfig, layer_index: int, attn_implementation: str = "eager"):
        super().__init__()
        self.config = config
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim ** -0.5  # Vaswani et al. 2017: keeps q.k at unit variance
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_implementation = _resolve_implementation(attn_implementation, ATTN_IMPLEMENTATIONS,
                                                           "attn_implementation")

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # [B, A, S, D]

    def forward(self, hidden_states, mask: AttentionMask | None, dropout: DropoutPlan) -> torch.Tensor:
        q = self._split_heads(self.query(hidden_states))
        k = self._split_heads(self.key(hidden_states))
        v = self._split_heads(self.value(hidden_states))
        batch, _, seq, _ = q.shape
        p = self.config.attention_probs_dropout_prob if dropout.active else 0.0
        seed, offset = 0, 0
        if p > 0.0:
            seed = dropout.seed
            offset = dropout_site_offset(self.layer_index, SITE_ATTENTION_PROBS,
                                         batch * self.num_heads * seq * seq)

        implementation = self.attn_implementation
        if implementation == "sdpa" and p > 0.0:
            implementation = "eager"  # see sdpa_attention: its dropout RNG is not ours
        if implementation == "sdpa":
            context = sdpa_attention(q, k, v, mask, self.scale)
        elif implementation == "fused":
            context = fused_attention(q, k, v, mask, self.scale, p, seed, offset)
        else:
            context = eager_attention(q, k, v, mask, self.scale, p, seed, offset)
        return context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)


class BertResidualOutput(nn.Module):
    """Projection back to the hidden size, dropout, then the post-LN residual: LayerNorm(x + dropout(W a)).

    Both sub-blocks of a layer end this way: after attention (``attention.output``: [B, S, H] -> [B, S, H],
    dropout site SITE_ATTENTION_OUTPUT) and after the feed-forward expansion (``output``: [B, S, I] ->
    [B, S, H], site SITE_FFN_OUTPUT). HF names the two classes BertSelfOutput and BertOutput; only the
    attribute names reach the state dict, so one class serves both.
    """

    def __init__(self, config: BertConfig, layer_index: int, in_features: int, site: int):
        super().__init__()
        self.config = config
        self.layer_index = layer_index
        self.site = site
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, residual, dropout: DropoutPlan) -> torch.Tensor:
        out = dropout.apply(self.dense(hidden), self.config.hidden_dropout_prob, self.layer_index, self.site)
        return self.LayerNorm(out + residual)


class BertAttention(nn.Module):
    """Self-attention plus its output block (HF nests them as ``attention.self`` / ``attention.output``)."""

    def __init__(self, config: BertConfig, layer_index: int, attn_implementation: str = "eager"):
        super().__init__()
        self.self = BertSelfAttention(config, layer_index, attn_implementation)
        self.output = BertResidualOutput(config, layer_index, config.hidden_size, SITE_ATTENTION_OUTPUT)

    def forward(self, hidden_states, mask: AttentionMask | None, dropout: DropoutPlan) -> torch.Tensor:
        return self.output(self.self(hidden_states, mask, dropout), hidden_states, dropout)


def dense_gelu(dense: nn.Linear, x: torch.Tensor, approximate: str, implementation: str) -> torch.Tensor:
    """GELU(dense(x)); the "fused" form does the matmul without bias and adds bias inside the GELU kernel."""
    if implementation == "fused":
        h = F.linear(x, dense.weight)  # [..., out]; under autocast already bf16/fp16 while the bias is not
        return ops.bias_gelu(h, dense.bias.to(h.dtype), approximate=approximate)
    return F.gelu(dense(x), approximate=approximate)


class BertIntermediate(nn.Module):
    """The feed-forward expansion with GELU: [B, S, H] -> [B, S, intermediate_size]."""

    def __init__(self, config: BertConfig, gelu_implementation: str = "eager"):
        super().__init__()
        self.approximate = config.gelu_approximate
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.gelu_implementation = _resolve_implementation(gelu_implementation, GELU_IMPLEMENTATIONS,
                                                           "gelu_implementation")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return dense_gelu(self.dense, hidden_states, self.approximate, self.gelu_implementation)


class BertLayer(nn.Module):
    """One encoder layer: self-attention block, then feed-forward block, each with a residual + LayerNorm."""

    def __init__(self, config: BertConfig, layer_index: int, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager"):
        super().__init__()
        self.attention = BertAttention(config, layer_index, attn_implementation)
        self.intermediate = BertIntermediate(config, gelu_implementation)
        self.output = BertResidualOutput(config, layer_index, config.intermediate_size, SITE_FFN_OUTPUT)

    def forward(self, hidden_states, mask: AttentionMask | None, dropout: DropoutPlan) -> torch.Tensor:
        attention_output = self.attention(hidden_states, mask, dropout)
        return self.output(self.intermediate(attention_output), attention_output, dropout)


class BertEncoder(nn.Module):
    """``num_hidden_layers`` BertLayers applied in turn (``encoder.layer.{i}``)."""

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager"):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, i, attn_implementation, gelu_implementation)
                                   for i in range(config.num_hidden_layers))

    def forward(self, hidden_states, mask: AttentionMask | None, dropout: DropoutPlan) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, mask, dropout)
        return hidden_states


class BertPooler(nn.Module):
    """tanh(dense(h[CLS])): the sentence vector NSP and classifiers read. [B, S, H] -> [B, H]."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class BertPredictionHeadTransform(nn.Module):
    """The MLM head's dense -> GELU -> LayerNorm before the vocabulary projection: [B,S,H] -> [B,S,H]."""

    def __init__(self, config: BertConfig, gelu_implementation: str = "eager"):
        super().__init__()
        self.approximate = config.gelu_approximate
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gelu_implementation = _resolve_implementation(gelu_implementation, GELU_IMPLEMENTATIONS,
                                                           "gelu_implementation")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(dense_gelu(self.dense, hidden_states, self.approximate,
                                         self.gelu_implementation))


class BertLMPredictionHead(nn.Module):
    """MLM logits: transform, then project onto the vocabulary with the TIED word-embedding matrix.

    ``decoder.weight`` is the very Parameter ``bert.embeddings.word_embeddings.weight`` (Press & Wolf,
    2017; BERT does this) and ``decoder.bias`` is the very Parameter ``bias``, as in HF: both keys appear in
    ``state_dict()`` like HF's, while a saved checkpoint stores each tensor once. [B,S,H] -> [B,S,V].
    """

    def __init__(self, config: BertConfig, gelu_implementation: str = "eager"):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config, gelu_implementation)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight/bias replaced by ties
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class BertOnlyMLMHead(nn.Module):
    """``cls`` of BertForMaskedLM: just the MLM head (``cls.predictions``)."""

    def __init__(self, config: BertConfig, gelu_implementation: str = "eager"):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, gelu_implementation)


class BertPreTrainingHeads(nn.Module):
    """``cls`` of BertForPreTraining: MLM head (``cls.predictions``) + NSP head (``cls.seq_relationship``)."""

    def __init__(self, config: BertConfig, gelu_implementation: str = "eager"):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, gelu_implementation)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)  # 0 = IsNext, 1 = random sentence


# ------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BertModelOutput:
    """What a forward pass returns; fields a model does not compute are None."""

    last_hidden_state: torch.Tensor                        # [B, S, H]
    pooler_output: torch.Tensor | None = None              # [B, H]
    prediction_logits: torch.Tensor | None = None          # [B, S, V]
    seq_relationship_logits: torch.Tensor | None = None    # [B, 2]
    loss: torch.Tensor | None = None                       # mlm_loss + nsp_loss (those given labels)
    mlm_loss: torch.Tensor | None = None                   # mean CE over positions whose label != -100
    nsp_loss: torch.Tensor | None = None                   # mean CE of the IsNext(0) / random(1) label


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
    if ignore is not None:
        ids = ids.masked_fill(ids == ignore, low)
    if ids.numel() and (int(ids.min()) < low or int(ids.max()) >= high):
        raise ValueError(f"{name} has values in [{int(ids.min())}, {int(ids.max())}] but must lie in "
                         f"[{low}, {high}): {what_to_do}")


class BertPreTrainedModel(nn.Module):
    """What every BERT model here shares: init, weight tying, backend switches, loading and saving."""

    base_model_prefix = "bert"  # where the encoder sits in state_dict keys ("" for BertModel itself)
    # Heads a checkpoint may carry that this class has no use for: dropped on load instead of an error,
    # so e.g. a BertForPreTraining checkpoint loads into a BertModel.
    unused_checkpoint_prefixes: tuple[str, ...] = ()

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

    def get_input_embeddings(self) -> nn.Embedding:
        """The word-embedding table ``[V, H]``."""
        base = getattr(self, self.base_model_prefix) if self.base_model_prefix else self
        return base.embeddings.word_embeddings

    # --- backends -----------------------------------------------------------------------------------
    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch every layer's attention to "eager", "sdpa" or "fused" (fused -> eager without extension)."""
        resolved = _resolve_implementation(attn_implementation, ATTN_IMPLEMENTATIONS, "attn_implementation")
        for module in self.modules():
            if isinstance(module, BertSelfAttention):
                module.attn_implementation = resolved

    def set_gelu_implementation(self, gelu_implementation: str) -> None:
        """Switch every GELU to "eager" or "fused" (bias+GELU kernel; eager where the extension is absent)."""
        resolved = _resolve_implementation(gelu_implementation, GELU_IMPLEMENTATIONS, "gelu_implementation")
        for module in self.modules():
            if isinstance(module, (BertIntermediate, BertPredictionHeadTransform)):
                module.gelu_implementation = resolved

    @property
    def attn_implementation(self) -> str:
        """The attention backend actually in use."""
        return next(m for m in self.modules() if isinstance(m, BertSelfAttention)).attn_implementation

    @property
    def gelu_implementation(self) -> str:
        """The GELU backend actually in use."""
        return next(m for m in self.modules() if isinstance(m, BertIntermediate)).gelu_implementation

    # --- weights in and out -------------------------------------------------------------------------
    def load_weights(self, state: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Copy an HF-named state dict (NumPy arrays or tensors) into this model, checking every key.

        Names are normalised first (``checkpoint.normalize_keys``: old ``gamma``/``beta``, missing or extra
        ``bert.`` prefix, tied decoder copies, buffers). Raises ``ValueError`` listing missing keys,
        unexpected keys or shape mismatches; heads this class does not have (``unused_checkpoint_prefixes``)
        are dropped, so e.g. a pretraining checkpoint loads into a bare BertModel.
        """
        state = checkpoint.normalize_keys(dict(state))  # "bert."-prefixed, tied copies removed
        if not self.base_model_prefix:
            state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(self.unused_checkpoint_prefixes)}
        own = self.state_dict()
        tied = {name for name in own if ".predictions.decoder." in name}
        missing = sorted(set(own) - tied - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match {type(self).__name__}: missing keys {missing}, unexpected keys "
                f"{unexpected}. Is it a BERT checkpoint with HF parameter names, saved for this model type?")
        wrong = [f"{key}: {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} from the config"
                 for key, value in state.items() if tuple(value.shape) != tuple(own[key].shape)]
        if wrong:
            raise ValueError("the checkpoint's config.json does not match its weights; wrong shapes:\n  "
                             + "\n  ".join(wrong))
        params = dict(self.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(torch.as_tensor(value))
        self.tie_weights()

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, attn_implementation: str = "eager",
                        gelu_implementation: str = "eager", dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu"):
        """Load a checkpoint directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).

        Checkpoints written by ``transformers`` load unchanged. The model is returned in eval mode.
        """
        config = BertConfig.from_pretrained(directory)
        model = cls(config, attn_implementation=attn_implementation, gelu_implementation=gelu_implementation)
        model.load_weights(checkpoint.load_state_dict(directory))
        return model.to(device=device, dtype=dtype).eval()

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
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise ValueError("attention_mask must hold 1 (real token) or 0 (padding) only")


class BertModel(BertPreTrainedModel):
    """The BERT encoder: embeddings, ``num_hidden_layers`` layers and (optionally) the pooler.

    Keys: ``embeddings.*``, ``encoder.layer.{i}.*``, ``pooler.*`` (HF's BertModel). Wrapped as ``bert`` in
    the pretraining / MLM models.
    """

    base_model_prefix = ""
    unused_checkpoint_prefixes = ("cls.",)

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager", *, init_weights: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config, attn_implementation, gelu_implementation)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        if not add_pooling_layer:
            self.unused_checkpoint_prefixes = ("cls.", "pooler.")
        if init_weights:  # a wrapping model (BertForPreTraining, ...) initialises everything once itself
            self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                dropout_seed: int | None = None) -> BertModelOutput:
        """Encode ``input_ids [B, S]``; ``dropout_seed`` fixes the dropout masks in training mode.

        In training mode with ``dropout_seed=None`` a seed is drawn from torch's RNG, so
        ``torch.manual_seed`` makes runs reproducible. In eval mode there is no dropout.
        """
        self._check_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        return self._encode(input_ids, attention_mask, token_type_ids, position_ids,
                            self._dropout_plan(dropout_seed))

    def _dropout_plan(self, dropout_seed: int | None) -> DropoutPlan:
        if not self.training:
            return DropoutPlan(None)
        if dropout_seed is None:
            dropout_seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        return DropoutPlan(int(dropout_seed))

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids,
                dropout: DropoutPlan) -> BertModelOutput:
        batch, seq = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        mask = None if attention_mask is None else AttentionMask(attention_mask)
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, dropout)
        hidden = self.encoder(hidden, mask, dropout)                         # [B, S, H]
        pooled = self.pooler(hidden) if self.pooler is not None else None    # [B, H]
        return BertModelOutput(last_hidden_state=hidden, pooler_output=pooled)


_MLM_LABELS_HELP = "MLM labels are token ids of the original tokens, or -100 where nothing is predicted"


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100.

    A batch with no predicted position has loss 0 and gradient 0 (as in ``minibert.reference.losses``),
    not PyTorch's 0/0 = NaN, so one unlucky batch cannot poison a training run.
    """
    _check_ids("labels", labels, logits.shape[:-1], 0, vocab_size, _MLM_LABELS_HELP, ignore=IGNORE_INDEX)
    total = F.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1).long(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def _masked_lm(predictions: BertLMPredictionHead, hidden: torch.Tensor, labels: torch.Tensor | None,
               vocab_size: int, masked_positions_only: bool):
    """(MLM logits, MLM loss or None) from the last hidden states [B, S, H].

    With ``masked_positions_only`` the vocabulary projection runs only at the N positions whose label is
    not -100 and the logits are [N, V] in row-major (b, s) order, as Google's BERT gathers
    ``masked_lm_positions``: with 15% masking and V ~ 30k this skips most of the head's matmul and the
    largest activation of the model. The loss is the same either way.
    """
    if masked_positions_only:
        if labels is None:
            raise ValueError("masked_positions_only=True needs labels: they say which positions to predict")
        _check_ids("labels", labels, hidden.shape[:2], 0, vocab_size, _MLM_LABELS_HELP, ignore=IGNORE_INDEX)
        predicted = labels != IGNORE_INDEX                     # [B, S]
        hidden, labels = hidden[predicted], labels[predicted]  # [N, H], [N]
    logits = predictions(hidden)                               # [B, S, V] or [N, V]
    return logits, None if labels is None else _mlm_loss(logits, labels, vocab_size)


def _nsp_loss(logits: torch.Tensor, next_sentence_label: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the NSP labels (0 = B follows A, 1 = B is a random sentence)."""
    _check_ids("next_sentence_label", next_sentence_label, logits.shape[:1], 0, 2,
               "NSP labels are 0 (IsNext) or 1 (random sentence), one per sequence")
    return F.cross_entropy(logits, next_sentence_label.long())


class BertForPreTraining(BertPreTrainedModel):
    """BERT with both pretraining heads: masked-LM logits and next-sentence-prediction logits (+ losses)."""

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager"):
        super().__init__(config)
        self.bert = BertModel(config, True, attn_implementation, gelu_implementation, init_weights=False)
        self.cls = BertPreTrainingHeads(config, gelu_implementation)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                next_sentence_label=None, dropout_seed: int | None = None,
                masked_positions_only: bool = False) -> BertModelOutput:
        """Run BERT on ``input_ids [B, S]`` and both heads.

        ``labels [B, S]`` holds the original token id at masked positions and -100 elsewhere;
        ``next_sentence_label [B]`` is 0 (IsNext) or 1 (random). ``loss`` = MLM loss + NSP loss over
        whichever labels are given. ``dropout_seed``: see ``BertModel.forward``. ``masked_positions_only``:
        ``prediction_logits`` only where ``labels != -100``, shape [N, V] (faster pretraining; same loss).
        """
        self._check_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        out = self.bert._encode(input_ids, attention_mask, token_type_ids, position_ids,
                                self.bert._dropout_plan(dropout_seed))
        out.prediction_logits, out.mlm_loss = _masked_lm(self.cls.predictions, out.last_hidden_state, labels,
                                                         self.config.vocab_size, masked_positions_only)
        out.seq_relationship_logits = self.cls.seq_relationship(out.pooler_output)   # [B, 2]
        if next_sentence_label is not None:
            out.nsp_loss = _nsp_loss(out.seq_relationship_logits, next_sentence_label)
        losses = [x for x in (out.mlm_loss, out.nsp_loss) if x is not None]
        out.loss = sum(losses) if losses else None
        return out


class BertForMaskedLM(BertPreTrainedModel):
    """BERT with only the masked-LM head (no pooler, no NSP), as RoBERTa-style pretraining uses."""

    unused_checkpoint_prefixes = ("cls.seq_relationship.", "bert.pooler.")

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager"):
        super().__init__(config)
        self.bert = BertModel(config, False, attn_implementation, gelu_implementation, init_weights=False)
        self.cls = BertOnlyMLMHead(config, gelu_implementation)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                dropout_seed: int | None = None, masked_positions_only: bool = False) -> BertModelOutput:
        """Masked-LM logits ``[B, S, V]`` and, given ``labels`` (-100 = not predicted), the MLM loss.

        Arguments as in ``BertForPreTraining.forward``.
        """
        self._check_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        out = self.bert._encode(input_ids, attention_mask, token_type_ids, position_ids,
                                self.bert._dropout_plan(dropout_seed))
        out.prediction_logits, out.mlm_loss = _masked_lm(self.cls.predictions, out.last_hidden_state, labels,
                                                         self.config.vocab_size, masked_positions_only)
        out.loss = out.mlm_loss
        return out


# ------------------------------------------------------------------------------------------------------
# Fine-tuning heads (Devlin et al., 2018, section 4): sentence classification and SQuAD-style span QA.
# ------------------------------------------------------------------------------------------------------
# The classifier's dropout is the one dropout site outside the encoder. It is numbered as site 0 of
# "layer L" (one past the last encoder layer): a counter range no encoder site uses, shared with
# minibert.reference.heads so both backends drop the same elements.
SITE_CLASSIFIER = 0


@dataclasses.dataclass
class FinetuneOutput:
    """What a fine-tuning model returns; fields a model does not compute are None."""

    logits: torch.Tensor | None = None         # [B, num_labels] (classification)
    start_logits: torch.Tensor | None = None   # [B, S] (question answering)
    end_logits: torch.Tensor | None = None     # [B, S]
    loss: torch.Tensor | None = None


class BertForFinetuning(BertPreTrainedModel):
    """What both fine-tuning models share: encoding, and starting from any BERT checkpoint.

    ``from_pretrained`` accepts a checkpoint of the same model type (everything is loaded), a pretraining
    checkpoint (``cls.*`` dropped, the new head initialised as HF does) or a bare encoder. The names of
    freshly initialised and of dropped parameters are kept in ``newly_initialized`` and ``dropped``, so a
    caller can say what happened (``loading_report``).
    """

    head_prefix = ""  # "classifier." or "qa_outputs."

    def _encode_batch(self, input_ids, attention_mask, token_type_ids, dropout_seed):
        self._check_inputs(input_ids, attention_mask, token_type_ids, None)
        plan = self.bert._dropout_plan(dropout_seed)
        return self.bert._encode(input_ids, attention_mask, token_type_ids, None, plan), plan

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, attn_implementation: str = "eager",
                        gelu_implementation: str = "eager", dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", **config_overrides):
        """Load the encoder (and this head, if the checkpoint has it) from an HF-format directory.

        ``config_overrides`` (``num_labels``, ``id2label``, ``classifier_dropout``, ...) replace fields of
        the checkpoint's config. A checkpoint head whose shape differs from the requested one (say 3
        labels saved, ``num_labels=2`` asked) is an error, not a silent re-initialisation. Returned in
        eval mode.
        """
        config = BertConfig.from_pretrained(directory)
        config = BertConfig.from_dict({**config.to_dict(), **config_overrides})
        model = cls(config, attn_implementation=attn_implementation, gelu_implementation=gelu_implementation)
        state = checkpoint.normalize_keys(dict(checkpoint.load_state_dict(directory)))
        own = model.state_dict()
        model.dropped = sorted(k for k in state if k not in own)
        wrong = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} wanted"
                 for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            hint = (" The checkpoint was fine-tuned with another number of labels: pass its num_labels, or "
                    "start from the pretrained encoder instead." if any(w.startswith(cls.head_prefix)
                                                                     for w in wrong) else "")
            raise ValueError(f"{directory}: weights do not fit {cls.__name__}:\n  " + "\n  ".join(wrong) + hint)
        # The pooler and the head may be missing (a masked-LM checkpoint has no pooler, a pretraining one no
        # head): they keep their fresh init. Anything else missing means this is not a BERT of this config.
        missing = sorted(k for k in own if k not in state
                         and not k.startswith((cls.head_prefix, "bert.pooler.")))
        if missing:
            raise ValueError(f"{directory} is not a BERT checkpoint matching its config.json: the encoder "
                             f"weights {missing[:4]}{' ...' if len(missing) > 4 else ''} are missing")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if key in params:
                    params[key].copy_(torch.as_tensor(value))
        model.newly_initialized = sorted(k for k in own if k not in state)
        return model.to(device=device, dtype=dtype).eval()

    def loading_report(self) -> str:
        """One line saying which parameters ``from_pretrained`` initialised and which it dropped."""
        parts = []
        new, dropped = getattr(self, "newly_initialized", []), getattr(self, "dropped", [])
        if new:
            parts.append(f"initialised {len(new)} new parameter tensors ({', '.join(new)}): "
                         f"they are trained from scratch by fine-tuning")
        if dropped:
            heads = sorted({k.split(".")[0] + "." + k.split(".")[1] if k.startswith("cls.") else k
                            for k in dropped})
            parts.append(f"dropped {len(dropped)} checkpoint tensors this model has no use for "
                         f"({', '.join(heads)})")
        return "; ".join(parts) if parts else "every parameter came from the checkpoint"

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
    unused_checkpoint_prefixes = ("cls.",)

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager"):
        super().__init__(config)
        self.bert = BertModel(config, True, attn_implementation, gelu_implementation, init_weights=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                dropout_seed: int | None = None) -> FinetuneOutput:
        """``logits [B, num_labels]``; with ``labels [B]`` (class ids, or floats for regression) the loss."""
        out, plan = self._encode_batch(input_ids, attention_mask, token_type_ids, dropout_seed)
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

    ``qa_outputs`` Linear(H, 2) maps each final hidden state to a start and an end logit, [B, S] each.
    There is no pooler (HF builds this model without one).
    """

    head_prefix = "qa_outputs."
    unused_checkpoint_prefixes = ("cls.", "bert.pooler.")

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager"):
        super().__init__(config)
        self.bert = BertModel(config, False, attn_implementation, gelu_implementation, init_weights=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, dropout_seed: int | None = None) -> FinetuneOutput:
        """Start and end logits ``[B, S]``; with ``start_positions``/``end_positions [B]`` the span loss.

        loss = (CE(start) + CE(end)) / 2. As in HF, every position gets logits (padding and question
        tokens too): post-processing only ever picks spans of context tokens.
        """
        out, _ = self._encode_batch(input_ids, attention_mask, token_type_ids, dropout_seed)
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


def _show_your_work() -> None:
    """``python -m minibert.modeling``: run a tiny random BERT and print each stage's shape and backend."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    model = BertForPreTraining(config, attn_implementation="fused", gelu_implementation="fused").eval()
    input_ids = torch.randint(1, config.vocab_size, (2, 8))
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0  # the second sequence is 5 tokens + 3 padding
    print(f"backends: attention={model.attn_implementation}, gelu={model.gelu_implementation} "
          f"(ops: {ops.backend_info()})")
    print("input_ids              ", tuple(input_ids.shape))
    embeddings = model.bert.embeddings(input_ids, torch.zeros_like(input_ids),
                                       torch.arange(8).expand(2, 8), DropoutPlan(None))
    print("embeddings             ", tuple(embeddings.shape))
    out = model(input_ids, attention_mask, labels=torch.where(torch.rand(2, 8) < 0.3, input_ids, -100),
                next_sentence_label=torch.tensor([0, 1]))
    for name in ("last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits"):
        print(f"{name:<23}", tuple(getattr(out, name).shape))
    print(f"loss = mlm {out.mlm_loss.item():.4f} + nsp {out.nsp_loss.item():.4f} = {out.loss.item():.4f} "
          f"(untrained: about ln(V) = {np.log(config.vocab_size):.2f} + ln 2 = {np.log(2):.2f})")


if __name__ == "__main__":
    _show_your_work()
