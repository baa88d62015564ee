"""BERT's sub-modules in PyTorch: embeddings, self-attention, feed-forward, encoder, pooler, MLM/NSP heads.

The twin of ``minibert.reference.blocks``; ``minibert.modeling`` builds the models from these. Module and
attribute names copy HuggingFace's BERT exactly (``attention.self.query``, ``cls.predictions.bias``, ...),
so the models' ``state_dict()`` keys are HF's.

Two things differ from a plain port, both for the project's contracts (docs/design.md):

* **Backends are a switch.** ``attn_implementation`` picks how attention is computed ("eager" matmul +
  softmax, "sdpa" = ``F.scaled_dot_product_attention``, "fused" = our extension's flash-style kernel),
  ``gelu_implementation`` picks how the feed-forward activation is computed ("eager" or "fused" bias+GELU),
  and ``layernorm_implementation`` how each LayerNorm is computed ("eager", or "fused": the residual add,
  the dropout before it and the LayerNorm in one kernel), and ``loss_implementation`` how the MLM head's
  vocabulary projection and cross-entropy are computed ("eager", or "fused": ``ops.linear_cross_entropy``,
  see ``minibert.modeling``). All give the same numbers. The eager forms are ``minibert.ops.eager``'s, the ones the ops fall back to.
* **Dropout is reproducible.** Every dropout site draws its mask from the counter-based hash of
  ``minibert.rng`` at the (seed, offset) of ``minibert.rng``'s dropout-site table (``DropoutPlan``), so the
  model and the NumPy reference drop exactly the same elements for the same ``dropout_seed``.

Shapes: B batch, S sequence, H heads, D head size (E / H), E hidden size, F intermediate size, V vocabulary.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from minibert import ops
from minibert.config import BertConfig
from minibert.ops.eager import AttentionMask
from minibert.rng import (EMBEDDINGS_LAYER, SITE_ATTENTION_OUTPUT, SITE_ATTENTION_PROBS, SITE_EMBEDDINGS,
                          SITE_FFN_OUTPUT, dropout_site_offset)

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "fused")
GELU_IMPLEMENTATIONS = ("eager", "fused")
LAYERNORM_IMPLEMENTATIONS = ("eager", "fused")
LOSS_IMPLEMENTATIONS = ("eager", "fused")


def resolve_implementation(requested: str, choices: tuple[str, ...], what: str) -> str:
    """Validate a backend name; "fused" quietly means "eager" where the compiled extension is absent."""
    if requested not in choices:
        raise ValueError(f"{what}={requested!r} is not one of {choices}")
    if requested == "fused" and not ops.is_available():
        return "eager"  # ops.backend_info() says why the extension is missing
    return requested


@dataclasses.dataclass(frozen=True)
class PositionRows:
    """Some of a batch's B*S positions: ``index`` [R], flat row-major indices ``b * S + s``, ascending.

    The last encoder layer can run at these positions only (``BertLayer.forward``): the ones the losses
    read, when nothing else reads the layer's output. ``count`` is B*S, which the dropout counters need.
    """

    index: torch.Tensor
    count: int


class DropoutPlan:
    """Counter-hash dropout for one forward pass.

    ``seed`` is None when dropout is off (evaluation). A site is named by (layer, site) as in
    ``minibert.rng``'s table; each owns a disjoint counter range, so the same element of the same site is
    dropped here and in the NumPy reference.
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

    def apply_rows(self, x: torch.Tensor, p: float, layer: int, site: int, rows: PositionRows) -> torch.Tensor:
        """``apply`` for the rows ``rows`` of a [B*S, E] tensor, given only those rows ``x`` [R, E].

        Each element keeps the counter of its place in the whole tensor, so it is dropped exactly when the
        whole tensor's dropout would drop it: the keep-mask of all B*S rows is drawn (the dropout of a
        tensor of ones: 0 or 1/(1-p)) and the rows are picked from it. Drawing hashes is cheap next to the
        work the rows save.
        """
        if not self.active or p == 0.0:
            return x
        keep = ops.dropout(x.new_ones(rows.count, x.shape[-1]), p, self.seed,
                           dropout_site_offset(layer, site, rows.count * x.shape[-1]))
        return x * keep[rows.index]


class BertLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters, same state-dict keys) whose post-LN residual form can be fused.

    ``layernorm_implementation`` is "eager" (torch ops) or "fused" (``minibert.ops.residual_dropout_layernorm``,
    which reads the sub-layer output and the residual once and writes only the normalised output). The
    fused kernel needs one dtype throughout; mixed dtypes (autocast: a bfloat16 sub-layer output, float32
    parameters) take the eager path, which promotes as torch does.
    """

    layernorm_implementation = "eager"

    def _fused(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        return (self.layernorm_implementation == "fused" and x.dtype == self.weight.dtype
                and (residual is None or residual.dtype == x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused(x, None):
            return ops.residual_dropout_layernorm(x, None, self.weight, self.bias, self.eps)
        return super().forward(x)

    def residual_forward(self, x: torch.Tensor, residual: torch.Tensor, dropout: "DropoutPlan", p: float,
                         layer: int, site: int) -> torch.Tensor:
        """``LayerNorm(residual + dropout(x))``, the dropout at (layer, site) of ``dropout``'s plan."""
        if not self._fused(x, residual):
            return self(dropout.apply(x, p, layer, site) + residual)
        seed, offset = 0, 0
        if not dropout.active or p == 0.0:
            p = 0.0
        else:
            seed, offset = dropout.seed, dropout_site_offset(layer, site, x.numel())
        return ops.residual_dropout_layernorm(x, residual, self.weight, self.bias, self.eps, p, seed, offset)


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout: [B, S] ids -> [B, S, E]."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        # padding_idx as in HF: the pad row starts at zero and gets no gradient from the lookup.
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, token_type_ids, position_ids, dropout: DropoutPlan) -> torch.Tensor:
        embeddings = (self.word_embeddings(input_ids)
                      + self.token_type_embeddings(token_type_ids)
                      + self.position_embeddings(position_ids))             # [B, S, E]
        embeddings = self.LayerNorm(embeddings)
        return dropout.apply(embeddings, self.config.hidden_dropout_prob, EMBEDDINGS_LAYER, SITE_EMBEDDINGS)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: project to q, k, v, attend per head, merge heads. [B,S,E] -> [B,S,E]."""

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
        self.attn_implementation = resolve_implementation(attn_implementation, ATTN_IMPLEMENTATIONS,
                                                           "attn_implementation")

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, S, D]

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
            # SDPA draws its dropout mask from torch's own RNG, which cannot reproduce our counter-hash
            # masks, so training with dropout takes the eager path instead.
            implementation = "eager"
        if implementation == "sdpa":  # picks a flash / memory-efficient kernel on GPU
            attn_mask = None if mask is None else mask.additive(q.dtype)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
            context = context if mask is None else context * mask.has_keys  # all-padding rows: zeros
        elif implementation == "fused":
            context = ops.attention(q, k, v, attention_mask=None if mask is None else mask.key_keep,
                                    scale=self.scale, dropout_p=p, seed=seed, offset=offset)
        else:
            context = ops.eager.attention(q, k, v, mask, self.scale, p, seed, offset, dropout=ops.dropout)
        return context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)  # [B, S, E]


class BertResidualOutput(nn.Module):
    """Projection back to the hidden size, dropout, then the post-LN residual: LayerNorm(x + dropout(W a)).

    Both sub-blocks of a layer end this way: after attention (``attention.output``: [B, S, E] -> [B, S, E],
    dropout site SITE_ATTENTION_OUTPUT) and after the feed-forward expansion (``output``: [B, S, F] ->
    [B, S, E], site SITE_FFN_OUTPUT). HF names the two classes BertSelfOutput and BertOutput; only the
    attribute names reach the state dict, so one class serves both.
    """

    def __init__(self, config: BertConfig, layer_index: int, in_features: int, site: int):
        super().__init__()
        self.config = config
        self.layer_index = layer_index
        self.site = site
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, residual, dropout: DropoutPlan, rows: PositionRows | None = None) -> torch.Tensor:
        """``LayerNorm(residual + dropout(dense(hidden)))``. With ``rows``, ``hidden`` and ``residual`` are
        those rows of the whole [B*S, ...] tensors and dropout drops what it would drop there."""
        p = self.config.hidden_dropout_prob
        if rows is None:
            return self.LayerNorm.residual_forward(self.dense(hidden), residual, dropout, p, self.layer_index,
                                                   self.site)
        dropped = dropout.apply_rows(self.dense(hidden), p, self.layer_index, self.site, rows)
        return self.LayerNorm.residual_forward(dropped, residual, dropout, 0.0, self.layer_index, self.site)


class BertAttention(nn.Module):
    """Self-attention plus its output block (HF nests them as ``attention.self`` / ``attention.output``)."""

    def __init__(self, config: BertConfig, layer_index: int, attn_implementation: str = "eager"):
        super().__init__()
        self.self = BertSelfAttention(config, layer_index, attn_implementation)
        self.output = BertResidualOutput(config, layer_index, config.hidden_size, SITE_ATTENTION_OUTPUT)

    def forward(self, hidden_states, mask: AttentionMask | None, dropout: DropoutPlan) -> torch.Tensor:
        return self.output(self.self(hidden_states, mask, dropout), hidden_states, dropout)


class DenseGelu(nn.Module):
    """GELU(dense(x)), the activation either eager or our fused bias+GELU kernel.

    Not a module of its own in HF: the subclasses below hold ``dense`` where HF's classes do. The "fused"
    form does the matmul without bias and adds the bias inside the GELU kernel.
    """

    def __init__(self, config: BertConfig, out_features: int, gelu_implementation: str = "eager"):
        super().__init__()
        self.approximate = config.gelu_approximate
        self.dense = nn.Linear(config.hidden_size, out_features)
        self.gelu_implementation = resolve_implementation(gelu_implementation, GELU_IMPLEMENTATIONS,
                                                           "gelu_implementation")

    def dense_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(dense(x)): [..., E] -> [..., out_features]."""
        if self.gelu_implementation == "fused":
            h = F.linear(x, self.dense.weight)  # under autocast already bf16/fp16 while the bias is not
            return ops.bias_gelu(h, self.dense.bias.to(h.dtype), approximate=self.approximate)
        return ops.eager.gelu(self.dense(x), self.approximate)


