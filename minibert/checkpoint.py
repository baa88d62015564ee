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

Every file is checked as it is read: a sharded index may only name files beside it, every tensor must be
floating point (float16 and bfloat16 are widened to float32, float64 is kept; integer, bool and complex
tensors are refused by name) and finite (a NaN or inf is refused by name). ``load_state_dict(directory,
config)`` first compares config.json's sizes with the shapes in the safetensors headers
(``check_config_fits``), so a config that would allocate terabytes is refused before anything is built.

Loading into a model (``load_weights`` for the torch models, ``minibert.reference.model`` for NumPy;
``Model.from_pretrained`` is a thin wrapper) follows one policy, ``match_weights``, reported in a
``LoadReport``:

* a parameter under one of the model's ``optional_prefixes`` (a head, e.g. ``cls.`` for pretraining or
  ``classifier.`` for fine-tuning) may be missing from the checkpoint: it keeps its fresh initialisation
  and is reported; any other missing parameter is an error;
* a checkpoint tensor the model has no place for (a head it lacks, an unknown extra) is dropped and
  reported, except inside the encoder's layers (``encoder.layer.*``): there it means another
  architecture or more layers than config.json says, and is an error;
* every shape must match the model's config.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import numpy as np

from minibert.files import atomic_write_bytes, read_json

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"

# Copies of other parameters (tied) or buffers: never stored as parameters of their own.
TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"  # == bert.embeddings.word_embeddings.weight
TIED_DECODER_BIAS = "cls.predictions.decoder.bias"  # == cls.predictions.bias
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")
# A tensor inside encoder layer i (with or without the "bert." prefix); group 1 is i.
_ENCODER_LAYER = re.compile(r"^(?:bert\.)?encoder\.layer\.(\d+)\.")
# The dtypes a weight may have on disk (safetensors' names). NumPy has no bfloat16, so those tensors are read
# through torch and widened to float32 (exactly: a bfloat16 is the top half of a float32).
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


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


def canonical_name(key: str) -> str:
    """A checkpoint tensor's name as HF's BertForPreTraining spells it: TF-era ``LayerNorm.gamma``/``.beta``
    become ``.weight``/``.bias``, and a bare BertModel's ``embeddings.*``/``encoder.*``/``pooler.*`` gain
    the ``bert.`` prefix."""
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    return "bert." + key if key.startswith(_ENCODER_ROOTS) else key


def normalize_keys(state: dict) -> dict:
    """Map checkpoint-name variants onto HF BertForPreTraining names (values untouched).

    * names through ``canonical_name`` (``gamma``/``beta``, the ``bert.`` prefix);
    * ``cls.predictions.decoder.weight`` dropped (it must equal the word embeddings: tied),
      ``cls.predictions.decoder.bias`` dropped, or renamed to ``cls.predictions.bias`` if that is absent;
    * buffers (``bert.embeddings.position_ids``) dropped.
    """
    out = {}
    for key, value in state.items():
        key = canonical_name(key)
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


