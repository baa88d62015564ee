"""The torch BERT model on its own: weight layout, init, backends, padding, dropout, losses, errors, I/O.

Parity with HF ``transformers`` and with the NumPy reference lives in test_modeling_parity.py.
"""
import os

import numpy as np
import pytest
import torch

from minibert import modeling, ops, rng
from minibert.config import BertConfig
from minibert.modeling import BertForMaskedLM, BertForPreTraining, BertModel
from minibert.model_shapes import show_layer_shapes
from minibert.ops.eager import AttentionMask
from minibert.rng import dropout_site_offset

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=24, type_vocab_size=2)


def tiny_config(**overrides) -> BertConfig:
    return BertConfig(**{**TINY, **overrides})


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter (LayerNorm gains and biases too) fresh O(0.1) random values, so no test
    runs on the zero biases / unit gains of a fresh init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def random_batch(config: BertConfig, batch=3, seq=11, seed=0, pad_rows=((1, 7), (2, 3))):
    """Fresh random ids / segments / labels; row r of pad_rows is padding from column c on."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (batch, seq), generator=gen)
    token_type_ids = torch.randint(0, config.type_vocab_size, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    for row, start in pad_rows:
        attention_mask[row, start:] = 0
        input_ids[row, start:] = config.pad_token_id
    predicted = (torch.rand(batch, seq, generator=gen) < 0.3) & attention_mask.bool()
    predicted[0, 1] = True
    labels = torch.where(predicted, torch.randint(0, config.vocab_size, (batch, seq), generator=gen), -100)
    next_sentence_label = torch.randint(0, 2, (batch,), generator=gen)
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                labels=labels, next_sentence_label=next_sentence_label)


def make_model(config=None, seed=0, dtype=torch.float32, cls=BertForPreTraining, **kwargs):
    torch.manual_seed(seed)
    model = cls(config or tiny_config(), **kwargs).to(dtype)
    perturb_(model, seed)
    return model.eval()


# --- weight layout and initialisation -------------------------------------------------------------
@pytest.mark.parametrize("ours,theirs", [(BertForPreTraining, "BertForPreTraining"),
                                         (BertForMaskedLM, "BertForMaskedLM"), (BertModel, "BertModel")])
def test_state_dict_keys_and_shapes_are_exactly_hf(ours, theirs):
    config = tiny_config()
    hf = getattr(transformers, theirs)(transformers.BertConfig(**config.to_dict()))
    mine = ours(config).state_dict()
    assert list(mine) == list(hf.state_dict())  # same names, same order
    theirs = hf.state_dict()
    assert all(tuple(mine[k].shape) == tuple(theirs[k].shape) for k in theirs)


def test_mlm_decoder_is_tied_to_word_embeddings_through_training_and_casts():
    model = make_model().train()
    model = model.to(torch.float64)
    head = model.cls.predictions
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias
    batch = random_batch(model.config)
    model(**batch, dropout_seed=1).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    # one Parameter, counted once by .parameters(): optimisers update it once
    assert len(list(model.parameters())) == len(model.state_dict()) - 2


def test_initialisation_matches_bert():
    config = tiny_config(hidden_size=64, intermediate_size=256, vocab_size=512, initializer_range=0.05)
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    for name, p in model.named_parameters():
        if name.endswith("LayerNorm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # every Linear / Embedding matrix ~ normal(0, initializer_range)
            values = p.detach().flatten()
            if name.endswith("word_embeddings.weight"):
                assert torch.equal(p[config.pad_token_id], torch.zeros(config.hidden_size))  # as HF
                values = torch.cat([p[:config.pad_token_id], p[config.pad_token_id + 1:]]).flatten()
            assert abs(values.std().item() - 0.05) < 0.25 * 0.05 + 3 * 0.05 / values.numel() ** 0.5, name
            assert abs(values.mean().item()) < 4 * 0.05 / values.numel() ** 0.5, name


# --- backends -----------------------------------------------------------------------------------
def _forward_and_grads(model, batch, **kwargs):
    model.zero_grad()
    out = model(**batch, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out, grads


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _grads_rel(grads, ref_grads):
    """Worst per-parameter error relative to that gradient's norm, floored at 1e-3 of the whole gradient's
    norm: the key bias's true gradient is exactly 0 (softmax ignores a per-row constant), so its float
    round-off must be judged against the model's gradient scale, not against itself."""
    total = torch.sqrt(sum(g.norm() ** 2 for g in ref_grads.values()))
    return max(((g - ref_grads[n]).norm() / torch.maximum(ref_grads[n].norm(), 1e-3 * total)).item()
               for n, g in grads.items())


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_attention_gelu_layernorm_and_loss_backends_agree_forward_and_backward(dtype, tol):
    model = make_model(dtype=dtype, seed=1)
    batch = random_batch(model.config, seed=2)
    ref_out, ref_grads = _forward_and_grads(model, batch)
    for attn, gelu, ln, loss in [("sdpa", "eager", "eager", "eager"), ("fused", "eager", "eager", "eager"),
                                 ("eager", "fused", "eager", "eager"), ("eager", "eager", "fused", "eager"),
                                 ("eager", "eager", "eager", "fused"), ("fused", "fused", "fused", "fused")]:
        model.set_attn_implementation(attn)
        model.set_gelu_implementation(gelu)
        model.set_layernorm_implementation(ln)
        model.set_loss_implementation(loss)
        out, grads = _forward_and_grads(model, batch)
        for field in ("last_hidden_state", "prediction_logits", "seq_relationship_logits", "mlm_loss", "nsp_loss",
                      "loss"):
            assert _rel(getattr(out, field), getattr(ref_out, field)) < tol, (attn, gelu, ln, loss, field)
        assert _grads_rel(grads, ref_grads) < tol, (attn, gelu, ln, loss)
    model.set_attn_implementation("eager")
    model.set_gelu_implementation("eager")
    model.set_layernorm_implementation("eager")
    model.set_loss_implementation("eager")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fused_attention_op_matches_eager_attention(dtype, tol):
    # Exercise ops.attention directly too: where the extension is absent the model quietly maps "fused"
    # to eager, but the op's own fallback must still honour the model's mask / dropout conventions.
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=gen, dtype=dtype, requires_grad=True) for _ in range(3))
    keep = torch.ones(2, 9)
    keep[0, 5:] = 0
    keep[1] = 0  # a sequence with no real token at all
    mask = AttentionMask(keep)
    for p in (0.0, 0.2):
        want = ops.eager.attention(q, k, v, mask, 8 ** -0.5, p, 11, 5)
        got = ops.attention(q, k, v, attention_mask=keep, scale=8 ** -0.5, dropout_p=p, seed=11, offset=5)
        assert _rel(got, want) < tol
        gw = torch.autograd.grad(want, (q, k, v), torch.ones_like(want))
        gg = torch.autograd.grad(got, (q, k, v), torch.ones_like(got))
        for a, b in zip(gg, gw):
            assert torch.allclose(a, b, rtol=tol, atol=tol)
    assert torch.equal(want[1], torch.zeros_like(want[1]))


