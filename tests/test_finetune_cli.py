"""``minibert finetune classify`` and ``minibert finetune squad`` end to end, through ``minibert.cli.main``.

A tiny BERT (2 layers, hidden 64, random weights) learns two synthetic tasks built here:

* classification: random words with one keyword ("excellent", "awful", ...) that decides the label;
* SQuAD: contexts of real sentences with one inserted fact ("The code of Alice is 4711.") and the question
  "What is the code of Alice?".

Plus reproducibility (same seed, same metrics; --resume continues exactly) and clear errors on bad input.
"""
import json

import numpy as np
import pytest
import torch

from minibert import cli
from minibert.config import BertConfig
from minibert.train.finetune import classify
from minibert.modeling import BertForPreTraining, BertForSequenceClassification
from minibert.tokenizer import BertTokenizer

FILLER = ("the a of to and in is it for on with as this that be are by from at or an not can "
          "value list file module object class function return type string name call data line "
          "error method default number first new time used each").split()
KEYWORDS = {"positive": ["excellent", "wonderful", "superb"], "negative": ["awful", "dreadful", "horrible"]}
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
SENTENCES = ["The module defines a class for reading files.", "Each call returns a new object.",
             "The default value is used when no name is given.", "This function can raise an error.",
             "A list holds the data of each line.", "The method is called for every item in the list."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, one_torch_thread) -> str:
    """A random 2-layer, 64-wide BERT checkpoint with a vocabulary covering the synthetic tasks."""
    words = set(FILLER) | {w for ws in KEYWORDS.values() for w in ws} | set(NAMES)
    words |= {w.strip(".").lower() for s in SENTENCES for w in s.split()} | {"what", "code", "?", "."}
    vocab = SPECIAL + sorted(words) + [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]
    directory = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = BertTokenizer({t: i for i, t in enumerate(vocab)})
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128)
    torch.manual_seed(0)
    BertForPreTraining(config).save_pretrained(directory, tokenizer=tokenizer)
    return str(directory)


def keyword_rows(n: int, seed: int) -> list[dict]:
    gen = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = ["negative", "positive"][gen.integers(2)]
        words = list(gen.choice(FILLER, gen.integers(4, 12)))
        words.insert(gen.integers(len(words) + 1), gen.choice(KEYWORDS[label]))
        rows.append({"sentence": " ".join(words), "label": label})
    return rows


def write_tsv(path, rows, columns=("sentence", "label")) -> str:
    path.write_text("\t".join(columns) + "\n" + "".join("\t".join(r[c] for c in columns) + "\n" for r in rows))
    return str(path)


def classify_args(model, out, train, dev, *extra) -> list[str]:
    return ["finetune", "classify", "--model", model, "--out", str(out), "--train", train, "--dev", dev,
            "--text-column", "sentence", "--epochs", "3", "--batch-size", "16", "--lr", "1e-3", "--quiet",
            *extra]


