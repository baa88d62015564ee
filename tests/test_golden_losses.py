"""Per-step losses of small pretraining and fine-tuning runs, pinned.

``tests/data/golden/*.json`` were written by these same runs on the code before the package was
reorganised into ``minibert/train/`` (one data path, one training step, the model's own masked-positions
head). A reorganisation that changes no behaviour reproduces every logged number: float64 runs to 1e-9
relative, float32 runs to 1e-5 (thread counts and summation order may differ between machines).
Regenerate only for an intended change of behaviour, and say so in the commit.
"""
import json
import os
import random

import numpy as np
import pytest

from minibert import cli

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "golden")
TINY_MODEL = ["--layers", "2", "--hidden", "32", "--heads", "2", "--intermediate", "64"]
SQUAD_SAMPLE = os.path.join(HERE, "data", "squad_v1_sample.json")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def golden(name):
    with open(os.path.join(GOLDEN, f"{name}_losses.json"), encoding="utf-8") as f:
        return json.load(f)


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def assert_same_rows(rows, expected, rtol):
    """Every golden row is reproduced: the same splits and steps, each logged number within ``rtol``."""
    assert [(r["split"], r["step"]) for r in rows] == [(e["split"], e["step"]) for e in expected]
    for row, want in zip(rows, expected):
        for key, value in want.items():
            if isinstance(value, float):
                np.testing.assert_allclose(row[key], value, rtol=rtol, atol=rtol * 1e-3,
                                           err_msg=f"{key} at {want['split']} step {want['step']}")
            else:
                assert row[key] == value, (key, want)


def pretrain(tiny_data, out, *extra):
    corpus_path, vocab_dir = tiny_data
    # BERT's linear decay: the schedule the golden runs were written with (the default became wsd later)
    argv = ["pretrain", "--corpus", corpus_path, "--vocab", vocab_dir, *TINY_MODEL, "--max-seq-length", "32",
            "--batch-size", "8", "--dupe-factor", "1", "--masked-lm-prob", "0.15", "--out", str(out), "--quiet",
            "--seed", "3", "--schedule", "linear", *extra]
    assert cli.main(argv) == 0
    return read_metrics(out)


PRETRAIN_RUNS = {
    "pretrain_f64_fused": (["--steps", "6", "--dtype", "float64", "--attn", "fused", "--gelu", "fused",
                            "--eval-every", "3"], 1e-9),
    "pretrain_f32_eager_accum_dyn": (["--steps", "6", "--attn", "eager", "--gelu", "eager", "--grad-accum", "2",
                                      "--dynamic-masking", "--whole-word-mask"], 1e-5),
    "pretrain_numpy_f64": (["--steps", "4", "--dtype", "float64", "--backend", "numpy"], 1e-9),
}


@pytest.mark.parametrize("name", sorted(PRETRAIN_RUNS))
def test_pretraining_reproduces_pinned_losses(name, tiny_data, tmp_path):
    extra, rtol = PRETRAIN_RUNS[name]
    assert_same_rows(pretrain(tiny_data, tmp_path / name, *extra), golden("pretrain")[name], rtol)


def classify_rows(n, rng):
    """A keyword task: 'class' somewhere in the sentence means pos, 'module' means neg."""
    words = "the list of method returns class value object function string module name".split()
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        sentence = [rng.choice(words) for _ in range(rng.randint(4, 10))]
        sentence.insert(rng.randint(0, len(sentence)), "class" if label == "pos" else "module")
        lines.append(" ".join(sentence) + "\t" + label)
    return "\n".join(lines) + "\n"


def test_fine_tuning_reproduces_pinned_losses(tiny_data, tmp_path):
    """Classification and SQuAD from the float32 pretraining run above, as pinned."""
    pretrain(tiny_data, tmp_path / "base", *PRETRAIN_RUNS["pretrain_f32_eager_accum_dyn"][0])
    model = str(tmp_path / "base" / "last")
    rng = random.Random(0)
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text(classify_rows(64, rng))
    dev.write_text(classify_rows(32, rng))
    expected = golden("finetune")
    common = ["--model", model, "--quiet", "--seed", "1"]
    assert cli.main(["finetune", "classify", "--train", str(train), "--dev", str(dev), "--text-column", "sentence",
                     "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--attn", "eager", "--gelu", "eager",
                     "--out", str(tmp_path / "fc"), *common]) == 0
    assert_same_rows(read_metrics(tmp_path / "fc"), expected["classify"], 1e-5)
    assert cli.main(["finetune", "squad", "--train", SQUAD_SAMPLE, "--dev", SQUAD_SAMPLE, "--epochs", "1",
                     "--batch-size", "8", "--lr", "1e-3", "--max-seq-length", "32", "--max-query-length", "16",
                     "--doc-stride", "8", "--out", str(tmp_path / "fs"), *common]) == 0
    assert_same_rows(read_metrics(tmp_path / "fs"), expected["squad"], 1e-5)