@pytest.mark.parametrize("attn", ["eager", "sdpa", "fused"])
def test_bfloat16_autocast_runs_every_backend_close_to_float32(attn):
    # Mixed precision is how pretraining runs on a GPU: Linear outputs are bf16 while biases stay float32,
    # which the fused bias+GELU must accept. bf16 keeps 8 bits of mantissa: agree to 1e-2
    # (docs/design.md, tolerances).
    model = make_model(attn_implementation=attn, gelu_implementation="fused").train()
    batch = random_batch(model.config, pad_rows=((1, 0), (2, 4)))
    want = model(**batch, dropout_seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(**batch, dropout_seed=3)
    got.loss.backward()
    assert got.prediction_logits.dtype == torch.bfloat16
    assert _rel(got.prediction_logits.float(), want.prediction_logits) < 1e-2
    assert abs(got.loss.item() - want.loss.item()) < 1e-2 * want.loss.item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="attn_implementation"):
        BertModel(tiny_config(), attn_implementation="flash")
    model = make_model()
    with pytest.raises(ValueError, match="gelu_implementation"):
        model.set_gelu_implementation("fast")
    with pytest.raises(ValueError, match="layernorm_implementation"):
        model.set_layernorm_implementation("apex")
    with pytest.raises(ValueError, match="loss_implementation"):
        model.set_loss_implementation("liger")


