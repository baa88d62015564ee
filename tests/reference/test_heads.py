"""The NumPy fine-tuning heads: every gradient against central differences (float64, dropout on), and the
torch heads against them on the same weights (float64 loss and every parameter gradient < 1e-8)."""
import numpy as np
import pytest
import torch

from minibert import checkpoint
from minibert import modeling
from minibert.config import BertConfig
from minibert.reference import heads
from minibert.reference.gradcheck import check_gradients


def small_config(**kw):
    # A small vocabulary, so that most rows of the word embeddings are used and get a gradient to check.
    base = dict(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=12, hidden_dropout_prob=0.2,
                attention_probs_dropout_prob=0.2, initializer_range=0.5)
    base.update(kw)
    return BertConfig(**base)


def random_inputs(gen, cfg, B=3, S=7):
    ids = gen.integers(1, cfg.vocab_size, (B, S))
    token_types = (np.arange(S) >= gen.integers(2, S, (B, 1))).astype(int)
    mask = np.ones((B, S), dtype=int)
    mask[1, S - 2:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = cfg.pad_token_id
    return ids, token_types, mask


def targets(gen, head: str, cfg, B=3, S=7) -> dict:
    if head == "qa":
        start, end = gen.integers(0, S, B), gen.integers(0, S, B)
        start[0] = S + 2  # cut off by the window: ignored in the start loss
        return {"start_positions": start, "end_positions": end}
    if cfg.num_labels == 1:
        return {"labels": gen.normal(size=B)}
    return {"labels": gen.integers(0, cfg.num_labels, B)}


CASES = {"classes": ("classify", 3), "regression": ("classify", 1), "qa": ("qa", 2)}


def make_reference(head: str, cfg, **kw):
    cls = heads.BertForQuestionAnswering if head == "qa" else heads.BertForSequenceClassification
    return cls(cfg, **kw)


@pytest.mark.parametrize("case", CASES)
def test_every_gradient_against_central_differences_with_dropout(case):
    head, num_labels = CASES[case]
    gen = np.random.default_rng()
    cfg = small_config(num_labels=num_labels, classifier_dropout=0.3)
    model = make_reference(head, cfg, dtype=np.float64, seed=int(gen.integers(1 << 30)))
    ids, tt, mask = random_inputs(gen, cfg)
    labels = targets(gen, head, cfg)

    def loss():
        return model.forward(ids, tt, mask, **labels, training=True, dropout_seed=11)["loss"]

    loss()
    grads = model.backward()
    assert sorted(grads) == sorted(model.params)
    assert all(grads[k].shape == v.shape and grads[k].dtype == np.float64 for k, v in model.params.items())
    # Softmax ignores a constant added to a whole row, so some true gradients are exactly 0: the key bias
    # (see tests/reference/test_reference_model.py) and, for QA, whatever shifts every position's start
    # (end) logit alike: the qa_outputs bias and the last LayerNorm's bias. Those are checked to be ~0;
    # every other parameter by central differences.
    zero = [k for k in grads if k.endswith("attention.self.key.bias")]
    if head == "qa":
        zero += ["qa_outputs.bias", f"bert.encoder.layer.{cfg.num_hidden_layers - 1}.output.LayerNorm.bias"]
    assert all(np.abs(grads[k]).max() < 1e-12 for k in zero), {k: np.abs(grads[k]).max() for k in zero}
    others = {k: v for k, v in model.params.items() if k not in zero}
    errors = check_gradients(loss, others, grads, max_coords=12)
    assert max(errors.values()) < 1e-6, {k: e for k, e in errors.items() if e >= 1e-6}


def test_classifier_dropout_is_on_in_training_only():
    gen = np.random.default_rng()
    cfg = small_config(num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       classifier_dropout=0.5)
    model = heads.BertForSequenceClassification(cfg, dtype=np.float64)
    ids, tt, mask = random_inputs(gen, cfg)
    plain = model.forward(ids, tt, mask)["logits"]
    dropped = model.forward(ids, tt, mask, training=True, dropout_seed=3)["logits"]
    assert np.abs(plain - dropped).max() > 1e-3  # only the classifier's dropout is on here
    assert np.array_equal(dropped, model.forward(ids, tt, mask, training=True, dropout_seed=3)["logits"])


def test_bad_params_and_backward_without_a_loss():
    cfg = small_config(num_labels=3)
    params = heads.BertForSequenceClassification(cfg).params
    with pytest.raises(ValueError, match="classifier.weight"):
        heads.BertForSequenceClassification(small_config(num_labels=4), params=params)
    model = heads.BertForQuestionAnswering(cfg)
    model.forward(*random_inputs(np.random.default_rng(0), cfg))
    with pytest.raises(RuntimeError, match="start_positions"):
        model.backward()


@pytest.mark.parametrize("attn", ["eager", "sdpa", "fused"])
@pytest.mark.parametrize("training", [False, True], ids=["dropout_off", "dropout_on"])
@pytest.mark.parametrize("case", CASES)
def test_torch_heads_match_numpy_in_float64(case, training, attn):
    head, num_labels = CASES[case]
    gen = np.random.default_rng(int(torch.randint(0, 1 << 30, ()).item()))
    cfg = small_config(num_labels=num_labels, max_position_embeddings=16)
    torch_cls = modeling.BertForQuestionAnswering if head == "qa" else modeling.BertForSequenceClassification
    torch.manual_seed(int(gen.integers(1 << 30)))
    ours = torch_cls(cfg, attn_implementation=attn, gelu_implementation="fused").double().train(training)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = make_reference(head, cfg, dtype=np.float64,
                         params={k: v.detach().numpy() for k, v in ours.state_dict().items()})
    ids, tt, mask = random_inputs(gen, cfg)
    labels = targets(gen, head, cfg)
    want = ref.forward(ids, tt, mask, **labels, training=training, dropout_seed=2024)
    want_grads = ref.backward()
    got = ours(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt),
               **{k: torch.from_numpy(v) for k, v in labels.items()}, dropout_seed=2024)
    got.loss.backward()
    outputs = ["start_logits", "end_logits"] if head == "qa" else ["logits"]
    for field in outputs + ["loss"]:
        diff = np.abs(np.asarray(getattr(got, field).detach()) - want[field]).max()
        assert np.isfinite(diff) and diff < 1e-10, field
    grads = {k: p.grad for k, p in ours.named_parameters()}
    assert set(grads) == set(want_grads) == set(checkpoint.normalize_keys(ours.state_dict()))
    # The torch embedding has HF's padding_idx: the [PAD] row gets no gradient from the lookup. The NumPy
    # reference has no such rule, and QA's loss reaches padded positions (a logit at every position), so
    # that one row is compared with 0 instead.
    pad_row = grads["bert.embeddings.word_embeddings.weight"][cfg.pad_token_id]
    assert torch.equal(pad_row, torch.zeros_like(pad_row))
    want_grads["bert.embeddings.word_embeddings.weight"][cfg.pad_token_id] = 0.0
    for name, g in grads.items():
        assert np.abs(g.numpy() - want_grads[name]).max() < 1e-8, name
    if training:  # the masks were really applied: without them the loss differs
        assert abs(ref.forward(ids, tt, mask, **labels)["loss"] - want["loss"]) > 1e-4
