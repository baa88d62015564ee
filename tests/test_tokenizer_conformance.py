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

from minibert.tokenizer import BertTokenizer
from tokenizer_strings import HAND_PICKED, build_vocab, random_text

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
