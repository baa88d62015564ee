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
    with pytest.raises(ValueError, match="not a valid JSON"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        BertConfig.from_pretrained(tmp_path)
