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
    # ... and a pretraining model gets fresh heads, said in its load report (one policy for both backends).
    model = BertForPreTraining.from_pretrained(tmp_path)
    assert model.load_report.newly_initialized == sorted(k for k in checkpoint.expected_shapes(BertConfig(**CFG))
                                                         if k.startswith("cls."))
    assert np.isfinite(model.forward(ids)["prediction_logits"]).all()
    from minibert import modeling
    torch_model = modeling.BertForPreTraining.from_pretrained(tmp_path)
    assert torch_model.newly_initialized == model.load_report.newly_initialized
    assert "initialised 7 new parameter tensors" in torch_model.loading_report()


def test_config_that_does_not_match_weights(tmp_path):
    from minibert.reference.model import BertForPreTraining
    hf_pretraining().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 30
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json says intermediate_size=30, but "
                                         r"bert.encoder.layer.0.intermediate.dense.weight is \(24, 16\)"):
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


# ---------------------------------------------------------------------- issue #11: every file is checked

def tiny_checkpoint(directory, **config_changes):
    """A valid checkpoint of our torch BertForPreTraining (config.json, model.safetensors, vocab.txt)."""
    from minibert.modeling import BertForPreTraining
    from minibert.tokenizer import BertTokenizer
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(CFG["vocab_size"] - 5)]
    torch.manual_seed(0)
    BertForPreTraining(BertConfig(**CFG)).save_pretrained(directory, BertTokenizer({t: i for i, t in
                                                                                     enumerate(tokens)}))
    if config_changes:
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, **config_changes}))
    return directory


def rewrite_weights(directory, change, as_pytorch_bin=False):
    """Apply ``change(state) -> state`` to the checkpoint's tensors, saved as safetensors or pytorch_model.bin."""
    from safetensors.torch import load_file, save_file
    state = change(load_file(directory / checkpoint.SAFETENSORS_NAME))
    os.remove(directory / checkpoint.SAFETENSORS_NAME)
    if as_pytorch_bin:
        torch.save(state, directory / checkpoint.PYTORCH_NAME)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, directory / checkpoint.SAFETENSORS_NAME)


def both_backends(directory):
    """Load ``directory`` into the torch and the NumPy BertForPreTraining: (torch model, reference model)."""
    from minibert import modeling
    from minibert.reference import model as reference
    return (modeling.BertForPreTraining.from_pretrained(directory),
            reference.BertForPreTraining.from_pretrained(directory))


@pytest.mark.parametrize("field,value", [("vocab_size", 10**12), ("max_position_embeddings", 10**9),
                                         ("intermediate_size", 10**10), ("num_hidden_layers", 10**6),
                                         ("hidden_size", 2 * 10**6), ("type_vocab_size", 10**9)])
def test_config_is_checked_against_the_headers_before_anything_is_built(tmp_path, monkeypatch, field, value):
    tiny_checkpoint(tmp_path, **{field: value})
    from minibert import modeling
    from minibert.reference import model as reference

    def must_not_run(*args, **kwargs):
        raise AssertionError("tensor data was read, or a model built, before config.json was checked")

    monkeypatch.setattr(checkpoint, "_read_safetensors", must_not_run)
    monkeypatch.setattr(modeling.BertModel, "__init__", must_not_run)
    monkeypatch.setattr(reference, "init_params", must_not_run)
    for load in (modeling.BertForPreTraining.from_pretrained, reference.BertForPreTraining.from_pretrained):
        with pytest.raises(ValueError, match=f"config.json says {field}={value}, but "):
            load(tmp_path)