def check_config_fits(config, shapes: Mapping[str, tuple], source: str = "the checkpoint") -> None:
    """Raise ``ValueError`` naming the config.json field whose size is not that of the weights.

    ``shapes`` maps canonical tensor names to shapes (``weight_shapes``). This runs before a model is
    built: config.json decides how much memory a model takes, so a config that disagrees with its weights
    (``vocab_size: 1e12``, a million layers) is refused here, while the weights file bounds what loading
    costs. Only tensors present are compared; a missing one is ``match_weights``'s business.
    """
    if not any(name.startswith("bert.") for name in shapes):
        raise ValueError(f"{source} holds no BERT weights: none of its {len(shapes)} tensors "
                         f"({', '.join(sorted(shapes)[:5])}) is named like HF's BertModel "
                         f"(bert.embeddings.*, bert.encoder.layer.*)")
    E = config.hidden_size
    first_ffn = "bert.encoder.layer.0.intermediate.dense.weight"
    implied = {WORD_EMBEDDINGS: (config.vocab_size, E),
               "bert.embeddings.position_embeddings.weight": (config.max_position_embeddings, E),
               "bert.embeddings.token_type_embeddings.weight": (config.type_vocab_size, E),
               first_ffn: (config.intermediate_size, E)}
    for field, name, dim in [("hidden_size", WORD_EMBEDDINGS, 1), ("vocab_size", WORD_EMBEDDINGS, 0),
                             ("max_position_embeddings", "bert.embeddings.position_embeddings.weight", 0),
                             ("type_vocab_size", "bert.embeddings.token_type_embeddings.weight", 0),
                             ("intermediate_size", first_ffn, 0)]:
        shape = tuple(shapes.get(name, implied[name]))
        if len(shape) != 2 or shape[dim] != implied[name][dim]:
            raise ValueError(f"{source}: config.json says {field}={getattr(config, field)}, but {name} is "
                             f"{shape} in the weights (the config implies {implied[name]}); use the "
                             f"config.json saved with these weights")
    layers = 1 + max((int(m.group(1)) for m in map(_ENCODER_LAYER.match, shapes) if m), default=-1)
    if layers != config.num_hidden_layers:
        raise ValueError(f"{source}: config.json says num_hidden_layers={config.num_hidden_layers}, but the "
                         f"weights hold {layers} encoder layers; use the config.json saved with these weights")


def weight_shapes(directory: str | os.PathLike) -> dict[str, tuple]:
    """``{canonical name: shape}`` of every tensor of a checkpoint directory, read from the safetensors
    headers without reading any tensor data (an old ``pytorch_model.bin`` has no header: it is read)."""
    kind, paths = _weight_files(os.fspath(directory))
    shapes = {}
    for path in paths:
        if kind == "pytorch":
            shapes.update((name, value.shape) for name, value in _read_pytorch(path).items())
        else:
            with _safe_open(path) as f:
                shapes.update((name, tuple(f.get_slice(name).get_shape())) for name in f.keys())
    return {canonical_name(name): tuple(shape) for name, shape in shapes.items()}


def load_state_dict(directory: str | os.PathLike, config=None) -> dict[str, np.ndarray]:
    """Read the weights of an HF checkpoint directory as ``{HF name: np.ndarray}`` (keys normalized).

    Tensors are float16, float32 or float64 arrays (bfloat16 is widened to float32), all finite. Given a
    ``config``, ``check_config_fits`` first compares it with the shapes in the files' headers.
    """
    directory = os.fspath(directory)
    if config is not None:
        check_config_fits(config, weight_shapes(directory), directory)
    kind, paths = _weight_files(directory)
    state = {}
    for path in paths:
        for name, value in (_read_pytorch(path) if kind == "pytorch" else _read_safetensors(path)).items():
            if name in state:
                raise ValueError(f"{name} is stored in two shards of {directory}; keep one copy")
            state[name] = value
    return normalize_keys(state)


def _weight_files(directory: str) -> tuple[str, list[str]]:
    """("safetensors" or "pytorch", the files holding the weights of ``directory``)."""
    st_path = os.path.join(directory, SAFETENSORS_NAME)
    index_path = os.path.join(directory, SAFETENSORS_INDEX_NAME)
    pt_path = os.path.join(directory, PYTORCH_NAME)
    if os.path.isfile(st_path):
        return "safetensors", [st_path]
    if os.path.isfile(index_path):
        return "safetensors", _shard_paths(directory, index_path)
    if os.path.isfile(pt_path):
        return "pytorch", [pt_path]
    raise FileNotFoundError(f"no weights in {directory!r}: expected {SAFETENSORS_NAME}, "
                            f"{SAFETENSORS_INDEX_NAME} or {PYTORCH_NAME}")


