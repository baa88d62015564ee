"""HF-format checkpoints: read and write the ``{name: array}`` state dict of a BERT, shared by every backend.

A checkpoint is a directory holding ``config.json`` and the weights, as ``transformers`` writes it:
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``), or, for older checkpoints,
``pytorch_model.bin``. Weights are read without executing pickled code: ``safetensors``, or
``torch.load(weights_only=True)``.

Names are HF's (``bert.encoder.layer.0.attention.self.query.weight``, ...). ``normalize_keys`` maps the
variants found in the wild onto them: TF-era ``gamma``/``beta`` LayerNorm names, bare-BertModel
checkpoints with no ``bert.`` prefix, the tied ``cls.predictions.decoder.*`` copies, and the
``position_ids`` buffer.

The MLM decoder weight is the word-embedding table (tied). ``transformers`` 5.x saves it once, under
``bert.embeddings.word_embeddings.weight``, and re-ties ``cls.predictions.decoder.weight`` (and
``decoder.bias`` to ``cls.predictions.bias``) on load because ``tie_word_embeddings`` defaults to true.
``save_state_dict`` does exactly that, so ``transformers`` loads our files unchanged.

Loading into the torch models (``load_weights``, ``load_pretrained``; ``Model.from_pretrained`` is a thin
wrapper) follows one policy, declared by each model class and reported in a ``LoadReport``:

* a checkpoint tensor under one of the class's ``unused_checkpoint_prefixes`` (heads it has no use for,
  e.g. ``cls.`` for a fine-tuning model) is dropped; any other tensor the model lacks is an error;
* a parameter under one of its ``optional_prefixes`` (a fine-tuning head, the pooler) may be missing from
  the checkpoint and keeps its fresh initialisation; any other missing parameter is an error;
* every shape must match the model's config.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import numpy as np

from minibert.files import atomic_write_bytes

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"

# Copies of other parameters (tied) or buffers: never stored as parameters of their own.
TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"  # == bert.embeddings.word_embeddings.weight
TIED_DECODER_BIAS = "cls.predictions.decoder.bias"  # == cls.predictions.bias
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")


def to_numpy(value) -> np.ndarray:
    """A NumPy copy of an array or torch tensor (bfloat16/float16 tensors become float32)."""
    if hasattr(value, "detach"):  # a torch tensor; imported lazily so NumPy users need no torch
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype.itemsize < 4:
            value = value.float()
        return value.numpy().copy()
    return np.array(value)


def expected_shapes(config, prefix: str = "bert.", pretraining_heads: bool = True) -> dict[str, tuple]:
    """Every parameter name of a BertForPreTraining (or, without heads, a BertModel) with its shape."""
    E, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    e = prefix + "embeddings."
    shapes = {e + "word_embeddings.weight": (V, E),
              e + "position_embeddings.weight": (config.max_position_embeddings, E),
              e + "token_type_embeddings.weight": (config.type_vocab_size, E),
              e + "LayerNorm.weight": (E,), e + "LayerNorm.bias": (E,)}
    for i in range(config.num_hidden_layers):
        lp = f"{prefix}encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[lp + name + ".weight"], shapes[lp + name + ".bias"] = (E, E), (E,)
        shapes[lp + "intermediate.dense.weight"], shapes[lp + "intermediate.dense.bias"] = (F, E), (F,)
        shapes[lp + "output.dense.weight"], shapes[lp + "output.dense.bias"] = (E, F), (E,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[lp + name + ".weight"], shapes[lp + name + ".bias"] = (E,), (E,)
    shapes[prefix + "pooler.dense.weight"], shapes[prefix + "pooler.dense.bias"] = (E, E), (E,)
    if pretraining_heads:
        shapes["cls.predictions.transform.dense.weight"] = (E, E)
        shapes["cls.predictions.transform.dense.bias"] = (E,)
        shapes["cls.predictions.transform.LayerNorm.weight"] = (E,)
        shapes["cls.predictions.transform.LayerNorm.bias"] = (E,)
        shapes["cls.predictions.bias"] = (V,)
        shapes["cls.seq_relationship.weight"] = (2, E)
        shapes["cls.seq_relationship.bias"] = (2,)
    return shapes


def check_state_dict(state: dict, config, pretraining_heads: bool = True) -> None:
    """Raise ValueError naming every missing key, unexpected key and wrong shape against ``config``."""
    expected = expected_shapes(config, pretraining_heads=pretraining_heads)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} (config implies {expected[k]})"
             for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if wrong:
        problems.append("shapes that do not match config.json: " + "; ".join(wrong))
    if problems:
        raise ValueError("the weights do not fit this BertConfig (is config.json from the same "
                         "checkpoint?):\n  " + "\n  ".join(problems))


def _same(a, b) -> bool:
    return np.array_equal(to_numpy(a), to_numpy(b))


def normalize_keys(state: dict) -> dict:
    """Map checkpoint-name variants onto HF BertForPreTraining names (values untouched).

    * ``...LayerNorm.gamma`` / ``.beta`` (TF-era) -> ``.weight`` / ``.bias``;
    * a bare BertModel's ``embeddings.*``, ``encoder.*``, ``pooler.*`` -> ``bert.``-prefixed;
    * ``cls.predictions.decoder.weight`` dropped (it must equal the word embeddings: tied),
      ``cls.predictions.decoder.bias`` dropped, or renamed to ``cls.predictions.bias`` if that is absent;
    * buffers (``bert.embeddings.position_ids``) dropped.
    """
    out = {}
    for key, value in state.items():
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        if key.startswith(_ENCODER_ROOTS):
            key = "bert." + key
        if key in out:
            raise ValueError(f"checkpoint names {key!r} twice (after renaming old-style names)")
        out[key] = value
    for key in BUFFERS:
        out.pop(key, None)
    if TIED_DECODER_WEIGHT in out:
        decoder = out.pop(TIED_DECODER_WEIGHT)
        if WORD_EMBEDDINGS in out and not _same(decoder, out[WORD_EMBEDDINGS]):
            raise ValueError(f"{TIED_DECODER_WEIGHT} differs from {WORD_EMBEDDINGS}: this checkpoint's MLM "
                             f"decoder is not tied to the word embeddings, which BERT requires")
        out.setdefault(WORD_EMBEDDINGS, decoder)
    if TIED_DECODER_BIAS in out:
        bias = out.pop(TIED_DECODER_BIAS)
        if "cls.predictions.bias" in out and not _same(bias, out["cls.predictions.bias"]):
            raise ValueError(f"{TIED_DECODER_BIAS} differs from cls.predictions.bias; they must be one tensor")
        out.setdefault("cls.predictions.bias", bias)
    return out


def load_state_dict(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the weights of an HF checkpoint directory as ``{HF name: np.ndarray}`` (keys normalized)."""
    directory = os.fspath(directory)
    st_path = os.path.join(directory, SAFETENSORS_NAME)
    index_path = os.path.join(directory, SAFETENSORS_INDEX_NAME)
    pt_path = os.path.join(directory, PYTORCH_NAME)
    if os.path.isfile(st_path):
        state = _load_safetensors(st_path)
    elif os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_load_safetensors(os.path.join(directory, shard)))
    elif os.path.isfile(pt_path):
        import torch  # only old-format checkpoints need torch
        try:
            raw = torch.load(pt_path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and containers
            raise ValueError(f"{pt_path} could not be loaded as plain tensors (weights_only=True): {e}") from e
        state = {k: to_numpy(v) for k, v in raw.items()}
    else:
        raise FileNotFoundError(f"no weights in {directory!r}: expected {SAFETENSORS_NAME}, "
                                f"{SAFETENSORS_INDEX_NAME} or {PYTORCH_NAME}")
    return normalize_keys(state)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def save_state_dict(state: dict, directory: str | os.PathLike) -> str:
    """Write ``state`` (NumPy arrays or torch tensors) as ``directory/model.safetensors``, atomically.

    The tied decoder copies are left out, as ``transformers`` 5.x does itself; returns the file's path.
    """
    from safetensors.numpy import save
    state = normalize_keys(state)
    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in state.items()}
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.fspath(directory), SAFETENSORS_NAME)
    # transformers refuses a safetensors file whose metadata does not say which framework wrote it.
    atomic_write_bytes(path, save(arrays, metadata={"format": "pt"}))
    return path


