"""The NumPy pretraining step and loop: a tiny BERT memorises a handful of MLM+NSP examples."""
import re

import numpy as np
import pytest

from minibert.reference import train
from minibert.reference.losses import IGNORE_INDEX
from minibert.reference.optim import AdamW


def test_toy_batch_structure():
    batch, vocab = train.toy_batch(seed=3)
    ids, labels = batch["input_ids"], batch["labels"]
    masked = labels != IGNORE_INDEX
    assert masked.sum(axis=1).min() >= 1
    assert (ids[masked] == vocab.index("[MASK]")).all()  # every predicted position is hidden
    assert (ids[:, 0] == vocab.index("[CLS]")).all()
    assert (batch["attention_mask"].sum(1) == (ids != 0).sum(1)).all()
    assert batch["next_sentence_label"].tolist() == [0, 1] * 4
    # Example 0's segment B is sentence 1, word for word (where not masked).
    b_words = train.words(train.SAMPLE_SENTENCES[1])
    seg_b = (batch["token_type_ids"][0] == 1) & (batch["attention_mask"][0] == 1)
    tokens = np.where(masked[0], labels[0], ids[0])[seg_b][:-1]  # drop the final [SEP]
    assert [vocab[t] for t in tokens] == b_words
    with pytest.raises(ValueError, match="at least 3"):
        train.toy_batch(["one sentence.", "two."])


@pytest.mark.slow
def test_overfits_a_handful_of_examples(capsys):
    # Through the command line, exactly as `python -m minibert.reference.train` runs.
    seed = int(np.random.default_rng().integers(100))
    assert train.main(["--steps", "200", "--lr", "5e-3", "--seed", str(seed)]) == 0
    printed = capsys.readouterr().out
    first_loss = float(re.search(r"step +0 .*? loss ([0-9.]+)", printed).group(1))
    final = re.search(r"eval: loss ([0-9.]+) +mlm accuracy ([0-9.]+) +nsp accuracy ([0-9.]+)", printed)
    assert first_loss > 3.0  # ~ln(vocab) + ln(2) at random init
    loss, mlm_acc, nsp_acc = map(float, final.groups())
    assert loss < 0.05 and mlm_acc == 1.0 and nsp_acc == 1.0, printed


def test_step_clips_and_updates_every_parameter():
    batch, _ = train.toy_batch(seed=1)
    model, _, _ = train.overfit_demo(steps=0, seed=1)
    before = {k: v.copy() for k, v in model.params.items()}
    metrics = train.pretraining_step(model, AdamW(model.params, lr=1e-3), batch, lr=1e-3, max_grad_norm=0.5)
    assert metrics["grad_norm"] > 0.5  # a fresh model's gradient is larger than the clip, so it was clipped
    changed = [k for k in before if not np.array_equal(before[k], model.params[k])]
    assert sorted(changed) == sorted(before)
