"""BertConfig reads and writes HF config.json, and refuses configurations that cannot be a BERT."""
import json

import pytest

from minibert.config import BertConfig


def test_roundtrip_and_hf_reads_ours(tmp_path):
    cfg = BertConfig(vocab_size=123, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                     intermediate_size=96, hidden_act="gelu_new", max_position_embeddings=64)
    cfg.save_pretrained(tmp_path)
    assert BertConfig.from_pretrained(tmp_path) == cfg
    assert cfg.head_dim == 8 and cfg.gelu_approximate == "tanh"
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig.from_pretrained(tmp_path)
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "hidden_act", "max_position_embeddings", "layer_norm_eps"):
        assert getattr(hf, field) == getattr(cfg, field)


def test_reads_hf_written_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig(vocab_size=77, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, layer_norm_eps=1e-7)
    hf.save_pretrained(tmp_path)
    cfg = BertConfig.from_pretrained(tmp_path)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.layer_norm_eps) == (77, 32, 2, 1e-7)


@pytest.mark.parametrize("kwargs,match", [
    ({"hidden_size": 30, "num_attention_heads": 4}, "divisible"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
    ({"pad_token_id": 99, "vocab_size": 10}, "pad_token_id"),
])
def test_invalid_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BertConfig(**kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        BertConfig.from_pretrained(tmp_path)


def write_config(tmp_path, **changes) -> str:
    """A valid tiny config.json in tmp_path with ``changes`` applied (None deletes a field)."""
    d = {**BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32).to_dict(), **changes}
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in d.items() if v is not None}))
    return str(tmp_path / "config.json")


@pytest.mark.parametrize("field,value", [
    ("layer_norm_eps", float("nan")), ("layer_norm_eps", "1e-12"), ("layer_norm_eps", 0.0),
    ("initializer_range", float("inf")), ("initializer_range", "x"), ("hidden_dropout_prob", "0.1"),
    ("attention_probs_dropout_prob", float("nan")), ("classifier_dropout", 1.0),
    ("pad_token_id", 1.5), ("pad_token_id", "0"), ("pad_token_id", 50),
    ("vocab_size", 1e12), ("vocab_size", "50"), ("hidden_size", True), ("num_attention_heads", 2.0),
    ("hidden_act", ["gelu"]), ("num_labels", 0),
])
def test_config_json_values_are_checked_not_coerced(tmp_path, field, value):
    path = write_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field) as error:
        BertConfig.from_pretrained(tmp_path)
    assert path in str(error.value)  # the file is named too


def test_integral_floats_are_refused_with_a_hint(tmp_path):
    # A decision: sizes are JSON integers. 64.0 is refused (not rounded), and the message says what to write.
    write_config(tmp_path, intermediate_size=32.0)
    with pytest.raises(ValueError, match=r"intermediate_size must be a positive integer, got 32.0; write 32"):
        BertConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                   "intermediate_size"])
def test_shape_fields_are_required(tmp_path, field):
    write_config(tmp_path, **{field: None})
    with pytest.raises(ValueError, match=f"no {field}"):
        BertConfig.from_pretrained(tmp_path)


def test_hf_fields_bom_and_null_classifier_dropout_load(tmp_path):
    write_config(tmp_path, architectures=["BertForMaskedLM"], transformers_version="4.40.0",
                 torch_dtype="float32", use_cache=True, gradient_checkpointing=False)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["classifier_dropout"] = None  # transformers writes null: "use hidden_dropout_prob"
    (tmp_path / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(raw).encode())
    cfg = BertConfig.from_pretrained(tmp_path)
    assert (cfg.vocab_size, cfg.classifier_dropout) == (50, None)


def test_deeply_nested_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        BertConfig.from_pretrained(tmp_path)