def test_fused_resolves_to_eager_only_without_extension():
    model = BertForPreTraining(tiny_config(), attn_implementation="fused", gelu_implementation="fused",
                               layernorm_implementation="fused", loss_implementation="fused")
    expected = "fused" if ops.is_available() else "eager"
    assert model.attn_implementation == expected and model.gelu_implementation == expected
    assert model.layernorm_implementation == expected and model.loss_implementation == expected


# --- padding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa", "fused"])
def test_fully_padded_sequence_gives_finite_outputs_and_gradients(attn):
    model = make_model(attn_implementation=attn).train()
    batch = random_batch(model.config, pad_rows=((1, 0), (2, 4)))  # row 1: every position is padding
    out = model(**batch, dropout_seed=5)
    out.loss.backward()
    assert all(torch.isfinite(t).all() for t in (out.last_hidden_state, out.prediction_logits, out.loss))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("attn", ["eager", "sdpa", "fused"])
def test_real_tokens_ignore_what_sits_under_padding(attn):
    model = make_model(attn_implementation=attn)
    batch = random_batch(model.config)
    keep = batch["attention_mask"].bool()
    changed = dict(batch)
    noise = torch.randint_like(batch["input_ids"], 1, 64)
    changed["input_ids"] = torch.where(keep, batch["input_ids"], noise)
    a = model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    b = model(changed["input_ids"], batch["attention_mask"]).last_hidden_state
    assert torch.allclose(a[keep], b[keep], atol=1e-6)
    assert not torch.allclose(a[~keep], b[~keep], atol=1e-3)  # the padded positions themselves did change


def test_explicit_position_ids_and_token_types_are_used():
    model = make_model(cls=BertModel)
    batch = random_batch(model.config)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    default = model(ids, mask).last_hidden_state
    explicit = model(ids, mask, torch.zeros_like(ids), torch.arange(11).expand(3, 11)).last_hidden_state
    assert torch.equal(default, explicit)
    shifted = model(ids, mask, position_ids=torch.arange(1, 12).expand(3, 11)).last_hidden_state
    other_segment = model(ids, mask, token_type_ids=torch.ones_like(ids)).last_hidden_state
    assert (shifted - default).abs().max() > 1e-2 and (other_segment - default).abs().max() > 1e-2


# --- dropout -----------------------------------------------------------------------------------
def test_dropout_is_reproducible_from_the_seed():
    model = make_model(config=tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)).train()
    batch = random_batch(model.config)
    a = model(**batch, dropout_seed=7).loss
    b = model(**batch, dropout_seed=7).loss
    c = model(**batch, dropout_seed=8).loss
    assert a.item() == b.item() and a.item() != c.item()
    torch.manual_seed(123)
    d = model(**batch).loss
    torch.manual_seed(123)
    e = model(**batch).loss
    assert d.item() == e.item()
    evaluated = [model.eval()(**batch, dropout_seed=s).loss.item() for s in (7, 8)]
    assert evaluated[0] == evaluated[1] != a.item()  # eval mode: no dropout whatever the seed


@pytest.mark.parametrize("attn", ["sdpa", "fused"])
def test_backends_agree_with_dropout_on(attn):
    config = tiny_config(hidden_dropout_prob=0.15, attention_probs_dropout_prob=0.25)
    model = make_model(config=config, dtype=torch.float64).train()
    batch = random_batch(config)
    ref_out, ref_grads = _forward_and_grads(model, batch, dropout_seed=99)
    model.set_attn_implementation(attn)
    out, grads = _forward_and_grads(model, batch, dropout_seed=99)
    assert _rel(out.prediction_logits, ref_out.prediction_logits) < 1e-12
    assert _grads_rel(grads, ref_grads) < 1e-10


