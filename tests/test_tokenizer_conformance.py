"""minibert's tokenizer against HF's fast tokenizer (``tokenizers``, Rust) as the oracle.

Thousands of seeded random strings (ASCII words, punctuation, accented Latin, CJK, emoji, control
characters, every kind of whitespace, special tokens, very long words), single and paired, under every
flag combination and truncation strategy: ids, token type ids, masks and character offsets must be
identical. A summary line reports the counts. A second test sweeps every Unicode code point through the
normalizer and pre-tokenizer, which pins down the character tables in ``minibert/tokenizer/unicode_tables.py``.
"""
import random
import unicodedata

import pytest

from minibert.tokenizer import SPECIAL_TOKENS, BertTokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

FIELDS = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping")
CONFIGS = {  # name -> BertTokenizer / BertTokenizerFast flags
    "uncased": dict(do_lower_case=True),
    "cased": dict(do_lower_case=False),
    "lower_keep_accents": dict(do_lower_case=True, strip_accents=False),
    "cased_strip_accents": dict(do_lower_case=False, strip_accents=True),
    "no_cjk_split": dict(do_lower_case=True, tokenize_chinese_chars=False),
}

ASCII_WORDS = ("the quick brown fox jumps over lazy dog running unaffable playing token tokenizer bert "
               "model attention layer hidden state embedding vocabulary sentence question answer context "
               "paris london learning machine neural network deep pretraining masked language next "
               "don't it's we're i'm they've 1984 3.14 42 2nd http www example com").split()
ACCENTED = "éèêëÉÈàáâäÀÁÂÄñÑçÇüÜöÖøØåÅßæÆœŒłŁıİşŞğĞčČžŽ" + "e\u0301a\u0300o\u0308" + "ΑΣΣαςσΩωДжЯя" + "ﬁﬀǅ"
PUNCT = ".,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`" + "“”‘’«»¿¡—–…、。，！？・·" + "\u037e\u0387"
CJK = ("中国人你好世界日本語東京北京漢字学生大小上下" + "\u3400\u4dbf\u9fff\uf900\ufa6a"
       + "\U00020000\U0002a6df\U0002b740\U0002b820\U0002b91f\U0002b920\U0002ceaf\U0002f800")
EMOJI = ("😀🙂👍🏽❤️🎉🚀🤖🥰🧪🫠" + "👨\u200d👩\u200d👧" + "\u2764\ufe0f" + "🇫🇷")
CONTROL = "\x00\x01\x07\x08\x0b\x0c\x1b\x1c\x1f\x7f\x85\u200b\u200d\ufeff\ufffd\u2060\ue000\U000f0000\u0378"
SPACES = " \t\n\r\xa0\u1680\u2000\u2003\u200a\u2028\u2029\u202f\u205f\u3000"
MARK_RANGES = (range(0x300, 0x370), range(0x591, 0x5C8), range(0x1AB0, 0x1ACF), range(0x1DC0, 0x1E00),
               range(0x1D165, 0x1D16E), range(0x8CA, 0x8E2))
SPECIAL_IN_TEXT = list(SPECIAL_TOKENS) + ["[mask]", "[MASK", "MASK]", "[[MASK]]", "[MASK][SEP]"]


def build_vocab(path):
    """A few thousand tokens: specials, characters (+ ``##`` forms), words and subwords; written to ``path``."""
    rng = random.Random(1234)
    tokens = list(SPECIAL_TOKENS) + [f"[unused{i}]" for i in range(5)]
    chars = set(map(chr, range(33, 127))) | set(ACCENTED + PUNCT + CJK.replace("\U0002b820", "") + "😀🚀")
    chars |= set(ACCENTED.lower()) | set("aeiouyσςи")
    chars |= set("\U0001d165\U0001d16d")  # musical combining marks: survive accent stripping, get reordered
    chars = sorted(c for c in chars if c.isprintable() and not c.isspace())
    tokens += chars + ["##" + c for c in chars if c.isalnum()]
    words = set()
    for w in ASCII_WORDS:
        words |= {w, w.lower(), w.capitalize()}
        words |= {w[:k] for k in range(2, len(w))} | {"##" + w[k:] for k in range(1, len(w) - 1)}
    for _ in range(1500):  # random subwords, so the greedy search has real choices to make
        n = rng.randint(2, 6)
        s = "".join(rng.choice("etaoinshrdlucmfwypvbgk") for _ in range(n))
        words.add(s if rng.random() < 0.5 else "##" + s)
    words |= {"café", "##é", "naïve", "über", "straße", "ασ", "##ς"}
    tokens += sorted(w for w in words if w not in set(tokens))
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return len(tokens)


