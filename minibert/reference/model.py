"""BertModel and BertForPreTraining in NumPy: forward, hand-written backward, HF checkpoints.

    model = BertForPreTraining(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64))
    out = model.forward(input_ids, masked_lm_labels=labels, next_sentence_label=nsp, training=True)
    grads = model.backward()      # {HF parameter name: dL/dparam}, same keys and shapes as model.params

Parameters live in one dict keyed by HF names (``bert.embeddings.word_embeddings.weight``, ...), Linear
weights ``[out, in]``, so ``from_pretrained`` reads a ``transformers`` checkpoint and ``save_pretrained``
writes one ``transformers`` loads.

Dropout sites and their RNG counters
------------------------------------
A training forward uses one ``dropout_seed``; each dropout site draws its mask from the counter range
``minibert.rng.dropout_site_offset(layer, site, numel)`` gives it (the site table is in ``minibert.rng``),
so no two sites share a counter and the torch model, which uses the same table, gets the same masks.
"""
from __future__ import annotations

import os

import numpy as np

from minibert import checkpoint
from minibert.config import BertConfig
from minibert.reference import blocks
from minibert.reference import losses
from minibert.rng import (EMBEDDINGS_LAYER, SITE_ATTENTION_OUTPUT, SITE_ATTENTION_PROBS, SITE_EMBEDDINGS,
                          SITE_FFN_OUTPUT, dropout_site_offset)


def load_params(directory: str | os.PathLike, dtype, pretraining_heads: bool, model_name: str):
    """(config, params, LoadReport) of an HF checkpoint directory, under ``minibert.checkpoint``'s one policy.

    config.json is checked against the weights' headers before any tensor is read; missing pretraining
    heads (``cls.*``) get BERT's fresh initialisation and tensors the model has no place for are dropped,
    both reported (``checkpoint.match_weights``).
    """
    config = BertConfig.from_pretrained(directory)
    state = checkpoint.load_state_dict(directory, config)
    expected = checkpoint.expected_shapes(config, pretraining_heads=pretraining_heads)
    report = checkpoint.match_weights({k: v.shape for k, v in state.items()}, expected,
                                      ("cls.",) if pretraining_heads else (), os.fspath(directory), model_name)
    params = {k: np.asarray(state[k], dtype=dtype) for k in expected if k in state}
    params.update(init_params(config, dtype, shapes={k: expected[k] for k in report.newly_initialized}))
    return config, params, report


