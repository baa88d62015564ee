"""``minibert fill-mask``: a tiny BERT that memorised one sentence fills its masks back in.

The probabilities are checked against ``transformers.BertForMaskedLM`` on the same checkpoint.
"""
import numpy as np
import pytest
import torch

from minibert import fill_mask
from minibert.config import BertConfig
from minibert.modeling import BertForMaskedLM
from minibert.tokenizer import BertTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "jumps", "over",
         "lazy", "dog", "cat", "red", "runs", "a", "."]
SENTENCE = "the quick brown fox jumps over the lazy dog ."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def overfit_dir(tmp_path_factory):
    """A checkpoint of a 2-layer BERT trained to reconstruct every single-token mask of SENTENCE."""
    directory = tmp_path_factory.mktemp("fill_mask")
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    tokenizer = BertTokenizer.from_pretrained(str(directory))
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    ids = torch.tensor([tokenizer.vocab[t] for t in ["[CLS]", *tokenizer.tokenize(SENTENCE), "[SEP]"]])
    n = len(ids)
    # Row i masks token i (1 .. n-2): the model must learn the whole sentence.
    rows = torch.arange(1, n - 1)
    input_ids = ids.repeat(len(rows), 1)                                   # [n-2, n]
    input_ids[torch.arange(len(rows)), rows] = tokenizer.vocab["[MASK]"]
    labels = torch.full_like(input_ids, -100)
    labels[torch.arange(len(rows)), rows] = ids[rows]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = model(input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, "the tiny model failed to memorise the sentence"
    model.save_pretrained(str(directory), tokenizer=tokenizer)
    return str(directory)


def test_fill_mask_predicts_the_memorised_tokens(overfit_dir, capsys):
    (fox,), = fill_mask.main(["--model", overfit_dir, "The quick brown [MASK] jumps over the lazy dog."])
    assert len(fox) == 5 and fox[0][0] == "fox" and fox[0][1] > 0.9
    assert [p for _, p in fox] == sorted((p for _, p in fox), reverse=True)
    assert "fox" in capsys.readouterr().out
    model, tokenizer = fill_mask.load(overfit_dir)
    two = fill_mask.fill_mask(model, tokenizer, "the [MASK] brown fox jumps over the [MASK] dog .", top_k=2)
    assert [candidates[0][0] for candidates in two] == ["quick", "lazy"]


def test_probabilities_match_transformers(overfit_dir):
    transformers = pytest.importorskip("transformers")
    model, tokenizer = fill_mask.load(overfit_dir)
    text = "the quick [MASK] fox jumps [MASK] the lazy red ."
    ours = fill_mask.fill_mask(model, tokenizer, text, top_k=len(VOCAB))
    hf = transformers.BertForMaskedLM.from_pretrained(overfit_dir).eval()
    ids = fill_mask.encode_with_masks(tokenizer, text)
    with torch.no_grad():
        probs = torch.softmax(hf(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    positions = [i for i, t in enumerate(ids) if t == tokenizer.vocab["[MASK]"]]
    assert len(ours) == len(positions) == 2
    for candidates, position in zip(ours, positions):
        assert sorted(t for t, _ in candidates) == sorted(VOCAB)  # top_k = V lists every token once
        for token, p in candidates:
            assert abs(p - float(probs[position, tokenizer.vocab[token]])) < 1e-5


def test_clear_errors(overfit_dir, tmp_path):
    model, tokenizer = fill_mask.load(overfit_dir)
    with pytest.raises(ValueError, match=r"has no \[MASK\]"):
        fill_mask.fill_mask(model, tokenizer, "the quick brown fox")
    with pytest.raises(ValueError, match="top_k"):
        fill_mask.fill_mask(model, tokenizer, "the [MASK] fox", top_k=0)
    with pytest.raises(ValueError, match="at most 32"):
        fill_mask.fill_mask(model, tokenizer, "the [MASK] " + "dog " * 40)
    with pytest.raises(FileNotFoundError, match="no vocab.txt"):
        fill_mask.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        fill_mask.load(str(tmp_path / "missing"))


def test_a_run_folder_means_its_best_else_its_last_checkpoint(overfit_dir, tmp_path, capsys):
    """`--model RUN` works as `--model RUN/last` (and prefers RUN/best): one rule for every command."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(overfit_dir, run / "last")
    (fox,), = fill_mask.main(["--model", str(run), "The quick brown [MASK] jumps over the lazy dog."])
    assert fox[0][0] == "fox" and f"model: {run / 'last'}" in capsys.readouterr().out
    shutil.copytree(overfit_dir, run / "best")
    fill_mask.main(["--model", str(run), "the [MASK] fox"])
    assert f"model: {run / 'best'}" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="is not a BERT checkpoint"):
        fill_mask.main(["--model", str(tmp_path), "the [MASK] fox"])


def test_batched_predictions_equal_one_text_at_a_time(overfit_dir):
    """Padding a batch of texts of different lengths changes none of the predictions."""
    model, tokenizer = fill_mask.load(overfit_dir)
    texts = ["the [MASK] brown fox", "the quick brown fox jumps over the [MASK] dog .", "[MASK] cat runs",
             "a red [MASK] jumps over the [MASK] ."]
    batched = fill_mask.fill_mask_batch(model, tokenizer, texts, top_k=4, batch_size=3)
    for text, result in zip(texts, batched):
        single = fill_mask.fill_mask(model, tokenizer, text, top_k=4)
        assert [[t for t, _ in m] for m in result] == [[t for t, _ in m] for m in single]
        for mb, ms in zip(result, single):
            assert max(abs(pb - ps) for (_, pb), (_, ps) in zip(mb, ms)) < 1e-5


@pytest.mark.slow
def test_held_out_prompts_come_only_from_held_out_documents(tiny_data, tmp_path, capsys):
    """`--held-out` makes one cloze prompt per held-out sentence of the run's corpus (never a trained one),
    counts its hits correctly, and refuses what it cannot do."""
    import json

    from minibert.data.corpus import load_corpus
    from minibert.train import pretrain
    corpus_path, vocab_dir = tiny_data
    out = tmp_path / "run"
    pretrain.main(["--corpus", corpus_path, "--vocab", vocab_dir, "--layers", "1", "--hidden", "32", "--heads",
                   "2", "--intermediate", "64", "--max-seq-length", "32", "--dupe-factor", "1", "--steps", "3",
                   "--held-out-every", "4", "--out", str(out), "--quiet"])
    result = fill_mask.main(["--model", str(out), "--held-out", "--json", str(tmp_path / "h.json"), "--top-k", "3"])
    documents = [list(d) for d in load_corpus(corpus_path)]
    held_out = {s for i, d in enumerate(documents) if i % 4 == 3 for s in d}
    trained = {s for i, d in enumerate(documents) if i % 4 != 3 for s in d}
    saved = json.loads((tmp_path / "h.json").read_text())
    assert saved["prompts"] == result["prompts"] == len(saved["rows"]) > 10
    model, tokenizer = fill_mask.load(str(out / "last"))
    for row in saved["rows"]:
        sentence = row["text"].replace("[MASK]", row["answer"])
        originals = [s for s in held_out if " ".join(s.split()).lower() == sentence.lower()]
        assert originals and not any(" ".join(s.split()).lower() == sentence.lower() for s in trained), sentence
        rank = next((r for r, (t, _) in enumerate(row["top"], 1) if t == row["answer"]), None)
        assert row["rank"] == rank and len(row["top"]) == 3
    for row in saved["rows"][:3]:
        (top,) = fill_mask.fill_mask(model, tokenizer, row["text"], top_k=3)
        assert [t for t, _ in top] == [t for t, _ in row["top"]]
    assert saved["top1"] == sum(r["rank"] == 1 for r in saved["rows"])
    assert saved["top3_hits"] == sum(r["rank"] is not None for r in saved["rows"])
    assert f"{saved['prompts']} held-out prompts" in capsys.readouterr().out
    for argv, message in ((["--model", str(out), "--held-out", "the [MASK] fox"], "not both"),
                          (["--model", str(out)], "or --held-out"),
                          (["--model", str(out), "the [MASK] fox", "--json", "x.json"], "--json goes with")):
        with pytest.raises(ValueError, match=message):
            fill_mask.main(argv)


def test_held_out_needs_a_pretraining_checkpoint(overfit_dir):
    with pytest.raises(ValueError, match="needs a checkpoint of `minibert pretrain`"):
        fill_mask.main(["--model", overfit_dir, "--held-out"])


def test_mlm_diagnosis_splits_the_held_out_accuracy_the_run_reported(tiny_data, tmp_path, monkeypatch):
    """benchmarks/mlm_diagnosis.py: its accuracies by kind ([MASK] / random / kept) and by position recombine to
    the held-out MLM accuracy `minibert pretrain` reported, the kinds come in BERT's 80/10/10 proportions, the attention
    rows are weights of a softmax, and the neighbour oracle answers the question it was built on."""
    import importlib.util
    import json
    from pathlib import Path

    from minibert.modeling import BertForPreTraining
    from minibert.train import pretrain, pretrain_args
    from minibert.train.data import prepare_data, read_split
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "mlm_diagnosis.py"
    monkeypatch.syspath_prepend(str(path.parent))  # the script imports its neighbour _common
    spec = importlib.util.spec_from_file_location("mlm_diagnosis", path)
    diagnosis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnosis)

    corpus_path, vocab_dir = tiny_data
    out = tmp_path / "run"
    data_options = ["--corpus", corpus_path, "--max-seq-length", "32", "--dupe-factor", "1", "--held-out-every", "4",
                    "--eval-sequences", "64"]
    summary = pretrain.main([*data_options, "--vocab", vocab_dir, "--layers", "1", "--hidden", "32", "--heads", "2",
                             "--intermediate", "64", "--steps", "30", "--lr", "3e-3", "--out", str(out), "--quiet"])
    args = pretrain_args.build_parser().parse_args([*data_options, "--vocab", vocab_dir])
    pretrain_args.check_args(args, 1)
    tokenizer = BertTokenizer.from_pretrained(str(out / "last"))
    model = BertForPreTraining.from_pretrained(str(out / "last")).eval()
    data = prepare_data(args, tokenizer, model.config)
    mask_id = tokenizer.convert_tokens_to_ids(["[MASK]"])[0]

    kinds = diagnosis.accuracy_by_kind(model, data.eval_batches, mask_id)
    n = sum(k["count"] for k in kinds.values())
    right = sum(k["accuracy"] * k["count"] for k in kinds.values())
    assert n == sum(int((b["labels"] != -100).sum()) for b in data.eval_batches)
    assert abs(right - summary["eval_mlm_acc"] * n) < 0.5  # the same predictions the run counted
    # the run's own split: accuracy where the input hides the answer ([MASK] or a random token)
    hidden_n = kinds["mask"]["count"] + kinds["random"]["count"]
    hidden_right = sum(kinds[k]["accuracy"] * kinds[k]["count"] for k in ("mask", "random"))
    assert abs(hidden_right - summary["eval_mlm_acc_hidden"] * hidden_n) < 0.5
    assert 0.7 < kinds["mask"]["count"] / n < 0.9 and kinds["kept"]["count"] < 0.2 * n
    # by position: every question in exactly one range, and the ranges recombine to the run's accuracy too
    positions = diagnosis.accuracy_by_position(model, data.eval_batches)
    assert sum(r["count"] for r in positions) == n
    assert [r["positions"] for r in positions] == ["0-7", "8-15", "16-31"]  # 32-token sequences: no later range
    assert abs(sum(r["accuracy"] * r["count"] for r in positions) - summary["eval_mlm_acc"] * n) < 0.5

    for row in diagnosis.attention_by_offset(model, data.eval_batches[0]):
        assert all(0.0 <= row[f"offset{o:+d}"] <= 1.0 for o in diagnosis.OFFSETS)
        assert 1 / 32 <= row["uniform"] <= 1 / 5  # 1/length of sequences of 5-32 tokens

    train_docs, _ = read_split(args.corpus, args.held_out_every)
    oracle = diagnosis.neighbour_oracle(train_docs, tokenizer, data.eval_batches, mask_id)
    assert 0.0 < oracle["previous token"] < 1.0 and oracle["both neighbours"] >= 0.0
    # On the training text itself, a question whose neighbours occur nowhere else is answered exactly.
    sentence = "zq xv"
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(sentence))
    batch = {"input_ids": np.array([[ids[0], mask_id]]), "labels": np.array([[-100, ids[1]]])}
    assert diagnosis.neighbour_oracle([[sentence]], tokenizer, [batch], mask_id)["previous token"] == 1.0
    json.dumps(oracle)  # what the script saves