def test_shape_mismatch_message_names_the_field_and_the_tensor(tmp_path):
    tiny_checkpoint(tmp_path, vocab_size=50)
    with pytest.raises(ValueError, match=r"config.json says vocab_size=50, but "
                                         r"bert.embeddings.word_embeddings.weight is \(40, 16\)"):
        both_backends(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("as_pytorch_bin", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_half_and_double_precision_weights_load_as_the_models_dtype(tmp_path, dtype, as_pytorch_bin):
    tiny_checkpoint(tmp_path)
    stored = {}

    def convert(state):
        stored.update({k: v.to(dtype) for k, v in state.items()})
        return dict(stored)

    rewrite_weights(tmp_path, convert, as_pytorch_bin)
    ours, reference = both_backends(tmp_path)
    word = checkpoint.WORD_EMBEDDINGS
    assert ours.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    assert torch.equal(ours.bert.embeddings.word_embeddings.weight, stored[word].float())  # widening is exact
    assert reference.params[word].dtype == np.float32
    np.testing.assert_array_equal(reference.params[word], stored[word].float().numpy())


@pytest.mark.parametrize("dtype,name", [(torch.int8, "I8"), (torch.int32, "I32"), (torch.bool, "BOOL"),
                                        (torch.complex64, "C64"), (torch.float8_e4m3fn, "F8_E4M3")])
def test_tensors_that_are_not_float_weights_are_refused_by_name(tmp_path, dtype, name):
    tiny_checkpoint(tmp_path)
    layer_norm = "bert.encoder.layer.1.output.LayerNorm.weight"
    rewrite_weights(tmp_path, lambda s: {**s, layer_norm: s[layer_norm].to(dtype)})
    with pytest.raises(ValueError, match=f"tensor {layer_norm} has dtype {name}; BERT weights must be floating"):
        both_backends(tmp_path)


def test_complex_tensor_in_a_pytorch_bin_is_refused(tmp_path):
    tiny_checkpoint(tmp_path)
    bias = "cls.predictions.bias"
    rewrite_weights(tmp_path, lambda s: {**s, bias: s[bias].to(torch.complex64)}, as_pytorch_bin=True)
    with pytest.raises(ValueError, match=f"tensor {bias} has dtype complex64"):
        checkpoint.load_state_dict(tmp_path)


@pytest.mark.parametrize("as_pytorch_bin", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_integer_position_ids_buffer_of_old_checkpoints_is_accepted(tmp_path, as_pytorch_bin):
    tiny_checkpoint(tmp_path)
    rewrite_weights(tmp_path, lambda s: {**s, "bert.embeddings.position_ids": torch.arange(12)[None]},
                    as_pytorch_bin)
    assert "bert.embeddings.position_ids" not in checkpoint.load_state_dict(tmp_path)
    both_backends(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("as_pytorch_bin", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_non_finite_weights_are_refused_by_name(tmp_path, bad, as_pytorch_bin):
    tiny_checkpoint(tmp_path)
    name = "bert.encoder.layer.0.attention.self.key.weight"
    rewrite_weights(tmp_path, lambda s: {**s, name: s[name].index_fill(0, torch.tensor([3]), bad)},
                    as_pytorch_bin)
    with pytest.raises(ValueError, match=f"tensor {name} holds 16 NaN or infinite values"):
        both_backends(tmp_path)


def shard(directory, encoder_shard="model-00002-of-00002.safetensors"):
    """Split model.safetensors into two shards and an index that calls the encoder's shard ``encoder_shard``."""
    from safetensors.torch import load_file, save_file
    state = load_file(directory / checkpoint.SAFETENSORS_NAME)
    os.remove(directory / checkpoint.SAFETENSORS_NAME)
    first = {k: v for k, v in state.items() if ".encoder." not in k}
    save_file(first, directory / "model-00001-of-00002.safetensors")
    save_file({k: v for k, v in state.items() if k not in first}, directory / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" if k in first else encoder_shard for k in state}
    (directory / checkpoint.SAFETENSORS_INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("entry", ["../model-00002-of-00002.safetensors", "/etc/passwd", "sub/x.safetensors",
                                   ".."])
def test_sharded_index_may_only_name_files_beside_it(tmp_path, entry):
    (tmp_path / "ckpt").mkdir()
    shard(tiny_checkpoint(tmp_path / "ckpt"), entry)
    with pytest.raises(ValueError, match=r"weight_map\['bert.encoder.layer.0.[a-zA-Z.]+'\] is .* not the name "
                                         r"of a file beside the index"):
        checkpoint.load_state_dict(tmp_path / "ckpt")


def test_sharded_index_errors(tmp_path):
    shard(tiny_checkpoint(tmp_path))
    assert len(checkpoint.load_state_dict(tmp_path)) == len(checkpoint.expected_shapes(BertConfig(**CFG)))
    index = tmp_path / checkpoint.SAFETENSORS_INDEX_NAME
    os.rename(tmp_path / "model-00002-of-00002.safetensors", tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="lists the shard 'model-00002-of-00002.safetensors', but there "
                                                "is no such file"):
        checkpoint.load_state_dict(tmp_path)
    for text, match in [("{weight_map", "not valid UTF-8 JSON"), ('{"weight_map": [1]}', "'weight_map' must be"),
                        ("[]", "must hold a JSON object"), ("{}", "'weight_map' must be")]:
        index.write_text(text)
        with pytest.raises(ValueError, match=match):
            checkpoint.load_state_dict(tmp_path)


def test_unknown_tensors_are_dropped_and_reported_but_not_extra_encoder_tensors(tmp_path):
    tiny_checkpoint(tmp_path)
    rewrite_weights(tmp_path, lambda s: {**s, "bert.something.else": torch.ones(3)})
    ours, reference = both_backends(tmp_path)
    assert ours.dropped == reference.load_report.dropped == ["bert.something.else"]
    assert "dropped 1 checkpoint tensors this model has no use for (bert.something.else)" in ours.loading_report()
    # A tensor inside an encoder layer is never dropped: another architecture, or more layers than config.json
    rotary = "bert.encoder.layer.0.attention.self.rotary.weight"
    rewrite_weights(tmp_path, lambda s: {**s, rotary: torch.ones(3)})
    with pytest.raises(ValueError, match=rf"unexpected keys \['{rotary}'\]"):
        both_backends(tmp_path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the plain pickle's protocol
def test_pickle_payloads_never_run(tmp_path):
    import pickle
    import zipfile

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'ran')!r}, 'w').close()",))

    (tmp_path / checkpoint.PYTORCH_NAME).write_bytes(pickle.dumps(Payload()))  # a plain pickle
    with pytest.raises(ValueError, match="weights_only=True.*never runs pickled code"):
        checkpoint.load_state_dict(tmp_path)
    with zipfile.ZipFile(tmp_path / checkpoint.PYTORCH_NAME, "w") as z:  # a torch zip whose data.pkl runs code
        z.writestr("archive/data.pkl", pickle.dumps(Payload(), protocol=2))
        z.writestr("archive/version", "3\n")
    with pytest.raises(ValueError, match="weights_only=True"):
        checkpoint.load_state_dict(tmp_path)
    torch.save([torch.ones(2)], tmp_path / checkpoint.PYTORCH_NAME)  # plain tensors, but not a state dict
    with pytest.raises(ValueError, match=r"does not hold a state dict \{name: tensor\} \(found list\)"):
        checkpoint.load_state_dict(tmp_path)
    assert not (tmp_path / "ran").exists()


def test_fill_mask_cli_reports_loading_and_refuses_nan(tmp_path, capsys):
    from minibert import cli
    tiny_checkpoint(tmp_path)
    assert cli.main(["fill-mask", "--model", str(tmp_path), "w1 [MASK] w2"]) == 0
    assert "dropped 4 checkpoint tensors this model has no use for (bert.pooler" in capsys.readouterr().err
    rewrite_weights(tmp_path, lambda s: {k: v for k, v in s.items() if k.startswith("bert.")})
    assert cli.main(["fill-mask", "--model", str(tmp_path), "w1 [MASK] w2"]) == 0
    assert "the checkpoint has no masked-LM head, so these predictions are random" in capsys.readouterr().err
    word = checkpoint.WORD_EMBEDDINGS
    rewrite_weights(tmp_path, lambda s: {**s, word: s[word] * float("nan")})
    assert cli.main(["fill-mask", "--model", str(tmp_path), "w1 [MASK] w2"]) == 2
    assert f"tensor {word} holds 640 NaN or infinite values" in capsys.readouterr().err


def test_fill_mask_refuses_to_rank_nan_logits():
    from minibert import fill_mask
    from minibert.modeling import BertForMaskedLM
    from minibert.tokenizer import BertTokenizer
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(CFG["vocab_size"] - 5)]
    model = BertForMaskedLM(BertConfig(**CFG))
    with torch.no_grad():
        model.cls.predictions.bias.fill_(float("inf"))  # set in code, not loaded: caught before ranking
    with pytest.raises(ValueError, match="NaN or infinite"):
        fill_mask.fill_mask(model, BertTokenizer({t: i for i, t in enumerate(tokens)}), "w1 [MASK]")
