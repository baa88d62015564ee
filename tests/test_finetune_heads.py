"""The fine-tuning heads against HF ``transformers`` on the same weights, and loading/saving them.

Logits and losses of ``BertForSequenceClassification`` (classes and regression) and
``BertForQuestionAnswering`` must equal transformers' in float32 (< 1e-5 relative) with padded rows, for
every attention backend; our saved checkpoints load in transformers and theirs in ours.
"""
import json

import pytest
import torch

from minibert.config import BertConfig
from minibert.modeling import (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                               span_loss)

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=24, type_vocab_size=2)
HEADS = {"classify": (BertForSequenceClassification, "BertForSequenceClassification"),
         "qa": (BertForQuestionAnswering, "BertForQuestionAnswering")}


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """O(0.1) noise on every parameter, so biases and LayerNorm gains are not their 0/1 init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def random_batch(config: BertConfig, seed: int, num_labels: int, batch=4, seq=13) -> dict:
    """Random ids and segments with rows 1 and 2 padded; class labels (or regression targets) and spans."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[1, 9:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = config.pad_token_id
    token_type_ids = (torch.arange(seq) >= torch.randint(2, seq, (batch, 1), generator=gen)).long()
    labels = (torch.randn(batch, generator=gen) if num_labels == 1
              else torch.randint(0, num_labels, (batch,), generator=gen))
    start = torch.randint(0, seq, (batch,), generator=gen)
    end = torch.randint(0, seq, (batch,), generator=gen)
    start[3] = seq + 5  # an answer cut off by the window: ignored by both
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                labels=labels, start_positions=start, end_positions=end)


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return ((a - b).norm() / b.norm()).item()


def inputs_for(head: str, batch: dict) -> dict:
    keys = ["input_ids", "attention_mask", "token_type_ids"]
    keys += ["labels"] if head == "classify" else ["start_positions", "end_positions"]
    return {k: batch[k] for k in keys}


def compare(head: str, mine, theirs) -> None:
    fields = ["logits"] if head == "classify" else ["start_logits", "end_logits"]
    for field in fields + ["loss"]:
        assert rel(getattr(mine, field), getattr(theirs, field)) < 1e-5, field
    assert getattr(mine, fields[0]).abs().max() > 0.05  # logits not ~0: the bound is a real test


@pytest.mark.parametrize("attn", ["eager", "sdpa", "fused"])
@pytest.mark.parametrize("head,num_labels", [("classify", 3), ("classify", 1), ("qa", 2)],
                         ids=["classes", "regression", "qa"])
def test_hf_checkpoint_loads_and_matches_hf(tmp_path, one_torch_thread, head, num_labels, attn):
    ours_cls, theirs_name = HEADS[head]
    config = BertConfig(**TINY, num_labels=num_labels)
    torch.manual_seed(0)
    hf = getattr(transformers, theirs_name)(transformers.BertConfig(**config.to_dict()))
    perturb_(hf, seed=1)
    hf.save_pretrained(tmp_path)
    hf = getattr(transformers, theirs_name).from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours = ours_cls.from_pretrained(tmp_path, attn_implementation=attn, gelu_implementation="fused")
    assert ours.newly_initialized == [] and ours.loading_report() == "every parameter came from the checkpoint"
    batch = inputs_for(head, random_batch(config, seed=2, num_labels=num_labels))
    with torch.no_grad():
        compare(head, ours(**batch), hf(**batch))


