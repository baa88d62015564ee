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
