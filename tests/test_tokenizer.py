"""Unit tests for minibert.tokenizer: each stage on hand-checked cases, the model-input builder, the HF file
formats, the documented differences from other BERT tokenizers, bad input and the show-your-work CLI.

The first group re-states, in our own words, the checks of google-research/bert's tokenization_test.py.
The exhaustive comparison with HF's fast tokenizer lives in test_tokenizer_conformance.py.
"""
import gc
import json
import re
import unicodedata

import numpy as np
import pytest

from minibert.tokenizer import encoding, unicode_tables
from minibert.tokenizer import (SPECIAL_TOKENS, BasicTokenizer, BertTokenizer, WordpieceTokenizer, load_vocab,
                                main, show_work)

SMALL_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "want", "##want", "##ed", "wa", "un", "runn",
               "##ing", ",", "hello", "world", "##s", "!", "?", "é", "h", "##é", "##llo", "café", "你", "好",
               "a", "b", "do", "n", "'", "t", ".", "##ll", "##o"]


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("".join(t + "\n" for t in SMALL_VOCAB), encoding="utf-8")
    return path


@pytest.fixture
def tok(vocab_file):
    return BertTokenizer(vocab_file)


# ---- google-research/bert tokenization_test.py, restated ---------------------------------------------


def test_full_tokenizer_pieces_and_ids(tok):
    tokens = tok.tokenize("UNwant\u00e9d,running")
    assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert tok.convert_tokens_to_ids(tokens) == [9, 6, 7, 12, 10, 11]


def test_chinese_characters_become_single_tokens():
    assert BasicTokenizer().tokenize("ah\u535a\u63a8zz") == ["ah", "\u535a", "\u63a8", "zz"]


@pytest.mark.parametrize("flags, expected", [
    (dict(), ["hallo", "!", "how", "are", "you", "?", "hello"]),
    (dict(strip_accents=False), ["hällo", "!", "how", "are", "you", "?", "héllo"]),
    (dict(strip_accents=True), ["hallo", "!", "how", "are", "you", "?", "hello"]),
    (dict(do_lower_case=False), ["HäLLo", "!", "how", "Are", "yoU", "?", "Héllo"]),
    (dict(do_lower_case=False, strip_accents=True), ["HaLLo", "!", "how", "Are", "yoU", "?", "Hello"]),
    (dict(do_lower_case=False, strip_accents=False), ["HäLLo", "!", "how", "Are", "yoU", "?", "Héllo"]),
])
def test_basic_tokenizer_case_and_accents(flags, expected):
    assert BasicTokenizer(**flags).tokenize(" \tHäLLo!how  \n Are yoU?  H\u00e9llo") == expected


def test_wordpiece_greedy_longest_match_and_unk():
    vocab = {t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un",
                                         "runn", "##ing"])}
    wp = WordpieceTokenizer(vocab)
    assert wp.tokenize("") == []
    assert wp.tokenize("unwanted") == ["un", "##want", "##ed"]
    assert wp.tokenize("running") == ["runn", "##ing"]
    assert wp.tokenize("unwantedX") == ["[UNK]"]  # one missing piece makes the whole word unknown
    assert wp.tokenize_with_offsets("unwanted") == (("un", 0, 2), ("##want", 2, 6), ("##ed", 6, 8))


def test_character_classes():
    for ch in " \t\r\n\u00a0\u3000\u2028":
        assert unicode_tables.is_whitespace(ch), repr(ch)
    for ch in "A-\x1c":
        assert not unicode_tables.is_whitespace(ch), repr(ch)
    for ch in "\x00\x05\x7f\u200b\ufeff\ufffd\ue000":
        assert unicode_tables.is_removed(ch), repr(ch)
    for ch in "A \t\r\n\U0001f4a9\u0378":  # \u0378 is unassigned: the fast tokenizer keeps it
        assert not unicode_tables.is_removed(ch), repr(ch)
    for ch in "-$`.^~\u00bf\u3001":
        assert unicode_tables.is_punctuation(ch), repr(ch)
    for ch in "A 1\u00e9\u4e2d":
        assert not unicode_tables.is_punctuation(ch), repr(ch)


# ---- BasicTokenizer ---------------------------------------------------------------------------------


def test_offsets_point_into_the_original_text():
    text = "Héllo\x00, WÖRLD\u200b! 你好 e\u0301x [MASK]"
    basic = BasicTokenizer(never_split=["[MASK]"])
    got = basic.tokenize_with_offsets(text)
    assert [t for t, _, _ in got] == ["hello", ",", "world", "!", "你", "好", "ex", "[MASK]"]
    assert [text[s:e] for _, s, e in got] == ["Héllo", ",", "WÖRLD", "!", "你", "好", "e\u0301x", "[MASK]"]


