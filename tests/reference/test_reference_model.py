"""BertForPreTraining in NumPy: whole-model gradient check with dropout on, input validation
(the dropout-site table is tested in test_rng.py). (HF parity lives in test_reference_hf_parity.py.)"""
import numpy as np
import pytest

from minibert.config import BertConfig
from minibert.reference import model as M
from minibert.reference.gradcheck import check_gradients


def small_config(**kw):
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=12, hidden_dropout_prob=0.2,
                attention_probs_dropout_prob=0.2, initializer_range=0.5)
    base.update(kw)
    return BertConfig(**base)


def random_batch(gen, cfg, B=2, S=6):
    ids = gen.integers(0, cfg.vocab_size, (B, S))
    token_types = gen.integers(0, 2, (B, S))
    mask = np.ones((B, S), dtype=int)
    mask[1, S - 2:] = 0
    labels = np.full((B, S), -100)
    labels[0, 1], labels[1, 2], labels[0, 4] = gen.integers(0, cfg.vocab_size, 3)
    return ids, token_types, mask, labels, np.array([0, 1])


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_whole_model_gradient_with_dropout(hidden_act):
    gen = np.random.default_rng()
    cfg = small_config(hidden_act=hidden_act)
    model = M.BertForPreTraining(cfg, dtype=np.float64, seed=int(gen.integers(1 << 30)))
    ids, tt, mask, labels, nsp = random_batch(gen, cfg)

    def loss():
        return model.forward(ids, tt, mask, labels, nsp, training=True, dropout_seed=5)["loss"]

    loss()
    grads = model.backward()
    assert sorted(grads) == sorted(model.params)
    assert all(grads[k].shape == v.shape and grads[k].dtype == np.float64 for k, v in model.params.items())
    # The key bias adds q.b_k to every score of a row, and softmax ignores a constant added to a row, so its
    # true gradient is exactly 0: check that instead of a relative error of rounding noise against noise.
    key_biases = [k for k in grads if k.endswith("attention.self.key.bias")]
    for k in key_biases:
        assert np.abs(grads[k]).max() < 1e-12
    others = {k: v for k, v in model.params.items() if k not in key_biases}
    errors = check_gradients(loss, others, grads, max_coords=12)
    assert max(errors.values()) < 1e-6, {k: e for k, e in errors.items() if e >= 1e-6}


def test_dropout_changes_output_reproducibly():
    gen = np.random.default_rng()
    cfg = small_config()
    model = M.BertForPreTraining(cfg, dtype=np.float64)
    ids, tt, mask, labels, nsp = random_batch(gen, cfg)
    eval_out = model.forward(ids, tt, mask)["last_hidden_state"]
    a = model.forward(ids, tt, mask, training=True, dropout_seed=1)["last_hidden_state"]
    b = model.forward(ids, tt, mask, training=True, dropout_seed=1)["last_hidden_state"]
    c = model.forward(ids, tt, mask, training=True, dropout_seed=2)["last_hidden_state"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - eval_out).max() > 1e-3 and np.abs(a - c).max() > 1e-3


def test_float32_model_stays_float32():
    gen = np.random.default_rng()
    cfg = small_config()
    model = M.BertForPreTraining(cfg, dtype=np.float32)
    ids, tt, mask, labels, nsp = random_batch(gen, cfg)
    out = model.forward(ids, tt, mask, labels, nsp, training=True)
    assert out["prediction_logits"].dtype == np.float32 and out["loss"].dtype == np.float32
    assert np.isfinite(out["loss"])
    assert all(g.dtype == np.float32 for g in model.backward().values())


def test_init_follows_bert():
    cfg = small_config(vocab_size=400, hidden_size=32, intermediate_size=64, initializer_range=0.02)
    params = M.init_params(cfg, seed=3)
    w = params["bert.encoder.layer.0.intermediate.dense.weight"]
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
    assert (params["bert.encoder.layer.1.output.LayerNorm.weight"] == 1).all()
    assert (params["cls.predictions.bias"] == 0).all()
    assert (params["bert.pooler.dense.bias"] == 0).all()


def test_bad_inputs_raise_clear_errors():
    cfg = small_config()
    model = M.BertForPreTraining(cfg)
    ids = np.ones((2, 5), dtype=int)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.forward(np.ones((1, 13), dtype=int))
    with pytest.raises(ValueError, match="integer array"):
        model.forward(ids.astype(float))
    with pytest.raises(ValueError, match="token_type_ids must have the shape"):
        model.forward(ids, token_type_ids=np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="1 \\(attend\\) or 0"):
        model.forward(ids, attention_mask=np.full((2, 5), 2))
    with pytest.raises(ValueError, match="embedding ids must lie in"):
        model.forward(ids * 50)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 50\)"):
        model.forward(ids, masked_lm_labels=np.full((2, 5), 50))
    model.forward(ids)
    with pytest.raises(RuntimeError, match="needs a forward"):
        model.backward()
    bad = M.init_params(cfg)
    bad["bert.pooler.dense.weight"] = bad["bert.pooler.dense.weight"][:, :3]
    del bad["cls.seq_relationship.bias"]
    with pytest.raises(ValueError, match="missing keys.*cls.seq_relationship.bias(.|\\n)*pooler.dense.weight"):
        M.BertForPreTraining(cfg, params=bad)


def test_gradcheck_show_your_work(capsys):
    from minibert.reference import gradcheck
    assert gradcheck.main() == 0
    printed = capsys.readouterr().out
    worst = float(printed.rsplit("worst: ", 1)[1])
    assert worst < 1e-6
    assert printed.count("bert.encoder.layer.1.") == 16  # every tensor of a layer is listed
