"""Tokenizer fuzzing: many seeded random strings, each encoded by minibert and by HF's fast tokenizer.

Every string mixes the characters the tokenizer treats specially (``tests/tokenizer_strings.py``: control
and format characters, every kind of whitespace, accents and combining marks, CJK, emoji, special tokens,
words around the 100-character limit, arbitrary code points). Each is encoded cased and uncased, with
character offsets; an exception of any kind is a crash, any difference in ids or offsets a mismatch.

CI runs 20,000 strings; the full run is ``MINIBERT_FUZZ=full python -m pytest tests/fuzz`` (100,000).
"""
import os
import random

import pytest

from minibert.tokenizer import BertTokenizer
from tokenizer_strings import HAND_PICKED, build_vocab, random_text

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

N_STRINGS = 100_000 if os.environ.get("MINIBERT_FUZZ") == "full" else 20_000
BATCH = 500


@pytest.mark.slow
@pytest.mark.parametrize("do_lower_case", [True, False], ids=["uncased", "cased"])
def test_random_strings_encode_like_the_fast_tokenizer(tmp_path, do_lower_case):
    build_vocab(tmp_path / "vocab.txt")
    ours = BertTokenizer.from_pretrained(tmp_path, do_lower_case=do_lower_case)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=do_lower_case)
    rng = random.Random(1811 + do_lower_case)
    texts = HAND_PICKED + [random_text(rng) for _ in range(N_STRINGS - len(HAND_PICKED))]
    mismatches = []
    for start in range(0, len(texts), BATCH):
        batch = texts[start:start + BATCH]
        got = ours(batch, return_offsets_mapping=True)
        want = theirs(batch, return_offsets_mapping=True)
        for i, text in enumerate(batch):
            want_offsets = [tuple(o) for o in want["offset_mapping"][i]]
            if got["input_ids"][i] != want["input_ids"][i] or got["offset_mapping"][i] != want_offsets:
                mismatches.append(text)
    print(f"\ntokenizer fuzz ({'uncased' if do_lower_case else 'cased'}): {len(texts)} strings, "
          f"0 crashes, {len(mismatches)} mismatches")
    assert not mismatches, f"{len(mismatches)} of {len(texts)} strings differ, e.g. {mismatches[:3]!r}"