def test_never_split_matches_inside_words_longest_first():
    basic = BasicTokenizer(never_split=["[MASK]", "[MASK]]"])
    assert basic.tokenize("a[MASK]b [mask]") == ["a", "[MASK]", "b", "[", "mask", "]"]
    assert basic.tokenize("x[MASK]]") == ["x", "[MASK]]"]


def test_normalize_shows_cleaned_text():
    assert BasicTokenizer().normalize("A\x00b\tÉ中") == "ab e 中 "
    assert BasicTokenizer(never_split=["[MASK]"]).normalize("X[MASK]Y [MASK]") == "x[MASK]y [MASK]"


def test_long_words_become_unk(tok):
    vocab = {"[UNK]": 0, "a": 1, "##a": 2}
    wp = WordpieceTokenizer(vocab)
    assert wp.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert wp.tokenize("a" * 101) == ["[UNK]"]
    assert WordpieceTokenizer(vocab, max_input_chars_per_word=3).tokenize("aaaa") == ["[UNK]"]


# ---- BertTokenizer ------------------------------------------------------------------------------------


def test_call_single_pair_and_batch(tok):
    enc = tok("hello world", "a b", return_offsets_mapping=True, return_special_tokens_mask=True)
    assert enc["input_ids"] == [2, 13, 14, 3, 25, 26, 3]
    assert enc.token_type_ids == [0, 0, 0, 0, 1, 1, 1]
    assert enc["attention_mask"] == [1] * 7
    assert enc["special_tokens_mask"] == [1, 0, 0, 1, 0, 0, 1]
    assert enc["offset_mapping"] == [(0, 0), (0, 5), (6, 11), (0, 0), (0, 1), (2, 3), (0, 0)]
    batch = tok(["hello", "hello worlds!"], padding=True)
    assert batch["input_ids"] == [[2, 13, 3, 0, 0, 0], [2, 13, 14, 15, 16, 3]]
    assert batch["attention_mask"] == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert tok(["a"], padding="max_length", max_length=5)["input_ids"] == [[2, 25, 3, 0, 0]]


def test_truncation_with_stride_windows(tok):
    enc = tok("a b a b a", truncation=True, max_length=5, stride=1, return_overflowing_tokens=True,
              return_offsets_mapping=True)
    # 5 tokens, 3 per window, overlapping by 1: [a b a] [a b a] ... each wrapped in [CLS] .. [SEP]
    assert enc["input_ids"] == [[2, 25, 26, 25, 3], [2, 25, 26, 25, 3]]
    assert enc["offset_mapping"][1] == [(0, 0), (4, 5), (6, 7), (8, 9), (0, 0)]
    assert enc["overflow_to_sample_mapping"] == [0, 0]
    assert tok("a b a b a", truncation=True, max_length=4)["input_ids"] == [2, 25, 26, 3]
    pair = tok("a a a a", "b", truncation="only_first", max_length=5)
    assert pair["input_ids"] == [2, 25, 3, 26, 3]  # 5 - 3 specials = 2 tokens: "b" stays, "a a a a" -> "a"


def test_tensors(tok):
    for kind in ("np", "pt"):
        enc = tok(["hello", "a b"], padding=True, return_tensors=kind, return_offsets_mapping=True)
        assert tuple(enc["input_ids"].shape) == (2, 4)
        assert tuple(enc["offset_mapping"].shape) == (2, 4, 2)
        assert np.asarray(enc["input_ids"]).tolist() == tok(["hello", "a b"], padding=True)["input_ids"]
    assert tok("hello", return_tensors="np")["input_ids"].shape == (1, 3)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["hello", "a b"], return_tensors="np")


def test_decode_merges_pieces_and_skips_specials(vocab_file):
    tok = BertTokenizer(vocab_file, strip_accents=False)
    ids = tok.encode("hello worlds, café!")
    assert tok.decode(ids) == "[CLS] hello worlds, café! [SEP]"
    assert tok.decode(ids, skip_special_tokens=True) == "hello worlds, café!"
    # HF's decoder cleans each token on its own, so a contraction split into pieces stays apart
    assert tok.decode([27, 28, 29, 30, 31]) == "do n ' t."


def test_vocabulary_accessors(tok):
    assert len(tok) == len(SMALL_VOCAB)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0, 1, 2, 3, 4)
    assert sorted(tok.all_special_ids) == [0, 1, 2, 3, 4]
    assert tok.convert_tokens_to_ids("zebra") == 1
    assert tok.convert_ids_to_tokens([13, 15]) == ["hello", "##s"]
    assert tok.convert_ids_to_tokens(np.int64(14)) == "world"
    assert tok.tokenize("hello [MASK]!") == ["hello", "[MASK]", "!"]
    assert SPECIAL_TOKENS == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# ---- files --------------------------------------------------------------------------------------------