def init_params(config: BertConfig, dtype=np.float32, seed: int = 0,
                shapes: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """BERT's initialisation for every BertForPreTraining parameter (Devlin et al.'s ``create_initializer``):
    weights and embeddings ~ normal(0, initializer_range), biases 0, LayerNorm gamma 1 and beta 0.

    ``shapes`` ({HF name: shape}) initialises another parameter set the same way (a fine-tuning model's).
    """
    gen = np.random.default_rng(seed)
    params = {}
    for name, shape in (checkpoint.expected_shapes(config) if shapes is None else shapes).items():
        if "LayerNorm" in name:
            value = np.ones(shape) if name.endswith(".weight") else np.zeros(shape)
        elif name.endswith(".bias"):
            value = np.zeros(shape)
        else:
            value = gen.normal(0.0, config.initializer_range, size=shape)
        params[name] = value.astype(dtype)
    return params


class BertModel:
    """The encoder: embeddings, ``num_hidden_layers`` post-LN layers, pooler.

    ``params`` is the shared parameter dict; ``prefix`` is ``"bert."`` inside BertForPreTraining (HF's
    naming) or ``""`` for a bare BertModel's names.
    """

    load_report: checkpoint.LoadReport | None = None  # set by from_pretrained

    def __init__(self, config: BertConfig, params: dict[str, np.ndarray], prefix: str = "bert."):
        self.config, self.params, self.prefix = config, params, prefix
        self._cache = None

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dtype=np.float32) -> "BertModel":
        """Load the encoder of an HF checkpoint directory: a bare BertModel's (names without ``bert.``) or
        a model with heads (the ``cls.*`` heads are dropped, see ``load_report``). See ``load_params``."""
        config, params, report = load_params(directory, dtype, pretraining_heads=False, model_name=cls.__name__)
        model = cls(config, params, prefix="bert.")
        model.load_report = report
        return model

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, training=False, dropout_seed=0):
        """input_ids, token_type_ids, attention_mask: int [B, S] -> (last_hidden_state [B, S, E],
        pooler_output [B, E]). Defaults: token type 0 everywhere, every position attended."""
        cfg, p = self.config, self.prefix
        input_ids, token_type_ids, attention_mask = _check_inputs(cfg, input_ids, token_type_ids,
                                                                  attention_mask)
        B, S = input_ids.shape
        E = cfg.hidden_size
        p_hidden = cfg.hidden_dropout_prob if training else 0.0
        h, c_emb = blocks.embeddings_forward(
            self.params, p + "embeddings", input_ids, token_type_ids, cfg.layer_norm_eps, p_hidden,
            dropout_seed, dropout_site_offset(EMBEDDINGS_LAYER, SITE_EMBEDDINGS, B * S * E))
        c_layers = []
        for i in range(cfg.num_hidden_layers):
            offsets = (dropout_site_offset(i, SITE_ATTENTION_PROBS, B * cfg.num_attention_heads * S * S),
                       dropout_site_offset(i, SITE_ATTENTION_OUTPUT, B * S * E),
                       dropout_site_offset(i, SITE_FFN_OUTPUT, B * S * E))
            h, c = blocks.encoder_layer_forward(self.params, f"{p}encoder.layer.{i}", h, attention_mask,
                                                cfg, training, dropout_seed, offsets)
            c_layers.append(c)
        pooled, c_pool = blocks.pooler_forward(self.params, p + "pooler", h)
        self._cache = (c_emb, c_layers, c_pool)
        return h, pooled

    def backward(self, d_last_hidden, d_pooled, grads: dict | None = None) -> dict[str, np.ndarray]:
        """Gradients of every encoder parameter given dL/d last_hidden_state and dL/d pooler_output
        (either may be None for "unused"); accumulated into ``grads`` (returned)."""
        if self._cache is None:
            raise RuntimeError("call forward() before backward()")
        c_emb, c_layers, c_pool = self._cache
        grads = {} if grads is None else grads
        _, h_shape, _, pooled = c_pool
        dh = np.zeros(h_shape, pooled.dtype) if d_last_hidden is None else d_last_hidden
        if d_pooled is not None:
            dh = dh + blocks.pooler_backward(d_pooled, c_pool, grads)
        for c in reversed(c_layers):
            dh = blocks.encoder_layer_backward(dh, c, grads)
        blocks.embeddings_backward(dh, c_emb, grads)
        return grads


