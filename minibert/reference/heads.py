"""The fine-tuning heads in NumPy, forward and hand-written backward, on top of the reference BertModel.

    model = BertForSequenceClassification(BertConfig(..., num_labels=3), dtype=np.float64)
    out = model.forward(input_ids, token_type_ids, attention_mask, labels=labels, training=True)
    grads = model.backward()          # {HF parameter name: dL/dparam}, keys and shapes as model.params

* ``BertForSequenceClassification``: logits = classifier(dropout(pooler_output)), [B, num_labels];
  cross-entropy of class ids, or, with ``num_labels == 1``, the mean squared error of float targets.
* ``BertForQuestionAnswering``: [start, end] logits = qa_outputs(last_hidden_state), [B, S] each;
  loss = (CE(start) + CE(end)) / 2 where a position >= S (an answer cut off by the window) is ignored.

Parameters are one dict with HF names (``bert.*``, ``classifier.*`` / ``qa_outputs.*``), so they load
from and compare with ``minibert.modeling``'s models key by key. The classifier's dropout uses the counter
range of site 0 of "layer L" (one past the last encoder layer), exactly as the torch model does.
"""
from __future__ import annotations

import numpy as np

from minibert import checkpoint
from minibert.config import BertConfig
from minibert.reference import blocks, losses
from minibert.reference import layers as L
from minibert.reference.model import BertModel, init_params
from minibert.rng import SITE_CLASSIFIER, dropout_site_offset


def _init_params(config: BertConfig, head: str, out_features: int, pooler: bool, dtype,
                 seed: int) -> dict[str, np.ndarray]:
    """HF's init of the encoder (optionally without pooler) and a Linear(E, out_features) head."""
    shapes = checkpoint.expected_shapes(config, pretraining_heads=False)
    if not pooler:
        shapes = {k: v for k, v in shapes.items() if not k.startswith("bert.pooler.")}
    shapes[head + ".weight"], shapes[head + ".bias"] = (out_features, config.hidden_size), (out_features,)
    return init_params(config, dtype, seed, shapes)


class _Finetuning:
    """Parameter handling both heads share: init or check ``params``, one dtype for everything."""

    head, pooler = "", True

    def __init__(self, config: BertConfig, params: dict | None, dtype, seed: int, out_features: int):
        self.config, self.dtype = config, np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        wanted = _init_params(config, self.head, out_features, self.pooler, self.dtype, seed)
        if params is None:
            self.params = wanted
        else:
            params = checkpoint.normalize_keys(dict(params))
            missing, unexpected = sorted(set(wanted) - set(params)), sorted(set(params) - set(wanted))
            wrong = [k for k in wanted if k in params and tuple(np.shape(params[k])) != wanted[k].shape]
            if missing or unexpected or wrong:
                raise ValueError(f"params do not fit {type(self).__name__} of this config: missing {missing}, "
                                 f"unexpected {unexpected}, wrong shapes {wrong}")
            self.params = {k: np.array(params[k], dtype=self.dtype) for k in wanted}
        self._cache = None


