"""``minibert fill-mask``: a tiny BERT that memorised one sentence fills its masks back in.

The probabilities are checked against ``transformers.BertForMaskedLM`` on the same checkpoint.
"""
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