def _check_inputs(cfg, input_ids, token_type_ids, attention_mask):
    """Validate and default the integer inputs; every problem raises a ValueError that says what to fix."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or not np.issubdtype(input_ids.dtype, np.integer):
        raise ValueError(f"input_ids must be an integer array [batch, seq], got {input_ids.dtype} "
                         f"{input_ids.shape}")
    B, S = input_ids.shape
    if S > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {S} exceeds max_position_embeddings="
                         f"{cfg.max_position_embeddings}; truncate or split the input")
    token_type_ids = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    for name, a in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
        if a.shape != (B, S):
            raise ValueError(f"{name} must have the shape of input_ids {(B, S)}, got {a.shape}")
    if not np.isin(attention_mask, (0, 1)).all():
        raise ValueError("attention_mask must hold 1 (attend) or 0 (padding) only")
    return input_ids, token_type_ids, attention_mask


class BertForPreTraining:
    """BERT with its two pretraining heads: masked LM (decoder tied to the word embeddings) and NSP.

    ``params``: a dict of HF-named arrays (checked against ``config``), or None for BERT's random init
    drawn with ``seed``. All arithmetic runs in ``dtype`` (float32 or float64).
    """

    load_report: checkpoint.LoadReport | None = None  # set by from_pretrained

    def __init__(self, config: BertConfig, params: dict | None = None, dtype=np.float32, seed: int = 0):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.config = config
        if params is None:
            self.params = init_params(config, self.dtype, seed)
        else:
            checkpoint.check_state_dict(params, config)
            self.params = {k: np.array(v, dtype=self.dtype) for k, v in params.items()}
        self.bert = BertModel(config, self.params, prefix="bert.")
        self._cache = None

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, masked_lm_labels=None,
                next_sentence_label=None, training=False, dropout_seed=0) -> dict:
        """Run the model; with ``training=True`` every dropout site is on (seeded by ``dropout_seed``).

        Returns ``last_hidden_state`` [B, S, E], ``pooler_output`` [B, E], ``prediction_logits`` [B, S, V],
        ``seq_relationship_logits`` [B, 2], and the losses: ``mlm_loss`` (given ``masked_lm_labels`` [B, S],
        -100 = not predicted), ``nsp_loss`` (given ``next_sentence_label`` [B]) and ``loss``, their sum
        over whichever were given (None when neither was).
        """
        cfg = self.config
        h, pooled = self.bert.forward(input_ids, token_type_ids, attention_mask, training, dropout_seed)
        mlm_logits, c_mlm = blocks.mlm_head_forward(self.params, "bert.embeddings.word_embeddings.weight", h,
                                                    cfg.gelu_approximate, cfg.layer_norm_eps)
        nsp_logits, c_nsp = blocks.nsp_head_forward(self.params, pooled)
        out = {"last_hidden_state": h, "pooler_output": pooled, "prediction_logits": mlm_logits,
               "seq_relationship_logits": nsp_logits, "mlm_loss": None, "nsp_loss": None, "loss": None}
        c_mlm_loss = c_nsp_loss = None
        if masked_lm_labels is not None:
            out["mlm_loss"], c_mlm_loss = losses.cross_entropy_forward(mlm_logits, masked_lm_labels)
        if next_sentence_label is not None:
            out["nsp_loss"], c_nsp_loss = losses.cross_entropy_forward(nsp_logits, next_sentence_label)
        given = [out[k] for k in ("mlm_loss", "nsp_loss") if out[k] is not None]
        if given:
            out["loss"] = sum(given)
        self._cache = (c_mlm, c_nsp, c_mlm_loss, c_nsp_loss, mlm_logits.shape, nsp_logits.shape)
        return out

    def backward(self) -> dict[str, np.ndarray]:
        """Gradients of the last forward's ``loss`` for every parameter: a dict keyed like ``params``."""
        if self._cache is None or (self._cache[2] is None and self._cache[3] is None):
            raise RuntimeError("backward() needs a forward() given masked_lm_labels and/or "
                               "next_sentence_label, so that there is a loss to differentiate")
        c_mlm, c_nsp, c_mlm_loss, c_nsp_loss, mlm_shape, nsp_shape = self._cache
        one = self.dtype.type(1.0)
        # A head whose loss was not asked for gets a zero gradient, so every parameter key is present.
        d_mlm = (losses.cross_entropy_backward(one, c_mlm_loss) if c_mlm_loss is not None
                 else np.zeros(mlm_shape, self.dtype))
        d_nsp = (losses.cross_entropy_backward(one, c_nsp_loss) if c_nsp_loss is not None
                 else np.zeros(nsp_shape, self.dtype))
        grads: dict[str, np.ndarray] = {}
        dh = blocks.mlm_head_backward(d_mlm, c_mlm, grads)
        d_pooled = blocks.nsp_head_backward(d_nsp, c_nsp, grads)
        return self.bert.backward(dh, d_pooled, grads)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dtype=np.float32) -> "BertForPreTraining":
        """Load an HF-layout checkpoint directory (config.json + model.safetensors or pytorch_model.bin).

        Old ``gamma``/``beta`` names and bare-BertModel checkpoints (no ``bert.`` prefix) are accepted; a
        bare encoder's missing heads get a fresh initialisation, said in ``load_report`` (``load_params``).
        """
        config, params, report = load_params(directory, dtype, pretraining_heads=True, model_name=cls.__name__)
        model = cls(config, params, dtype=dtype)
        model.load_report = report
        return model

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (atomically) in the layout ``transformers`` loads."""
        self.config.save_pretrained(directory)
        checkpoint.save_state_dict(self.params, directory)