@pytest.mark.parametrize("head", ["classify", "qa"])
def test_our_save_loads_in_hf_with_labels_and_architecture(tmp_path, one_torch_thread, head):
    ours_cls, theirs_name = HEADS[head]
    id2label = {0: "negative", 1: "neutral", 2: "positive"} if head == "classify" else None
    config = BertConfig(**TINY, num_labels=3 if head == "classify" else 2, id2label=id2label)
    torch.manual_seed(3)
    ours = ours_cls(config, attn_implementation="sdpa")
    perturb_(ours, seed=4)
    ours.eval().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == [theirs_name]
    hf, info = getattr(transformers, theirs_name).from_pretrained(tmp_path, attn_implementation="eager",
                                                                   output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    if id2label:
        assert hf.config.id2label == id2label and hf.config.label2id == {v: k for k, v in id2label.items()}
    batch = inputs_for(head, random_batch(config, seed=5, num_labels=config.num_labels))
    with torch.no_grad():
        compare(head, ours(**batch), hf.eval()(**batch))
    back = ours_cls.from_pretrained(tmp_path)  # and ours reads it back with the label names
    assert back.config.id2label == id2label


@pytest.mark.parametrize("head", ["classify", "qa"])
def test_pretraining_checkpoint_gives_the_encoder_and_a_fresh_hf_initialised_head(tmp_path, one_torch_thread,
                                                                                  head):
    config = BertConfig(**TINY)
    torch.manual_seed(6)
    pre = BertForPreTraining(config)
    perturb_(pre, seed=7)
    pre.save_pretrained(tmp_path)
    ours_cls = HEADS[head][0]
    torch.manual_seed(8)
    model = ours_cls.from_pretrained(tmp_path, num_labels=5)
    state = model.state_dict()
    for key, value in pre.state_dict().items():
        if key.startswith("bert.") and key in state:
            assert torch.equal(state[key], value), key
    head_prefix = "classifier." if head == "classify" else "qa_outputs."
    assert model.newly_initialized == [head_prefix + "bias", head_prefix + "weight"]
    report = model.loading_report()
    assert "initialised 2 new" in report and "cls.predictions" in report and "cls.seq_relationship" in report
    weight, bias = state[head_prefix + "weight"], state[head_prefix + "bias"]
    assert weight.shape[0] == (5 if head == "classify" else 2)
    assert torch.equal(bias, torch.zeros_like(bias))  # HF init: normal(0, 0.02) weights, zero bias
    assert 0.01 < weight.std().item() < 0.03


def test_num_labels_mismatch_with_a_checkpoint_head_is_a_clear_error(tmp_path):
    BertForSequenceClassification(BertConfig(**TINY, num_labels=3)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="classifier.weight.*another number of labels"):
        BertForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    batch = random_batch(model.config, seed=9, num_labels=3)
    with pytest.raises(ValueError, match=r"ids 0..2 \(num_labels=3\)"):
        model(batch["input_ids"], labels=torch.tensor([0, 1, 3, 2]))
    with pytest.raises(TypeError, match="integers"):
        model(batch["input_ids"], labels=torch.tensor([0.0, 1.0, 2.0, 1.0]))


def test_span_loss_ignores_positions_outside_the_sequence_like_hf():
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(3, 7, generator=gen)
    want = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([2, 6]))
    assert torch.allclose(span_loss(logits, torch.tensor([2, 6, 7])), want)
    assert span_loss(logits, torch.tensor([9, 7, 8])).item() == 0.0  # nothing kept: 0, not NaN
    with pytest.raises(ValueError, match="must lie in"):
        span_loss(logits, torch.tensor([-1, 0, 1]))


@pytest.mark.parametrize("theirs_name", ["BertModel", "BertForMaskedLM"])
def test_real_hf_encoder_directories_load_with_the_missing_parts_initialised(tmp_path, one_torch_thread,
                                                                             theirs_name):
    config = BertConfig(**TINY)
    torch.manual_seed(11)
    hf = getattr(transformers, theirs_name)(transformers.BertConfig(**config.to_dict()))
    perturb_(hf, seed=12)
    hf.save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    encoder = hf if theirs_name == "BertModel" else hf.bert
    batch = random_batch(config, seed=13, num_labels=2)
    with torch.no_grad():
        want = encoder.eval()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        got = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert rel(got.last_hidden_state, want.last_hidden_state) < 1e-5
    expected_new = ["classifier.bias", "classifier.weight"]
    if theirs_name == "BertForMaskedLM":  # HF builds its masked-LM model without a pooler
        expected_new = ["bert.pooler.dense.bias", "bert.pooler.dense.weight"] + expected_new
    else:
        assert rel(got.pooler_output, want.pooler_output) < 1e-5
    assert model.newly_initialized == expected_new