class BertIntermediate(DenseGelu):
    """The feed-forward expansion with GELU: [B, S, E] -> [B, S, F]."""

    def __init__(self, config: BertConfig, gelu_implementation: str = "eager"):
        super().__init__(config, config.intermediate_size, gelu_implementation)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_gelu(hidden_states)


class BertLayer(nn.Module):
    """One encoder layer: self-attention block, then feed-forward block, each with a residual + LayerNorm."""

    def __init__(self, config: BertConfig, layer_index: int, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager"):
        super().__init__()
        self.attention = BertAttention(config, layer_index, attn_implementation)
        self.intermediate = BertIntermediate(config, gelu_implementation)
        self.output = BertResidualOutput(config, layer_index, config.intermediate_size, SITE_FFN_OUTPUT)

    def forward(self, hidden_states, mask: AttentionMask | None, dropout: DropoutPlan,
                rows: PositionRows | None = None) -> torch.Tensor:
        """[B, S, E] -> [B, S, E]; with ``rows``, -> [R, E]: the output at those positions only.

        Everything after attention works on each position alone (a dense layer, GELU, dropout, LayerNorm),
        so when only some positions of the output are read, only they need it. Attention itself still runs
        at every position, since every position is a key the kept rows attend to.
        """
        if rows is None:
            attention_output = self.attention(hidden_states, mask, dropout)
            return self.output(self.intermediate(attention_output), attention_output, dropout)
        context = self.attention.self(hidden_states, mask, dropout)                 # [B, S, E]
        width = hidden_states.shape[-1]
        attention_output = self.attention.output(context.reshape(-1, width)[rows.index],
                                                 hidden_states.reshape(-1, width)[rows.index], dropout, rows)
        return self.output(self.intermediate(attention_output), attention_output, dropout, rows)  # [R, E]


class BertEncoder(nn.Module):
    """``num_hidden_layers`` BertLayers applied in turn (``encoder.layer.{i}``)."""

    def __init__(self, config: BertConfig, attn_implementation: str = "eager",
                 gelu_implementation: str = "eager"):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, i, attn_implementation, gelu_implementation)
                                   for i in range(config.num_hidden_layers))

    def forward(self, hidden_states, mask: AttentionMask | None, dropout: DropoutPlan,
                rows: PositionRows | None = None) -> torch.Tensor:
        """[B, S, E] -> [B, S, E], or [R, E] with ``rows``: the last layer at those positions only."""
        last = len(self.layer) - 1  # a config has at least one layer
        for i, layer in enumerate(self.layer):
            hidden_states = layer(hidden_states, mask, dropout, rows if i == last else None)
        return hidden_states


class BertPooler(nn.Module):
    """tanh(dense(h[CLS])): the sentence vector NSP and classifiers read. [B, S, E] -> [B, E]."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.pool(hidden_states[:, 0])

    def pool(self, cls_states: torch.Tensor) -> torch.Tensor:
        """tanh(dense(h)) of the [CLS] states alone: [B, E] -> [B, E]."""
        return torch.tanh(self.dense(cls_states))


class BertPredictionHeadTransform(DenseGelu):
    """The MLM head's dense -> GELU -> LayerNorm before the vocabulary projection: [B,S,E] -> [B,S,E]."""

    def __init__(self, config: BertConfig, gelu_implementation: str = "eager"):
        super().__init__(config, config.hidden_size, gelu_implementation)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense_gelu(hidden_states))


class BertLMPredictionHead(nn.Module):
    """MLM logits: transform, then project onto the vocabulary with the TIED word-embedding matrix.

    ``decoder.weight`` is the very Parameter ``bert.embeddings.word_embeddings.weight`` (Press & Wolf,
    2017; BERT does this) and ``decoder.bias`` is the very Parameter ``bias``, as in HF: both keys appear in
    ``state_dict()`` like HF's, while a saved checkpoint stores each tensor once. [B,S,E] -> [B,S,V].
    """

    loss_implementation = "eager"  # how the model computes logits + MLM loss from this head (minibert.modeling)

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


class BertPreTrainingHeads(BertOnlyMLMHead):
    """``cls`` of BertForPreTraining: MLM head (``cls.predictions``) + NSP head (``cls.seq_relationship``)."""

    def __init__(self, config: BertConfig, gelu_implementation: str = "eager"):
        super().__init__(config, gelu_implementation)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)  # 0 = IsNext, 1 = random sentence