def test_save_pretrained_loads_in_transformers(tmp_path, vocab_file):
    transformers = pytest.importorskip("transformers")
    ours = BertTokenizer(vocab_file, do_lower_case=False)
    written = ours.save_pretrained(tmp_path / "saved")
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["tokenizer_config.json", "vocab.txt"]
    assert not [p for p in (tmp_path / "saved").iterdir() if p.name.endswith(".tmp")]
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "saved"))
    text = "Hello WORLD café, 你好 [MASK] runnings"
    assert theirs(text)["input_ids"] == ours(text)["input_ids"]
    assert theirs.tokenize(text) == ours.tokenize(text)  # and case was kept by both
    again = BertTokenizer.from_pretrained(tmp_path / "saved")
    assert again.do_lower_case is False and again.vocab == ours.vocab


def test_from_pretrained_reads_hf_tokenizer_json(tmp_path, vocab_file):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.BertTokenizerFast.from_pretrained(str(vocab_file.parent), do_lower_case=False)
    theirs.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    ours = BertTokenizer.from_pretrained(tmp_path / "tokenizer.json")
    assert ours.do_lower_case is False
    assert ours.vocab == load_vocab(vocab_file)
    text = "HELLO wörld héllo!"
    assert ours(text, return_offsets_mapping=True)["offset_mapping"] == [
        tuple(o) for o in theirs(text, return_offsets_mapping=True)["offset_mapping"]]
    theirs.save_pretrained(str(tmp_path / "hf"))  # transformers 5 writes tokenizer.json, no vocab.txt
    again = BertTokenizer.from_pretrained(tmp_path / "hf")
    assert again.do_lower_case is False and again.vocab == ours.vocab


# ---- documented differences from the original and the legacy Python tokenizer -----------------------


def test_documented_differences_from_legacy_tokenizer(vocab_file):
    legacy_module = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    legacy = legacy_module.BertTokenizerLegacy(str(vocab_file)).basic_tokenizer
    ours = BasicTokenizer()
    # final sigma: Python's str.lower() knows it, the fast tokenizer (and we) lower-case per character
    assert legacy.tokenize("ΑΣ") == ["ας"] and ours.tokenize("ΑΣ") == ["ασ"]
    # U+2B820..U+2B91F: split by Google's ranges, not by the fast tokenizer's
    assert legacy.tokenize("x\U0002b820y") == ["x", "\U0002b820", "y"]
    assert ours.tokenize("x\U0002b820y") == ["x\U0002b820y"]
    # unassigned code points: dropped by the legacy tokenizer, kept by the fast one
    assert legacy.tokenize("a\u0378b") == ["ab"] and ours.tokenize("a\u0378b") == ["a\u0378b"]
    assert unicodedata.category("\u0378") == "Cn"


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"[PAD]\n\n[UNK]\n", "blank line at line 2"),
    (b"[UNK]\n[CLS]\n[SEP]\n[UNK]\n", "lists '\\[UNK\\]' twice \\(lines 1 and 4\\)"),
    (b"[UNK]\n[CLS]\n\xff\xfe\n", "not UTF-8"),
])
def test_malformed_vocab_files(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_vocab(path)


def test_missing_vocab_and_special_tokens(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertTokenizer(tmp_path / "nope.txt")
    with pytest.raises(IsADirectoryError, match="from_pretrained"):
        load_vocab(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither vocab.txt nor tokenizer.json"):
        BertTokenizer.from_pretrained(tmp_path)
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks \[CLS\], \[SEP\]"):
        BertTokenizer(path)



def test_byte_order_mark_is_not_part_of_token_zero(tmp_path, vocab_file):
    """Reproducer: a vocab.txt saved with a BOM kept "\ufeff[PAD]" as token 0, so [PAD] was missing."""
    path = tmp_path / "bom" / "vocab.txt"
    path.parent.mkdir()
    path.write_bytes(b"\xef\xbb\xbf" + vocab_file.read_bytes())
    vocab = load_vocab(path)
    assert list(vocab)[:2] == ["[PAD]", "[UNK]"] and vocab == load_vocab(vocab_file)
    (path.parent / "tokenizer_config.json").write_bytes(b"\xef\xbb\xbf" + b'{"do_lower_case": false}')
    assert BertTokenizer.from_pretrained(path.parent).do_lower_case is False


@pytest.mark.parametrize("config, message", [
    ('{"do_lower_case": "false"}', 'do_lower_case must be true or false, not "false"'),
    ('{"tokenize_chinese_chars": 0}', "tokenize_chinese_chars must be true or false, not 0"),
    ('{"strip_accents": "yes"}', 'strip_accents must be true, false or null, not "yes"'),
    ("[1, 2]", "must hold a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"do_lower_case": tru', "not valid UTF-8 JSON"),
])
def test_tokenizer_config_values_are_checked(tmp_path, vocab_file, config, message):
    """Reproducer: "do_lower_case": "false" (a string) was read as True and lower-cased a cased model."""
    (tmp_path / "tokenizer_config.json").write_text(config, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)):
        BertTokenizer.from_pretrained(tmp_path)

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(padding="longer"), ValueError, "padding must be one of"),
    (dict(truncation="middle", max_length=8), ValueError, "truncation must be one of"),
    (dict(truncation=True, max_length=2), ValueError, "leaves no room"),
    (dict(truncation=True), ValueError, "need max_length"),
    (dict(truncation=True, max_length=4, stride=2, return_overflowing_tokens=True), ValueError, "stride"),
    (dict(truncation=True, max_length=8, stride=7), ValueError, "at most max_length - 2"),
    (dict(truncation="only_second", max_length=3), ValueError, "needs a text_pair"),
    (dict(return_tensors="tf"), ValueError, "return_tensors"),
    (dict(max_length=0, truncation=True), ValueError, "positive int"),
])
def test_bad_options(tok, kwargs, error, message):
    with pytest.raises(error, match=message):
        tok("hello world a b a b", **kwargs)