def test_embedding_dropout_uses_the_counter_hash_mask():
    # With one layer removed from the picture (only the embeddings' dropout site), BertModel's
    # embedding output must be LayerNorm(...) * rng.dropout_scale_mask at the reference's (seed, offset).
    config = tiny_config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.0)
    model = make_model(config=config, cls=BertModel, dtype=torch.float64).train()
    batch = random_batch(config)
    captured = {}
    model.embeddings.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], dropout_seed=31)
    model.eval()
    model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    shape = tuple(captured["out"].shape)
    mask = rng.dropout_scale_mask(shape, 0.3, 31, dropout_site_offset(-1, 0, int(np.prod(shape))))
    clean = model.embeddings.LayerNorm(
        model.embeddings.word_embeddings(batch["input_ids"])
        + model.embeddings.token_type_embeddings(batch["token_type_ids"])
        + model.embeddings.position_embeddings(torch.arange(11)))
    np.testing.assert_allclose(captured["out"].detach().numpy(), clean.detach().numpy() * mask, atol=1e-12)


# --- losses ------------------------------------------------------------------------------------
def test_losses_are_mean_cross_entropies_over_predicted_positions():
    model = make_model(dtype=torch.float64)
    batch = random_batch(model.config)
    out = model(**batch)
    logits = out.prediction_logits.detach().numpy()
    labels = batch["labels"].numpy()
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    rows, cols = np.nonzero(labels != -100)
    mlm = -log_probs[rows, cols, labels[rows, cols]].mean()
    nsp_logits = out.seq_relationship_logits.detach().numpy()
    nsp_log_probs = nsp_logits - np.log(np.exp(nsp_logits).sum(-1, keepdims=True))
    nsp = -nsp_log_probs[np.arange(3), batch["next_sentence_label"].numpy()].mean()
    assert abs(out.mlm_loss.item() - mlm) < 1e-12 and abs(out.nsp_loss.item() - nsp) < 1e-12
    assert abs(out.loss.item() - (mlm + nsp)) < 1e-12
    only_mlm = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                     labels=batch["labels"])
    assert only_mlm.nsp_loss is None and abs(only_mlm.loss.item() - mlm) < 1e-12
    as_int32 = model(**{k: v.int() for k, v in batch.items()})  # NumPy-style int32 batches work too
    assert as_int32.loss.item() == out.loss.item()
    mlm_model = make_model(cls=BertForMaskedLM, dtype=torch.float64)
    assert mlm_model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss.item() > 0


@pytest.mark.parametrize("implementation", ["eager", "fused"])
@pytest.mark.parametrize("full_last_layer", [False, True])
@pytest.mark.parametrize("cls", [BertForPreTraining, BertForMaskedLM])
def test_masked_positions_only_gives_the_same_loss_gradients_and_logits(cls, full_last_layer, implementation):
    # With dropout on: the last layer at the kept rows must drop exactly what the whole layer drops there.
    model = make_model(cls=cls, dtype=torch.float64, attn_implementation=implementation,
                       gelu_implementation=implementation, layernorm_implementation=implementation,
                       loss_implementation=implementation).train()
    batch = random_batch(model.config)
    if cls is BertForMaskedLM:
        del batch["next_sentence_label"]
    full, full_grads = _forward_and_grads(model, batch, dropout_seed=4)
    gathered, grads = _forward_and_grads(model, batch, dropout_seed=4, masked_positions_only=True,
                                         full_last_layer=full_last_layer)
    predicted = batch["labels"] != -100
    assert gathered.prediction_logits.shape == (int(predicted.sum()), model.config.vocab_size)
    assert torch.allclose(gathered.prediction_logits, full.prediction_logits[predicted], rtol=0, atol=1e-12)
    assert abs(gathered.loss.item() - full.loss.item()) < 1e-12
    assert _grads_rel(grads, full_grads) < 1e-12
    if cls is BertForPreTraining:  # the pooler read the [CLS] rows of a last layer that ran only there
        assert torch.allclose(gathered.pooler_output, full.pooler_output, rtol=0, atol=1e-12)
    if full_last_layer:
        assert torch.equal(gathered.last_hidden_state, full.last_hidden_state)
    else:
        assert gathered.last_hidden_state is None  # only the rows the losses read were computed
    with pytest.raises(ValueError, match="needs labels"):
        model(batch["input_ids"], masked_positions_only=True, full_last_layer=full_last_layer)