def _shard_paths(directory: str, index_path: str) -> list[str]:
    """The shard files a ``model.safetensors.index.json`` lists, each checked to be a file beside it.

    A ``weight_map`` entry with a directory, ``..`` or an absolute path would read a file outside the
    checkpoint folder, and is refused (transformers only ever writes plain file names).
    """
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: 'weight_map' must be a non-empty object {{tensor name: shard file}}, "
                         f"got {type(weight_map).__name__}")
    shards = set()
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or shard in ("", ".", "..") or os.path.basename(shard) != shard:
            raise ValueError(f"{index_path}: weight_map[{name!r}] is {shard!r}, not the name of a file beside "
                             f"the index; shards must lie in the checkpoint folder itself (no directories, "
                             f"'..' or absolute paths)")
        shards.add(shard)
    paths = [os.path.join(directory, shard) for shard in sorted(shards)]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{index_path} lists the shard {os.path.basename(path)!r}, but there is no "
                                    f"such file in {directory}: the checkpoint is incomplete (an interrupted "
                                    f"download or copy?)")
    return paths


def _safe_open(path: str, framework: str = "numpy"):
    """``safetensors.safe_open``: reads and checks the header only; tensors are read on request."""
    from safetensors import SafetensorError, safe_open
    try:
        return safe_open(path, framework=framework)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every float tensor of a safetensors file, checked; integer buffers (``position_ids``) skipped."""
    state, bfloat16 = {}, []
    with _safe_open(path) as f:
        for name in f.keys():
            dtype = f.get_slice(name).get_dtype()
            if dtype == "BF16":
                bfloat16.append(name)
            elif dtype in FLOAT_DTYPES:
                state[name] = _checked(name, f.get_tensor(name), path)
            elif canonical_name(name) not in BUFFERS:  # buffers are dropped by normalize_keys anyway
                raise ValueError(_dtype_error(path, name, dtype))
    if bfloat16:
        with _safe_open(path, framework="pt") as f:
            state.update((name, _checked(name, to_numpy(f.get_tensor(name)), path)) for name in bfloat16)
    return state


def _read_pytorch(path: str) -> dict[str, np.ndarray]:
    """Every float tensor of an old ``pytorch_model.bin``, read without running pickled code, checked."""
    import torch  # only old-format checkpoints need torch
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and containers
        # torch's message is a page of advice; its last line before the link names what it refused.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = [line for line in lines if not line.startswith("Check the documentation")][-1:] or [repr(e)]
        raise ValueError(f"{path} could not be loaded as plain tensors (weights_only=True): "
                         f"{reason[0].split(' Please use')[0][:300]}; minibert never runs pickled code") from e
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in raw.items()):
        raise ValueError(f"{path} does not hold a state dict {{name: tensor}} (found {type(raw).__name__})")
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    state = {}
    for name, value in raw.items():
        if value.dtype in floats:
            state[name] = _checked(name, to_numpy(value), path)
        elif canonical_name(name) not in BUFFERS:
            raise ValueError(_dtype_error(path, name, str(value.dtype).removeprefix("torch.")))
    return state


def _dtype_error(path: str, name: str, dtype: str) -> str:
    return (f"{path}: tensor {name} has dtype {dtype}; BERT weights must be floating point (float32, float16, "
            f"bfloat16 or float64). A quantized or converted checkpoint cannot be loaded: use the float weights")


def _checked(name: str, array: np.ndarray, path: str) -> np.ndarray:
    """``array``, after checking that every value is finite (a NaN weight makes every output NaN)."""
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(f"{path}: tensor {name} holds {bad} NaN or infinite values (of {array.size}); the "
                         f"checkpoint is damaged, e.g. saved after training diverged: use an earlier one")
    return array


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
            parts.append(f"initialised {len(self.newly_initialized)} new parameter tensors the checkpoint lacks "
                         f"({', '.join(self.newly_initialized)}): they start from random values")
        if self.dropped:
            # A pretraining head is named by its module (cls.predictions), anything else tensor by tensor.
            heads = sorted({".".join(k.split(".")[:2]) if k.startswith("cls.") else k for k in self.dropped})
            parts.append(f"dropped {len(self.dropped)} checkpoint tensors this model has no use for "
                         f"({', '.join(heads)})")
        return "; ".join(parts) if parts else "every parameter came from the checkpoint"


def match_weights(shapes: Mapping[str, tuple], expected: Mapping[str, tuple], optional_prefixes=(),
                  source: str = "the state dict", model_name: str = "the model",
                  head_prefix: str = "") -> LoadReport:
    """The loading policy (module docstring): what loading ``shapes`` into a model whose parameters are
    ``expected`` ({name: shape}) initialises fresh and drops, or a ``ValueError`` listing every missing key,
    unexpected key and wrong shape. ``head_prefix`` names a fine-tuning head, for a hint about num_labels."""
    absent = sorted(k for k in expected if k not in shapes)
    extra = sorted(k for k in shapes if k not in expected)
    report = LoadReport(newly_initialized=[k for k in absent if k.startswith(tuple(optional_prefixes))],
                        dropped=[k for k in extra if not _ENCODER_LAYER.match(k)])
    missing = [k for k in absent if k not in report.newly_initialized]
    unexpected = [k for k in extra if k not in report.dropped]
    if missing or unexpected:
        raise ValueError(f"{source} does not match {model_name}: missing keys {missing}, unexpected keys "
                         f"{unexpected}. Is it a BERT checkpoint with HF parameter names, saved with this "
                         f"config.json (num_hidden_layers)?")
    wrong = sorted(f"{key}: {tuple(shape)} in the checkpoint, {tuple(expected[key])} from the config"
                   for key, shape in shapes.items() if key in expected and tuple(shape) != tuple(expected[key]))
    if wrong:
        head = head_prefix and any(w.startswith(head_prefix) for w in wrong)
        hint = (" The checkpoint was fine-tuned with another number of labels: pass its num_labels, or start "
                "from the pretrained encoder instead." if head else "")
        raise ValueError(f"{source}: the checkpoint's config.json does not match its weights or this "
                         f"{model_name}; wrong shapes:\n  " + "\n  ".join(wrong) + hint)
    return report


def load_weights(model, state: Mapping, source: str = "the state dict") -> LoadReport:
    """Copy an HF-named state dict (NumPy arrays or tensors) into a ``minibert.modeling`` model.

    Names are normalised first (``normalize_keys``; the ``bert.`` prefix is stripped for a bare BertModel).
    What may be missing or left over is decided by ``match_weights`` with the model class's
    ``optional_prefixes``; anything else raises ``ValueError``. Returns the report, also kept as
    ``model.load_report``.
    """
    import torch

    state = normalize_keys(dict(state))
    if not model.base_model_prefix:
        state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()
                if ".predictions.decoder." not in name}  # the tied decoder: a copy of other parameters
    report = match_weights({k: tuple(v.shape) for k, v in state.items()}, expected, model.optional_prefixes,
                           source, type(model).__name__, model.head_prefix)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            if key in params:
                params[key].copy_(torch.as_tensor(value))
    model.tie_weights()
    model.load_report = report
    return report


def load_pretrained(cls, directory: str | os.PathLike, attn_implementation: str = "eager",
                    gelu_implementation: str = "eager", dtype=None, device="cpu",
                    layernorm_implementation: str = "eager", **config_overrides):
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
    state = load_state_dict(directory, config)  # config.json is checked against the weights before any allocation
    model = cls(config, attn_implementation=attn_implementation, gelu_implementation=gelu_implementation,
                layernorm_implementation=layernorm_implementation)
    load_weights(model, state, source=os.fspath(directory))
    return model.to(device=device, dtype=dtype).eval()