@pytest.mark.parametrize("args", [(None,), (b"bytes",), (["a", 3],), ("a", 5), (["a", "b"], ["c"])])
def test_non_str_inputs(tok, args):
    with pytest.raises(TypeError):
        tok(*args)
    with pytest.raises(TypeError):
        tok.tokenize(b"bytes")


def test_empty_batch(tok):
    with pytest.raises(ValueError, match="empty"):
        tok([])


def test_bad_ids(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([2, 999])


# ---- show your work -----------------------------------------------------------------------------------


def test_show_work_lists_every_stage(tok):
    out = show_work(tok, "Héllo,\x00 wörlds!", "a b")
    for expected in ("cleaned:      'hello, worlds!'", "basic tokens: ['hello', ',', 'worlds', '!']",
                     "word pieces:  ['hello', ',', 'world', '##s', '!']", "input_ids:      [2, 13, 12, 14, 15",
                     "(0, 5)      'Héllo'", "(13, 14)    's'", "(2, 3)      'b'", "(special)"):
        assert expected in out, (expected, out)


def test_main_prints_show_work(vocab_file, capsys):
    assert main(["--vocab", str(vocab_file.parent), "--cased", "Hello world"]) == 0
    out = capsys.readouterr().out
    assert "basic tokens: ['Hello', 'world']" in out and "[UNK]" in out  # "Hello" is not in the vocab


def test_main_defaults_to_the_built_in_vocabulary(vocab_file, capsys, monkeypatch):
    import minibert.tokenizer.train
    monkeypatch.setattr(minibert.tokenizer.train, "default_vocab_dir", lambda: str(vocab_file.parent))
    assert main(["hello worlds"]) == 0
    assert "word pieces:  ['hello', 'world', '##s']" in capsys.readouterr().out


def test_module_runs_as_a_script(vocab_file):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "minibert.tokenizer", "--vocab", str(vocab_file), "你好 hello"],
                         capture_output=True, text=True, check=True).stdout
    assert "basic tokens: ['你', '好', 'hello']" in out and "(1, 2)      '好'" in out


def test_batch_encoding_is_a_plain_dict(tok):
    enc = tok("hello")
    assert isinstance(enc, dict) and json.loads(json.dumps(enc)) == enc
    with pytest.raises(AttributeError):
        enc.nothing


def test_batch_pauses_the_garbage_collector_and_restores_it(tok, monkeypatch):
    """A batch runs with the cyclic collector off (for speed) and leaves it as it found it, on or off, also
    when the batch raises."""
    seen = []
    real_build = encoding._build

    def spy(tokenizer, text, *args, **kwargs):
        seen.append(gc.isenabled())
        if text == "boom":
            raise RuntimeError("failed inside the batch")
        return real_build(tokenizer, text, *args, **kwargs)

    monkeypatch.setattr(encoding, "_build", spy)
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            ids = tok(["unwanted running", "un"], truncation=True, max_length=5)["input_ids"]
            assert ids == [tok.encode("unwanted running", truncation=True, max_length=5), tok.encode("un")]
            assert gc.isenabled() == enabled
            with pytest.raises(RuntimeError, match="inside the batch"):
                tok(["un", "boom"])
            assert gc.isenabled() == enabled
        finally:
            gc.enable()
    assert seen and not any(seen)