def random_text(rng: random.Random) -> str:
    """One random string mixing every kind of character the tokenizer treats specially."""
    parts = []
    for _ in range(rng.randint(0, 25)):
        r = rng.random()
        if r < 0.30:
            w = rng.choice(ASCII_WORDS)
            parts.append(w.upper() if rng.random() < 0.2 else w.capitalize() if rng.random() < 0.3 else w)
        elif r < 0.38:
            parts.append("".join(rng.choice(ACCENTED + "abcxyz") for _ in range(rng.randint(1, 8))))
        elif r < 0.48:
            parts.append(rng.choice(PUNCT) * rng.randint(1, 2))
        elif r < 0.56:
            parts.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 4))))
        elif r < 0.61:
            parts.append(rng.choice(EMOJI))
        elif r < 0.67:
            parts.append(rng.choice(CONTROL))
        elif r < 0.72:
            parts.append(rng.choice(SPECIAL_IN_TEXT))
        elif r < 0.75:  # very long words, around the 100-character limit
            parts.append("".join(rng.choice("abcdeé") for _ in range(rng.choice((99, 100, 101, 150)))))
        elif r < 0.76:  # runs of combining marks, old and new (NFD sorts them; stripping drops some)
            parts.append("".join(chr(rng.choice(rng.choice(MARK_RANGES))) for _ in range(rng.randint(1, 3))))
        elif r < 0.78:  # any code point at all (surrogates excepted: not valid in the Rust tokenizer)
            cp = rng.randrange(0x110000)
            parts.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
        else:
            parts.append(rng.choice(SPACES))
        parts.append("" if rng.random() < 0.3 else rng.choice(SPACES[:3]))
    return "".join(parts)


HAND_PICKED = [
    "", " ", "\x00", "[MASK]", "[MASK][MASK]", "a[MASK]b", "[mask]", "[UNK]x", "x" * 100, "x" * 101,
    "İstanbul", "ΑΣ ΟΔΟΣ", "ﬁne ǅ", "e\u0301 \u0301 a\u0301\u0301b", "straße", "\u037e\u0387",
    "\U0002b81f\U0002b820\U0002b91f\U0002b920", "\uf900\ufa6a", "a\u2028b\u2029c\x85d\x1ce\x0bf",
    "👨\u200d👩\u200d👧 \u2764\ufe0f", "tab\tnew\nline\rreturn", "\ufeffbom", "a\ue000b",
    # NFD sorts combining marks across characters; offsets follow the fast tokenizer's rule
    "x\U0001d16d\U0001d165 y", "x\U0001d16d\u0301\U0001d165x", "x\U0001d16d\x00\U0001d165x",
    "é\U0001d16d\u0316\U0001d165 \u0301x\U0001d16d", "ǘ\U0001d16d\u0316\U0001d165\u0301x",
    "中\U0001d16d\U0001d165\u0301", "x\U0001d16d[MASK]\U0001d165", "l\u1ac9\u1ab9 l\u1ab9\u1ac9",
]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer_vocab")
    build_vocab(path / "vocab.txt")
    return path


def _pair_up(ours, theirs, name):
    """Both tokenizers built from the same vocab.txt with the same flags."""
    flags = CONFIGS[name]
    return BertTokenizer.from_pretrained(ours, **flags), transformers.BertTokenizerFast.from_pretrained(
        str(theirs), **flags)


def _compare(ours, theirs, counts, *args, **kwargs):
    """Run both on the same call; assert every field equal and count what was compared."""
    kwargs.update(return_offsets_mapping=True, return_special_tokens_mask=True)
    got, want = ours(*args, **kwargs), theirs(*args, **kwargs)
    want_keys = [k for k in want.keys()]
    assert list(got.keys()) == want_keys, (args, kwargs)
    for field in want_keys:
        g, w = got[field], want[field]
        if field == "offset_mapping":
            w = [[tuple(o) for o in row] for row in w] if w and isinstance(w[0], list) else [tuple(o) for o in w]
        assert g == w, f"{field} differs for {args!r} {kwargs!r}:\n ours   {g}\n theirs {w}"
        counts[field] = counts.get(field, 0) + (len(g) if g and isinstance(g[0], list) else 1)


