"""minibert.checkpoint: HF-layout state dicts in and out, name variants, clear errors, no pickles run."""
import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from minibert import checkpoint
from minibert.config import BertConfig

CFG = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
           max_position_embeddings=12)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hf_pretraining(**kw):
    torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
    return transformers.BertForPreTraining(transformers.BertConfig(**{**CFG, **kw}))


def hf_state_numpy(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_expected_shapes_match_hf_parameters():
    hf = hf_pretraining()
    hf_shapes = {k: tuple(p.shape) for k, p in hf.named_parameters()}
    assert checkpoint.expected_shapes(BertConfig(**CFG)) == hf_shapes
    bare = transformers.BertModel(transformers.BertConfig(**CFG))
    assert checkpoint.expected_shapes(BertConfig(**CFG), prefix="", pretraining_heads=False) == {
        k: tuple(p.shape) for k, p in bare.named_parameters()}


def test_load_safetensors_and_pytorch_bin_agree(tmp_path):
    hf = hf_pretraining()
    hf.save_pretrained(tmp_path / "st")
    torch.save(hf.state_dict(), tmp_path / "bin.bin")
    os.makedirs(tmp_path / "bin")
    os.replace(tmp_path / "bin.bin", tmp_path / "bin" / checkpoint.PYTORCH_NAME)
    from_st = checkpoint.load_state_dict(tmp_path / "st")
    from_bin = checkpoint.load_state_dict(tmp_path / "bin")
    assert checkpoint.TIED_DECODER_WEIGHT not in from_bin and checkpoint.TIED_DECODER_BIAS not in from_bin
    assert_same_state(from_st, from_bin)
    want = {k: v for k, v in hf_state_numpy(hf).items() if not k.startswith("cls.predictions.decoder")}
    assert_same_state(from_st, want)
    checkpoint.check_state_dict(from_st, BertConfig(**CFG))


def test_sharded_safetensors(tmp_path):
    hf = hf_pretraining()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert os.path.exists(tmp_path / checkpoint.SAFETENSORS_INDEX_NAME)
    want = {k: v for k, v in hf_state_numpy(hf).items() if not k.startswith("cls.predictions.decoder")}
    assert_same_state(checkpoint.load_state_dict(tmp_path), want)


def test_normalize_old_names_and_bare_encoder():
    gen = np.random.default_rng()
    emb = gen.normal(size=(5, 3))
    bias = gen.normal(size=5)
    state = {"embeddings.LayerNorm.gamma": np.ones(3), "embeddings.LayerNorm.beta": np.zeros(3),
             "embeddings.word_embeddings.weight": emb, "embeddings.position_ids": np.arange(4),
             "encoder.layer.0.output.LayerNorm.gamma": np.ones(3),
             "cls.predictions.decoder.weight": emb.copy(), "cls.predictions.decoder.bias": bias}
    out = checkpoint.normalize_keys(state)
    assert sorted(out) == ["bert.embeddings.LayerNorm.bias", "bert.embeddings.LayerNorm.weight",
                           "bert.embeddings.word_embeddings.weight",
                           "bert.encoder.layer.0.output.LayerNorm.weight", "cls.predictions.bias"]
    np.testing.assert_array_equal(out["cls.predictions.bias"], bias)


def test_untied_decoder_is_rejected():
    gen = np.random.default_rng()
    state = {checkpoint.WORD_EMBEDDINGS: gen.normal(size=(5, 3)),
             checkpoint.TIED_DECODER_WEIGHT: gen.normal(size=(5, 3))}
    with pytest.raises(ValueError, match="not tied"):
        checkpoint.normalize_keys(state)


def test_bare_bert_model_checkpoint(tmp_path):
    from minibert.reference.model import BertForPreTraining, BertModel
    torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
    hf = transformers.BertModel(transformers.BertConfig(**CFG, attn_implementation="eager")).eval()
    hf.save_pretrained(tmp_path)
    state = checkpoint.load_state_dict(tmp_path)
    assert all(k.startswith("bert.") for k in state)
    checkpoint.check_state_dict(state, BertConfig(**CFG), pretraining_heads=False)
    # The encoder loads and computes what transformers computes ...
    encoder = BertModel.from_pretrained(tmp_path, dtype=np.float64)
    ids = np.random.default_rng().integers(0, CFG["vocab_size"], (2, 7))
    hidden, pooled = encoder.forward(ids)
    with torch.no_grad():
        ref = hf.double()(input_ids=torch.tensor(ids))
    assert np.abs(hidden - ref.last_hidden_state.numpy()).max() < 1e-10
    assert np.abs(pooled - ref.pooler_output.numpy()).max() < 1e-10
    # ... but a pretraining model needs its heads, and the error names them.
    with pytest.raises(ValueError, match="missing keys.*cls.predictions.bias"):
        BertForPreTraining.from_pretrained(tmp_path)


def test_config_that_does_not_match_weights(tmp_path):
    from minibert.reference.model import BertForPreTraining
    hf_pretraining().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 30
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"intermediate.dense.weight: \(24, 16\) \(config implies \(30, 16\)\)"):
        BertForPreTraining.from_pretrained(tmp_path)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"bert.x": Evil()}, tmp_path / checkpoint.PYTORCH_NAME)
    with pytest.raises(ValueError, match="weights_only=True"):
        checkpoint.load_state_dict(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_missing_and_corrupt_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        checkpoint.load_state_dict(tmp_path)
    (tmp_path / checkpoint.SAFETENSORS_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        checkpoint.load_state_dict(tmp_path)


def test_save_torch_state_dict_like_transformers(tmp_path):
    hf = hf_pretraining()
    path = checkpoint.save_state_dict(hf.state_dict(), tmp_path)  # torch tensors, tied copies included
    saved = load_file(path)
    hf.save_pretrained(tmp_path / "hf")
    assert_same_state(saved, load_file(tmp_path / "hf" / checkpoint.SAFETENSORS_NAME))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # atomic: no temp file left