def run_classify(argv) -> dict:
    assert cli.main(argv) == 0
    out = argv[argv.index("--out") + 1]
    with open(f"{out}/summary.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_classify_learns_a_keyword_task_reproducibly_and_resumes(tmp_path, tiny_model, monkeypatch):
    train = write_tsv(tmp_path / "train.tsv", keyword_rows(480, seed=1))
    dev = write_tsv(tmp_path / "dev.tsv", keyword_rows(120, seed=2))
    (tmp_path / "unlabelled.jsonl").write_text(json.dumps({"sentence": "an awful file"}) + "\n"
                                               + json.dumps({"sentence": "a superb class"}) + "\n")
    summary = run_classify(classify_args(tiny_model, tmp_path / "a", train, dev, "--predict",
                                         str(tmp_path / "unlabelled.jsonl")))
    best = summary["best"]
    assert best["accuracy"] >= 0.95 and best["macro_f1"] >= 0.95 and best["matthews_corr"] > 0.9
    assert 0.4 < best["majority_baseline"] < 0.6
    config = json.loads((tmp_path / "a" / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"]["positive"] == 1
    assert config["architectures"] == ["BertForSequenceClassification"]
    lines = (tmp_path / "a" / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction\tp(negative)\tp(positive)"
    assert [line.split("\t")[1] for line in lines[1:]] == ["negative", "positive"]
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["split"] == "train" for r in rows) == summary["steps"] == 3 * 30
    lrs = [r["lr"] for r in rows if r["split"] == "train"]
    # BERT's schedule: warm-up over 10% of the steps, then the line from 1e-3 at step 0 to 0 at the end.
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(0.9e-3) and 0 < lrs[-1] < 2e-5

    # The same seed gives the same run; a run interrupted after epoch 2 and resumed ends where it would have.
    again = run_classify(classify_args(tiny_model, tmp_path / "b", train, dev))
    assert again["history"] == summary["history"]
    evaluate_calls = []
    original = classify.classification_metrics

    def interrupted(*a):
        evaluate_calls.append(1)
        if len(evaluate_calls) == 3:
            raise KeyboardInterrupt
        return original(*a)

    monkeypatch.setattr(classify, "classification_metrics", interrupted)
    assert cli.main(classify_args(tiny_model, tmp_path / "c", train, dev)) == 130  # no traceback either
    monkeypatch.setattr(classify, "classification_metrics", original)
    resumed = run_classify(classify_args(tiny_model, tmp_path / "c", train, dev, "--resume"))
    assert resumed["history"] == summary["history"]


def test_classify_regression_and_csv_with_pairs(tmp_path, tiny_model):
    # Target = number of keywords in text + text_pair, a regression the model can count its way to.
    gen = np.random.default_rng(3)

    def rows(n):
        out = []
        for _ in range(n):
            a, b = list(gen.choice(FILLER, 5)), list(gen.choice(FILLER, 5))
            k = int(gen.integers(0, 3))
            for _ in range(k):
                (a if gen.random() < 0.5 else b).insert(0, "excellent")
            out.append({"sentence": " ".join(a), "other": " ".join(b), "label": str(float(k))})
        return out

    def csv(path, rs):
        path.write_text("sentence,other,label\n" + "".join(f"{r['sentence']},{r['other']},{r['label']}\n"
                                                          for r in rs))
        return str(path)

    summary = run_classify(classify_args(tiny_model, tmp_path / "r", csv(tmp_path / "t.csv", rows(320)),
                                         csv(tmp_path / "d.csv", rows(80)), "--regression",
                                         "--text-pair-column", "other"))
    assert summary["best"]["pearson"] > 0.9 and summary["best"]["spearman"] > 0.85


def test_metrics_against_hand_computed_and_scipy_values():
    m = classify.classification_metrics(np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 0]), 2)
    # tp=1 fp=2 tn=2 fn=0: MCC = (1*2 - 2*0) / sqrt(3*1*4*2); F1(1) = 2/4, F1(0) = 4/6
    assert m["accuracy"] == pytest.approx(0.6) and m["majority_baseline"] == pytest.approx(0.8)
    assert m["matthews_corr"] == pytest.approx(2 / np.sqrt(24)) and m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    scipy_stats = pytest.importorskip("scipy.stats")
    gen = np.random.default_rng(4)
    x = gen.integers(0, 5, 40).astype(float)  # ties, which Spearman ranks by their average
    y = x + gen.normal(0, 1.5, 40)
    r = classify.regression_metrics(y, x)
    assert r["pearson"] == pytest.approx(scipy_stats.pearsonr(y, x)[0], abs=1e-12)
    assert r["spearman"] == pytest.approx(scipy_stats.spearmanr(y, x)[0], abs=1e-12)


# --- SQuAD ------------------------------------------------------------------------------------------
def squad_file(path, n: int, seed: int) -> str:
    gen = np.random.default_rng(seed)
    paragraphs = []
    for i in range(n):
        name, code = gen.choice(NAMES), str(gen.integers(1000, 10000))
        sentences = list(gen.choice(SENTENCES, 3, replace=False))
        fact = f"The code of {name.capitalize()} is {code}."
        position = int(gen.integers(0, 4))
        before = " ".join(sentences[:position])
        context = " ".join(sentences[:position] + [fact] + sentences[position:])
        start = len(before) + (1 if before else 0) + len(f"The code of {name.capitalize()} is ")
        assert context[start:start + len(code)] == code
        paragraphs.append({"context": context, "qas": [{"id": f"q{seed}-{i}", "question": f"What is the code of "
                                                        f"{name.capitalize()}?", "answers": [{"text": code,
                                                                                           "answer_start": start}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "codes", "paragraphs": paragraphs}]}))
    return str(path)


@pytest.mark.slow
def test_squad_learns_to_find_the_inserted_fact(tmp_path, tiny_model):
    train, dev = squad_file(tmp_path / "train.json", 400, seed=5), squad_file(tmp_path / "dev.json", 60, seed=6)
    argv = ["finetune", "squad", "--model", tiny_model, "--out", str(tmp_path / "qa"), "--train", train, "--dev",
            dev, "--epochs", "5", "--batch-size", "16", "--lr", "1e-3", "--max-seq-length", "64",
            "--max-query-length", "16", "--doc-stride", "32", "--quiet"]
    assert cli.main(argv) == 0
    summary = json.loads((tmp_path / "qa" / "summary.json").read_text())
    assert summary["best"]["exact_match"] >= 90 and summary["best"]["f1"] >= 90
    predictions = json.loads((tmp_path / "qa" / "predictions.json").read_text())
    nbest = json.loads((tmp_path / "qa" / "nbest_predictions.json").read_text())
    assert len(predictions) == 60 and set(nbest) == set(predictions)
    gold = {q["id"]: q["answers"][0]["text"] for p in json.loads(open(dev).read())["data"][0]["paragraphs"]
            for q in p["qas"]}
    assert np.mean([predictions[k] == gold[k] for k in gold]) * 100 == pytest.approx(summary["best"]["exact_match"])


# --- bad input --------------------------------------------------------------------------------------
def test_file_problems_give_file_and_line(tmp_path):
    bad = tmp_path / "ragged.tsv"
    bad.write_text("sentence\tlabel\na b\tpos\nc d\te\tneg\n")
    with pytest.raises(ValueError, match=r"ragged.tsv:3: 3 fields where the header has 2"):
        classify.read_examples(str(bad), "sentence")
    good = write_tsv(tmp_path / "good.tsv", [{"sentence": "a b", "label": "pos"}])
    with pytest.raises(ValueError, match=r"no column 'text'; its columns are \['sentence', 'label'\]"):
        classify.read_examples(good)
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        classify.read_examples(str(tmp_path / "empty.csv"))
    (tmp_path / "latin1.tsv").write_bytes("text\tlabel\nok\tx\ncaf\xe9\ty\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.tsv:3: not UTF-8"):
        classify.read_examples(str(tmp_path / "latin1.tsv"))
    (tmp_path / "x.jsonl").write_text('{"text": "a", "label": "p"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: no field 'label'"):
        classify.read_examples(str(tmp_path / "x.jsonl"))
    dev = classify.read_examples(str(write_tsv(tmp_path / "d.tsv", [{"sentence": "a", "label": "maybe"}])),
                                 "sentence")
    with pytest.raises(ValueError, match=r"d.tsv:2: label 'maybe' never occurs in the training data"):
        classify.label_ids(dev, {"negative": 0, "positive": 1})
    with pytest.raises(ValueError, match=r"d.tsv:2: regression labels are numbers, got 'maybe'"):
        classify.label_ids(dev, None)


def test_cli_reports_bad_input_as_errors(tmp_path, tiny_model, capsys):
    train = write_tsv(tmp_path / "train.tsv", keyword_rows(8, seed=7))
    no_labels = tmp_path / "nolabels.tsv"
    no_labels.write_text("sentence\nthe a\n")
    assert cli.main(classify_args(tiny_model, tmp_path / "o", str(no_labels), train)) == 2
    assert "no column 'label'" in capsys.readouterr().err
    assert cli.main(classify_args(tiny_model, tmp_path / "o", train, train, "--lr", "-1")) == 2
    assert "--lr must be a positive number" in capsys.readouterr().err
    assert cli.main(classify_args(str(tmp_path), tmp_path / "o", train, train)) == 2
    assert "is not a BERT checkpoint" in capsys.readouterr().err
    assert cli.main(classify_args(tiny_model, tmp_path / "o", train, train, "--resume")) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    # A checkpoint fine-tuned with 3 labels cannot silently become a 2-label classifier.
    three = tmp_path / "three"
    config = BertConfig.from_pretrained(tiny_model)
    config.num_labels = 3
    BertForSequenceClassification(config).save_pretrained(three, BertTokenizer.from_pretrained(tiny_model))
    assert cli.main(classify_args(str(three), tmp_path / "o", train, train)) == 2
    assert "another number of labels" in capsys.readouterr().err


def test_continuing_a_fine_tuned_classifier_keeps_its_class_order(tmp_path, tiny_model):
    config = BertConfig.from_pretrained(tiny_model)
    config.id2label = {0: "positive", 1: "negative"}  # not the sorted order a fresh run would choose
    BertForSequenceClassification(config).save_pretrained(tmp_path / "ft", BertTokenizer.from_pretrained(tiny_model))
    data = write_tsv(tmp_path / "d.tsv", keyword_rows(8, seed=8))
    run_classify(classify_args(str(tmp_path / "ft"), tmp_path / "o", data, data, "--epochs", "1"))
    saved = json.loads((tmp_path / "o" / "last" / "config.json").read_text())
    assert saved["id2label"] == {"0": "positive", "1": "negative"}


def test_resume_refuses_other_settings(tmp_path, tiny_model, capsys):
    data = write_tsv(tmp_path / "d.tsv", keyword_rows(8, seed=9))
    run_classify(classify_args(tiny_model, tmp_path / "o", data, data, "--epochs", "1"))
    assert cli.main(classify_args(tiny_model, tmp_path / "o", data, data, "--epochs", "1", "--lr", "5e-4",
                                  "--resume")) == 2
    assert "lr: checkpoint 0.001, now 0.0005" in capsys.readouterr().err


def test_read_examples_reports_oversized_fields_and_deep_json_by_line(tmp_path):
    long_tsv = tmp_path / "long.tsv"  # a field over csv's 128 KiB limit: file:line, not a _csv.Error traceback
    long_tsv.write_text("text\tlabel\nfine\t1\n" + "x" * 200_000 + "\t0\n")
    with pytest.raises(ValueError, match=r"long.tsv:3: the row starting here cannot be read \(field larger"):
        classify.read_examples(str(long_tsv))
    unclosed = tmp_path / "unclosed.csv"  # the usual cause in a CSV: a quote that is never closed
    unclosed.write_text('text,label\nfine,1\n"oops,0\n' + "more,1\n" * 20_000)
    with pytest.raises(ValueError, match=r"unclosed.csv:3: .*is a quote left unclosed"):
        classify.read_examples(str(unclosed))
    deep = tmp_path / "deep.jsonl"  # RecursionError in the JSON parser
    deep.write_text('{"text": "fine", "label": 1}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(ValueError, match=r"deep.jsonl:2: nested too deeply"):
        classify.read_examples(str(deep))


def test_classify_overwrite_and_resume_rules_and_ctrl_c(tmp_path, tiny_model, capsys, monkeypatch):
    """The rules of `minibert pretrain`, once for `finetune classify`: an existing run is not replaced
    without --overwrite; a run folder works as --model; Ctrl-C mid-epoch saves, prints how to resume and
    exits 130, and --resume then gives the losses of a run that was never stopped."""
    import os
    import signal

    from minibert.train import state as trainer_state
    from minibert.train.finetune import loop

    data = write_tsv(tmp_path / "d.tsv", keyword_rows(48, seed=10))
    argv = classify_args(tiny_model, tmp_path / "full", data, data, "--epochs", "2")  # 3 steps per epoch
    full = run_classify(argv)
    assert cli.main(argv) == 2
    assert "already holds a run" in (err := capsys.readouterr().err) and "--overwrite" in err and "--resume" in err
    assert run_classify(argv + ["--overwrite"])["history"] == full["history"]

    # A run folder as --model means its best/ checkpoint (else last/).
    assert run_classify(classify_args(str(tmp_path / "full"), tmp_path / "again", data, data, "--epochs", "1"))
    assert trainer_state.model_directory(str(tmp_path / "full")) == str(tmp_path / "full" / "best")

    stopped = tmp_path / "stopped"
    real, calls = loop.clip_and_step, []

    def step_and_kill(*args):
        calls.append(1)
        if len(calls) == 4:  # the first step of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args)

    monkeypatch.setattr(loop, "clip_and_step", step_and_kill)
    argv = classify_args(tiny_model, stopped, data, data, "--epochs", "2")
    assert cli.main(argv) == 130
    line = capsys.readouterr().err.strip()
    assert line.startswith("stopped at step 4 of 6 (epoch 2); resume with: minibert finetune classify --model ")
    assert line.endswith(" --resume") and "Traceback" not in line
    monkeypatch.setattr(loop, "clip_and_step", real)
    assert trainer_state.load_trainer_state(str(stopped / "last"))["step"] == 4

    assert run_classify(argv + ["--resume"])["history"] == full["history"]
    assert "resuming" in capsys.readouterr().out
    rows = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in rows] == [(r["split"], r["step"]) for r in expected]
    np.testing.assert_allclose([r.get("loss", 0) for r in rows], [r.get("loss", 0) for r in expected], rtol=1e-6)
