"""The NumPy reference against HF transformers on the same weights: outputs, losses and gradients, in
float32 and float64, with and without padding; and checkpoints moving both ways (save_pretrained)."""
import numpy as np
import pytest
import torch
import transformers

from minibert.config import BertConfig
from minibert.reference.model import BertForPreTraining

HF_CONFIG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=16, initializer_range=0.2)
B, S = 3, 9


def hf_model(dtype, **kw):
    torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
    cfg = transformers.BertConfig(**{**HF_CONFIG, **kw}, attn_implementation="eager")
    model = transformers.BertForPreTraining(cfg).eval()
    assert model.config._attn_implementation == "eager"
    return model.double() if dtype == np.float64 else model


def batch(padded):
    gen = np.random.default_rng()
    ids = gen.integers(1, HF_CONFIG["vocab_size"], (B, S))
    tt = (np.arange(S) >= 4).astype(int)[None].repeat(B, 0)
    mask = np.ones((B, S), dtype=int)
    if padded:
        mask[0, 6:] = 0
        mask[2, 3:] = 0
        ids[mask == 0] = 0
    labels = np.full((B, S), -100)
    labels[:, 1] = gen.integers(0, HF_CONFIG["vocab_size"], B)
    labels[1, 5] = 7
    return ids, tt, mask, labels, gen.integers(0, 2, B)


def hf_run(model, ids, tt, mask, labels, nsp):
    t = torch.tensor
    return model(input_ids=t(ids), token_type_ids=t(tt), attention_mask=t(mask), labels=t(labels),
                 next_sentence_label=t(nsp), output_hidden_states=True)


TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_outputs_and_loss_match_hf(tmp_path, dtype, padded, hidden_act):
    hf = hf_model(dtype, hidden_act=hidden_act)
    hf.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(tmp_path, dtype=dtype)
    inputs = batch(padded)
    out = ours.forward(*inputs)
    with torch.no_grad():
        ref = hf_run(hf, *inputs)
    pairs = {"last_hidden_state": ref.hidden_states[-1], "prediction_logits": ref.prediction_logits,
             "seq_relationship_logits": ref.seq_relationship_logits, "loss": ref.loss}
    for name, want in pairs.items():
        got = out[name]
        assert np.asarray(got).dtype == dtype
        err = np.abs(got - want.numpy()).max()
        assert err < TOLERANCE[dtype], (name, err)
    assert np.abs(out["prediction_logits"]).max() > 0.1  # the comparison is not between near-zeros
    with torch.no_grad():
        pooled = hf.bert(input_ids=torch.tensor(inputs[0]), token_type_ids=torch.tensor(inputs[1]),
                         attention_mask=torch.tensor(inputs[2])).pooler_output
    assert np.abs(out["pooler_output"] - pooled.numpy()).max() < TOLERANCE[dtype]


def test_gradients_match_torch_autograd(tmp_path):
    hf = hf_model(np.float64)
    hf.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(tmp_path, dtype=np.float64)
    inputs = batch(padded=True)
    ours.forward(*inputs)
    grads = ours.backward()
    hf_run(hf, *inputs).loss.backward()
    hf_grads = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    assert sorted(grads) == sorted(hf_grads)  # HF lists the tied decoder once, as the word embeddings
    for k, g in grads.items():
        assert np.abs(g - hf_grads[k]).max() <= 1e-10 * max(1.0, np.abs(hf_grads[k]).max()), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_our_checkpoint_loads_in_transformers(tmp_path, dtype):
    seed = int(np.random.default_rng().integers(99))
    ours = BertForPreTraining(BertConfig(**HF_CONFIG), dtype=dtype, seed=seed)
    ours.save_pretrained(tmp_path)
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path, attn_implementation="eager",
                                                               output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    hf = hf.eval().to(torch.float64 if dtype == np.float64 else torch.float32)
    # Tied on load: the decoder is the embedding table itself.
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()
    inputs = batch(padded=True)
    out = ours.forward(*inputs)
    with torch.no_grad():
        ref = hf_run(hf, *inputs)
    assert np.abs(out["prediction_logits"] - ref.prediction_logits.numpy()).max() < TOLERANCE[dtype]
    assert abs(out["loss"] - ref.loss.item()) < TOLERANCE[dtype]