# ---------------------------------------------------------------------------------------------- torch models

@dataclasses.dataclass
class LoadReport:
    """What loading a checkpoint did besides copying tensors: the parameters that kept their fresh
    initialisation (absent from the checkpoint) and the checkpoint tensors the model had no place for."""

    newly_initialized: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        parts = []
        if self.newly_initialized:
            parts.append(f"initialised {len(self.newly_initialized)} new parameter tensors "
                         f"({', '.join(self.newly_initialized)}): they are trained from scratch by fine-tuning")
        if self.dropped:
            # A pretraining head is named by its module (cls.predictions), anything else tensor by tensor.
            heads = sorted({".".join(k.split(".")[:2]) if k.startswith("cls.") else k for k in self.dropped})
            parts.append(f"dropped {len(self.dropped)} checkpoint tensors this model has no use for "
                         f"({', '.join(heads)})")
        return "; ".join(parts) if parts else "every parameter came from the checkpoint"


def load_weights(model, state: Mapping, source: str = "the state dict") -> LoadReport:
    """Copy an HF-named state dict (NumPy arrays or tensors) into a ``minibert.modeling`` model.

    Names are normalised first (``normalize_keys``; the ``bert.`` prefix is stripped for a bare BertModel).
    What may be missing or left over is the model class's policy (see the module docstring); anything else
    raises ``ValueError`` naming every missing key, unexpected key and wrong shape. Returns the report,
    also kept as ``model.load_report``.
    """
    import torch

    state = normalize_keys(dict(state))
    if not model.base_model_prefix:
        state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    own = model.state_dict()
    tied = {name for name in own if ".predictions.decoder." in name}  # copies of other parameters
    absent = sorted(k for k in own if k not in state and k not in tied)
    extra = sorted(k for k in state if k not in own)
    report = LoadReport(newly_initialized=[k for k in absent if k.startswith(model.optional_prefixes)],
                        dropped=[k for k in extra if k.startswith(model.unused_checkpoint_prefixes)])
    missing = [k for k in absent if k not in report.newly_initialized]
    unexpected = [k for k in extra if k not in report.dropped]
    if missing or unexpected:
        raise ValueError(f"{source} does not match {type(model).__name__}: missing keys {missing}, unexpected "
                         f"keys {unexpected}. Is it a BERT checkpoint with HF parameter names, saved for this "
                         f"model type?")
    wrong = sorted(f"{key}: {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} from the config"
                   for key, value in state.items() if key in own and tuple(value.shape) != tuple(own[key].shape))
    if wrong:
        head = model.head_prefix and any(w.startswith(model.head_prefix) for w in wrong)
        hint = (" The checkpoint was fine-tuned with another number of labels: pass its num_labels, or start "
                "from the pretrained encoder instead." if head else "")
        raise ValueError(f"{source}: the checkpoint's config.json does not match its weights or this "
                         f"{type(model).__name__}; wrong shapes:\n  " + "\n  ".join(wrong) + hint)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            if key in params:
                params[key].copy_(torch.as_tensor(value))
    model.tie_weights()
    model.load_report = report
    return report


def load_pretrained(cls, directory: str | os.PathLike, attn_implementation: str = "eager",
                    gelu_implementation: str = "eager", dtype=None, device="cpu", **config_overrides):
    """Build ``cls`` (a ``minibert.modeling`` model class) from an HF-format checkpoint directory.

    ``config_overrides`` (``num_labels``, ``id2label``, ``classifier_dropout``, ...) replace fields of the
    checkpoint's config.json. Weights load under ``load_weights``'s policy; ``model.load_report`` says what
    was initialised fresh and what was dropped. Returned in eval mode, as ``dtype`` (default float32) on
    ``device``.
    """
    from minibert.config import BertConfig

    config = BertConfig.from_pretrained(directory)
    if config_overrides:
        config = BertConfig.from_dict({**config.to_dict(), **config_overrides})
    model = cls(config, attn_implementation=attn_implementation, gelu_implementation=gelu_implementation)
    load_weights(model, load_state_dict(directory), source=os.fspath(directory))
    return model.to(device=device, dtype=dtype).eval()
