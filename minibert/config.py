"""The one configuration object shared by every backend.

Field names are exactly those of HuggingFace's ``config.json`` for BERT, so a config written by
``transformers`` loads here and ours loads there. Defaults are BERT-Base's (Devlin et al., 2018, sec. 3).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from minibert.files import atomic_write_text, read_json

# The activations BERT checkpoints name in config.json, mapped to the GELU form they mean.
# "gelu" is the exact erf form the original TF code used; "gelu_new"/"gelu_tanh"/"gelu_pytorch_tanh"
# are the tanh approximation (Hendrycks & Gimpel, 2016, eq. 2).
GELU_FORMS = {"gelu": "none", "gelu_new": "tanh", "gelu_tanh": "tanh", "gelu_pytorch_tanh": "tanh"}

# Fields that are sizes: positive integers (a JSON 64.0 or true is refused, not rounded or read as 1).
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "num_labels")
# Fields a config.json must give: they decide the model's shape, and BERT-Base's default for a missing one
# would build another model than the file describes. (The others have defaults every BERT shares.)
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def _is_int(value) -> bool:
    """True for a Python int; False for a bool (an int subclass), a float such as 64.0, a string."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    """True for a finite int or float; False for NaN, infinity, a bool, a string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass
class BertConfig:
    """Hyper-parameters of a BERT model (HF ``config.json`` field names)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    classifier_dropout: float | None = None
    # Names of a classifier's labels, {class id: name}; written with label2id as HF does. None: unnamed.
    id2label: dict[int, str] | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the configuration cannot describe a BERT.

        Types are checked, not coerced: sizes are ints (not 64.0, not "64", not true), the other numbers
        finite ints or floats, so that a damaged config.json is refused instead of building a wrong model.
        """
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                integral = isinstance(value, float) and value.is_integer() and value > 0
                hint = f"; write {int(value)}, not {value!r}" if integral else ""
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}{hint}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}): each head gets hidden_size / num_attention_heads dims")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in GELU_FORMS:
            raise ValueError(f"BertConfig.hidden_act={self.hidden_act!r} is not supported; "
                             f"use one of {sorted(GELU_FORMS)}")
        probabilities = ["hidden_dropout_prob", "attention_probs_dropout_prob"]
        if self.classifier_dropout is not None:  # None: the classifier uses hidden_dropout_prob
            probabilities.append("classifier_dropout")
        for name in probabilities:
            p = getattr(self, name)
            if not _is_finite_number(p) or not 0.0 <= p < 1.0:
                raise ValueError(f"BertConfig.{name} must be a probability in [0, 1), got {p!r}")
        if not _is_finite_number(self.initializer_range) or self.initializer_range < 0:
            raise ValueError(f"BertConfig.initializer_range (the standard deviation of the initial weights) "
                             f"must be a finite number >= 0, got {self.initializer_range!r}")
        if not _is_finite_number(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            raise ValueError(f"BertConfig.layer_norm_eps must be a finite positive number, got "
                             f"{self.layer_norm_eps!r}")
        if not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id must be a token id inside the vocabulary "
                             f"(0 <= id < vocab_size={self.vocab_size}), got {self.pad_token_id!r}")
        if self.id2label is not None:
            if (not isinstance(self.id2label, dict) or set(self.id2label) != set(range(self.num_labels))
                    or not all(isinstance(v, str) for v in self.id2label.values())):
                raise ValueError(f"BertConfig.id2label must map every class id 0..{self.num_labels - 1} "
                                 f"(num_labels={self.num_labels}) to a name, got {self.id2label!r}")
            if len(set(self.id2label.values())) != self.num_labels:
                raise ValueError(f"BertConfig.id2label names two classes alike: {self.id2label!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def gelu_approximate(self) -> str:
        """``"none"`` for the exact erf GELU, ``"tanh"`` for the tanh approximation."""
        return GELU_FORMS[self.hidden_act]

    # --- HF config.json -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The config as HF writes it (plus ``model_type`` so ``transformers.AutoConfig`` reads it)."""
        d = dataclasses.asdict(self)
        if self.id2label is None:
            del d["id2label"]
        else:  # JSON object keys are strings; HF writes the reverse map too
            d["id2label"] = {str(i): name for i, name in sorted(self.id2label.items())}
            d["label2id"] = {name: i for i, name in sorted(self.id2label.items())}
        d["model_type"] = "bert"
        d["position_embedding_type"] = "absolute"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
        """Build from a config.json dictionary; unknown HF fields (``architectures``, ...) are ignored.

        The fields of ``REQUIRED_FIELDS`` must be present; every value is checked by ``validate``.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a BERT config must be a JSON object, got {type(d).__name__}")
        if d.get("model_type", "bert") != "bert":
            raise ValueError(f"config.json describes model_type={d['model_type']!r}, not 'bert'")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported "
                             f"(config has {d['position_embedding_type']!r})")
        missing = [name for name in REQUIRED_FIELDS if name not in d]
        if missing:
            raise ValueError(f"the config has no {', '.join(missing)}: these decide the model's shape and have "
                             f"no safe default; use the config.json saved with the weights")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("id2label"), dict):
            try:
                names = {int(i): name for i, name in d["id2label"].items()}
            except ValueError as e:
                raise ValueError(f"config.json's id2label keys must be class ids, got {d['id2label']!r}") from e
            kwargs["id2label"] = names
            kwargs.setdefault("num_labels", len(names))
            if kwargs["num_labels"] == len(names) and names == {i: f"LABEL_{i}" for i in range(len(names))}:
                del kwargs["id2label"]  # HF's default names: nothing was named
        return cls(**kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write ``directory/config.json`` atomically; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "config.json")
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "BertConfig":
        """Read ``config.json`` from a checkpoint directory (or the file itself).

        A byte-order mark is allowed; anything that is not a valid BERT config raises ``ValueError``
        naming the file and the field at fault.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no BERT config at {path!r}: a checkpoint directory holds config.json")
        d = read_json(path)  # its errors name the file
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
