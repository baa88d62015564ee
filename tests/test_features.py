"""``minibert features``: sentence vectors from a tiny random BERT, checked three ways.

* against a forward written out here: the library's ``BertModel`` run on one sentence at a time (no
  padding), with the pooler's ``tanh(W h + b)`` and the mean over tokens computed by hand;
* against ``transformers.BertModel`` loaded from the same checkpoint (where transformers is installed);
* against themselves in other batch sizes (padding must not leak into a sentence's vector).

Plus the command line: the .npy it writes, ``--help`` defaults, and one clear error per bad input.
"""
import os

import numpy as np
import pytest
import torch

from minibert import cli, features
from minibert.config import BertConfig
from minibert.modeling import BertForPreTraining, BertForQuestionAnswering, BertModel
from minibert.tokenizer import BertTokenizer

WORDS = ("the a of to and in is it for on with as this that be are by from at or an not can value list file "
         "module object class function return type string name call data line error method default "
         "number first new time used each . , ?").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed"]
SENTENCES = ["The module defines a class.", "Each call returns a new object, as the method is used.",
             "Is it an error?", "list", "The default value of the first name is used for each line of data.",
             "Return the type.", "A string names the file.", "This can be used with a function call.",
             "Objects and classes."]
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_torch_thread) -> str:
    """A random 2-layer, 32-wide BertForPreTraining checkpoint (HF layout) with its vocab.txt.

    ``initializer_range=0.2`` (not BERT's 0.02) makes the layers' contributions large enough that a
    wrong mask or a wrong pooling would move the vectors far beyond the tolerance.
    """
    directory = tmp_path_factory.mktemp("features_model")
    tokenizer = BertTokenizer({t: i for i, t in enumerate(VOCAB)})
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    with torch.no_grad():  # LayerNorm and biases away from their 1 / 0 init, so every parameter matters
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory, tokenizer=tokenizer)
    return str(directory)


def by_hand(model_dir: str, sentences: list[str], max_seq_length: int = 128) -> dict[str, np.ndarray]:
    """Each pooling of each sentence from the library's BertModel, one unpadded sentence at a time."""
    model = BertModel.from_pretrained(model_dir)  # eager attention, float32, eval mode
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    weight, bias = model.pooler.dense.weight.detach(), model.pooler.dense.bias.detach()
    out = {"cls": [], "pooled": [], "mean": []}
    with torch.no_grad():
        for sentence in sentences:
            pieces = tokenizer.tokenize(sentence)[:max_seq_length - 2]
            ids = torch.tensor([[tokenizer.vocab[t] for t in ["[CLS]", *pieces, "[SEP]"]]])
            hidden = model(ids).last_hidden_state[0]                   # [S, E], every token real
            out["cls"].append(hidden[0].numpy())
            out["pooled"].append(torch.tanh(weight @ hidden[0] + bias).numpy())
            out["mean"].append(hidden.sum(0).numpy() / hidden.shape[0])
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("pooling", features.POOLINGS)
def test_vectors_equal_a_forward_written_by_hand(model_dir, pooling):
    vectors = features.encode(model_dir, SENTENCES, pooling=pooling, batch_size=4)
    expected = by_hand(model_dir, SENTENCES)[pooling]
    assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES), 32)
    assert np.abs(vectors - expected).max() < TOLERANCE
    # The three poolings are different numbers (a mix-up between them would not pass unnoticed).
    others = [p for p in features.POOLINGS if p != pooling]
    for other in others:
        assert np.abs(vectors - by_hand(model_dir, SENTENCES)[other]).max() > 0.1