def test_last_layer_at_some_positions_drops_what_the_whole_layer_drops():
    # PositionRows through one layer: each kept row equals that row of the whole layer's output, dropout on.
    from minibert.blocks import DropoutPlan, PositionRows
    model = make_model(dtype=torch.float64).train()
    layer, (batch, seq, width) = model.bert.encoder.layer[-1], (3, 11, model.config.hidden_size)
    hidden = torch.randn(batch, seq, width, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    plan = DropoutPlan(9)
    whole = layer(hidden, None, plan).reshape(-1, width)
    index = torch.tensor([0, 4, 11, 12, 30, 32])
    rows = layer(hidden, None, plan, PositionRows(index, batch * seq))
    assert torch.allclose(rows, whole[index], rtol=0, atol=1e-13)
    # and dropout really acted: without it the rows differ
    assert not torch.allclose(rows, layer(hidden, None, DropoutPlan(None)).reshape(-1, width)[index], atol=1e-3)


@pytest.mark.parametrize("cls", [BertForPreTraining, BertForMaskedLM])
def test_masked_positions_only_with_nothing_to_predict(cls):
    # No labelled position: the MLM rows are empty (loss 0, zero logits rows), NSP still reads [CLS].
    model = make_model(cls=cls).train()
    batch = random_batch(model.config)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    if cls is BertForMaskedLM:
        del batch["next_sentence_label"]
    full, full_grads = _forward_and_grads(model, batch, dropout_seed=2)
    out, grads = _forward_and_grads(model, batch, dropout_seed=2, masked_positions_only=True)
    assert out.prediction_logits.shape == (0, model.config.vocab_size)
    assert abs(out.loss.item() - full.loss.item()) < 1e-6
    if cls is BertForMaskedLM:  # no loss at all: every gradient is exactly zero, as in the full pass
        assert out.loss.item() == 0.0 and all(torch.equal(g, torch.zeros_like(g)) for g in grads.values())
    else:
        assert _grads_rel(grads, full_grads) < 1e-5


def test_batch_with_nothing_to_predict_has_zero_mlm_loss_and_gradient():
    # As in the NumPy reference: 0, not PyTorch's 0/0 = NaN, so one such batch cannot poison training.
    model = make_model(cls=BertForMaskedLM)
    batch = random_batch(model.config)
    out = model(batch["input_ids"], batch["attention_mask"], labels=torch.full_like(batch["labels"], -100))
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


# --- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    (dict(input_ids=torch.randint(0, 64, (2, 25))), "max_position_embeddings"),
    (dict(input_ids=torch.full((2, 5), 64)), "vocab_size"),
    (dict(input_ids=torch.full((2, 5), -1)), r"\[0, 64\)"),
    (dict(input_ids=torch.rand(2, 5)), "integers"),
    (dict(input_ids=torch.randint(0, 64, (5,))), r"\[batch, seq_len\]"),
    (dict(attention_mask=torch.ones(2, 4)), "attention_mask must have shape"),
    (dict(attention_mask=torch.full((2, 5), 2)), "1 \\(real token\\) or 0"),
    (dict(token_type_ids=torch.full((2, 5), 2)), "type_vocab_size"),
    (dict(token_type_ids=torch.zeros(2, 6, dtype=torch.long)), "token_type_ids has shape"),
    (dict(position_ids=torch.full((2, 5), 24)), "max_position_embeddings"),
    (dict(labels=torch.full((2, 5), 64)), "MLM labels"),
    (dict(labels=torch.zeros(2, 4, dtype=torch.long)), "labels has shape"),
    (dict(next_sentence_label=torch.tensor([0, 2])), "IsNext"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    model = make_model()
    inputs = dict(input_ids=torch.randint(0, 64, (2, 5)), attention_mask=None)
    inputs.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        model(**inputs)


# --- saving and loading ------------------------------------------------------------------------
def test_save_pretrained_round_trip(tmp_path):
    model = make_model(seed=4)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    batch = random_batch(model.config, seed=5)
    loaded = BertForPreTraining.from_pretrained(tmp_path)
    assert not loaded.training
    assert torch.equal(loaded(**batch).prediction_logits, model(**batch).prediction_logits)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    # the encoder alone loads from a pretraining checkpoint (the heads are left behind)
    encoder = BertModel.from_pretrained(tmp_path)
    assert torch.equal(encoder(batch["input_ids"]).last_hidden_state,
                       model.bert(batch["input_ids"]).last_hidden_state)


def test_save_pretrained_writes_the_vocabulary_and_checks_it_fits(tmp_path):
    from minibert.tokenizer import BertTokenizer
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = BertTokenizer({t: i for i, t in enumerate(specials + [f"w{i}" for i in range(59)])})
    model = make_model()
    model.save_pretrained(tmp_path / "ok", tokenizer=tokenizer)
    assert (tmp_path / "ok" / "vocab.txt").read_text().split("\n")[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    too_big = BertTokenizer({t: i for i, t in enumerate(specials + [f"w{i}" for i in range(60)])})
    with pytest.raises(ValueError, match="65 tokens but the model only vocab_size=64"):
        model.save_pretrained(tmp_path / "bad", tokenizer=too_big)
    assert not (tmp_path / "bad").exists()


def test_from_pretrained_rejects_a_config_that_does_not_fit_the_weights(tmp_path):
    import json
    make_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"intermediate.dense.weight.*\(48, 32\).*\(40, 32\)"):
        BertForPreTraining.from_pretrained(tmp_path)


def test_load_weights_reports_missing_unexpected_and_misshapen_keys():
    model = make_model()
    state = {k: v for k, v in model.state_dict().items() if ".decoder." not in k}
    broken = dict(state)
    del broken["bert.pooler.dense.bias"]
    broken["bert.encoder.layer.7.output.dense.bias"] = torch.zeros(32)
    with pytest.raises(ValueError, match=r"missing keys \['bert.pooler.dense.bias'\].*layer.7"):
        model.load_weights(broken)
    misshapen = dict(state)
    misshapen["bert.embeddings.word_embeddings.weight"] = torch.zeros(65, 32)
    with pytest.raises(ValueError, match=r"word_embeddings.weight: \(65, 32\) in the checkpoint, \(64, 32\)"):
        model.load_weights(misshapen)
    other = make_model(seed=9)
    other.load_weights({k: v.numpy() for k, v in state.items()})  # NumPy arrays load too
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())


def test_value_checks_skip_other_devices_unless_asked(monkeypatch):
    # Reading values off a GPU is a host sync: only shapes and dtypes are checked there by default.
    # The meta device stands in for one (its tensors have no values to read at all).
    out_of_range = torch.full((2, 5), 99, device="meta")
    modeling._check_ids("input_ids", out_of_range, (2, 5), 0, 64, "")
    with pytest.raises(TypeError, match="integers"):
        modeling._check_ids("input_ids", out_of_range.float(), (2, 5), 0, 64, "")
    monkeypatch.setattr(modeling, "CHECK_INPUT_VALUES", True)
    with pytest.raises((RuntimeError, NotImplementedError)):  # now it reads the values
        modeling._check_ids("input_ids", out_of_range, (2, 5), 0, 64, "")


def test_show_your_work_entry_point_runs(capsys):
    show_layer_shapes(BertForPreTraining)  # what ``python -m minibert.modeling`` prints
    printed = capsys.readouterr().out
    assert "prediction_logits       (2, 8, 100)" in printed and "loss = mlm" in printed