class BertForSequenceClassification(_Finetuning):
    """BERT + dropout + ``classifier`` Linear(H, num_labels) on the pooled [CLS] vector."""

    head = "classifier"

    def __init__(self, config: BertConfig, params: dict | None = None, dtype=np.float32, seed: int = 0):
        super().__init__(config, params, dtype, seed, config.num_labels)
        self.bert = BertModel(config, self.params, prefix="bert.")

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, training=False,
                dropout_seed=0) -> dict:
        """``logits`` [B, num_labels] and, given ``labels`` [B], ``loss`` (CE of ids, or MSE if 1 label)."""
        cfg = self.config
        _, pooled = self.bert.forward(input_ids, token_type_ids, attention_mask, training, dropout_seed)
        p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        offset = dropout_site_offset(cfg.num_hidden_layers, SITE_CLASSIFIER, pooled.size)
        dropped, c_drop = L.dropout_forward(pooled, p if training else 0.0, dropout_seed, offset)
        logits, c_dense = blocks.dense_forward(self.params, "classifier", dropped)   # [B, num_labels]
        loss, c_loss = None, None
        if labels is not None:
            if cfg.num_labels == 1:  # regression: mean of (prediction - target)^2
                residual = logits[:, 0] - np.asarray(labels, dtype=self.dtype)        # [B]
                loss, c_loss = self.dtype.type((residual * residual).mean()), ("mse", residual)
            else:
                loss, c_loss = losses.cross_entropy_forward(logits, labels)
        self._cache = (c_drop, c_dense, c_loss, logits.shape)
        return {"logits": logits, "loss": loss}

    def backward(self) -> dict[str, np.ndarray]:
        """Gradients of the last forward's ``loss`` for every parameter (a dict keyed like ``params``)."""
        if self._cache is None or self._cache[2] is None:
            raise RuntimeError("backward() needs a forward() given labels, so that there is a loss")
        c_drop, c_dense, c_loss, shape = self._cache
        if c_loss[0] == "mse":
            residual = c_loss[1]
            dlogits = np.zeros(shape, self.dtype)
            dlogits[:, 0] = 2.0 * residual / residual.size       # d mean(r^2) / d r
        else:
            dlogits = losses.cross_entropy_backward(self.dtype.type(1.0), c_loss)
        grads: dict[str, np.ndarray] = {}
        dpooled = L.dropout_backward(blocks.dense_backward(dlogits, c_dense, "classifier", grads), c_drop)
        return self.bert.backward(None, dpooled, grads)


class BertForQuestionAnswering(_Finetuning):
    """BERT + ``qa_outputs`` Linear(H, 2): a start and an end logit for every token. No pooler, as HF."""

    head, pooler = "qa_outputs", False

    def __init__(self, config: BertConfig, params: dict | None = None, dtype=np.float32, seed: int = 0):
        super().__init__(config, params, dtype, seed, 2)
        # The NumPy BertModel always computes a pooled vector. QA has no pooler, so the encoder runs with
        # a zero pooler that is not a parameter of this model; its output is never used (d_pooled = None).
        E = config.hidden_size
        encoder_params = dict(self.params)  # the same arrays: in-place updates and perturbations reach it
        encoder_params["bert.pooler.dense.weight"] = np.zeros((E, E), self.dtype)
        encoder_params["bert.pooler.dense.bias"] = np.zeros(E, self.dtype)
        self.bert = BertModel(config, encoder_params, prefix="bert.")

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None,
                end_positions=None, training=False, dropout_seed=0) -> dict:
        """``start_logits``/``end_logits`` [B, S]; with both position arrays [B] the span ``loss``."""
        h, _ = self.bert.forward(input_ids, token_type_ids, attention_mask, training, dropout_seed)
        logits, c_dense = blocks.dense_forward(self.params, "qa_outputs", h)         # [B, S, 2]
        out = {"start_logits": logits[..., 0], "end_logits": logits[..., 1], "loss": None}
        c_losses = None
        if start_positions is not None and end_positions is not None:
            S = logits.shape[1]
            c_losses, total = [], 0.0
            for i, positions in enumerate((start_positions, end_positions)):
                positions = np.asarray(positions)
                # HF ignores positions at or past the end of the sequence (clamped to S, ignore_index=S).
                kept = np.where(positions >= S, losses.IGNORE_INDEX, positions)
                loss, cache = losses.cross_entropy_forward(logits[..., i], kept)
                total, c_losses = total + loss, c_losses + [cache]
            out["loss"] = self.dtype.type(total / 2)
        self._cache = (c_dense, c_losses)
        return out

    def backward(self) -> dict[str, np.ndarray]:
        """Gradients of the last forward's span ``loss`` for every parameter."""
        if self._cache is None or self._cache[1] is None:
            raise RuntimeError("backward() needs a forward() given start_positions and end_positions")
        c_dense, c_losses = self._cache
        half = self.dtype.type(0.5)  # loss = (start CE + end CE) / 2
        dlogits = np.stack([losses.cross_entropy_backward(half, c) for c in c_losses], axis=-1)  # [B, S, 2]
        grads: dict[str, np.ndarray] = {}
        dh = blocks.dense_backward(dlogits, c_dense, "qa_outputs", grads)
        grads = self.bert.backward(dh, None, grads)
        return {k: grads[k] for k in self.params}