def test_vectors_equal_transformers_bertmodel(model_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertModel.from_pretrained(model_dir).eval()
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    encoded = [tokenizer(s)["input_ids"] for s in SENTENCES]
    longest = max(map(len, encoded))
    ids = torch.tensor([e + [0] * (longest - len(e)) for e in encoded])
    mask = torch.tensor([[1] * len(e) + [0] * (longest - len(e)) for e in encoded])
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask)
    hidden = out.last_hidden_state.numpy()
    lengths = mask.sum(1).numpy()
    expected = {"cls": hidden[:, 0], "pooled": out.pooler_output.numpy(),
                "mean": np.stack([hidden[i, :n].mean(0) for i, n in enumerate(lengths)])}
    for pooling in features.POOLINGS:
        ours = features.encode(model_dir, SENTENCES, pooling=pooling, batch_size=3)
        assert np.abs(ours - expected[pooling]).max() < TOLERANCE, pooling


def test_a_folder_written_by_transformers(tmp_path):
    """An HF-format folder that transformers itself saved (a bare BertModel: no ``bert.`` prefix, no heads)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=24, num_hidden_layers=2,
                                     num_attention_heads=3, intermediate_size=48, max_position_embeddings=40,
                                     initializer_range=0.2)
    torch.manual_seed(1)
    hf = transformers.BertModel(config).eval()
    hf.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(tmp_path))
    for pooling in features.POOLINGS:
        ours = features.encode(str(tmp_path), SENTENCES[:4], pooling=pooling, batch_size=4)
        with torch.no_grad():
            for row, sentence in zip(ours, SENTENCES[:4]):
                out = hf(input_ids=torch.tensor([tokenizer(sentence)["input_ids"]]))
                expected = {"cls": out.last_hidden_state[0, 0], "pooled": out.pooler_output[0],
                            "mean": out.last_hidden_state[0].mean(0)}[pooling]
                assert np.abs(row - expected.numpy()).max() < TOLERANCE, pooling


def test_batching_and_padding_do_not_change_the_vectors(model_dir):
    model, tokenizer = features.load(model_dir)
    one = features.embed(model, tokenizer, SENTENCES, "mean", batch_size=1)     # no padding at all
    seven = features.embed(model, tokenizer, SENTENCES, "mean", batch_size=7)   # "list" padded to 14+ tokens
    assert np.abs(one - seven).max() < TOLERANCE
    # The rows follow the input order whatever the length-sorted batching did.
    reordered = features.embed(model, tokenizer, SENTENCES[::-1], "mean", batch_size=7)
    assert np.abs(reordered[::-1] - one).max() < TOLERANCE


def test_mean_pool_leaves_padding_out():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])   # the last position is padding
    mask = torch.tensor([[1, 1, 0]])
    assert features.mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]


def test_long_sentences_are_cut_to_max_seq_length(model_dir):
    long = " ".join(["the value of each line"] * 6)  # 30 words -> 32 tokens with [CLS] and [SEP]
    vectors = features.encode(model_dir, [long, "list"], pooling="mean", max_seq_length=10)
    assert np.abs(vectors - by_hand(model_dir, [long, "list"], max_seq_length=10)["mean"]).max() < TOLERANCE
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        features.encode(model_dir, ["list"], max_seq_length=65)


def test_a_question_answering_checkpoint_gives_cls_and_mean_but_no_pooled(model_dir, tmp_path):
    qa_dir = tmp_path / "qa"
    qa = BertForQuestionAnswering.from_pretrained(model_dir)  # drops the pooler and the pretraining heads
    qa.save_pretrained(qa_dir, tokenizer=BertTokenizer.from_pretrained(model_dir))
    for pooling in ("cls", "mean"):
        vectors = features.encode(str(qa_dir), SENTENCES[:3], pooling=pooling)
        assert np.abs(vectors - by_hand(model_dir, SENTENCES[:3])[pooling]).max() < TOLERANCE
    with pytest.raises(ValueError, match="has no pooler"):
        features.encode(str(qa_dir), SENTENCES[:3], pooling="pooled")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main(["features", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_writes_the_vectors_of_the_non_blank_lines(model_dir, tmp_path, capsys):
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES[:4]) + "\n\n   \n" + SENTENCES[4] + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    status, stdout, _ = run_cli(capsys, "--model", model_dir, "--input", text, "--out", out, "--pooling",
                                "pooled", "--batch-size", "2", "--quiet")
    assert status == 0 and "wrote 5 x 32 float32 pooled vectors" in stdout
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 32)
    assert np.abs(vectors - by_hand(model_dir, SENTENCES[:5])["pooled"]).max() < TOLERANCE
    assert sorted(os.listdir(tmp_path)) == ["sentences.txt", "vectors.npy"]  # no temporary file left


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["features", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: cls)", "(default: 32)", "(default: 128, or the model's max_position_embeddings "
                    "when smaller)", "(default: cpu)"):
        assert default in help_text


def test_each_bad_input_gives_one_clear_error(model_dir, tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("The module defines a class.\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\t\n", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first line\nsecond line\ncaf\xe9 au lait\n".encode("latin-1"))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "vocab.txt"):
        (no_weights / name).write_bytes((open(os.path.join(model_dir, name), "rb")).read())
    no_vocab = tmp_path / "no_vocab"
    BertForPreTraining.from_pretrained(model_dir).save_pretrained(no_vocab)  # weights and config, no vocab
    out = tmp_path / "vectors.npy"
    cases = [
        (["--input", tmp_path / "missing.txt"], "missing.txt' does not exist"),
        (["--input", empty], "has no sentences (every line is blank)"),
        (["--input", latin1], "latin1.txt:3: not UTF-8"),
        (["--input", good, "--model", no_weights], "no weights in"),
        (["--input", good, "--model", no_vocab], "has no vocab.txt"),
        (["--input", good, "--model", tmp_path], "is not a BERT checkpoint"),
        (["--input", good, "--out", tmp_path / "nowhere" / "vectors.npy"], "nowhere' does not exist"),
        (["--input", good, "--out", tmp_path], "is a folder; give a file name"),
        (["--input", good, "--batch-size", "0"], "--batch-size) must be a positive integer"),
        (["--input", good, "--max-seq-length", "1"], "must be at least 2"),
        (["--input", good, "--device", "toaster"], "--device 'toaster' is not a device"),
    ]
    for changes, message in cases:
        argv = {"--model": model_dir, "--out": out}
        for flag, value in zip(changes[::2], changes[1::2]):
            argv[flag] = value
        status, _, stderr = run_cli(capsys, *[x for kv in argv.items() for x in kv], "--quiet")
        assert status == 2, (changes, stderr)
        assert stderr.startswith("minibert: error: ") and message in stderr, (changes, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert not out.exists()


@pytest.mark.slow
def test_features_of_a_pretrained_run_folder(tiny_data, tmp_path, capsys):
    """``minibert pretrain --steps N`` on a tiny config, then ``minibert features --model RUN``: the run
    folder means its last/ checkpoint, and the vectors are the hand-written forward's."""
    corpus_path, vocab_dir = tiny_data
    run = tmp_path / "run"
    assert cli.main(["pretrain", "--corpus", corpus_path, "--vocab", vocab_dir, "--layers", "2", "--hidden", "32",
                     "--heads", "2", "--intermediate", "64", "--max-seq-length", "32", "--batch-size", "8",
                     "--dupe-factor", "1", "--steps", "3", "--out", str(run), "--quiet"]) == 0
    text = tmp_path / "sentences.txt"
    sentences = ["The pass statement does nothing.", "Return the value of the expression."]
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    capsys.readouterr()
    status, stdout, stderr = run_cli(capsys, "--model", run, "--input", text, "--out", tmp_path / "v.npy",
                                     "--pooling", "mean", "--max-seq-length", "32", "--quiet")
    assert status == 0, stderr
    assert os.path.join(str(run), "last") in stderr
    expected = by_hand(os.path.join(run, "last"), sentences, max_seq_length=32)["mean"]
    assert np.abs(np.load(tmp_path / "v.npy") - expected).max() < TOLERANCE
