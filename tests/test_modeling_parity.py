"""The torch model against two independent oracles on the same weights.

* HF ``transformers`` (float32 forward < 1e-4 through its own checkpoint files, both directions; float64
  gradients), the model BERT checkpoints in the wild come from;
* our NumPy reference with hand-written backward (float64 loss and every parameter's gradient < 1e-8,
  dropout off and on, every attention backend).

``fused_ops="fused"`` runs the fused LayerNorm and the fused MLM/NSP losses, "eager" neither.
"""
import numpy as np
import pytest
import torch

from minibert import checkpoint
from minibert.config import BertConfig
from minibert.modeling import BertForMaskedLM, BertForPreTraining, BertModel
from minibert.reference import model as reference

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=24, type_vocab_size=2)


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Fresh O(0.1) noise on every parameter, so biases and LayerNorm gains are not their 0/1 init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def random_batch(config: BertConfig, seed: int, batch=3, seq=13):
    """Random ids (no [PAD] id at real positions), segments, MLM and NSP labels; rows 1 and 2 padded."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[1, 9:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = config.pad_token_id
    token_type_ids = (torch.arange(seq) >= torch.randint(2, seq, (batch, 1), generator=gen)).long()
    predicted = (torch.rand(batch, seq, generator=gen) < 0.3) & attention_mask.bool()
    predicted[:, 1] = True
    labels = torch.where(predicted, torch.randint(0, config.vocab_size, (batch, seq), generator=gen), -100)
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                labels=labels, next_sentence_label=torch.randint(0, 2, (batch,), generator=gen))


def hf_config(config: BertConfig):
    return transformers.BertConfig(**config.to_dict())


def max_abs(a, b) -> float:
    a = a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(a)
    b = b.detach() if isinstance(b, torch.Tensor) else torch.as_tensor(b)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return (a.double() - b.double()).abs().max().item()


# --- HF transformers --------------------------------------------------------------------------------
@pytest.mark.parametrize("fused_ops", ["eager", "fused"])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_hf_checkpoint_loads_and_matches_hf_outputs(tmp_path, hidden_act, fused_ops):
    config = BertConfig(**TINY, hidden_act=hidden_act)
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(hf_config(config))
    perturb_(hf, seed=1)
    hf.save_pretrained(tmp_path)
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours = BertForPreTraining.from_pretrained(tmp_path, layernorm_implementation=fused_ops,
                                              loss_implementation=fused_ops)
    batch = random_batch(config, seed=2)
    with torch.no_grad():
        theirs = hf(**batch, output_hidden_states=True)
        theirs_pooled = hf.bert(batch["input_ids"], batch["attention_mask"],
                                batch["token_type_ids"]).pooler_output
        mine = ours(**batch)
    assert max_abs(mine.last_hidden_state, theirs.hidden_states[-1]) < 1e-4
    assert max_abs(mine.pooler_output, theirs_pooled) < 1e-4
    assert max_abs(mine.prediction_logits, theirs.prediction_logits) < 1e-4
    assert max_abs(mine.seq_relationship_logits, theirs.seq_relationship_logits) < 1e-4
    assert max_abs(mine.loss, theirs.loss) < 1e-4
    assert mine.prediction_logits.abs().max() > 1.0  # O(1) logits: the bound above is a real test


@pytest.mark.parametrize("fused_ops", ["eager", "fused"])
def test_our_checkpoint_loads_in_hf_with_every_key_used(tmp_path, fused_ops):
    config = BertConfig(**TINY)
    torch.manual_seed(3)
    ours = BertForPreTraining(config, layernorm_implementation=fused_ops, loss_implementation=fused_ops)
    perturb_(ours, seed=4)
    ours.eval().save_pretrained(tmp_path)
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path, attn_implementation="eager",
                                                                output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    decoder, embeddings = hf.cls.predictions.decoder.weight, hf.bert.embeddings.word_embeddings.weight
    assert decoder.data_ptr() == embeddings.data_ptr()
    batch = random_batch(config, seed=5)
    with torch.no_grad():
        theirs, mine = hf.eval()(**batch), ours(**batch)
    assert max_abs(mine.prediction_logits, theirs.prediction_logits) < 1e-4
    assert max_abs(mine.seq_relationship_logits, theirs.seq_relationship_logits) < 1e-4


@pytest.mark.parametrize("fused_ops", ["eager", "fused"])
def test_gradients_match_hf_in_float64_including_a_pad_id_at_a_real_position(fused_ops):
    # A [PAD] id where attention_mask is 1 shows the padding_idx rule: like HF, the pad row of the word
    # embeddings gets no gradient from the lookup (only from the tied MLM decoder).
    config = BertConfig(**TINY)
    torch.manual_seed(6)
    hf = transformers.BertForPreTraining(hf_config(config))
    hf.set_attn_implementation("eager")
    hf = hf.double()
    perturb_(hf, seed=7)
    ours = BertForPreTraining(config, layernorm_implementation=fused_ops, loss_implementation=fused_ops).double()
    ours.load_weights(hf.state_dict())
    batch = random_batch(config, seed=8)
    batch["input_ids"][0, 5] = config.pad_token_id
    hf.eval()(**batch).loss.backward()
    ours.eval()(**batch).loss.backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert max_abs(p.grad, theirs[name].grad) < 1e-10, name


@pytest.mark.parametrize("fused_ops", ["eager", "fused"])
@pytest.mark.parametrize("ours_cls,theirs_name",
                         [(BertForMaskedLM, "BertForMaskedLM"), (BertModel, "BertModel")])
def test_other_hf_model_types_load_and_match(tmp_path, ours_cls, theirs_name, fused_ops):
    config = BertConfig(**TINY)
    torch.manual_seed(9)
    hf = getattr(transformers, theirs_name)(hf_config(config))
    perturb_(hf, seed=10)
    hf.save_pretrained(tmp_path)
    hf = getattr(transformers, theirs_name).from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours = ours_cls.from_pretrained(tmp_path, layernorm_implementation=fused_ops, loss_implementation=fused_ops)
    batch = random_batch(config, seed=11)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        theirs, mine = hf(**inputs), ours(**inputs)
    if ours_cls is BertModel:
        assert max_abs(mine.last_hidden_state, theirs.last_hidden_state) < 1e-4
        assert max_abs(mine.pooler_output, theirs.pooler_output) < 1e-4
    else:
        assert max_abs(mine.prediction_logits, theirs.logits) < 1e-4
    ours.save_pretrained(tmp_path / "ours")  # and back: HF reads our file of this model type
    back, info = getattr(transformers, theirs_name).from_pretrained(tmp_path / "ours",
                                                                    output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert all(torch.equal(p, back.state_dict()[k]) for k, p in hf.state_dict().items())


# --- the NumPy reference ---------------------------------------------------------------------------
@pytest.mark.parametrize("fused_ops", ["eager", "fused"])
@pytest.mark.parametrize("attn", ["eager", "sdpa", "fused"])
@pytest.mark.parametrize("training", [False, True], ids=["dropout_off", "dropout_on"])
def test_loss_and_every_gradient_match_the_numpy_reference_in_float64(attn, training, fused_ops):
    config = BertConfig(**TINY, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    torch.manual_seed(12)
    ours = BertForPreTraining(config, attn_implementation=attn, gelu_implementation="fused",
                              layernorm_implementation=fused_ops, loss_implementation=fused_ops).double()
    perturb_(ours, seed=13)
    ours.train(training)
    params = checkpoint.normalize_keys({k: v.detach().numpy() for k, v in ours.state_dict().items()})
    ref = reference.BertForPreTraining(config, params=params, dtype=np.float64)
    batch = random_batch(config, seed=14)
    numpy_batch = {k: v.numpy() for k, v in batch.items()}

    want = ref.forward(numpy_batch["input_ids"], numpy_batch["token_type_ids"], numpy_batch["attention_mask"],
                       masked_lm_labels=numpy_batch["labels"],
                       next_sentence_label=numpy_batch["next_sentence_label"],
                       training=training, dropout_seed=2024)
    want_grads = ref.backward()
    got = ours(**batch, dropout_seed=2024)
    got.loss.backward()

    for field in ("last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits",
                  "mlm_loss", "nsp_loss", "loss"):
        assert max_abs(getattr(got, field), want[field]) < 1e-10, field
    grads = {name: p.grad for name, p in ours.named_parameters()}
    assert set(grads) == set(want_grads)
    for name, g in grads.items():
        assert max_abs(g, want_grads[name]) < 1e-8, name
    if training:  # dropout really was on: the masks changed the answer
        ours.eval()
        assert max_abs(ours(**batch).loss, want["loss"]) > 1e-3