@pytest.mark.slow
def test_fast_tokenizer_conformance(vocab_dir):
    rng = random.Random(20181011)  # BERT's arXiv date
    counts, n_texts = {}, 0
    for name in CONFIGS:
        ours, theirs = _pair_up(vocab_dir, vocab_dir, name)
        texts = HAND_PICKED + [random_text(rng) for _ in range(600 if name == "uncased" else 300)]
        n_texts += len(texts)
        # Batches of singles (with padding), then pairs.
        for i in range(0, len(texts), 50):
            _compare(ours, theirs, counts, texts[i:i + 50], padding=True)
            firsts, seconds = texts[i:i + 25], texts[i + 25:i + 50]
            n = min(len(firsts), len(seconds))
            if n:
                _compare(ours, theirs, counts, firsts[:n], seconds[:n])
        # Every truncation strategy, with stride windows and overflow, on single texts, pairs and batches.
        for a, b in zip(texts[:150], texts[150:300]):
            max_length = rng.choice((5, 6, 8, 12, 16, 32, 64))
            strategy = rng.choice((True, "longest_first", "only_first", "only_second"))
            pair = b if strategy == "only_second" or rng.random() < 0.7 else None
            args = (a, pair) if rng.random() < 0.8 else ([a, b[:20]], [pair, a[:10]] if pair else None)
            kwargs = dict(truncation=strategy, max_length=max_length, stride=rng.choice((0, 0, 1, 2, 4)),
                          return_overflowing_tokens=rng.random() < 0.7, add_special_tokens=rng.random() < 0.85,
                          padding=rng.choice((False, True, "max_length")))
            try:  # the cases the fast tokenizer rejects (stride too big, a side too short) we must reject too
                want_error = None
                theirs(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - a Rust panic is not an Exception subclass
                want_error = e
            if want_error is not None:
                with pytest.raises(ValueError):
                    ours(*args, **kwargs)
                counts["errors"] = counts.get("errors", 0) + 1
                continue
            if max_length - (3 if pair is not None else 2) * kwargs["add_special_tokens"] < 1:
                with pytest.raises(ValueError, match="leaves no room"):  # fast: a silently empty window
                    ours(*args, **kwargs)
                continue
            _compare(ours, theirs, counts, *args, **kwargs)
        # decode, with and without the special tokens
        for text in texts[:100]:
            ids = theirs(text)["input_ids"]
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
            counts["decode"] = counts.get("decode", 0) + 2
    total = sum(v for k, v in counts.items() if k in FIELDS)
    print(f"\ntokenizer conformance: {n_texts} texts over {len(CONFIGS)} flag configs, "
          f"{counts['input_ids']} sequences, {counts.get('errors', 0)} rejected alike, {counts['decode']} decodes: 100% identical ids, "
          f"token type ids, masks and offsets ({total} field comparisons)")
    assert counts["input_ids"] > 2000


@pytest.mark.slow
@pytest.mark.parametrize("name", ["uncased", "cased"])
def test_every_code_point_normalizes_and_splits_like_the_fast_tokenizer(name):
    """Each code point c appears as "a c a": cleaning, CJK, accents, case and punctuation all decide its fate."""
    flags = CONFIGS[name]
    lower = flags["do_lower_case"]
    normalizer = tokenizers.normalizers.BertNormalizer(lowercase=lower, strip_accents=flags.get("strip_accents"))
    pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    from minibert.tokenizer import BasicTokenizer
    basic = BasicTokenizer(do_lower_case=lower, strip_accents=flags.get("strip_accents"))
    for block in range(0, 0x110000, 0x10000):
        # Planes 3-16 are mostly unassigned (or private use): their assigned code points and every 97th
        # unassigned one are enough there, and keep this test a few seconds long.
        text = "".join(f"a{chr(c)}a " for c in range(block, block + 0x10000) if not 0xD800 <= c <= 0xDFFF
                       and (c < 0x30000 or c % 97 == 0 or unicodedata.category(chr(c)) != "Cn"))
        want = [t for t, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
        got = basic.tokenize(text)
        if got != want:
            first = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w) if got and want else 0
            raise AssertionError(f"block {block:#x}: first difference at token {first}: "
                                 f"ours {got[first:first + 5]} theirs {want[first:first + 5]}")
