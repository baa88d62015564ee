"""The ``minibert`` command line, run in-process and once as ``python -m minibert``."""
import os
import random
import re
import subprocess
import sys

import pytest

from minibert.data import corpus
from minibert.cli import main
from minibert.tokenizer import BasicTokenizer, BertTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_corpus(path, n_docs=30):
    rng = random.Random()
    words = ("the model reads text and learns word pieces from sentences in documents while "
             "tokenizers split unaffable words into smaller pieces").split()
    documents = [[" ".join(rng.choices(words, k=rng.randint(5, 12))).capitalize() + "." for _ in range(4)]
                 for _ in range(n_docs)]
    corpus.write_corpus(documents, path)
    return documents


def test_train_vocab_then_tokenize(tmp_path, capsys):
    documents = _write_corpus(tmp_path / "c.txt")
    out = tmp_path / "vocab"
    assert main(["train-vocab", str(tmp_path / "c.txt"), "--vocab-size", "90", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    stats = corpus.corpus_stats(documents)
    assert f"corpus: 30 documents, 120 sentences, {stats['words']:,} words" in printed
    assert "trained a 90-token WordPiece vocabulary" in printed
    basic = BasicTokenizer()
    held_out_words = sum(len(basic.tokenize(s)) for i in (9, 19, 29) for s in documents[i])
    assert f"held-out text (every 10th document): {held_out_words:,} words" in printed
    lines = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 90 and lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    assert main(["tokenize", "--vocab", str(out), "Tokenizers split words."]) == 0
    printed = capsys.readouterr().out
    tok = BertTokenizer.from_pretrained(out)
    expected = tok("Tokenizers split words.")["input_ids"]
    assert expected[0] == 2 and expected[-1] == 3  # [CLS] ... [SEP] in our compact layout
    assert f"input_ids:      {expected}" in printed
    assert f"word pieces:  {tok.tokenize('Tokenizers split words.')}" in printed


def test_train_vocab_cased(tmp_path, capsys):
    _write_corpus(tmp_path / "c.txt")
    assert main(["train-vocab", str(tmp_path / "c.txt"), "--vocab-size", "100", "--out", str(tmp_path / "v"),
                 "--cased"]) == 0
    vocab = (tmp_path / "v" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert "T" in vocab  # the capitalised first words keep their case
    assert BertTokenizer.from_pretrained(tmp_path / "v").do_lower_case is False


@pytest.mark.slow  # extracting the built-in corpus takes a few seconds
def test_corpus_verb_writes_the_builtin_corpus(tmp_path, capsys):
    path = tmp_path / "builtin.txt"
    assert main(["corpus", "--out", str(path)]) == 0
    stats = corpus.corpus_stats(corpus.read_documents(path))
    assert stats == corpus.corpus_stats(corpus.builtin_documents())
    assert capsys.readouterr().out.strip() == (
        f"wrote {path}: {stats['documents']:,} documents, {stats['sentences']:,} sentences, "
        f"{stats['words']:,} words, {stats['megabytes']:.2f} MB")


@pytest.mark.parametrize("make_input, message", [
    (lambda p: [str(p / "missing.txt")], "does not exist"),
    (lambda p: (p / "bad.txt").write_bytes(b"Fine.\n\xff\xfe\n") and [str(p / "bad.txt")],
     "not valid UTF-8 at byte offset 6"),
    (lambda p: (p / "blank.txt").write_text("\n\n") and [str(p / "blank.txt")], "contains no text"),
])
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, make_input, message):
    corpus_args = make_input(tmp_path)
    assert main(["train-vocab", *corpus_args, "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minibert: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "v").exists()


def test_vocab_size_too_small_is_a_user_error(tmp_path, capsys):
    _write_corpus(tmp_path / "c.txt")
    assert main(["train-vocab", str(tmp_path / "c.txt"), "--vocab-size", "10", "--out", str(tmp_path / "v")]) == 2
    assert "vocab_size=10 cannot hold" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a folder")
    assert main(["train-vocab", str(tmp_path / "c.txt"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_minibert_demo(tmp_path):
    out = tmp_path / "vocab"
    result = subprocess.run([sys.executable, "-m", "minibert", "demo", "--out", str(out), "--vocab-size", "2000",
                             "--text", "Unaffable tokenizers!"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "corpus (built-in):" in result.stdout
    assert "trained a 2,000-token WordPiece vocabulary" in result.stdout
    tokens_per_word = float(re.search(r"([\d.]+) tokens/word", result.stdout).group(1))
    assert 1.0 <= tokens_per_word < 6.0  # 1.25 at 2,000 tokens, 1.05 at 8,000 (see benchmarks/vocab.py)
    ids = BertTokenizer.from_pretrained(out)("Unaffable tokenizers!")["input_ids"]
    assert f"input_ids:      {ids}" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "minibert", "train-vocab", str(tmp_path / "nope"), "--out",
                          str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("minibert: error: ") and "Traceback" not in bad.stderr


def test_show_merges_prints_the_hand_computed_first_merges(tmp_path, capsys):
    # The corpus of tests/test_vocab.py::test_first_merges_by_hand_ratio, as one document.
    text = " ".join(["hug"] * 10 + ["pug"] * 5 + ["pun"] * 12 + ["bun"] * 4 + ["hugs"] * 5)
    (tmp_path / "c.txt").write_text(text + "\n", encoding="utf-8")
    assert main(["train-vocab", str(tmp_path / "c.txt"), "--vocab-size", "15", "--out", str(tmp_path / "v"),
                 "--show-merges", "2", "--criterion", "ratio"]) == 0
    printed = capsys.readouterr().out
    assert "merge     1: '##g' + '##s' -> '##gs'  count(ab)=5  score=0.05\n" in printed
    assert "merge     2: 'p' + '##u' -> 'pu'  count(ab)=17  score=0.0278\n" in printed  # 1/36
    assert "merge     3" not in printed
    assert "held-out text: none (the corpus has fewer than 10 documents)" in printed


def test_assignment_verb_cuts_and_grades_a_handout(tmp_path, capsys):
    """`minibert assignment make` then `grade` on the untouched handout: every function scores 0 of its
    points as 'not implemented', the exit status is 0, and an unknown name is a one-line error (status 2)."""
    assert main(["assignment", "make", "losses_and_adamw", str(tmp_path / "handout")]) == 0
    assert (tmp_path / "handout" / "structure.md").is_file()
    assert main(["assignment", "grade", "losses_and_adamw", str(tmp_path / "handout"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    total = re.search(r"score: (\d+)/(\d+)", out)
    assert total and total.group(1) == "0" and int(total.group(2)) > 0
    assert out.count("not implemented") >= 6
    assert main(["assignment", "grade", "no-such-assignment", str(tmp_path)]) == 2
    assert "unknown assignment" in capsys.readouterr().err


def _parsers(parser, prefix="minibert"):
    """(name, parser) of every verb and sub-verb under ``parser``."""
    import argparse
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}")


def test_every_help_shows_every_default(capsys):
    """Each option's help gives its default: added by the formatter, or said in the help when it is not a
    plain value (None means something). On/off flags and required options have none to show."""
    from minibert.cli import build_parser
    missing = []
    for name, parser in _parsers(build_parser()):
        if name.startswith("minibert assignment "):
            continue  # the assignment module's own options
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.nargs == 0 or action.required or action.default is None and not action.option_strings:
                continue
            if "default" not in formatter._get_help_string(action).lower():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("encoder layers (default: 2)", "peak learning rate (default: 0.0005)",
                  "(default: wsd)", "(default: runs/pretrain)", "(default: 100)"):
        assert shown in text, shown
    with pytest.raises(SystemExit):
        main(["finetune", "classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training data (default: 3)" in text and "(default: 0.0001)" in text


def test_python_dash_m_minibert_ops_prints_a_table():
    from minibert.ops import backend_info
    from minibert.ops.__main__ import table
    text = table(backend_info())
    lines = text.splitlines()
    assert lines[0].startswith("extension: ") and any(ln.split()[:2] == ["op", "device"] for ln in lines)
    for op in ("attention", "gelu", "bias_gelu", "dropout"):
        for device in ("cpu", "cuda"):
            assert any(ln.split()[:2] == [op, device] and ln.split()[2] in ("fused", "eager") for ln in lines)
